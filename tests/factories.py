"""Small builders for tests: users of each role and open pools."""
from __future__ import annotations

import itertools
from datetime import date, datetime, timezone

from core.db.session import Database
from core.services import pools, users
from core.services.context import Actor

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def actor(view) -> Actor:
    return Actor(view.id, view.role, view.email, view.name)


def system(db: Database) -> Actor:
    return users.system_actor(db)


def make_user(db: Database, role: str, email: str | None = None, password: str | None = PASSWORD, **kw) -> Actor:
    n = next(_seq)
    view = users.create_user(db, actor=system(db), email=email or f"{role}{n}@example.com", name=f"{role.title()} {n}",
                             role=role, password=password, **kw)
    return actor(view)


def make_pool(db: Database, manager: Actor | None = None, code: str | None = None, *, inception: date = date(2024, 1, 1),
              **settings) -> pools.PoolView:
    settings.setdefault("name", "Test pool")
    owner = manager or system(db)
    return pools.create_pool(db, actor=owner, code=code or f"P{next(_seq)}", settings=pools.PoolSettings(**settings),
                             inception_date=inception, manager_ids=[manager.id] if manager else None)


def make_valued_pool(db: Database, code: str, *, contributed: str = "1000.00", valued_at: str = "1100.00",
                     investor_email: str | None = None):
    """One manager, one holder who put in ``contributed`` on 2024-01-01, one valuation on 2024-06-30."""
    from core.services import ledger, valuations

    manager = make_user(db, "manager")
    investor = make_user(db, "investor", email=investor_email)
    pool = make_pool(db, manager, code=code, inception=date(2024, 1, 1))
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount=contributed,
                               key=None, effective_date=date(2024, 1, 1), payment="received")
    valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 6, 30),
                                total_assets=valued_at, key=None)
    return manager, investor, pool


def signed_in(db: Database, user: Actor, *, reauthenticated: bool = False) -> tuple[Actor, str]:
    """A finished sign-in for ``user``: the session token and the actor acting through it. A second factor
    is given when the role needs one (enrolling first, with the code the app would show), and with
    ``reauthenticated`` the password is confirmed again, as sensitive operations ask."""
    import pyotp

    from core.db.models import User
    from core.services import auth, mfa

    token = auth.create_session(db, actor=user)
    step = mfa.second_factor_step(db, token=token)
    if step == "enrol":
        secret = mfa.start_enrolment(db, token=token).secret
        mfa.confirm_enrolment(db, token=token, code=pyotp.TOTP(secret).now())
    elif step == "code":
        with db.read() as session:
            row = session.get(User, user.id)
            secret, last = row.mfa_secret, row.mfa_last_step
        totp = pyotp.TOTP(secret)
        at = max(totp.timecode(datetime.now(timezone.utc)), (last or 0) + 1) * totp.interval
        mfa.verify(db, token=token, code=totp.at(at), now=datetime.fromtimestamp(at, timezone.utc))
    acting = auth.validate_session(db, token=token)
    assert acting is not None, "the session should sign the user in"
    if reauthenticated:
        mfa.reauthenticate(db, actor=acting, password=PASSWORD)
    return acting, token
