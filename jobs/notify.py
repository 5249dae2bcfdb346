"""Notification jobs: who hears about an event, on which channels, exactly once.

``dispatch_event`` runs for each ledger event the services write to the outbox.
It picks the recipients (the investor of the transaction, the pool's managers
for requests, payment failures and large flows) and delivers on the channels
each person's preferences allow: in-app, email, SMS. Events for every holder
(a distribution to 10,000 investors, a valuation) fan out: the job writes one
outbox row per batch of POOLDESK_NOTIFY_BATCH_SIZE people, and the batches run
in parallel on the workers. It also queues the outbound webhooks of the event.

Every email and SMS is recorded in ``deliveries`` under a key made of the event,
the person and the channel before it is sent, so a job that runs twice sends
once; a send that failed is kept with its error and retried with the job.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from core.config import get_settings
from core.db.models import (
    Delivery, Distribution, Pool, PoolManager, Position, Transaction, User, Valuation, utcnow,
)
from core.db.session import Database
from core.domain.money import format_money, minor_units, round_money
from core.services.common import enqueue
from core.db.models import NotificationPreference
from core.services.notifications import DEFAULT_CHANNELS, MANDATORY_EVENTS, add_in_app
from jobs.channels import Mailer, Rendered, Texter, build_email, render
from jobs.errors import PermanentError, TransientError
from jobs.runner import database, job, run_key
from jobs.settings import job_settings

log = logging.getLogger("pooldesk.jobs")

# What the investor of a transaction gets for each event: (preference event, template). Their own request
# is "received" for them (a request is what their managers are told about).
INVESTOR_TEMPLATES = {
    "contribution_requested": ("contribution_received", "contribution_received"),
    "contribution_settled": ("contribution_settled", "contribution_settled"),
    "contribution_failed": ("contribution_failed", "contribution_failed"),
    "contribution_cancelled": ("contribution_cancelled", "contribution_cancelled"),
    "withdrawal_requested": ("withdrawal_received", "withdrawal_received"),
    "withdrawal_paid": ("withdrawal_paid", "withdrawal_paid"),
    "withdrawal_failed": ("withdrawal_failed", "withdrawal_failed"),
    "withdrawal_cancelled": ("withdrawal_cancelled", "withdrawal_cancelled"),
}
# ... and what their managers get.
MANAGER_TEMPLATES = {  # event -> (preference event, template)
    "contribution_requested": ("contribution_requested", "contribution_requested"),
    "withdrawal_requested": ("withdrawal_requested", "withdrawal_requested"),
    "contribution_failed": ("payment_failure", "payment_failure"),
    "withdrawal_failed": ("payment_failure", "payment_failure"),
}
LARGE_FLOW_EVENTS = ("contribution_settled", "withdrawal_paid")
FAN_OUT_EVENTS = ("distribution_declared", "valuation_published")


@dataclass
class Message:
    user_id: int
    event: str        # the preference event
    template: str
    context: dict
    key: str          # unique per event occurrence and person; the channel is appended
    pool_id: int | None = None


@dataclass
class _Claim:
    delivery_id: int
    channel: str
    address: str
    name: str
    rendered: Rendered
    key: str


@dataclass
class Outcome:
    in_app: int = 0
    sent: int = 0
    logged: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list = field(default_factory=list)


# --- context ------------------------------------------------------------------------------

def _money(value: Decimal | None, currency: str) -> str:
    """An amount at the currency's minor units ("USD 55.00"), rounded the way the ledger rounds."""
    return format_money(round_money(value, currency), currency) if value is not None else "all units"


def _price(value: Decimal, currency: str) -> str:
    """A unit price: the currency's minor units, more when the price has them (NAV 10.123456)."""
    places = max(minor_units(currency), -value.normalize().as_tuple().exponent)
    return f"{currency} {value:,.{places}f}"


def _tx_context(session, tx: Transaction, pool: Pool, extra: dict) -> dict:
    investor = session.get(User, tx.investor_id) if tx.investor_id else None
    amount = _money(tx.amount, pool.currency) if tx.amount is not None else (
        f"{tx.units} units" if tx.units is not None else "all units")
    return {
        "pool_name": pool.name, "pool_code": pool.code, "pool_id": pool.id, "transaction_id": tx.id,
        "kind": tx.kind, "amount": amount, "units": f"{tx.units}" if tx.units is not None else "",
        "price": _price(tx.price, pool.currency) if tx.price is not None else "",
        "reason": extra.get("reason") or tx.failure_reason or "", "investor_name": investor.name if investor else "",
        "link": get_settings().base_url, "threshold": _money(get_settings().large_flow_threshold, pool.currency),
    }


