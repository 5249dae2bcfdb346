"""In-app notifications and each user's delivery preferences.

Events (contribution settled, distribution declared...) reach people through the
background jobs (jobs/notify.py), which call ``add_in_app`` and send email/SMS
where the user's preferences allow. The inbox functions here serve the screens.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import Notification, NotificationPreference, User, utcnow
from core.db.session import Database
from core.domain.errors import ValidationError
from core.services.common import enqueue
from core.services.context import Actor

CHANNELS = ("in_app", "email", "sms")
EVENTS = {
    "invitation": "Invitation",
    "password_reset": "Password reset",
    "contribution_requested": "An investor requested a contribution (managers)",
    "contribution_received": "Your contribution request was received",
    "contribution_settled": "Contribution settled",
    "contribution_failed": "Contribution failed",
    "contribution_cancelled": "Contribution cancelled",
    "withdrawal_requested": "An investor requested a withdrawal (managers)",
    "withdrawal_received": "Your withdrawal request was received",
    "withdrawal_paid": "Withdrawal paid",
    "withdrawal_failed": "Withdrawal failed",
    "withdrawal_cancelled": "Withdrawal cancelled",
    "distribution_declared": "Distribution declared",
    "distribution_paid": "Distribution paid",
    "distribution_payout_failed": "Distribution payout failed",
    "valuation_published": "Valuation published",
    "large_flow": "Large flow alert",
    "payment_failure": "Payment failure alert",
    "monthly_statement": "Monthly statement",
}
# What a user gets when they never set a preference: in-app and email on, SMS off.
DEFAULT_CHANNELS = {"in_app": True, "email": True, "sms": False}
# Sign-in mail cannot be switched off: it is how people get in.
MANDATORY_EVENTS = ("invitation", "password_reset")


@dataclass(frozen=True)
class NotificationView:
    id: int
    event: str
    title: str
    body: str
    pool_id: int | None
    created_at: datetime
    read_at: datetime | None


def _view(n: Notification) -> NotificationView:
    return NotificationView(n.id, n.event, n.title, n.body, n.pool_id, n.created_at, n.read_at)


def add_in_app(session: Session, *, user_id: int, event: str, title: str, body: str = "", pool_id: int | None = None,
               dedupe_key: str | None = None) -> bool:
    """Write an in-app notification once per dedupe key (jobs may run twice). True if written now."""
    if dedupe_key is not None and session.scalar(select(Notification.id).where(Notification.dedupe_key == dedupe_key)):
        return False
    try:
        with session.begin_nested():
            session.add(Notification(user_id=user_id, event=event, title=title[:200], body=body, pool_id=pool_id,
                                     dedupe_key=dedupe_key))
    except IntegrityError:
        return False
    return True


def wants(session: Session, user_id: int, event: str, channel: str) -> bool:
    if event in MANDATORY_EVENTS and channel == "email":
        return True
    enabled = session.scalar(select(NotificationPreference.enabled).where(
        NotificationPreference.user_id == user_id, NotificationPreference.event == event,
        NotificationPreference.channel == channel))
    return DEFAULT_CHANNELS[channel] if enabled is None else bool(enabled)


def preferences(db: Database, *, actor: Actor) -> dict[str, dict[str, bool]]:
    """Every event and channel for the acting user, defaults filled in."""
    with db.read() as session:
        stored = {(p.event, p.channel): p.enabled for p in session.scalars(
            select(NotificationPreference).where(NotificationPreference.user_id == actor.id))}
    return {event: {ch: stored.get((event, ch), DEFAULT_CHANNELS[ch]) for ch in CHANNELS}
            for event in EVENTS if event not in MANDATORY_EVENTS}


_KEEP = object()


def set_preferences(db: Database, *, actor: Actor, choices: dict[str, dict[str, bool]], phone=_KEEP) -> None:
    """Save the acting user's choices per event and channel; with ``phone``, their phone number too, in the
    same transaction (SMS needs one: clearing it while SMS stays on is refused and changes nothing)."""
    from core.services import audit
    from core.services.users import PHONE_RE

    if phone is not _KEEP:
        phone = (phone or "").replace(" ", "").strip() or None
        if phone and not PHONE_RE.match(phone):
            raise ValidationError("Give the phone number in international form, e.g. +447700900123.", field="phone")
    for event, channels in choices.items():
        if event not in EVENTS or event in MANDATORY_EVENTS:
            raise ValidationError(f"Unknown or fixed event {event!r}.", field="event")
        for channel in channels:
            if channel not in CHANNELS:
                raise ValidationError(f"Unknown channel {channel!r}.", field="channel")
    with db.transaction() as session:
        user = session.get(User, actor.id)
        if phone is not _KEEP and phone != user.phone:
            audit.record(session, actor, "user.set_phone", "user", actor.id, {"phone_set": bool(user.phone)},
                         {"phone_set": bool(phone)})
            user.phone = phone
            user.version += 1
        if any(ch.get("sms") for ch in choices.values()) and not user.phone:
            raise ValidationError("Add a phone number before turning on SMS.", field="phone")
        for event, channels in choices.items():
            for channel, enabled in channels.items():
                pref = session.scalar(select(NotificationPreference).where(
                    NotificationPreference.user_id == actor.id, NotificationPreference.event == event,
                    NotificationPreference.channel == channel))
                if pref is None:
                    session.add(NotificationPreference(user_id=actor.id, event=event, channel=channel,
                                                       enabled=bool(enabled)))
                else:
                    pref.enabled = bool(enabled)
        audit.record(session, actor, "notifications.preferences", "user", actor.id, None, choices)


def inbox(db: Database, *, actor: Actor, unread_only: bool = False, limit: int = 100) -> list[NotificationView]:
    with db.read() as session:
        query = select(Notification).where(Notification.user_id == actor.id).order_by(Notification.id.desc()).limit(limit)
        if unread_only:
            query = query.where(Notification.read_at.is_(None))
        return [_view(n) for n in session.scalars(query)]


def unread_count(db: Database, *, actor: Actor) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(Notification).where(
            Notification.user_id == actor.id, Notification.read_at.is_(None))) or 0


def latest_id(db: Database, *, actor: Actor) -> int:
    """A cheap counter for polling: the newest notification id of this user (0 if none)."""
    with db.read() as session:
        return session.scalar(select(func.max(Notification.id)).where(Notification.user_id == actor.id)) or 0


def mark_read(db: Database, *, actor: Actor, notification_ids: list[int] | None = None) -> int:
    """Mark some (or, with None, all) of the acting user's notifications read; returns how many."""
    with db.transaction() as session:
        query = update(Notification).where(Notification.user_id == actor.id, Notification.read_at.is_(None))
        if notification_ids is not None:
            query = query.where(Notification.id.in_(notification_ids))
        return session.execute(query.values(read_at=utcnow())).rowcount


def send_direct(session: Session, *, to_email: str, template: str, context: dict, to_name: str = "",
                user_id: int | None = None, link: str | None = None) -> None:
    """Mail that is not tied to a ledger event (invitation, password reset): sent by the notification jobs.

    ``link`` is a sign-in link (it carries a one-time token): the outbox keeps it encrypted with the
    app's keys, the mail carries it, and the copy kept in ``deliveries`` has it removed.
    """
    from core.crypto import encrypt

    if template not in EVENTS:
        raise ValueError(f"unknown template {template}")
    extra = {"sealed_link": encrypt(link)} if link else {}
    enqueue(session, "notifications", "jobs.notify.send_direct", to_email=to_email, to_name=to_name,
            template=template, context=context, user_id=user_id, **extra)
