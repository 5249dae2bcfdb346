"""Notifications: preferences, exactly-once sends, SMS through Twilio's SDK, fan-out in batches, failures kept."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from core.db.models import Delivery, Notification, OutboxMessage
from core.services import ledger, notifications
from jobs.backend import embedded_backend
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import fast_jobs, make_investor, smtp_server  # noqa: F401


class FakeTwilio:
    """Stands in for Twilio's HTTP API: records each request and answers like Twilio does."""

    def __init__(self):
        from twilio.http import HttpClient

        self.requests = []
        outer = self

        class Client(HttpClient):
            def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None,
                        allow_redirects=False):
                from twilio.http.response import Response

                outer.requests.append((method, url, data))
                body = {"sid": f"SM{len(outer.requests):032d}", "status": "queued", "to": data["To"],
                        "from": data["From"], "body": data["Body"]}
                return Response(201, json.dumps(body))

        import logging

        self.client = Client(logging.getLogger("fake-twilio"), False)


def _settle(db, monkeypatch, smtp, *, phone=None, prefs=None):
    manager = make_user(db, "manager")
    investor = make_investor(db, phone=phone)
    if prefs:
        notifications.set_preferences(db, actor=investor, choices=prefs)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                    key="n-1")
    embedded_backend().run_until_idle(db)
    return manager, investor, pool, tx


def test_sms_goes_through_twilio_when_the_investor_turned_it_on(db, fast_jobs, smtp_server, monkeypatch):
    import jobs.channels

    fake = FakeTwilio()
    monkeypatch.setattr(jobs.channels, "twilio_http_client", fake.client)
    monkeypatch.setenv("POOLDESK_TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("POOLDESK_TWILIO_AUTH_TOKEN", "secret-token")
    monkeypatch.setenv("POOLDESK_TWILIO_FROM", "+15005550006")
    from core.config import reset_settings_cache

    reset_settings_cache()
    _, investor, _, tx = _settle(db, monkeypatch, smtp_server, phone="+447700900123",
                                 prefs={"contribution_settled": {"sms": True}})
    assert len(fake.requests) == 1
    method, url, data = fake.requests[0]
    assert method == "POST" and url.endswith(f"/Accounts/{'AC' + '1' * 32}/Messages.json")
    assert data["To"] == "+447700900123" and data["From"] == "+15005550006"
    assert data["Body"].startswith("Your contribution of USD 100.00 to Test pool is settled.")
    with db.read() as session:
        sms = session.scalar(select(Delivery).where(Delivery.channel == "sms"))
    assert (sms.status, sms.provider_id, sms.to_address) == ("sent", "SM" + "0" * 31 + "1", "+447700900123")
    assert len(smtp_server.to(investor.email)) == 1


def test_preferences_are_respected_per_event_and_channel(db, fast_jobs, smtp_server, monkeypatch):
    _, investor, _, _ = _settle(db, monkeypatch, smtp_server,
                                prefs={"contribution_settled": {"email": False, "in_app": True}})
    assert smtp_server.to(investor.email) == []
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Notification)
                              .where(Notification.user_id == investor.id)) == 1
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_a_request_is_received_for_the_investor_and_requested_for_the_managers(db, fast_jobs, smtp_server):
    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    # The investor turns off the receipt of their own requests' email; the manager keeps the request alerts.
    notifications.set_preferences(db, actor=investor, choices={"contribution_received": {"email": False},
                                                               "contribution_requested": {"email": True}})
    notifications.set_preferences(db, actor=manager, choices={"contribution_received": {"email": True}})
    ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="req-1")
    embedded_backend().run_until_idle(db)
    assert smtp_server.to(investor.email) == []
    assert len(smtp_server.to(manager.email)) == 1
    with db.read() as session:
        events = dict(session.execute(select(Notification.user_id, Notification.event)).all())
    assert events == {investor.id: "contribution_received", manager.id: "contribution_requested"}


def test_an_event_handled_twice_sends_each_message_once(db, fast_jobs, smtp_server, monkeypatch):
    from jobs.notify import dispatch_event

    _, investor, pool, tx = _settle(db, monkeypatch, smtp_server)
    dispatch_event("contribution_settled", pool.id, tx.id)  # a redelivered job
    assert len(smtp_server.to(investor.email)) == 1
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Notification)
                              .where(Notification.user_id == investor.id)) == 1


def test_a_distribution_fans_out_in_batches_and_everyone_gets_their_own_share(db, fast_jobs, smtp_server,
                                                                               monkeypatch):
    from datetime import date

    from core.services import valuations

    monkeypatch.setenv("POOLDESK_NOTIFY_BATCH_SIZE", "4")
    from jobs.settings import reset_job_settings

    reset_job_settings()
    manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    investors = [make_investor(db) for _ in range(10)]
    for n, inv in enumerate(investors):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=inv.id, amount="10.00",
                                   key=f"d-{n}", payment="received")
    embedded_backend().run_until_idle(db)
    valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(), total="1.00",
                                    key="dist")
    embedded_backend().run_until_idle(db)
    with db.read() as session:
        batches = session.scalar(select(func.count()).select_from(OutboxMessage)
                                 .where(OutboxMessage.job == "jobs.notify.notify_users"))
    assert batches == 3  # 10 holders in batches of 4
    shares = {}
    for inv in investors:
        mail = [m for m in smtp_server.to(inv.email) if "declared a distribution" in m["Subject"]]
        assert len(mail) == 1
        shares[inv.email] = mail[0]["Subject"].rsplit(" ", 1)[1]
    assert sorted(shares.values()) == ["0.10"] * 10


def test_an_unreachable_mail_server_is_retried_and_what_finally_fails_keeps_its_error(db, fast_jobs, smtp_server,
                                                                                       monkeypatch):
    smtp_server.refuse = True  # 451 on every message
    _, investor, _, _ = _settle(db, monkeypatch, smtp_server)
    with db.read() as session:
        delivery = session.scalar(select(Delivery).where(Delivery.user_id == investor.id))
    assert delivery.status == "failed"
    assert delivery.attempts == 4
    assert "451" in delivery.error and "Try again later" in delivery.error


def test_a_message_the_mail_server_rejects_for_good_is_not_sent_again(db, fast_jobs, smtp_server, monkeypatch):
    smtp_server.refuse = "554 5.7.1 Message rejected"  # permanent (5xx): another try would be refused too
    _, investor, _, _ = _settle(db, monkeypatch, smtp_server)
    with db.read() as session:
        delivery = session.scalar(select(Delivery).where(Delivery.user_id == investor.id))
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.error == "The mail server refused the message: 554 5.7.1 Message rejected"


def test_amounts_in_messages_are_at_the_currencys_minor_units_and_prices_keep_their_digits():
    from decimal import Decimal

    from jobs.notify import _money, _price

    assert _money(Decimal("55.0000"), "USD") == "USD 55.00"
    assert _money(Decimal("1234.5650"), "USD") == "USD 1,234.56"  # half to even, like the ledger
    assert _money(Decimal("1500.0000"), "JPY") == "JPY 1,500"
    assert _money(Decimal("1.2345"), "KWD") == "KWD 1.234"
    assert _price(Decimal("10.000000"), "USD") == "USD 10.00"
    assert _price(Decimal("10.123456"), "USD") == "USD 10.123456"
    assert _price(Decimal("50.000000"), "JPY") == "JPY 50"
