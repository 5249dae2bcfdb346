"""The `pooldesk` command: the same core services the app uses, acting as a named admin or the system user."""
from __future__ import annotations

import getpass
import json
import sys
from datetime import date

import click

from app.cli_errors import OneLineGroup
from core.config import get_settings
from core.db.session import get_database


def _db():
    return get_database()


def _actor(as_email: str | None):
    from core.services import users
    from core.services.context import actor_from_user

    db = _db()
    if not as_email:
        return users.system_actor(db)
    from sqlalchemy import select

    from core.db.models import User

    with db.read() as session:
        user = session.scalar(select(User).where(User.email == as_email.strip().lower()))
        if user is None or user.role != "admin" or user.status != "active":
            raise click.ClickException(f"{as_email} is not an active admin.")
        return actor_from_user(user)


def _date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


# Every command's failures as one clear line on stderr and exit code 1 (app.cli_errors).
@click.group(cls=OneLineGroup)
@click.option("--as", "as_email", envvar="POOLDESK_CLI_AS", help="Act as this admin (default: the system user).")
@click.option("--debug", is_flag=True, envvar="POOLDESK_DEBUG", help="Show the traceback of a failure.")
@click.pass_context
def cli(ctx, as_email, debug):
    """Pooldesk: investment pool management."""
    ctx.obj = {"as": as_email, "debug": debug}


@cli.command()
def migrate():
    """Create or upgrade the database schema."""
    from core.db.migrate import migrate as run

    settings = get_settings()
    run(settings.migration_database_url or settings.effective_database_url)
    click.echo(f"Database is up to date ({'SQLite' if settings.is_sqlite else 'PostgreSQL'}).")


