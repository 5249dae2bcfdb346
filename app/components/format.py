"""How numbers and dates look on screen: currency code, thousands separators, ISO dates."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from core.domain.money import format_money


def money(value: Decimal | None, currency: str) -> str:
    """``USD 1,234.50``; negative amounts keep the sign in front of the digits."""
    if value is None:
        return ""
    return format_money(Decimal(value), currency)


def units(value: Decimal | None) -> str:
    return "" if value is None else f"{Decimal(value):,.6f}"


def price(value: Decimal | None) -> str:
    """NAV per unit: 6 decimals only when they carry information."""
    if value is None:
        return ""
    value = Decimal(value)
    return f"{value:,.2f}" if value == value.quantize(Decimal("0.01")) else f"{value:,.6f}"


def percent(fraction: Decimal | float | None, places: int = 2) -> str:
    if fraction is None:
        return "n/a"
    return f"{Decimal(str(fraction)) * 100:,.{places}f}%"


def day(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return value.isoformat()


def money_by_currency(totals: dict[str, Decimal]) -> str:
    return " · ".join(money(v, c) for c, v in totals.items()) or "nothing yet"
