"""How long each free-text field may be: the one list, checked by the services.

A name ends up in page titles, PDF factsheets, emails and SMS; a note in the audit
log and statements. Text over its limit is refused with a message saying how long
it is and what is allowed; it is never cut short silently. Every limit is within
its column's size, so the database never has to refuse what the service let through.
"""
from __future__ import annotations

from typing import Final

from core.domain.errors import ValidationError

# what -> (the words used in messages, at most this many characters)
TEXT_LIMITS: Final[dict[str, tuple[str, int]]] = {
    "pool_name": ("The pool name", 120),
    "pool_code": ("The pool code", 32),
    "strategy": ("The strategy", 2000),
    "person_name": ("The name", 120),
    "email": ("The email address", 254),
    "note": ("The note", 1000),
    "reason": ("The reason", 1000),
    "description": ("The description", 200),
}


def limit(kind: str) -> int:
    return TEXT_LIMITS[kind][1]


def check_text(value: str | None, kind: str, *, field: str | None = None, required: bool = False) -> str:
    """The text stripped of surrounding blanks; refused when longer than its limit (or empty if required)."""
    words, most = TEXT_LIMITS[kind]
    text = (value or "").strip()
    if required and not text:
        raise ValidationError(f"{words} is required.", field=field)
    if len(text) > most:
        raise ValidationError(f"{words} is {len(text):,} characters long; at most {most:,} are allowed.",
                              field=field)
    return text
