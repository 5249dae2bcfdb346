"""Outbound webhooks: registered by an admin, signed, retried, logged."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from core.db.models import AuditEvent
from core.domain.errors import PermissionDenied, ValidationError
from core.services import ledger, operations
from jobs.backend import embedded_backend
from jobs.webhooks import verify_signature
from tests.factories import make_pool, make_user, system
from tests.integration.test_jobs_support import fast_jobs, make_investor  # noqa: F401

SECRET = "whsec_receiver_secret_123"


class Receiver:
    """A webhook receiver that checks the signature the way our docs tell people to."""

    def __init__(self, answers=None):
        self.received, self.answers = [], list(answers or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify_signature(SECRET, self.headers["X-Pooldesk-Timestamp"], body,
                                      self.headers["X-Pooldesk-Signature"])
                outer.received.append((dict(self.headers), json.loads(body), ok))
                code = outer.answers.pop(0) if outer.answers else (200 if ok else 401)
                self.send_response(code)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_settled_contribution_is_posted_signed_to_the_registered_endpoint(db, fast_jobs):
    receiver = Receiver()
    admin = system(db)
    endpoint = operations.create_endpoint(db, actor=admin, url=receiver.url, events=["contribution_settled"],
                                          secret=SECRET)
    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    tx = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="55.00",
                                    key="h-1")
    embedded_backend().run_until_idle(db)
    [(headers, payload, signature_ok)] = receiver.received
    assert signature_ok
    assert headers["X-Pooldesk-Event"] == "contribution_settled"
    assert payload["data"]["transaction"]["id"] == tx.id
    assert payload["data"]["transaction"]["amount"] == "55.00"  # the currency's minor units, not storage's 4
    assert payload["data"]["transaction"]["price"] == "10.000000"  # a unit price keeps its precision
    assert payload["data"]["transaction"]["status"] == "settled"
    [entry] = operations.webhook_log(db, actor=admin, endpoint_id=endpoint.id)
    assert (entry.status, entry.response_code, entry.attempts) == ("delivered", 200, 1)
    # a tampered body fails the receiver's check
    body = json.dumps(payload).encode()
    assert not verify_signature(SECRET, headers["X-Pooldesk-Timestamp"], body + b" ",
                                headers["X-Pooldesk-Signature"])


def test_a_failing_endpoint_is_retried_and_the_log_keeps_the_last_error(db, fast_jobs):
    receiver = Receiver(answers=[500, 503, 200])
    admin = system(db)
    operations.create_endpoint(db, actor=admin, url=receiver.url, events=["*"], secret=SECRET)
    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00",
                               key="h-2")
    embedded_backend().run_until_idle(db)
    assert len(receiver.received) == 3
    [entry] = operations.webhook_log(db, actor=admin)
    assert (entry.status, entry.attempts, entry.response_code, entry.error) == ("delivered", 3, 200, None)

    down = Receiver(answers=[500] * 10)
    endpoint = operations.create_endpoint(db, actor=admin, url=down.url, events=["contribution_settled"],
                                          secret=SECRET)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00",
                               key="h-3")
    embedded_backend().run_until_idle(db)
    [failed] = operations.webhook_log(db, actor=admin, endpoint_id=endpoint.id)
    assert (failed.status, failed.attempts, failed.error) == ("failed", 4, "HTTP 500")
    jobs = operations.failed_jobs(db, actor=admin)
    assert [j.job for j in jobs] == ["jobs.webhooks.deliver"]


def test_only_admins_manage_endpoints_and_bad_input_writes_nothing(db, fast_jobs):
    admin = system(db)
    manager = make_user(db, "manager")
    with pytest.raises(PermissionDenied):
        operations.create_endpoint(db, actor=manager, url="https://example.com/h", events=["*"])
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        operations.create_endpoint(db, actor=admin, url="ftp://example.com", events=["*"])
    with pytest.raises(ValidationError, match="Unknown event"):
        operations.create_endpoint(db, actor=admin, url="https://example.com/h", events=["nope"])
    assert operations.list_endpoints(db, actor=admin) == []
    created = operations.create_endpoint(db, actor=admin, url="https://example.com/h", events=["withdrawal_paid"])
    assert created.secret.startswith("whsec_")
    updated = operations.update_endpoint(db, actor=admin, endpoint_id=created.id, expected_version=1,
                                         url="https://example.com/h2", events=["*"], active=True)
    assert (updated.url, updated.version, updated.secret) == ("https://example.com/h2", 2, None)
    operations.delete_endpoint(db, actor=admin, endpoint_id=created.id)
    assert operations.list_endpoints(db, actor=admin)[0].active is False
    with db.read() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.entity == "webhook_endpoint")).all()
    assert actions == ["webhook.create", "webhook.update", "webhook.delete"]


def test_a_failed_job_can_be_retried_from_operations(db, fast_jobs):
    admin = system(db)
    down = Receiver(answers=[500] * 4 + [200])
    operations.create_endpoint(db, actor=admin, url=down.url, events=["contribution_settled"], secret=SECRET)
    manager = make_user(db, "manager")
    investor = make_investor(db)
    pool = make_pool(db, manager)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10.00",
                               key="h-4")
    embedded_backend().run_until_idle(db)
    [job] = operations.failed_jobs(db, actor=admin)
    with pytest.raises(PermissionDenied):
        operations.retry_job(db, actor=manager, outbox_id=job.outbox_id)
    operations.retry_job(db, actor=admin, outbox_id=job.outbox_id)
    embedded_backend().run_until_idle(db)
    assert operations.failed_jobs(db, actor=admin) == []
    assert operations.webhook_log(db, actor=admin)[0].status == "delivered"


def test_a_declared_distribution_is_posted_with_amounts_at_minor_units(db, fast_jobs):
    from datetime import date

    from core.services import valuations

    receiver = Receiver()
    admin = system(db)
    operations.create_endpoint(db, actor=admin, url=receiver.url, events=["distribution_declared"], secret=SECRET)
    manager = make_user(db, "manager")
    pool = make_pool(db, manager, currency="JPY", initial_unit_price="1000")
    investor = make_investor(db)
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="30000",
                               key="j-1", payment="received")
    declared = valuations.declare_distribution(db, actor=manager, pool_id=pool.id, record_date=date.today(),
                                               total="1500", key="j-d")
    embedded_backend().run_until_idle(db)
    [(headers, payload, signature_ok)] = receiver.received
    assert signature_ok and headers["X-Pooldesk-Event"] == "distribution_declared"
    assert payload["data"]["distribution"] == {"id": declared.distribution_id, "record_date": str(date.today()),
                                               "total": "1500", "per_unit": "50.000000"}
    assert payload["data"]["pool"]["currency"] == "JPY"
