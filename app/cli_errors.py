"""What a `pooldesk` command says when it cannot work: one line on stderr, never a traceback.

``explain(exc)`` turns the failures an operator meets (schema not migrated, database
unreachable or missing, SQLite directory missing, the connection lost mid-command,
an unknown driver in the URL, a bad setting) into one sentence that says what to do;
it returns None for anything else, which is a bug and keeps its traceback.
``POOLDESK_DEBUG=1`` (or `pooldesk --debug`) shows the traceback of a known failure too.
Passwords never appear: database URLs are shown as driver, host, port and name.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

MIGRATE_FIRST = "run `pooldesk migrate` first"


def debug_enabled() -> bool:
    return os.environ.get("POOLDESK_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _database_url() -> str | None:
    try:
        from core.config import get_settings

        return get_settings().effective_database_url
    except Exception:  # noqa: BLE001 - the settings themselves may be what is wrong
        return None


def where(url: str | None) -> str:
    """The database a URL points at, without its password: "PostgreSQL database x on host:port"."""
    if not url:
        return "the database"
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return "the database"
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite database {parsed.database or ':memory:'}"
    host = parsed.host or "localhost"
    port = parsed.port or (5432 if parsed.get_backend_name() == "postgresql" else None)
    return f"the database {parsed.database!r} on {host}{f':{port}' if port else ''}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _settings_problem(exc) -> str:
    parts = []
    for error in exc.errors():
        name = "POOLDESK_" + "_".join(str(p) for p in error.get("loc", ()) if p != "__root__").upper()
        parts.append(f"{name.rstrip('_')}: {error.get('msg', 'invalid')}")
    return "Bad setting " + "; ".join(parts) + " (check the environment or .env)."


def _operational(exc, url: str | None, *, lost_if_unknown: bool = True) -> str | None:
    text = str(getattr(exc, "orig", None) or exc)
    low = text.lower()
    place = where(url)
    if "no such table" in low or "undefinedtable" in type(getattr(exc, "orig", None)).__name__.lower() \
            or ("relation" in low and "does not exist" in low):
        return f"{place[0].upper()}{place[1:]} has no Pooldesk tables yet: {MIGRATE_FIRST}."
    if "no such column" in low or ("column" in low and "does not exist" in low):
        return f"{place[0].upper()}{place[1:]} has an older schema than this Pooldesk: {MIGRATE_FIRST}."
    if "unable to open database file" in low and url:
        from sqlalchemy.engine import make_url

        folder = Path(make_url(url).database or ".").parent
        if not folder.is_dir():
            return (f"Cannot open {place}: the directory {folder} does not exist "
                    "(create it, or set POOLDESK_DATA_DIR / POOLDESK_DATABASE_URL).")
        return f"Cannot open {place}: check that the file and its directory are writable."
    if "database is locked" in low:
        return f"{place[0].upper()}{place[1:]} stayed locked by another process; try again."
    if "does not exist" in low and "database" in low:
        return (f"{place[0].upper()}{place[1:]} does not exist: create it (e.g. `createdb`), "
                f"then run `pooldesk migrate`.")
    if "password authentication failed" in low or "authentication" in low:
        return f"{place[0].upper()}{place[1:]} refused the credentials in POOLDESK_DATABASE_URL."
    if any(sign in low for sign in ("connection refused", "could not connect", "failed to resolve",
                                    "name or service not known", "could not translate host name",
                                    "timeout expired", "no route to host", "connection failed")) \
            and "terminat" not in low and "closed" not in low:
        return (f"Cannot reach {place}: {_first_line(text).split(': ')[-1] or 'no answer'}. "
                "Is the server running, and is POOLDESK_DATABASE_URL right?")
    if not lost_if_unknown:
        return None
    return (f"The connection to {place} was lost during the command ({_first_line(text)[:120]}): what it had "
            "not committed was not saved; run it again once the database is back.")


def explain(exc: BaseException) -> str | None:
    """One line for a known operating failure, or None."""
    from pydantic import ValidationError as SettingsError
    from sqlalchemy import exc as sa

    if isinstance(exc, SettingsError):
        return _settings_problem(exc)
    url = _database_url()
    if isinstance(exc, sa.NoSuchModuleError):
        driver = str(exc).rsplit(":", 1)[-1].strip()
        return (f"POOLDESK_DATABASE_URL names an unknown database driver {driver!r}: use "
                "sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/name.")
    if isinstance(exc, sa.ArgumentError) and "url" in str(exc).lower():
        return ("POOLDESK_DATABASE_URL is not a database URL: use sqlite:///path/to/file.db "
                "or postgresql+psycopg://user@host:5432/name.")
    if isinstance(exc, ModuleNotFoundError) and url and exc.name and exc.name.split(".")[0] not in (
            "core", "app", "jobs", "bench"):
        return (f"The database driver for POOLDESK_DATABASE_URL is not installed (no module {exc.name!r}): "
                "use sqlite:/// or postgresql+psycopg://.")
    if isinstance(exc, sa.ProgrammingError):  # only a missing table or column; other ones are bugs
        return _operational(exc, url, lost_if_unknown=False)
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
        return _operational(exc, url)
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return _operational(exc, url)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        psycopg = None
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return _operational(exc, url)
    if psycopg is not None and isinstance(exc, psycopg.errors.UndefinedTable):
        return _operational(exc, url, lost_if_unknown=False)
    if isinstance(exc, ConnectionError) or type(exc).__module__.startswith("redis"):
        return f"Cannot reach Redis at POOLDESK_REDIS_URL: {_first_line(str(exc))}."
    return None


class OneLineGroup(click.Group):
    """A click group whose commands fail with one line on stderr and exit code 1.

    Refused requests (``PooldeskError``, ``ConfigurationError``) say why; known operating failures
    say what to do (``explain``). Anything else is a bug and keeps its traceback; a ``debug`` option
    of the group or POOLDESK_DEBUG=1 keeps the traceback of the known ones too.
    """

    def invoke(self, ctx):
        from core.config import ConfigurationError
        from core.domain.errors import PooldeskError

        try:
            return super().invoke(ctx)
        except (PooldeskError, ConfigurationError) as exc:
            for line in getattr(exc, "message", str(exc)).splitlines():  # a settings refusal: a line per problem
                click.echo(f"Error: {line}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - known operating failures become one line
            line = explain(exc)
            if line is None or debug_enabled() or (ctx.params or {}).get("debug"):
                raise
            click.echo(f"Error: {line}", err=True)
            ctx.exit(1)
