"""Every table, importable from one place (Alembic reads Base.metadata from here)."""
from core.db.models.base import Base, utcnow
from core.db.models.ledger import (
    Distribution, FeeAccrual, IdempotencyKey, JournalEntry, Pool, PoolManager, Position, Transaction, Valuation,
)
from core.db.models.people import AuthSession, Invitation, PasswordReset, RecoveryCode, User
from core.db.models.records import AuditChain, AuditEvent, Notification, NotificationPreference, OutboxMessage

__all__ = [
    "Base", "utcnow", "Distribution", "FeeAccrual", "IdempotencyKey", "JournalEntry", "Pool", "PoolManager",
    "Position", "Transaction", "Valuation", "AuthSession", "Invitation", "PasswordReset", "RecoveryCode", "User",
    "AuditChain", "AuditEvent", "Notification", "NotificationPreference", "OutboxMessage",
]
from core.db.models.jobs import Delivery, DistributionPayout, JobRun, Payment, SandboxCharge, WebhookDelivery, WebhookEndpoint  # noqa: E402,F401
from core.db.models.imports import ImportFile  # noqa: E402,F401
