"""Payments through the sandbox gateway, end to end, on RQ worker processes and on the embedded dispatcher.

Each scenario records a flow through the ledger service (which writes the outbox
row), lets the real background machinery run, and checks what people notice:
the transaction's status, the units, the charge count at the gateway, the mail
in a real SMTP server's inbox and the in-app notification.
"""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from core.db.models import Notification, Position, SandboxCharge, Transaction
from core.services import ledger
from jobs.gateways import sandbox
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import (  # noqa: F401 - fixtures
    fast_jobs, jobs_running, make_investor, smtp_server, wait_for,
)


def _tx(db, tx_id):
    with db.read() as session:
        return session.get(Transaction, tx_id)


def _final(db, tx_id, timeout=40):
    return wait_for(lambda: (t := _tx(db, tx_id)).status in ("settled", "failed") and t, timeout,
                    what=f"transaction {tx_id} to settle or fail")


def _charges(db, key):
    with db.read() as session:
        return session.scalars(select(SandboxCharge).where(SandboxCharge.idempotency_key == key)).all()


def _setup(db, account):
    manager = make_user(db, "manager")
    investor = make_investor(db, account)
    pool = make_pool(db, manager)
    return manager, investor, pool


def test_contribution_is_charged_settled_mailed_and_shown_in_app(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.SUCCESS)
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                                    key="c-1")
    assert tx.status == "pending"
    done = _final(db, tx.id)
    assert done.status == "settled"
    assert done.units == Decimal("100.000000")  # 1,000.00 at the initial unit price 10.00
    with db.read() as session:
        assert session.get(Position, (pool.id, investor.id)).units == Decimal("100.000000")
    assert [c.status for c in _charges(db, f"pooldesk-tx-{tx.id}")] == ["succeeded"]
    mail = wait_for(lambda: smtp_server.to(investor.email), what="the settlement email")
    assert len(mail) == 1
    assert mail[0]["Subject"] == "Your contribution of USD 1,000.00 to Test pool is settled"
    body = mail[0].get_body(("plain",)).get_content()
    assert "100.000000 units were issued to you at USD 10.00 per unit" in body
    assert mail[0].get_body(("html",)) is not None
    with db.read() as session:
        titles = session.scalars(select(Notification.title).where(Notification.user_id == investor.id)).all()
    assert titles == ["Your contribution of USD 1,000.00 to Test pool is settled"]


def test_declined_card_fails_the_contribution_and_tells_investor_and_manager(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.DECLINE)
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="250.00",
                                    key="c-2")
    done = _final(db, tx.id)
    assert (done.status, done.failure_reason, done.units) == ("failed", "Your card was declined.", None)
    with db.read() as session:
        assert session.get(Position, (pool.id, investor.id)) is None  # nothing issued
    to_investor = wait_for(lambda: smtp_server.to(investor.email), what="the failure email")
    assert to_investor[0]["Subject"] == "Your contribution of USD 250.00 to Test pool failed"
    assert "Reason: Your card was declined." in to_investor[0].get_body(("plain",)).get_content()
    to_manager = wait_for(lambda: smtp_server.to(manager.email), what="the manager's alert")
    assert to_manager[0]["Subject"] == "Payment failed in Test pool: contribution of USD 250.00"


def test_transient_errors_are_retried_until_the_charge_succeeds_once(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.TRANSIENT_TWICE)
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="500.00",
                                    key="c-3")
    assert _final(db, tx.id).status == "settled"
    charges = _charges(db, f"pooldesk-tx-{tx.id}")
    assert [(c.status, c.calls) for c in charges] == [("succeeded", 3)]  # two errors, then one charge


def test_a_timeout_is_resolved_by_asking_the_gateway_and_never_charges_twice(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.TIMEOUT)
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="300.00",
                                    key="c-4")
    done = _final(db, tx.id)
    assert done.status == "settled" and done.units == Decimal("30.000000")
    assert len(_charges(db, f"pooldesk-tx-{tx.id}")) == 1


def test_errors_on_every_attempt_fail_the_payment_and_alert_the_manager(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.TRANSIENT_ALWAYS)
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="80.00",
                                    key="c-5")
    done = _final(db, tx.id)
    assert done.status == "failed"
    assert done.failure_reason.startswith("The payment gateway could not complete the payment after several attempts")
    assert _charges(db, f"pooldesk-tx-{tx.id}")[0].calls == 4  # POOLDESK_JOB_MAX_ATTEMPTS
    alert = wait_for(lambda: smtp_server.to(manager.email), what="the manager's alert")
    assert alert[0]["Subject"] == "Payment failed in Test pool: contribution of USD 80.00"


def test_withdrawal_is_paid_out_and_units_redeemed(db, jobs_running, smtp_server):
    manager, investor, pool = _setup(db, sandbox.SUCCESS)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                               key="seed", payment="received")
    jobs_running.start()
    tx = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="400.00",
                                  key="w-1")
    done = _final(db, tx.id)
    assert (done.status, done.units, done.amount) == ("settled", Decimal("40.000000"), Decimal("400.00"))
    with db.read() as session:
        assert session.get(Position, (pool.id, investor.id)).units == Decimal("60.000000")
        payouts = session.scalar(select(func.count()).select_from(SandboxCharge).where(SandboxCharge.kind == "payout"))
    assert payouts == 1
    mail = wait_for(lambda: [m for m in smtp_server.to(investor.email) if "withdrawal" in m["Subject"]],
                    what="the payout email")
    assert mail[0]["Subject"] == "Your withdrawal of USD 400.00 from Test pool is paid"


def _tables_holding(db, secrets: tuple[str, ...]) -> list[str]:
    """Every table.column whose stored text (any column, read raw) contains one of ``secrets``."""
    from sqlalchemy import text

    from core.db.models import Base

    found = []
    with db.read() as session:
        for table in Base.metadata.sorted_tables:
            result = session.execute(text(f'SELECT * FROM "{table.name}"'))
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row):
                    stored = "" if value is None else str(value)
                    found += [f"{table.name}.{column}" for s in secrets if s in stored]
    return sorted(set(found))


def test_the_sandbox_keeps_only_brand_and_last_four_digits(db, jobs_running, smtp_server):
    card, iban = sandbox.SUCCESS, "GB33BUKB20201555555555"
    manager, investor, pool = _setup(db, "4242 4242 4242 4242")  # typed with spaces, as people do
    jobs_running.start()
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="1000.00",
                                    key="mask-in")
    assert _final(db, tx.id).status == "settled"
    from core.services import users

    me = users.get_user(db, actor=investor, user_id=investor.id)
    users.update_profile(db, actor=investor, user_id=investor.id, expected_version=me.version, name=me.name,
                         bank_account=iban)
    out = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                   key="mask-out")
    assert _final(db, out.id).status == "settled"
    with db.read() as session:
        books = sorted((c.kind, c.account) for c in session.scalars(select(SandboxCharge)))
    assert books == [("charge", "visa ending 4242"), ("payout", "account ending 5555")]
    # no table keeps the full number, nor its first twelve digits, anywhere
    assert _tables_holding(db, (card, card[:12], "4242 4242 4242 4242", iban, iban[4:])) == []


def test_brands_and_masks():
    assert [sandbox.masked(n) for n in ("4000000000000002", "5555555555554444", "378282246310005",
                                        "6011111111111117", "2223003122003222", "9999888877776666",
                                        "DE89 3704 0044 0532 0130 00", "1234", "")] == [
        "visa ending 0002", "mastercard ending 4444", "amex ending 0005", "discover ending 1117",
        "mastercard ending 3222", "card ending 6666", "account ending 3000", "account", ""]
