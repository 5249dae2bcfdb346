"""Payment gateways: one small interface, a sandbox and Stripe behind it.

Every call carries an idempotency key (``pooldesk-tx-<transaction id>``): the
gateway returns the first outcome for a repeated key instead of moving money
again, and ``find`` asks it whether a charge or payout already exists for a key
before a job creates one, so a job that was killed half-way never pays twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from jobs.errors import PermanentError, TransientError


@dataclass(frozen=True)
class GatewayResult:
    status: str  # succeeded | processing | declined
    reference: str
    reason: str = ""


class GatewayUnavailable(TransientError):
    """The gateway answered with a temporary error; try again later."""


class GatewayTimeout(TransientError):
    """No answer in time: the money may or may not have moved, so the retry asks first."""


class GatewayRejected(PermanentError):
    """The request itself is wrong (bad account, bad currency): retrying cannot help."""


class PaymentGateway(Protocol):
    name: str

    def find(self, *, key: str, kind: str) -> GatewayResult | None:
        """The outcome already recorded for this key (kind: charge | payout), or None."""

    def charge(self, *, key: str, amount: Decimal, currency: str, account: str, description: str) -> GatewayResult:
        """Collect money from the investor's card/account."""

    def payout(self, *, key: str, amount: Decimal, currency: str, account: str, description: str) -> GatewayResult:
        """Pay money out to the investor's account."""

    def cancel(self, *, key: str, kind: str) -> GatewayResult | None:
        """Cancel a charge still waiting for confirmation; None when the gateway cannot cancel it (any more)."""


def payment_key(transaction_id: int) -> str:
    return f"pooldesk-tx-{transaction_id}"


def get_gateway() -> PaymentGateway:
    from core.config import get_settings

    settings = get_settings()
    if settings.payment_gateway == "stripe":
        from jobs.gateways.stripe_gateway import StripeGateway

        if settings.stripe_api_key is None:
            raise GatewayRejected("POOLDESK_STRIPE_API_KEY is not set, so Stripe cannot be used.")
        return StripeGateway(settings.stripe_api_key.get_secret_value(), api_base=settings.stripe_api_base or None)
    from jobs.gateways.sandbox import SandboxGateway

    return SandboxGateway()
