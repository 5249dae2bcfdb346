"""Text cells that a spreadsheet shows as text, never runs (CSV / formula injection).

Excel, LibreOffice and Google Sheets treat a cell that starts with ``=``, ``+``,
``-`` or ``@`` as a formula, and a leading tab or carriage return can hide such a
start; an email or name like ``=HYPERLINK(...)`` in an export would then run on the
reader's machine. Following OWASP's CSV-injection advice, every *text* cell that
starts with one of those characters gets a leading single quote. Numbers are not
text: a negative amount stays a number (callers neutralise text columns only).
"""
from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str | None) -> str | None:
    """``text`` as a spreadsheet shows it literally; ``None`` and empty text are left alone."""
    if text and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text
