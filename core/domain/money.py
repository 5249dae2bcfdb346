"""Exact numbers: the one door through which amounts, units and prices enter.

Amounts are Decimal with the currency's minor units, units have 6 decimal places,
prices (NAV per unit) have 6 decimal places. Floats are refused: a float has
already lost the cents it was meant to carry.
"""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
import re
from typing import Final

from core.domain.errors import ValidationError

UNIT_PLACES: Final = 6
PRICE_PLACES: Final = 6
UNIT_Q: Final = Decimal(1).scaleb(-UNIT_PLACES)
PRICE_Q: Final = Decimal(1).scaleb(-PRICE_PLACES)
MAX_AMOUNT: Final = Decimal("1000000000000")  # 1e12
MAX_UNITS: Final = Decimal("9000000000000")  # fits integer micro-units in a BIGINT

# ISO 4217 minor units for the currencies people pick; anything else is refused
# rather than guessed.
CURRENCY_MINOR_UNITS: Final[dict[str, int]] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2,
    "NOK": 2, "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "ZAR": 2, "NGN": 2, "KES": 2,
    "GHS": 2, "INR": 2, "SGD": 2, "HKD": 2, "CNY": 2, "MXN": 2, "BRL": 2, "ILS": 2,
    "AED": 2, "SAR": 2, "TRY": 2, "PHP": 2, "THB": 2, "MYR": 2, "IDR": 2, "EGP": 2,
    "JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "UGX": 0, "VND": 0, "XOF": 0, "XAF": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}


# A number as people type it: ASCII digits, an optional sign and decimal point, nothing else.
_PLAIN: Final = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$", re.ASCII)
# Thousands separators: 1,234,567 or the Indian 12,34,567, each group in its place.
_GROUPED: Final = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d{1,2}(?:,\d{2})+,\d{3})(?:\.\d*)?$", re.ASCII)
_DECIMAL_COMMA: Final = re.compile(r"^[+-]?\d+,\d{1,2}$", re.ASCII)
_SPECIAL: Final = ("nan", "snan", "inf", "infinity")


def minor_units(currency: str) -> int:
    try:
        return CURRENCY_MINOR_UNITS[currency]
    except KeyError:
        raise ValidationError(
            f"Unknown currency {currency!r}; use an ISO 4217 code such as USD, EUR or GBP.", field="currency"
        ) from None


def money_quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def to_decimal(value: object, *, field: str = "amount") -> Decimal:
    """Parse text, int or Decimal into a finite Decimal; refuse floats and junk."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValidationError(f"{field}: give an exact number as text or Decimal, not a float.", field=field)
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        result = _parse_text(value, field)
    else:
        raise ValidationError(f"{field}: {value!r} is not a number.", field=field)
    if not result.is_finite():
        raise ValidationError(f"{field}: {value!r} is not a finite number.", field=field)
    return result


def _parse_text(value: str, field: str) -> Decimal:
    """Digits, one optional point, commas only as thousands separators in their places: anything else
    (1e3, 1_000, 1,0000, NaN, Infinity, other scripts' digits) is refused, never guessed."""
    text = value.strip()
    if not text:
        raise ValidationError(f"{field} is required.", field=field)
    shown = text if len(text) <= 40 else text[:37] + "..."
    if text.lower().lstrip("+-") in _SPECIAL:
        raise ValidationError(f"{field}: {shown!r} is not a finite number.", field=field)
    if "_" in text:
        raise ValidationError(f"{field}: {shown!r} has an underscore; write the number without it, e.g. 1000 or "
                              "1,000.", field=field)
    if _PLAIN.match(text):
        return Decimal(text)
    if _GROUPED.match(text):
        return Decimal(text.replace(",", ""))
    if _DECIMAL_COMMA.match(text):
        # "1,5" is a decimal comma, not 15: refuse rather than be wrong tenfold.
        raise ValidationError(f"{field}: {shown!r} is not a number; use a point for decimals, e.g. 1234.56.",
                              field=field)
    if "," in text and _PLAIN.match(text.replace(",", "")):
        raise ValidationError(f"{field}: {shown!r} has a thousands separator out of place; write e.g. 1,234,567.89 "
                              "or 1234567.89.", field=field)
    if "e" in text.lower() and _PLAIN.match(text.lower().replace("e", "", 1).replace("+", "").replace("-", "")
                                            or "x"):
        raise ValidationError(f"{field}: {shown!r} is in exponent notation; write the number out in digits, "
                              "e.g. 1000.", field=field)
    raise ValidationError(f"{field}: {shown!r} is not a number.", field=field)


def parse_amount(value: object, currency: str, *, field: str = "amount", allow_zero: bool = False) -> Decimal:
    """A money amount: positive, at most 1e12, no more decimals than the currency has."""
    amount = to_decimal(value, field=field)
    places = minor_units(currency)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationError(f"{field} must be greater than zero.", field=field)
    if amount > MAX_AMOUNT:
        raise ValidationError(f"{field} must not exceed 1,000,000,000,000.", field=field)
    if -amount.as_tuple().exponent > places and amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise ValidationError(
            f"{field}: {currency} has {places} decimal place{'s' if places != 1 else ''}; {value} has more.",
            field=field,
        )
    return amount.quantize(Decimal(1).scaleb(-places))


def parse_units(value: object, *, field: str = "units") -> Decimal:
    units = to_decimal(value, field=field)
    if units <= 0:
        raise ValidationError(f"{field} must be greater than zero.", field=field)
    if units > MAX_UNITS:
        raise ValidationError(f"{field} is too large.", field=field)
    if units != units.quantize(UNIT_Q):
        raise ValidationError(f"{field}: units have at most {UNIT_PLACES} decimal places.", field=field)
    return units.quantize(UNIT_Q)


def parse_price(value: object, *, field: str = "unit price") -> Decimal:
    price = to_decimal(value, field=field)
    if price <= 0:
        raise ValidationError(f"{field} must be greater than zero.", field=field)
    if price > MAX_AMOUNT:
        raise ValidationError(f"{field} is too large.", field=field)
    if price != price.quantize(PRICE_Q):
        raise ValidationError(f"{field}: at most {PRICE_PLACES} decimal places.", field=field)
    return price.quantize(PRICE_Q)


def _exact():
    return localcontext(prec=50)


def divide(numerator: Decimal, denominator: Decimal, quantum: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    with _exact():
        return (numerator / denominator).quantize(quantum, rounding=rounding)


def multiply(a: Decimal, b: Decimal, quantum: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    with _exact():
        return (a * b).quantize(quantum, rounding=rounding)


def round_money(value: Decimal, currency: str, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    with _exact():
        return value.quantize(money_quantum(currency), rounding=rounding)


def format_money(value: Decimal, currency: str) -> str:
    places = minor_units(currency)
    return f"{currency} {value:,.{places}f}"


__all__ = [
    "ROUND_CEILING", "ROUND_FLOOR", "ROUND_HALF_EVEN", "UNIT_Q", "PRICE_Q", "MAX_AMOUNT",
    "to_decimal", "parse_amount", "parse_units", "parse_price", "divide", "multiply",
    "round_money", "money_quantum", "minor_units", "format_money",
]
