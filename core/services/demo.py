"""Demo data: people, pools and years of realistic history, written through the bulk importer path.

Flows arrive on random days; each pool's assets follow a random walk between
weekly valuations; a few pools pay distributions. Every row goes through the same
replay as an imported file, so the demo book obeys every accounting rule.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from faker import Faker
from sqlalchemy import select

from core.db.models import Pool, User
from core.db.session import Database
from core.domain.errors import PooldeskError
from core.services import audit, pools as pool_service
from core.services.context import Actor
from core.services.importer import Row, _Replay, _write
from core.services.users import check_password_strength, hash_password

DEMO_PASSWORD = "walnut-ledger-demo"  # published in the README; passes the password rules for each login
DEMO_LOGINS = (
    ("admin@demo.pooldesk.org", "Ada Admin", "admin"),
    ("manager@demo.pooldesk.org", "Max Manager", "manager"),
    ("analyst@demo.pooldesk.org", "Ana Analyst", "analyst"),
    ("investor@demo.pooldesk.org", "Ivy Investor", "investor"),
)
STRATEGIES = ["Global equities, long only", "Balanced 60/40", "Dividend income", "Short-term bonds",
              "Property and infrastructure", "Emerging markets", "Technology growth", "Members' savings"]


@dataclass
class DemoSummary:
    pools: int
    investors: int
    transactions: int
    valuations: int
    distributions: int
    seconds: float


def seed_demo(db: Database, *, actor: Actor, pools: int = 5, investors: int = 200, transactions: int = 20000,
              years: int = 3, demo_logins: bool = False, seed: int = 7) -> DemoSummary:
    import time

    started = time.perf_counter()
    rng = random.Random(seed)
    fake = Faker()
    Faker.seed(seed)
    today = date.today()
    inception = today - timedelta(days=365 * years)
    with db.transaction() as session:
        existing = set(session.scalars(select(User.email)))
        if demo_logins:
            for email, name, _ in DEMO_LOGINS:
                check_password_strength(DEMO_PASSWORD, email=email, name=name)
        password_hash = hash_password(DEMO_PASSWORD) if demo_logins else None
        logins = {}
        if demo_logins:
            for email, name, role in DEMO_LOGINS:
                if email not in existing:
                    user = User(email=email, name=name, role=role, status="active", password_hash=password_hash)
                    session.add(user)
                    session.flush()
                    logins[role] = user.id
                else:
                    logins[role] = session.scalar(select(User.id).where(User.email == email))
        managers = [logins["manager"]] if "manager" in logins else []
        for i in range(max(1, pools // 3)):
            email = f"manager{i + 1}@demo.pooldesk.org"
            if email in existing:
                continue
            user = User(email=email, name=fake.name(), role="manager", status="active")
            session.add(user)
            session.flush()
            managers.append(user.id)
        for i in range(2):
            email = f"analyst{i + 1}@demo.pooldesk.org"
            if email not in existing:
                session.add(User(email=email, name=fake.name(), role="analyst", status="active"))
        investor_ids = [logins["investor"]] if "investor" in logins else []
        batch = []
        for i in range(investors - len(investor_ids)):
            email = f"investor{i + 1}@demo.pooldesk.org"
            if email in existing:
                continue
            batch.append(User(email=email, name=fake.name(), role="investor", status="active"))
        session.add_all(batch)
        session.flush()
        investor_ids += [u.id for u in batch]
        if not investor_ids:
            investor_ids = list(session.scalars(select(User.id).where(User.role == "investor")))
        emails = dict(session.execute(select(User.id, User.email).where(User.id.in_(investor_ids))).all())

    per_pool = max(1, transactions // max(1, pools))
    totals = DemoSummary(0, len(investor_ids), 0, 0, 0, 0.0)
    taken = {p.code for p in pool_service.list_pools(db, actor=actor)}
    for index in range(pools):
        code = f"DEMO{index + 1}"
        n = index + 1
        while code in taken:
            n += pools
            code = f"DEMO{n}"
        taken.add(code)
        currency = rng.choice(["USD", "USD", "EUR", "GBP"])
        settings = pool_service.PoolSettings(
            name=f"{fake.last_name()} {rng.choice(['Growth', 'Income', 'Capital', 'Savings', 'Opportunities'])} Pool",
            currency=currency, initial_unit_price=rng.choice(["10.00", "100.00", "1.00"]),
            pricing_policy=rng.choice(["latest", "latest", "forward"]), minimum_contribution="0",
            management_fee_bps=rng.choice([0, 50, 100, 150]), performance_fee_pct=rng.choice(["0", "10", "20"]),
            strategy=rng.choice(STRATEGIES))
        manager_ids = [managers[index % len(managers)]] if managers else None
        view = pool_service.create_pool(db, actor=actor, code=code, settings=settings, inception_date=inception,
                                        manager_ids=manager_ids)
        members = rng.sample(investor_ids, k=min(len(investor_ids), max(3, len(investor_ids) // 2)))
        if "investor" in logins and logins["investor"] not in members:
            members.append(logins["investor"])
        counts = _seed_pool(db, actor, view.id, members, emails, per_pool, inception, today, rng)
        totals.pools += 1
        totals.transactions += counts[0]
        totals.valuations += counts[1]
        totals.distributions += counts[2]
    totals.seconds = round(time.perf_counter() - started, 2)
    return totals


def _seed_pool(db: Database, actor: Actor, pool_id: int, members: list[int], emails: dict[int, str], flows: int,
               start: date, end: date, rng: random.Random) -> tuple[int, int, int]:
    days = (end - start).days
    flow_days = sorted(start + timedelta(days=rng.randint(0, days)) for _ in range(flows))
    with db.transaction() as session:
        pool = session.execute(select(Pool).where(Pool.id == pool_id).with_for_update()).scalar_one()
        replay = _Replay(pool, {}, set(), datetime.now(timezone.utc))
        minor = Decimal("0.01") if pool.currency != "JPY" else Decimal(1)
        by_day: dict[date, list[date]] = {}
        for d in flow_days:
            by_day.setdefault(d, []).append(d)
        walk = Decimal(1)
        number = 2
        written = 0
        day = start
        while day <= end:
            if day.weekday() == 4 and (replay.units_outstanding > 0 or replay.waiting):  # Friday valuations
                walk = walk * Decimal(str(round(rng.gauss(1.0018, 0.015), 6)))
                value = (replay.total_assets * walk).quantize(minor)
                walk = Decimal(1)
                _try(replay.valuation, Row(number, day, "valuation", "", value, None, "weekly valuation"))
                number += 1
                if day.month in (6, 12) and day.day <= 7 and rng.random() < 0.5:
                    nav = replay.total_assets - replay.fees_payable
                    total = (nav * Decimal("0.01")).quantize(minor)
                    if total > 0 and _try(replay.distribution, Row(number, day, "distribution", "", total, None, "half-year distribution")):
                        written += 1
                    number += 1
            for _ in by_day.get(day, ()):
                investor = rng.choice(members)
                email = emails[investor]
                if rng.random() < 0.8 or replay.units_outstanding == 0:
                    amount = Decimal(rng.choice([100, 250, 500, 1000, 2500, 5000])) * minor * 100
                    ok = _try(lambda r: replay.contribution(r, investor), Row(number, day, "contribution", email, amount, None, ""))
                else:
                    held = replay.holdings.get(investor)
                    if held is None or held.units <= 0:
                        continue
                    if rng.random() < 0.1:
                        row = Row(number, day, "withdrawal", email, None, "all", "")
                    else:
                        amount = (held.units * replay.current_price() * Decimal("0.3")).quantize(minor)
                        if amount <= 0:
                            continue
                        row = Row(number, day, "withdrawal", email, amount, None, "")
                    ok = _try(lambda r: replay.withdrawal(r, investor), row)
                number += 1
                written += ok
            day += timedelta(days=1)
        _write(session, actor, pool, replay)
        audit.record(session, actor, "demo.seed_pool", "pool", pool.id, None,
                     {"transactions": written, "valuations": replay.result.valuations,
                      "distributions": replay.result.distributions})
        return written, replay.result.valuations, replay.result.distributions


def _try(apply, row: Row) -> bool:
    try:
        apply(row)
        return True
    except PooldeskError:
        return False