def _managers(session, pool_id: int) -> list[int]:
    ids = list(session.scalars(select(PoolManager.user_id).where(PoolManager.pool_id == pool_id)))
    if not ids:  # nobody runs the pool yet: the administrators hear about it
        ids = list(session.scalars(select(User.id).where(User.role == "admin", User.status == "active")))
    return ids


def preferences(session, user_ids: list[int], events: set[str]):
    """Each person's choices for these events in one query; the same rules as notifications.wants."""
    stored: dict[tuple[int, str, str], bool] = {}
    for start in range(0, len(user_ids), 1000):
        for p in session.scalars(select(NotificationPreference).where(
                NotificationPreference.user_id.in_(user_ids[start:start + 1000]),
                NotificationPreference.event.in_(events))):
            stored[(p.user_id, p.event, p.channel)] = bool(p.enabled)

    def wants(user_id: int, event: str, channel: str) -> bool:
        if event in MANDATORY_EVENTS and channel == "email":
            return True
        return stored.get((user_id, event, channel), DEFAULT_CHANNELS[channel])

    return wants


# --- delivery -----------------------------------------------------------------------------

def deliver(db: Database, messages: list[Message]) -> Outcome:
    """Write in-app notifications and send email/SMS for ``messages``, each once per key and channel."""
    outcome = Outcome()
    if not messages:
        return outcome
    settings = job_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_lease_seconds)
    claims: list[_Claim] = []
    try:
        with db.transaction() as session:
            users = {u.id: u for u in session.scalars(select(User).where(User.id.in_({m.user_id for m in messages})))}
            wants = preferences(session, list(users), {m.event for m in messages})
            wanted: list[tuple[Message, str, str, User, Rendered]] = []
            for m in messages:
                user = users.get(m.user_id)
                if user is None or user.status in ("deactivated", "system"):
                    outcome.skipped += 1
                    continue
                rendered = render(m.template, {"name": user.name, **m.context})
                if wants(user.id, m.event, "in_app"):
                    title = rendered.subject
                    if add_in_app(session, user_id=user.id, event=m.event, title=title, body=rendered.text,
                                  pool_id=m.pool_id, dedupe_key=f"{m.key}:u{user.id}:in_app"[:200]):
                        outcome.in_app += 1
                if user.email and wants(user.id, m.event, "email"):
                    wanted.append((m, "email", user.email, user, rendered))
                if user.phone and wants(user.id, m.event, "sms"):
                    wanted.append((m, "sms", user.phone, user, rendered))
            keys = [f"{m.key}:u{m.user_id}:{channel}"[:200] for m, channel, *_ in wanted]
            existing: dict[str, Delivery] = {}
            for start in range(0, len(keys), 500):
                for d in session.scalars(select(Delivery).where(Delivery.key.in_(keys[start:start + 500]))
                                         .with_for_update()):
                    existing[d.key] = d
            for key, (m, channel, address, user, rendered) in zip(keys, wanted):
                row = existing.get(key)
                if row is None:
                    row = Delivery(key=key, channel=channel, event=m.event, user_id=user.id, to_address=address,
                                   subject=rendered.subject[:300], body=rendered.text, status="sending", attempts=1,
                                   claimed_at=now)
                    session.add(row)
                elif row.status == "error" or (row.status == "sending" and (row.claimed_at or now) < stale):
                    row.status, row.claimed_at, row.attempts = "sending", now, row.attempts + 1
                else:
                    outcome.skipped += 1  # sent, logged, failed for good, or being sent by a twin
                    continue
                claims.append((row, channel, address, user.name, rendered, key))
            session.flush()
            claims = [_Claim(row.id, channel, address, name, rendered, key)
                      for row, channel, address, name, rendered, key in claims]
    except IntegrityError as exc:
        raise TransientError("Another run is delivering the same messages; trying again shortly.") from exc
    _send(db, claims, outcome)
    return outcome


SMTP_CONNECTIONS = 4  # messages of a batch go out over a few connections at once
CHUNK = 25