@cli.group()
def user():
    """Manage users."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "manager", "investor", "analyst"]))
@click.pass_context
def user_create(ctx, email, name, role):
    """Create a user. The password is read from stdin (one line) or prompted twice."""
    from core.services import users

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise click.ClickException("The passwords do not match.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    view = users.create_user(_db(), actor=_actor(ctx.obj["as"]), email=email, name=name, role=role,
                             password=password or None)
    click.echo(f"Created {view.role} {view.email} (id {view.id}).")


@cli.group()
def pool():
    """Manage pools."""


@pool.command("create")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--currency", default="USD", show_default=True)
@click.option("--unit-price", default="10", show_default=True)
@click.option("--pricing", type=click.Choice(["latest", "forward"]), default="latest", show_default=True)
@click.option("--inception", help="YYYY-MM-DD (default: today)")
@click.option("--mgmt-fee-bps", default="0", show_default=True)
@click.option("--perf-fee-pct", default="0", show_default=True)
@click.option("--min-contribution", default="0", show_default=True)
@click.option("--strategy", default="")
@click.option("--manager", "managers", multiple=True, help="Email of a manager (repeatable).")
@click.option("--draft", is_flag=True, help="Create as a draft (closed to flows until opened).")
@click.pass_context
def pool_create(ctx, code, name, currency, unit_price, pricing, inception, mgmt_fee_bps, perf_fee_pct,
                min_contribution, strategy, managers, draft):
    """Create a pool (open unless --draft)."""
    from core.services import pools, users

    db = _db()
    manager_ids = []
    for email in managers:
        found = users.find_user_by_email(db, email)
        if found is None:
            raise click.ClickException(f"No user {email}.")
        manager_ids.append(found.id)
    settings = pools.PoolSettings(name=name, currency=currency, initial_unit_price=unit_price, pricing_policy=pricing,
                                  minimum_contribution=min_contribution, management_fee_bps=mgmt_fee_bps,
                                  performance_fee_pct=perf_fee_pct, strategy=strategy)
    view = pools.create_pool(db, actor=_actor(ctx.obj["as"]), code=code, settings=settings,
                             inception_date=_date(inception, "--inception"), draft=draft, manager_ids=manager_ids)
    click.echo(f"Created pool {view.code} ({view.status}, {view.currency}, unit price {view.initial_unit_price}).")


@cli.command("import")
@click.option("--pool", "pool_code", required=True)
@click.option("--create-investors", is_flag=True, help="Add unknown investor emails as investors.")
@click.option("--allow-duplicate-file", is_flag=True,
              help="Import a file even though the same file (by content) was imported into this pool before.")
@click.option("--refuse-identical-rows", is_flag=True,
              help="Refuse the file when a row repeats an earlier row in every field (default: import it and warn).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def import_(ctx, pool_code, create_investors, allow_duplicate_file, refuse_identical_rows, file):
    """Import history from a CSV file: the whole file or nothing.

    The same file is not imported twice into a pool. On PostgreSQL a first import of 100,000 rows or
    more is loaded in bulk: postings to every pool wait until it commits (5 to 14 s per million rows)."""
    from core.services.importer import ImportRejected, import_csv

    def notify(message: str) -> None:
        click.echo(f"Note: {message}", err=True)

    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            result = import_csv(_db(), actor=_actor(ctx.obj["as"]), pool_code=pool_code, source=handle,
                                create_investors=create_investors, allow_duplicate_file=allow_duplicate_file,
                                refuse_identical_rows=refuse_identical_rows, notify=notify)
    except ImportRejected as exc:
        for line in exc.errors:  # the first errors by row, then how many more
            click.echo(line, err=True)
        click.echo(f"Nothing was imported: {exc.total:,} error(s).", err=True)
        ctx.exit(1)
    except UnicodeDecodeError as exc:
        raise click.ClickException("The file is not UTF-8 text.") from None
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"Imported {result.rows} rows into {pool_code.upper()}: {result.contributions} contributions, "
               f"{result.withdrawals} withdrawals, {result.distributions} distributions, {result.valuations} valuations"
               + (f", {result.pending} waiting for the next valuation" if result.pending else "")
               + (f", {result.investors_created} investors created" if result.investors_created else "") + ".")


@cli.command()
@click.option("--pool", "pool_code", required=True)
@click.option("--as-of", "as_of")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.pass_context
def report(ctx, pool_code, as_of, fmt):
    """A pool's figures and every investor's holding, value and returns."""
    from core.analytics.report import pool_report, pool_report_csv

    actor = _actor(ctx.obj["as"])
    as_of_date = _date(as_of, "--as-of")
    if fmt == "json":
        click.echo(json.dumps(pool_report(_db(), actor=actor, pool_code=pool_code, as_of=as_of_date), indent=2))
    else:
        click.echo(pool_report_csv(_db(), actor=actor, pool_code=pool_code, as_of=as_of_date), nl=False)


@cli.command()
def reconcile():
    """Recompute every position from the journal; exit 1 on any difference."""
    from core.services.reconcile import reconcile as run

    problems = run(_db())
    for line in problems:
        click.echo(line)
    if problems:
        click.echo(f"{len(problems)} difference(s) found.", err=True)
        sys.exit(1)
    click.echo("Positions and pool totals agree with the journal.")


@cli.group()
def audit():
    """The audit log."""


@audit.command("verify")
@click.option("--expect-head", "expect_head", metavar="HASH",
              help="A head written down earlier (`pooldesk audit head`): it must still be in the chain.")
def audit_verify(expect_head):
    """Check the audit log's keyed hash chain; exit 1 if a row was edited or deleted."""
    from core.services.audit import verify

    with _db().read() as session:
        result = verify(session, expect_head=expect_head)
    if result.ok:
        anchored = " (the anchored head is in the chain)" if expect_head else ""
        click.echo(f"Audit log intact: {result.checked} rows verified{anchored}.")
        return
    click.echo(f"Audit log broken: {result.problem}.", err=True)
    if result.problem.endswith("was edited after it was written") and result.event_id == _first_audit_row():
        click.echo("If the audit key (POOLDESK_AUDIT_KEY, else the secret key) changed, every row looks edited: "
                   "verify with the key the rows were written with.", err=True)
    sys.exit(1)


@cli.command("new-key")
@click.option("--from-secret", is_flag=True,
              help="Print instead the key derived from the install secret, which encrypted the data of an "
                   "installation run without POOLDESK_ENCRYPTION_KEYS (put it after the new key, then rotate-keys).")
