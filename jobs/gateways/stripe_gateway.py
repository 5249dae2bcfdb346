"""Stripe: PaymentIntents collect contributions, Transfers pay withdrawals and distributions.

The investor's stored payment account is a Stripe PaymentMethod id (``pm_...``)
for collections and a connected account id (``acct_...``) for payouts. Every
request carries the idempotency key, which is also written into the object's
metadata (PaymentIntents) or transfer group (Transfers) so ``find`` can look
it up after Stripe's own idempotency window has passed. A PaymentIntent that
Stripe reports as ``processing`` is settled later by the ``payment_intent.*``
webhook, whose signature is checked with POOLDESK_STRIPE_WEBHOOK_SECRET.
"""
from __future__ import annotations

from decimal import Decimal

import stripe

from core.domain.money import minor_units
from jobs.gateways import GatewayRejected, GatewayResult, GatewayUnavailable

PROCESSING = ("processing", "requires_capture", "requires_action", "requires_confirmation")


def to_minor(amount: Decimal, currency: str) -> int:
    scaled = amount.scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise GatewayRejected(f"{amount} {currency} has more decimals than the currency allows.")
    return int(scaled)


def _plain(obj) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _intent_result(intent) -> GatewayResult:
    intent = _plain(intent)
    status = intent["status"]
    if status == "succeeded":
        return GatewayResult("succeeded", intent["id"])
    if status in PROCESSING:
        return GatewayResult("processing", intent["id"])
    error = intent.get("last_payment_error") or {}
    return GatewayResult("declined", intent["id"], (error.get("message") if error else None) or f"Payment {status}.")


class StripeGateway:
    name = "stripe"

    def __init__(self, api_key: str, *, api_base: str | None = None, http_client=None):
        kwargs = {"max_network_retries": 0}
        if api_base:
            kwargs["base_addresses"] = {"api": api_base.rstrip("/")}
        if http_client is not None:
            kwargs["http_client"] = http_client
        self.client = stripe.StripeClient(api_key, **kwargs)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except stripe.CardError as exc:
            raise _Declined(exc.user_message or str(exc)) from exc
        except stripe.IdempotencyError as exc:  # a twin run is making the same request right now: ask again later
            raise GatewayUnavailable(f"Stripe is still handling the same request: {exc.user_message or exc}") from exc
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise GatewayUnavailable(f"Stripe is unreachable or busy: {exc.user_message or exc}") from exc
        except stripe.APIError as exc:
            raise GatewayUnavailable(f"Stripe had an error: {exc.user_message or exc}") from exc
        except stripe.StripeError as exc:
            raise GatewayRejected(f"Stripe refused the request: {exc.user_message or exc}") from exc

    def find(self, *, key: str, kind: str) -> GatewayResult | None:
        if kind == "charge":
            found = self._call(self.client.v1.payment_intents.search,
                               params={"query": f"metadata['pooldesk_key']:'{key}'", "limit": 1})
            return _intent_result(found.data[0]) if found.data else None
        found = self._call(self.client.v1.transfers.list, params={"transfer_group": key, "limit": 1})
        return GatewayResult("succeeded", _plain(found.data[0])["id"]) if found.data else None

    def cancel(self, *, key: str, kind: str) -> GatewayResult | None:
        """Cancel a PaymentIntent that still waits for the investor or for capture. Stripe refuses to cancel
        one that is ``processing`` (the bank has it): None then, as for a transfer (sent at once)."""
        if kind != "charge":
            return None
        found = self.find(key=key, kind=kind)
        if found is None or found.status != "processing":
            return found
        try:
            intent = self._call(self.client.v1.payment_intents.cancel, found.reference,
                                params={"cancellation_reason": "abandoned"})
        except GatewayRejected:
            return None
        return _intent_result(intent)

    def charge(self, *, key: str, amount: Decimal, currency: str, account: str, description: str = "") -> GatewayResult:
        if not account:
            return GatewayResult("declined", "", "No payment method on file for this investor.")
        params = {"amount": to_minor(amount, currency), "currency": currency.lower(), "payment_method": account,
                  "confirm": True, "off_session": True, "description": description,
                  "metadata": {"pooldesk_key": key}}
        try:
            intent = self._call(self.client.v1.payment_intents.create, params=params,
                                options={"idempotency_key": key})
        except _Declined as exc:
            return GatewayResult("declined", "", exc.reason)
        return _intent_result(intent)

    def payout(self, *, key: str, amount: Decimal, currency: str, account: str, description: str = "") -> GatewayResult:
        if not account:
            return GatewayResult("declined", "", "No payout account on file for this investor.")
        params = {"amount": to_minor(amount, currency), "currency": currency.lower(), "destination": account,
                  "transfer_group": key, "description": description, "metadata": {"pooldesk_key": key}}
        try:
            transfer = self._call(self.client.v1.transfers.create, params=params, options={"idempotency_key": key})
        except _Declined as exc:
            return GatewayResult("declined", "", exc.reason)
        return GatewayResult("succeeded", _plain(transfer)["id"])


class _Declined(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def handle_webhook(db, payload: bytes, signature: str | None) -> str:
    """Settle or fail a contribution from a Stripe ``payment_intent.*`` event; returns what was done.

    Raises ``stripe.SignatureVerificationError`` when the signature does not match the secret.
    """
    from core.config import get_settings
    from jobs.payments import apply_gateway_outcome

    secret = get_settings().stripe_webhook_secret
    if secret is None:
        raise GatewayRejected("POOLDESK_STRIPE_WEBHOOK_SECRET is not set; Stripe events cannot be verified.")
    event = stripe.Webhook.construct_event(payload, signature, secret.get_secret_value())
    event = _plain(event)
    kind = event["type"]
    if kind not in ("payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"):
        return "ignored"
    intent = event["data"]["object"]
    key = (intent.get("metadata") or {}).get("pooldesk_key", "")
    if not key.startswith("pooldesk-tx-"):
        return "ignored"
    transaction_id = int(key.removeprefix("pooldesk-tx-"))
    return apply_gateway_outcome(db, transaction_id, _intent_result(intent))