def _send(db: Database, claims: list[_Claim], outcome: Outcome) -> None:
    """Send the claimed messages (a few SMTP connections in parallel), recording each outcome."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [claims[i:i + CHUNK] for i in range(0, len(claims), CHUNK)]
    transient: TransientError | None = None
    with ThreadPoolExecutor(max_workers=min(SMTP_CONNECTIONS, max(1, len(chunks)))) as pool:
        for done, failed, unsent, error in pool.map(_send_chunk, chunks):
            if done:
                with db.transaction() as session:
                    session.execute(update(Delivery), [
                        {"id": delivery_id, "status": status, "provider_id": provider, "sent_at": utcnow(),
                         "error": None} for delivery_id, status, provider in done])
            for delivery_id, message in failed:
                _mark(db, [delivery_id], "failed", message)
                outcome.failed += 1
                outcome.errors.append(message)
            if unsent:
                _mark(db, unsent, "error", str(error))
                transient = error
            outcome.sent += sum(1 for _, status, _ in done if status == "sent")
            outcome.logged += sum(1 for _, status, _ in done if status == "logged")
    if transient is not None:
        raise transient


def _send_chunk(claims: list[_Claim]):
    """Send some messages over one connection: (done, failed for good, unsent ids, transient error)."""
    done: list[tuple[int, str, str | None]] = []
    failed: list[tuple[int, str]] = []
    mailer, texter = Mailer(), Texter()
    try:
        for index, claim in enumerate(claims):
            try:
                if claim.channel == "email":
                    if not mailer.enabled:
                        done.append((claim.delivery_id, "logged", None))
                        continue
                    msg = build_email(to_email=claim.address, to_name=claim.name, subject=claim.rendered.subject,
                                      text=claim.rendered.text, html=claim.rendered.html)
                    done.append((claim.delivery_id, "sent", mailer.send(msg)))
                else:
                    if not texter.enabled:
                        done.append((claim.delivery_id, "logged", None))
                        continue
                    text = f"{claim.rendered.subject}. {get_settings().base_url}"
                    done.append((claim.delivery_id, "sent", texter.send(to_phone=claim.address, text=text)))
            except PermanentError as exc:
                failed.append((claim.delivery_id, str(exc)))
            except TransientError as exc:
                return done, failed, [c.delivery_id for c in claims[index:]], exc
        return done, failed, [], None
    finally:
        mailer.close()


def _mark(db: Database, delivery_ids: list[int], status: str, error: str) -> None:
    with db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids), Delivery.status == "sending")
                        .values(status=status, error=error[:2000]))


def fail_unsent(db: Database, key_prefix: str | None = None, keys: list[str] | None = None) -> int:
    """After the last retry: what could not be sent is marked failed, keeping its error."""
    with db.transaction() as session:
        condition = Delivery.key.in_(keys) if keys is not None else Delivery.key.like(
            (key_prefix or "").replace("%", "") + ":%")
        return session.execute(update(Delivery).where(condition, Delivery.status.in_(("error", "sending")))
                               .values(status="failed")).rowcount


# --- jobs ---------------------------------------------------------------------------------

def _event_key(event: str, transaction_id=None, **extra) -> str:
    for name in ("transaction_id", "distribution_id", "valuation_id"):
        value = transaction_id if name == "transaction_id" else extra.get(name)
        if value is not None:
            return f"{event}:{name.split('_')[0]}{value}"
    return f"{event}:{run_key(event, extra)}"


def _give_up_event(*, error: str, event: str, pool_id: int, transaction_id=None, **extra) -> None:
    fail_unsent(database(), _event_key(event, transaction_id, **extra))
    if event in LARGE_FLOW_EVENTS:
        fail_unsent(database(), _event_key("large_flow", transaction_id))


@job(on_give_up=_give_up_event)
def dispatch_event(event: str, pool_id: int, transaction_id: int | None = None, **extra) -> dict:
    """Tell the people concerned about a ledger event; fan out to every holder where it concerns them all."""
    db = database()
    key = _event_key(event, transaction_id, **extra)
    if event == "distribution_declared":
        from jobs.payouts import plan_payouts

        plan_payouts(db, distribution_id=extra["distribution_id"])  # once per distribution, however often run
    from jobs.webhooks import queue_event

    queue_event(db, event=event, pool_id=pool_id, transaction_id=transaction_id, event_key=key, **extra)
    if event in FAN_OUT_EVENTS:
        return {"batches": _fan_out(db, event, pool_id, **extra)}
    messages: list[Message] = []
    with db.read() as session:
        pool = session.get(Pool, pool_id)
        tx = session.get(Transaction, transaction_id) if transaction_id is not None else None
        if pool is None or tx is None:
            log.warning("event %s for pool %s / transaction %s: nothing to notify", event, pool_id, transaction_id)
            return {"messages": 0}
        context = _tx_context(session, tx, pool, extra)
        if event in INVESTOR_TEMPLATES and tx.investor_id:
            pref_event, template = INVESTOR_TEMPLATES[event]
            messages.append(Message(tx.investor_id, pref_event, template, context, key, pool.id))
        if event in MANAGER_TEMPLATES:
            pref_event, template = MANAGER_TEMPLATES[event]
            for manager_id in _managers(session, pool.id):
                messages.append(Message(manager_id, pref_event, template, context, key, pool.id))
        if event in LARGE_FLOW_EVENTS and tx.amount is not None and tx.amount >= get_settings().large_flow_threshold:
            flow_key = _event_key("large_flow", tx.id)
            for manager_id in _managers(session, pool.id):
                messages.append(Message(manager_id, "large_flow", "large_flow", context, flow_key, pool.id))
    outcome = deliver(db, messages)
    return {"messages": len(messages), "sent": outcome.sent, "logged": outcome.logged, "in_app": outcome.in_app}


def _fan_out(db: Database, event: str, pool_id: int, **extra) -> int:
    """Write one outbox row per batch of recipients, in one transaction (all batches or none)."""
    size = max(1, job_settings().notify_batch_size)
    with db.transaction() as session:
        if event == "distribution_declared":
            recipients = list(session.scalars(
                select(Transaction.investor_id).where(Transaction.distribution_id == extra["distribution_id"],
                                                      Transaction.kind == "distribution")
                .order_by(Transaction.id)))
        else:
            recipients = list(session.scalars(
                select(Position.investor_id).where(Position.pool_id == pool_id, Position.units > 0)
                .order_by(Position.investor_id)))
            recipients += [m for m in _managers(session, pool_id) if m not in set(recipients)]
        batches = 0
        for start in range(0, len(recipients), size):
            enqueue(session, "notifications", "jobs.notify.notify_users", event=event, pool_id=pool_id,
                    user_ids=recipients[start:start + size], **extra)
            batches += 1
        return batches


def _give_up_batch(*, error: str, event: str, pool_id: int, user_ids: list[int], **extra) -> None:
    key = _event_key(event, None, **extra)
    fail_unsent(database(), keys=[f"{key}:u{uid}:{channel}" for uid in user_ids for channel in ("email", "sms")])


@job(on_give_up=_give_up_batch)
def notify_users(event: str, pool_id: int, user_ids: list[int], distribution_id: int | None = None,
                 valuation_id: int | None = None) -> dict:
    """One batch of a fan-out: the same event for many people, each with their own figures."""
    db = database()
    key = _event_key(event, None, distribution_id=distribution_id, valuation_id=valuation_id)
    link = get_settings().base_url
    messages: list[Message] = []
    with db.read() as session:
        pool = session.get(Pool, pool_id)
        base = {"pool_name": pool.name, "pool_code": pool.code, "pool_id": pool.id, "link": link}
        if event == "distribution_declared":
            distribution = session.get(Distribution, distribution_id)
            base.update(per_unit=_price(distribution.per_unit, pool.currency), record_date=str(distribution.record_date))
            parts = dict(session.execute(select(Transaction.investor_id, Transaction.amount).where(
                Transaction.distribution_id == distribution_id, Transaction.kind == "distribution",
                Transaction.investor_id.in_(user_ids))).all())
            reinvested = set(session.scalars(select(Transaction.investor_id).where(
                Transaction.distribution_id == distribution_id, Transaction.kind == "reinvestment",
                Transaction.investor_id.in_(user_ids))))
            for uid in user_ids:
                context = dict(base, amount=_money(parts.get(uid, Decimal(0)), pool.currency),
                               reinvested=uid in reinvested)
                messages.append(Message(uid, event, event, context, key, pool.id))
        else:
            valuation = session.get(Valuation, valuation_id)
            previous = session.scalar(select(Valuation.nav_per_unit).where(
                Valuation.pool_id == pool_id, Valuation.valuation_date < valuation.valuation_date)
                .order_by(Valuation.valuation_date.desc()).limit(1))
            base.update(price=_price(valuation.nav_per_unit, pool.currency),
                        previous_price=_price(previous or pool.initial_unit_price, pool.currency),
                        valuation_date=str(valuation.valuation_date))
            messages = [Message(uid, event, event, base, key, pool.id) for uid in user_ids]
    outcome = deliver(db, messages)
    return {"messages": len(messages), "sent": outcome.sent, "logged": outcome.logged, "in_app": outcome.in_app}


def _give_up_direct(*, error: str, to_email: str, template: str, context: dict, **_ignored) -> None:
    context = {k: v for k, v in (context or {}).items() if k != "link"}  # as send_direct keys it
    fail_unsent(database(), keys=[f"direct-mail:{run_key(to_email, template, context)}"])


# What the delivery log keeps in place of a sign-in link: the link works until used, so only its recipient has it.
LINK_REMOVED = "[link removed: it was sent to the recipient only]"


@job(on_give_up=_give_up_direct)
def send_direct(to_email: str, to_name: str, template: str, context: dict, user_id: int | None = None,
                sealed_link: str | None = None) -> str:
    """Mail that is not tied to a ledger event: invitations and password resets (always sent).

    The sign-in link arrives encrypted (``sealed_link``) and is decrypted only to build the mail;
    the copy kept in ``deliveries`` has it removed. A retry decrypts it again, so it mails the same,
    working link. (Rows queued before links were sealed carry it in ``context["link"]``.)
    """
    context = dict(context or {})
    link = context.pop("link", None)
    if sealed_link:
        from cryptography.fernet import InvalidToken

        from core.crypto import decrypt

        try:
            link = decrypt(sealed_link)
        except InvalidToken as exc:
            raise PermanentError("The link of this mail cannot be decrypted: the key that encrypted it was "
                                 "removed from POOLDESK_ENCRYPTION_KEYS. Send a new one.") from exc
    base = {"name": to_name, "invited_by": "", "role": "", "pool_name": "", **context}
    rendered = render(template, {**base, "link": link or ""})
    kept = render(template, {**base, "link": LINK_REMOVED}).text if link else rendered.text
    db = database()
    status = _send_one(db, key=f"direct-mail:{run_key(to_email, template, context)}", event=template,
                       user_id=user_id, to_email=to_email, to_name=to_name, subject=rendered.subject,
                       text=rendered.text, html=rendered.html, kept_text=kept)
    if link:
        _forget_link(db)
    return status


def _forget_link(db: Database) -> None:
    """The mail is out (or will never be sent again): its outbox row need not keep the link, even encrypted.

    A twin run of the job finds the delivery done and sends nothing, so it needs no link.
    """
    from core.db.models import OutboxMessage
    from jobs.runner import current_outbox_id

    outbox_id = current_outbox_id.get()
    if outbox_id is None:
        return
    with db.transaction() as session:
        row = session.get(OutboxMessage, outbox_id)
        if row is None or not row.payload:
            return
        payload = dict(row.payload)
        payload.pop("sealed_link", None)
        payload["context"] = {k: v for k, v in (payload.get("context") or {}).items() if k != "link"}
        row.payload = payload


def send_email_now(*, to_email: str, subject: str, text: str, html: str | None = None, attachments=(),
                   to_name: str = "", user_id: int | None = None, event: str = "monthly_statement") -> str:
    """Send one email from inside another job (e.g. monthly statements), once per job run and message.

    ``attachments`` are ``(filename, bytes, mime type)`` tuples. Returns ``sent``, ``logged`` (no SMTP
    configured) or ``already sent``. Connection trouble raises TransientError so the calling job retries.
    """
    return _send_one(database(), key=f"mail:{run_key(to_email, subject)}", event=event, user_id=user_id,
                     to_email=to_email, to_name=to_name, subject=subject, text=text, html=html,
                     attachments=attachments)


def _send_one(db: Database, *, key: str, event: str, user_id: int | None, to_email: str, to_name: str,
              subject: str, text: str, html: str | None, attachments=(), kept_text: str | None = None) -> str:
    """Send one email once per key; ``deliveries`` keeps ``kept_text`` (default: ``text``) as its body."""
    now = utcnow()
    stale = now - timedelta(seconds=job_settings().job_lease_seconds)
    try:
        with db.transaction() as session:
            row = session.scalar(select(Delivery).where(Delivery.key == key).with_for_update())
            if row is None:
                row = Delivery(key=key, channel="email", event=event, user_id=user_id, to_address=to_email,
                               subject=subject[:300], body=text if kept_text is None else kept_text,
                               status="sending", attempts=1, claimed_at=now)
                session.add(row)
            elif row.status == "error" or (row.status == "sending" and (row.claimed_at or now) < stale):
                row.status, row.claimed_at, row.attempts = "sending", now, row.attempts + 1
            else:
                return "already " + row.status
            session.flush()
            delivery_id = row.id
    except IntegrityError as exc:
        raise TransientError("Another run is sending the same email; trying again shortly.") from exc
    with Mailer() as mailer:
        if not mailer.enabled:
            status, provider = "logged", None
        else:
            msg = build_email(to_email=to_email, to_name=to_name, subject=subject, text=text, html=html,
                              attachments=attachments)
            try:
                status, provider = "sent", mailer.send(msg)
            except PermanentError as exc:
                _mark(db, [delivery_id], "failed", str(exc))
                raise
            except TransientError as exc:
                _mark(db, [delivery_id], "error", str(exc))
                raise
    with db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id)
                        .values(status=status, provider_id=provider, sent_at=utcnow(), error=None))
    return status
