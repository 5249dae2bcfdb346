"""The Stripe gateway through the real `stripe` SDK, against a local server that plays Stripe's API."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import stripe

from core.services import ledger
from jobs.backend import embedded_backend
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import fast_jobs, make_investor  # noqa: F401

WEBHOOK_SECRET = "whsec_test_secret_for_pooldesk"


class FakeStripe:
    def __init__(self):
        self.intents: dict[str, dict] = {}
        self.transfers: dict[str, dict] = {}
        self.creations: list[tuple[str, str, dict]] = []  # (path, idempotency key, form)
        self.busy: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                key = self.headers.get("Idempotency-Key", "")
                path = urlparse(self.path).path
                fake.creations.append((path, key, form))
                if path == "/v1/payment_intents":
                    if key in fake.intents:
                        return self._reply(200, fake.intents[key])
                    if form["payment_method"] == "pm_card_chargeDeclined":
                        return self._reply(402, {"error": {"type": "card_error", "code": "card_declined",
                                                           "message": "Your card was declined."}})
                    status = {"pm_async": "processing", "pm_3ds": "requires_action"}.get(form["payment_method"],
                                                                                       "succeeded")
                    intent = {"id": f"pi_{len(fake.intents) + 1}", "object": "payment_intent", "status": status,
                              "amount": int(form["amount"]), "currency": form["currency"],
                              "metadata": {"pooldesk_key": form["metadata[pooldesk_key]"]}}
                    fake.intents[key] = intent
                    return self._reply(200, intent)
                if path.startswith("/v1/payment_intents/") and path.endswith("/cancel"):
                    intent = next(i for i in fake.intents.values() if i["id"] == path.split("/")[3])
                    if intent["status"] == "processing":  # Stripe cannot cancel what the bank already has
                        return self._reply(400, {"error": {"type": "invalid_request_error",
                                                           "code": "payment_intent_unexpected_state",
                                                           "message": "This PaymentIntent could not be canceled "
                                                                      "because it has a status of processing."}})
                    intent["status"] = "canceled"
                    return self._reply(200, intent)
                if path == "/v1/transfers":
                    if form["destination"] == "acct_busy" and key not in fake.busy:
                        fake.busy.add(key)  # Stripe's answer while a twin request with the same key is in flight
                        return self._reply(409, {"error": {"type": "idempotency_error",
                                                           "message": "There is currently another in-progress "
                                                                      "request using this Stripe-Idempotency-Key."}})
                    if form["destination"] == "acct_closed":
                        return self._reply(400, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                                           "message": "No such destination: 'acct_closed'"}})
                    if key not in fake.transfers:
                        fake.transfers[key] = {"id": f"tr_{len(fake.transfers) + 1}", "object": "transfer",
                                               "amount": int(form["amount"]), "transfer_group": form["transfer_group"]}
                    return self._reply(200, fake.transfers[key])
                return self._reply(404, {"error": {"type": "invalid_request_error", "message": "no such path"}})

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/v1/payment_intents/search":
                    wanted = query["query"].split(":", 1)[1].strip("'")
                    data = [i for i in fake.intents.values() if i["metadata"]["pooldesk_key"] == wanted]
                    return self._reply(200, {"object": "search_result", "data": data, "has_more": False,
                                             "url": "/v1/payment_intents/search"})
                if url.path == "/v1/transfers":
                    data = [t for t in fake.transfers.values() if t["transfer_group"] == query["transfer_group"]]
                    return self._reply(200, {"object": "list", "data": data, "has_more": False, "url": "/v1/transfers"})
                return self._reply(404, {"error": {"type": "invalid_request_error", "message": "no such path"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def intent_creations(self):
        return [c for c in self.creations if c[0] == "/v1/payment_intents"]


@pytest.fixture
def fake_stripe(monkeypatch, fast_jobs):
    fake = FakeStripe()
    monkeypatch.setenv("POOLDESK_PAYMENT_GATEWAY", "stripe")
    monkeypatch.setenv("POOLDESK_STRIPE_API_KEY", "sk_test_pooldesk")
    monkeypatch.setenv("POOLDESK_STRIPE_API_BASE", fake.url)
    monkeypatch.setenv("POOLDESK_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    from core.config import reset_settings_cache

    reset_settings_cache()
    yield fake
    fake.server.shutdown()


def _contribute(db, account, amount="100.00"):
    manager = make_user(db, "manager")
    investor = make_investor(db, account)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=amount,
                                    key="s-1")
    embedded_backend().run_until_idle(db)
    return manager, investor, pool, ledger.get_transaction(db, actor=manager, transaction_id=tx.id)


def _signed(payload: bytes, secret: str = WEBHOOK_SECRET) -> str:
    t = str(int(time.time()))
    sig = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


def test_a_contribution_is_collected_with_a_payment_intent_keyed_by_the_transaction(db, fake_stripe):
    _, _, _, tx = _contribute(db, "pm_card_visa", "123.45")
    assert tx.status == "settled"
    [(path, key, form)] = fake_stripe.intent_creations()
    assert key == f"pooldesk-tx-{tx.id}"
    assert (form["amount"], form["currency"], form["confirm"], form["payment_method"]) == ("12345", "usd", "true",
                                                                                           "pm_card_visa")


def test_running_the_job_again_finds_the_intent_instead_of_charging_again(db, fake_stripe):
    from jobs.payments import collect_contribution

    _, _, _, tx = _contribute(db, "pm_card_visa")
    assert collect_contribution(tx.id).startswith("nothing to do")
    from jobs.gateways.stripe_gateway import StripeGateway

    gateway = StripeGateway("sk_test_pooldesk", api_base=fake_stripe.url)
    assert gateway.find(key=f"pooldesk-tx-{tx.id}", kind="charge").status == "succeeded"
    assert len(fake_stripe.intent_creations()) == 1


def test_a_declined_card_fails_the_contribution_with_stripes_reason(db, fake_stripe):
    _, _, _, tx = _contribute(db, "pm_card_chargeDeclined")
    assert (tx.status, tx.failure_reason) == ("failed", "Your card was declined.")


def test_an_asynchronous_payment_settles_when_the_signed_webhook_arrives(db, fake_stripe):
    from jobs.gateways.stripe_gateway import handle_webhook

    manager, _, _, tx = _contribute(db, "pm_async")
    assert tx.status == "pending"
    intent = dict(next(iter(fake_stripe.intents.values())), status="succeeded")
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
                          "data": {"object": intent}}).encode()
    with pytest.raises(stripe.SignatureVerificationError):
        handle_webhook(db, payload, _signed(payload, "whsec_someone_else"))
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"
    assert handle_webhook(db, payload, _signed(payload)) == "settled"
    assert handle_webhook(db, payload, _signed(payload)) == "settled"  # Stripe redelivers: still one settlement
    done = ledger.get_transaction(db, actor=manager, transaction_id=tx.id)
    assert (done.status, str(done.units)) == ("settled", "10.000000")


def test_a_withdrawal_is_paid_with_a_transfer(db, fake_stripe):
    manager = make_user(db, "manager")
    investor = make_investor(db, "acct_1Investor")
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="seed", payment="received")
    tx = ledger.record_withdrawal(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="40.00",
                                  key="w")
    embedded_backend().run_until_idle(db)
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "settled"
    [(path, key, form)] = [c for c in fake_stripe.creations if c[0] == "/v1/transfers"]
    assert (key, form["destination"], form["amount"]) == (f"pooldesk-tx-{tx.id}", "acct_1Investor", "4000")


def test_a_distribution_is_paid_out_with_one_transfer_per_cash_part(db, fake_stripe):
    from datetime import date

    from core.db.models import DistributionPayout
    from core.services import valuations
    from sqlalchemy import select

    manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    holders = [make_investor(db, account) for account in ("acct_1Alice", "acct_closed", "")]
    for n, investor in enumerate(holders):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                   key=f"seed-{n}", payment="received")
    distribution = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(),
                                                   total="30.00", key="dist")
    embedded_backend().run_until_idle(db)
    with db.read() as session:
        rows = {p.investor_id: p for p in session.scalars(select(DistributionPayout))}
    alice, closed, missing = (rows[h.id] for h in holders)
    [(path, key, form)] = [c for c in fake_stripe.creations if c[0] == "/v1/transfers" and c[1] in fake_stripe.transfers]
    assert (key, form["destination"], form["amount"], form["currency"], form["transfer_group"]) == (
        f"pooldesk-tx-{alice.transaction_id}", "acct_1Alice", "1000", "usd", f"pooldesk-tx-{alice.transaction_id}")
    assert (alice.status, alice.reference, alice.gateway) == ("paid", "tr_1", "stripe")
    assert (closed.status, closed.error) == ("failed", "Stripe refused the request: No such destination: 'acct_closed'")
    assert (missing.status, missing.error) == ("failed", "No payout account on file for this investor.")
    # A second run asks Stripe first and finds the transfer: still one.
    from jobs.payouts import pay_distribution_batch

    with db.transaction() as session:
        session.get(DistributionPayout, alice.id).status = "pending"
    pay_distribution_batch(distribution.distribution_id, [alice.transaction_id])
    assert len(fake_stripe.transfers) == 1
    assert len([c for c in fake_stripe.creations if c[0] == "/v1/transfers" and c[1] == key]) == 1


def test_a_payout_refused_while_a_twin_request_is_in_flight_is_retried_not_failed(db, fake_stripe):
    from datetime import date

    from core.db.models import DistributionPayout
    from core.services import valuations
    from sqlalchemy import select

    manager = make_user(db, "manager")
    pool = make_pool(db, manager)
    investor = make_investor(db, "acct_busy")
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="seed", payment="received")
    valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(), total="5.00",
                                    key="dist")
    embedded_backend().run_until_idle(db)
    with db.read() as session:
        row = session.scalar(select(DistributionPayout))
    assert (row.status, row.attempts, row.reference) == ("paid", 2, "tr_1")
    assert len(fake_stripe.transfers) == 1


@pytest.fixture
def checks_now(monkeypatch):
    """Ask the gateway about processing payments on every sweep."""
    import jobs.payments
    from jobs.settings import reset_job_settings

    monkeypatch.setenv("POOLDESK_PAYMENT_CHECK_SECONDS", "0")
    jobs.payments.CHECKS.reset()
    reset_job_settings()
    yield monkeypatch
    reset_job_settings()


def _sweep(db):
    from jobs.outbox import sweep_once

    sweep_once(db, embedded_backend())
    embedded_backend().run_until_idle(db)


def test_a_payment_whose_webhook_never_came_is_settled_by_asking_stripe(db, fake_stripe, checks_now):
    manager, _, _, tx = _contribute(db, "pm_async")
    assert tx.status == "pending"
    _sweep(db)
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"  # still processing
    next(iter(fake_stripe.intents.values()))["status"] = "succeeded"  # the bank confirmed; the webhook was lost
    _sweep(db)
    done = ledger.get_transaction(db, actor=manager, transaction_id=tx.id)
    assert (done.status, str(done.units)) == ("settled", "10.000000")
    assert len(fake_stripe.intent_creations()) == 1  # asked, never charged again


def test_a_payment_never_confirmed_is_cancelled_after_the_deadline_and_the_contribution_fails(db, fake_stripe,
                                                                                              checks_now):
    manager, _, _, tx = _contribute(db, "pm_3ds")  # waits for the investor's bank confirmation, off-session
    _sweep(db)
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"  # within the deadline
    checks_now.setenv("POOLDESK_PAYMENT_CONFIRM_HOURS", "0")
    from jobs.settings import reset_job_settings

    reset_job_settings()
    _sweep(db)
    failed = ledger.get_transaction(db, actor=manager, transaction_id=tx.id)
    assert (failed.status, failed.units) == ("failed", None)
    assert failed.failure_reason == "The payment was not confirmed within 0 hours and was cancelled."
    assert next(iter(fake_stripe.intents.values()))["status"] == "canceled"


def test_a_payment_the_bank_is_processing_is_not_cancelled_and_keeps_waiting(db, fake_stripe, checks_now):
    checks_now.setenv("POOLDESK_PAYMENT_CONFIRM_HOURS", "0")
    from jobs.settings import reset_job_settings

    reset_job_settings()
    manager, _, _, tx = _contribute(db, "pm_async")
    _sweep(db)
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"
    assert next(iter(fake_stripe.intents.values()))["status"] == "processing"
