"""Text over its limit and dates out of range are refused with a message that names them; nothing is written.

Limits (core.domain.limits): pool name 120, pool code 32, person name 120, note and reason 1,000,
webhook description 200 characters.
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import cli
from core.db.models import AuditEvent, Pool, Transaction, User, Valuation, WebhookEndpoint
from core.domain.errors import ValidationError
from core.services import auth, ledger, operations, pools, users, valuations
from tests.factories import make_pool, make_user

TABLES = (Pool, User, Transaction, Valuation, WebhookEndpoint, AuditEvent)


def counts(db) -> dict:
    with db.read() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in TABLES}


def refused(db, message, call):
    before = counts(db)
    with pytest.raises(ValidationError) as err:
        call()
    assert err.value.message == message
    assert counts(db) == before
    return err.value


def test_a_ten_thousand_character_pool_name_is_refused(db):
    manager = make_user(db, "manager")
    error = refused(db, "The pool name is 10,000 characters long; at most 120 are allowed.",
                    lambda: pools.create_pool(db, actor=manager, code="LONG",
                                              settings=pools.PoolSettings(name="N" * 10_000)))
    assert error.field == "name"
    made = pools.create_pool(db, actor=manager, code="LONG", settings=pools.PoolSettings(name="N" * 120))
    assert len(made.name) == 120
    refused(db, "The pool name is 121 characters long; at most 120 are allowed.",
            lambda: pools.update_pool(db, actor=manager, pool_id=made.id, expected_version=made.version,
                                      settings=pools.PoolSettings(name="M" * 121)))


def test_people_names_are_limited(db):
    admin = make_user(db, "admin")
    refused(db, "The name is 121 characters long; at most 120 are allowed.",
            lambda: users.create_user(db, actor=admin, email="long@example.com", name="A" * 121, role="analyst"))
    refused(db, "The name is 500 characters long; at most 120 are allowed.",
            lambda: auth.invite_user(db, actor=admin, email="inv@example.com", name="B" * 500, role="analyst"))


def test_notes_and_reasons_are_limited_to_a_thousand_characters(db):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager)
    too_long = "x" * 1001
    message = "The note is 1,001 characters long; at most 1,000 are allowed."
    for payment in ("received", "gateway"):  # the one-trip PostgreSQL path and the general one
        refused(db, message, lambda: ledger.record_contribution(
            db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00", key=f"n-{payment}",
            effective_date=date(2024, 1, 2), payment=payment, note=too_long))
    refused(db, message, lambda: valuations.record_valuation(
        db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 1, 3), total_assets="0", key=None,
        note=too_long))
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                    key="ok", effective_date=date(2024, 1, 2), payment="gateway", note="y" * 1000)
    assert tx.note == "y" * 1000
    refused(db, "The reason is 1,001 characters long; at most 1,000 are allowed.",
            lambda: ledger.cancel_transaction(db, actor=manager, transaction_id=tx.id, reason=too_long))


def test_a_long_webhook_description_is_refused_not_cut(db):
    admin = make_user(db, "admin")
    refused(db, "The description is 201 characters long; at most 200 are allowed.",
            lambda: operations.create_endpoint(db, actor=admin, url="https://example.com/hook", events=["*"],
                                               description="d" * 201))


def test_a_pool_cannot_start_in_the_future(db):
    manager = make_user(db, "manager")
    tomorrow = date.today() + timedelta(days=1)
    error = refused(db, f"The inception date {tomorrow} is in the future (today is {date.today()}): a pool starts "
                        "today or earlier.",
                    lambda: make_pool(db, manager, code="SOON", inception=tomorrow))
    assert error.field == "inception_date"


def _cli(*args):
    from core.config import reset_settings_cache

    reset_settings_cache()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_cli_refuses_an_inception_or_report_date_out_of_range(db):
    assert _cli("pool", "create", "--code", "EX", "--name", "Example", "--inception", "2024-01-01").exit_code == 0
    future = _cli("pool", "create", "--code", "LATER", "--name", "Later", "--inception", "2099-01-01")
    assert future.exit_code == 1
    assert future.output == (f"Error: The inception date 2099-01-01 is in the future (today is {date.today()}): "
                             "a pool starts today or earlier.\n")
    early = _cli("report", "--pool", "EX", "--as-of", "1900-01-01")
    assert early.exit_code == 1
    assert early.output == ("Error: The date 1900-01-01 is before the pool's inception (2024-01-01): the pool had "
                            "no figures then.\n")
    late = _cli("report", "--pool", "EX", "--as-of", "2099-01-01")
    assert late.exit_code == 1
    assert late.output == (f"Error: The date 2099-01-01 is in the future (today is {date.today()}): there are no "
                           "figures for it yet.\n")
    assert _cli("report", "--pool", "EX", "--as-of", "2024-01-01").exit_code == 0
    assert "not a date" in _cli("report", "--pool", "EX", "--as-of", "01/02/2024").output
