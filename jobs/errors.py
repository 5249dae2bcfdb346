"""How a job tells the runner what went wrong: try again later, or give up now."""
from __future__ import annotations


class TransientError(Exception):
    """Worth retrying (timeouts, a gateway hiccup, an SMTP server that is down)."""


class PermanentError(Exception):
    """Retrying cannot help (a declined card, an unknown recipient)."""


def is_transient(exc: BaseException) -> bool:
    """Errors of the outside world that usually pass; everything else is a bug or a refusal."""
    import smtplib

    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TransientError):
        return True
    if type(exc).__name__ == "JobTimeoutException":  # the worker's time limit: the outcome is unknown, ask again
        return True
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return False
    if isinstance(exc, (smtplib.SMTPException, OSError, TimeoutError, OperationalError)):
        return True
    if isinstance(exc, DBAPIError) and getattr(getattr(exc, "orig", None), "sqlstate", None) in ("40001", "40P01"):
        return True
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import redis

        if isinstance(exc, redis.ConnectionError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return False
