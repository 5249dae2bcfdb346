"""How numbers, dates and stored text look on screen: currency code, thousands separators, ISO dates,
and ``md`` for any text that people typed (names, emails, notes) shown where Streamlit reads Markdown."""
from __future__ import annotations

import re
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


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_WWW = re.compile(r"(www)(?=\.)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def md(value: object) -> str:
    """``value`` shown literally inside Markdown: what someone typed can never become a link, an image,
    bold text, a heading, LaTeX, an emoji or a coloured badge.

    Use it for every stored or typed string (names, emails, pool names and codes, notes, notification
    titles and bodies, reasons, error messages that quote input) passed to st.markdown, st.write,
    st.caption, st.info/success/warning/error, st.toast, st.subheader, widget labels, expander titles,
    tab names or radio options: Streamlit renders Markdown in all of them. Not for st.dataframe, st.code,
    st.text or selectbox/multiselect options, which show text as it is (a backslash would show).

    Each ASCII punctuation character gets a backslash (CommonMark then prints it as it is), which stops
    links, emphasis, HTML, ``$...$`` and ``:color[...]``. Streamlit also turns bare URLs and addresses into
    links and ``:shortcodes:`` into emoji after parsing, where backslashes no longer count: an invisible
    word joiner (U+2060) after each ":", before each "@" and after "www" breaks those patterns.
    """
    text = "" if value is None else str(value)
    text = _WWW.sub(r"\1" + WORD_JOINER, text.replace(":", ":" + WORD_JOINER).replace("@", WORD_JOINER + "@"))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
