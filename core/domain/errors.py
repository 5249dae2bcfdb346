"""Errors that services raise and screens show as they are.

Every message is written for the person at the keyboard: it says what was wrong
and, where it helps, what would be accepted instead.
"""
from __future__ import annotations


class PooldeskError(Exception):
    """Base class: a refused request. Nothing was written."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(PooldeskError):
    """The input is not acceptable (bad amount, date, state...)."""


class NotFound(PooldeskError):
    """An unknown pool, investor, transaction..."""


class PermissionDenied(PooldeskError):
    """The acting user may not do this."""


class ConflictError(PooldeskError):
    """Someone else changed the record since it was read."""

    def __init__(self, what: str = "This record"):
        super().__init__(f"{what} was changed by someone else since you opened it. Reload and try again.")


class IdempotencyError(PooldeskError):
    """An idempotency key was reused with different parameters."""


class AuthenticationError(PooldeskError):
    """Sign-in refused; the message never tells whether the account exists."""


class ReauthenticationRequired(PermissionDenied):
    """A sensitive operation needs the password or a code confirmed again on this session first."""