def new_key(from_secret):
    """Print a new encryption key, to put first in POOLDESK_ENCRYPTION_KEYS."""
    from cryptography.fernet import Fernet

    if from_secret:
        from core.config import Settings, _derive_fernet_key

        # the settings as they were before explicit keys: production's checks do not apply to this
        click.echo(_derive_fernet_key(Settings(env="development", encryption_keys=None).secret()).decode())
        return
    click.echo(Fernet.generate_key().decode())


def _first_audit_row() -> int | None:
    from sqlalchemy import func, select

    from core.db.models import AuditEvent

    with _db().read() as session:
        return session.scalar(select(func.min(AuditEvent.id)))


@audit.command("head")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a line of text.")
def audit_head(as_json):
    """Print the chain head (hash, last row, row count, time) to keep outside the database."""
    from core.services.audit import head

    with _db().read() as session:
        found = head(session)
    at = found.at.isoformat() if found.at else None
    if as_json:
        click.echo(json.dumps({"hash": found.hash, "last_id": found.last_id, "rows": found.rows, "at": at}))
        return
    click.echo(f"{found.hash} row {found.last_id} of {found.rows} at {at or '-'}")


@cli.command("rotate-keys")
@click.pass_context
def rotate_keys(ctx):
    """Re-encrypt every encrypted field under the first key of POOLDESK_ENCRYPTION_KEYS (then old keys can go)."""
    from core.services.keys import rotate_encryption

    report = rotate_encryption(_db(), actor=_actor(ctx.obj["as"]))
    for table, rows in report.rows_reencrypted.items():
        click.echo(f"{table}: {rows} of {report.rows_checked[table]} row(s) re-encrypted")
    click.echo(f"Re-encrypted {report.total} row(s) under the first key of POOLDESK_ENCRYPTION_KEYS; "
               "once no other process uses the old keys, remove them.")


@cli.command("seed-demo")
@click.option("--pools", default=5, show_default=True)
@click.option("--investors", default=200, show_default=True)
@click.option("--transactions", default=20000, show_default=True)
@click.option("--years", default=3, show_default=True)
@click.option("--demo-logins", is_flag=True, help="Also create the demo sign-ins listed in the README.")
@click.pass_context
def seed_demo(ctx, pools, investors, transactions, years, demo_logins):
    """Load realistic demo data (people, pools, years of flows, valuations, fees, distributions)."""
    from core.services.demo import DEMO_LOGINS, DEMO_PASSWORD, seed_demo as run

    summary = run(_db(), actor=_actor(ctx.obj["as"]), pools=pools, investors=investors, transactions=transactions,
                  years=years, demo_logins=demo_logins)
    click.echo(f"Demo data: {summary.pools} pools, {summary.investors} investors, {summary.transactions} transactions, "
               f"{summary.valuations} valuations, {summary.distributions} distributions in {summary.seconds} s.")
    if demo_logins:
        for email, _, role in DEMO_LOGINS:
            click.echo(f"  {role:<9} {email}  password: {DEMO_PASSWORD}")


@cli.command()
@click.option("--month", help="YYYY-MM (default: last month)")
@click.pass_context
def statements(ctx, month):
    """Email every investor their monthly statement (PDF); run it on the 1st, e.g. from cron.
    Running it twice for the same month sends nothing twice."""
    from jobs.statements import schedule_monthly_statements

    first = None
    if month:
        try:
            first = date.fromisoformat(f"{month}-01")
        except ValueError:
            raise click.BadParameter(f"{month!r} is not a month (YYYY-MM)", param_hint="--month") from None
    queued = schedule_monthly_statements(_db(), actor=_actor(ctx.obj["as"]), month=first)
    click.echo(f"Queued {queued} statement(s); the workers send them.")


def _register_optional() -> None:
    """Commands that live with their subsystems."""
    from jobs.cli import relay, webhooks, worker

    cli.add_command(worker)
    cli.add_command(relay)
    cli.add_command(webhooks)


_register_optional()


def main() -> None:
    cli(prog_name="pooldesk")


if __name__ == "__main__":
    main()
