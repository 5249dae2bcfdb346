"""A simulated gateway with deterministic outcomes, for development, demos and tests.

It keeps its own books in the ``sandbox_charges`` table (what a real gateway
keeps on its side), so a test in another process can count charges. Outcomes
depend on the card/account number, like a real gateway's test cards:

=====================  ===========================================================
4000000000000002       declined ("Your card was declined.")
4000000000000119       a temporary processor error on the first 2 calls, then success
4000000000009987       a temporary processor error on every call
4000000000000036       the charge is made but the first answer times out
4000000000000259       the charge is made, then the call pauses (POOLDESK_SANDBOX_PAUSE_SECONDS)
anything else          success
=====================  ===========================================================

Each call also waits POOLDESK_SANDBOX_LATENCY_MS to feel like a network call.

The outcome is decided from the number given to the call; the books keep only what a
real gateway shows back: the brand and the last four digits (``visa ending 4242``,
``account ending 5555``), never the full card or account number.
"""
from __future__ import annotations

import time
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.db.models import SandboxCharge
from jobs.gateways import GatewayResult, GatewayTimeout, GatewayUnavailable
from jobs.settings import job_settings

DECLINE = "4000000000000002"
TRANSIENT_TWICE = "4000000000000119"
TRANSIENT_ALWAYS = "4000000000009987"
TIMEOUT = "4000000000000036"
PAUSE = "4000000000000259"
SUCCESS = "4242424242424242"
DECLINE_REASON = "Your card was declined."


def _normalise(account: str | None) -> str:
    return "".join(ch for ch in (account or "") if ch.isalnum())[:40]


def card_brand(number: str) -> str:
    """The card network of a card number by its leading digits, "card" when not known, "account" when
    the number is not a card number at all (an IBAN or a bank account)."""
    if not (number.isdigit() and 12 <= len(number) <= 19):
        return "account"
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if 51 <= int(number[:2]) <= 55 or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number.startswith(("6011", "65")) or 644 <= int(number[:3]) <= 649:
        return "discover"
    return "card"


def masked(account: str) -> str:
    """What the sandbox's books keep of a card or account number: its brand and last four digits."""
    account = _normalise(account)
    if not account:
        return ""
    if len(account) <= 8:  # too short for its last four not to give most of it away
        return card_brand(account)
    return f"{card_brand(account)} ending {account[-4:]}"


def _result(row: SandboxCharge) -> GatewayResult:
    return GatewayResult(row.status, f"sb_{row.kind}_{row.id}", row.failure_reason or "")


class SandboxGateway:
    name = "sandbox"

    def __init__(self, db=None):
        from jobs.runner import database

        self.db = db or database()

    def cancel(self, *, key: str, kind: str) -> GatewayResult | None:
        """The sandbox settles or declines every charge at once, so none is ever left to cancel."""
        return None

    def find(self, *, key: str, kind: str) -> GatewayResult | None:
        with self.db.read() as session:
            row = session.scalar(select(SandboxCharge).where(SandboxCharge.idempotency_key == key,
                                                             SandboxCharge.kind == kind))
            if row is None or row.status not in ("succeeded", "declined"):
                return None
            return _result(row)

    def charge(self, *, key: str, amount: Decimal, currency: str, account: str, description: str = "") -> GatewayResult:
        return self._call("charge", key, amount, currency, account)

    def payout(self, *, key: str, amount: Decimal, currency: str, account: str, description: str = "") -> GatewayResult:
        return self._call("payout", key, amount, currency, account)

    def _call(self, kind: str, key: str, amount: Decimal, currency: str, account: str) -> GatewayResult:
        settings = job_settings()
        if settings.sandbox_latency_ms:
            time.sleep(settings.sandbox_latency_ms / 1000)
        account = _normalise(account)
        for _ in range(3):
            try:
                result, calls, replay = self._book(kind, key, amount, currency, account)
                break
            except IntegrityError:
                continue  # a twin call inserted the key first: read its outcome
        else:  # pragma: no cover
            raise GatewayUnavailable("The sandbox could not record the charge.")
        if result.status == "error":
            raise GatewayUnavailable("The payment processor had a temporary error (sandbox); try again.")
        if not replay and account == TIMEOUT and calls == 1:
            raise GatewayTimeout("The payment gateway did not answer in time.")
        if not replay and account == PAUSE:
            time.sleep(settings.sandbox_pause_seconds)
        return result

    def _book(self, kind: str, key: str, amount: Decimal, currency: str, account: str):
        with self.db.transaction() as session:
            row = session.execute(select(SandboxCharge).where(SandboxCharge.idempotency_key == key)
                                  .with_for_update()).scalar_one_or_none()
            if row is not None and row.status in ("succeeded", "declined"):
                row.calls += 1
                return _result(row), row.calls, True  # idempotent replay: the first outcome, no new money
            calls = row.calls + 1 if row is not None else 1
            if account == DECLINE:
                status, reason = "declined", DECLINE_REASON
            elif account == TRANSIENT_ALWAYS or (account == TRANSIENT_TWICE and calls <= 2):
                status, reason = "error", "temporary processor error"
            else:
                status, reason = "succeeded", None
            if row is None:
                row = SandboxCharge(idempotency_key=key, kind=kind, account=masked(account), amount=amount, currency=currency,
                                    status=status, failure_reason=reason, calls=calls)
                session.add(row)
                session.flush()
            else:
                row.status, row.failure_reason, row.calls = status, reason, calls
            return _result(row), calls, False
