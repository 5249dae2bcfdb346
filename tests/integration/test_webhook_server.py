"""`pooldesk webhooks serve` as a real process: Stripe's signed events settle payments, forged ones are refused."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

from core.services import ledger
from jobs.backend import embedded_backend
from tests.factories import make_pool, make_user
from tests.integration.test_jobs_support import ROOT, child_env, fast_jobs, free_port, make_investor, wait_for  # noqa: F401
from tests.integration.test_payments_stripe import WEBHOOK_SECRET, _signed, fake_stripe  # noqa: F401


def _request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Server:
    def __init__(self, tmp_path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "webhooks.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "webhooks", "serve", "--port", str(self.port)],
                                     cwd=ROOT, env=child_env(**env), stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)

    def wait_healthy(self) -> None:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError("the webhook server exited: " + self.log.read_text())
            try:
                return _request(self.url + "/health") == (200, {"status": "ok"})
            except OSError:
                return False

        wait_for(up, 20, what="the webhook server to answer /health")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_signed_stripe_events_settle_and_forged_ones_are_refused(db, fake_stripe, tmp_path):
    manager = make_user(db, "manager")
    investor = make_investor(db, "pm_async")
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                                    key="async")
    embedded_backend().run_until_idle(db)
    assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"  # Stripe: processing
    intent = dict(next(iter(fake_stripe.intents.values())), status="succeeded")
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
                          "data": {"object": intent}}).encode()
    server = Server(tmp_path)
    try:
        server.wait_healthy()
        hook = server.url + "/stripe/webhook"
        json_type = {"Content-Type": "application/json"}
        assert _request(hook, payload, {**json_type, "Stripe-Signature": _signed(payload, "whsec_forged_secret")}) == (
            400, {"error": "The signature does not match."})
        assert _request(hook, payload, json_type) == (400, {"error": "The Stripe-Signature header is missing."})
        tampered = payload.replace(b'"succeeded"', b'"canceled"')
        assert _request(hook, tampered, {**json_type, "Stripe-Signature": _signed(payload)})[0] == 400
        assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).status == "pending"

        assert _request(hook, payload, {**json_type, "Stripe-Signature": _signed(payload)}) == (
            200, {"received": True, "outcome": "settled"})
        done = ledger.get_transaction(db, actor=manager, transaction_id=tx.id)
        assert (done.status, str(done.units)) == ("settled", "10.000000")
        # Stripe sends it again: acknowledged, still settled once.
        assert _request(hook, payload, {**json_type, "Stripe-Signature": _signed(payload)})[0] == 200
        assert ledger.get_transaction(db, actor=manager, transaction_id=tx.id).units == done.units

        other = json.dumps({"id": "evt_2", "object": "event", "type": "charge.refunded",
                            "data": {"object": {"id": "ch_1"}}}).encode()
        assert _request(hook, other, {**json_type, "Stripe-Signature": _signed(other)}) == (
            200, {"received": True, "outcome": "ignored"})
        assert _request(server.url + "/nowhere", b"{}", json_type)[0] == 404
        assert _request(server.url + "/nowhere")[0] == 404
    finally:
        server.stop()


def test_the_server_refuses_to_start_without_a_webhook_secret(db, tmp_path, monkeypatch):
    monkeypatch.delenv("POOLDESK_STRIPE_WEBHOOK_SECRET", raising=False)
    env = child_env()
    env.pop("POOLDESK_STRIPE_WEBHOOK_SECRET", None)
    result = subprocess.run([sys.executable, "-m", "jobs.cli", "webhooks", "serve", "--port", str(free_port())],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "POOLDESK_STRIPE_WEBHOOK_SECRET is not set" in result.stderr
