"""Many writers, one pool, PostgreSQL: no lost update, no negative holding, each key once.

16 threads post contributions and withdrawals (money already received, so they
settle at once) to the same pool; some requests share an idempotency key with a
twin in another thread. A second test runs valuations while the flows go on and
checks that each valuation saw one consistent units-outstanding.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select, text

from core.db.models import JournalEntry, Pool, Position, Transaction, Valuation
from core.domain.errors import ValidationError
from core.domain.money import PRICE_Q, divide
from core.services import ledger, pools, valuations
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

D = Decimal
THREADS = 16
PER_THREAD = 12
DAY = date(2024, 1, 2)


def _world(db, investors=4):
    manager = make_user(db, "manager")
    holders = [make_user(db, "investor") for _ in range(investors)]
    pool = make_pool(db, manager)
    for n, holder in enumerate(holders):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=holder.id, amount="1000.00",
                                   key=f"seed-{n}", effective_date=DAY, payment="received")
    return manager, holders, pool


def _request(rng: random.Random, holders) -> dict:
    """One request: a contribution, or a withdrawal by amount, by units or of everything."""
    investor = rng.choice(holders).id
    roll = rng.random()
    if roll < 0.45:
        return dict(kind="contribution", investor_id=investor, amount=f"{rng.randint(1, 50000) / 100:.2f}")
    if roll < 0.7:
        return dict(kind="withdrawal", investor_id=investor, amount=f"{rng.randint(1, 30000) / 100:.2f}")
    if roll < 0.95:
        return dict(kind="withdrawal", investor_id=investor, units=f"{rng.randint(1, 3000000) / 100000:.5f}")
    return dict(kind="withdrawal", investor_id=investor, all_units=True)


def _post(db, manager, pool_id, request: dict, key: str):
    fields = {k: v for k, v in request.items() if k != "kind"}
    if request["kind"] == "contribution":
        return ledger.record_contribution(db, actor=manager, pool_id=pool_id, key=key, effective_date=DAY,
                                          payment="received", **fields)
    return ledger.record_withdrawal(db, actor=manager, pool_id=pool_id, key=key, effective_date=DAY,
                                    payment="received", **fields)


def _check_books(db, pool_id):
    assert reconcile(db) == []
    with db.read() as session:
        pool = session.get(Pool, pool_id)
        positions = session.scalars(select(Position).where(Position.pool_id == pool_id)).all()
        assert all(p.units >= 0 for p in positions)
        assert sum((p.units for p in positions), D(0)) == pool.units_outstanding
        settled = session.execute(select(Transaction.kind, Transaction.amount, Transaction.units).where(
            Transaction.pool_id == pool_id, Transaction.status == "settled")).all()
        contributed = sum((a for k, a, _ in settled if k == "contribution"), D(0))
        withdrawn = sum((a for k, a, _ in settled if k == "withdrawal"), D(0))
        issued = sum((u for k, _, u in settled if k == "contribution"), D(0))
        redeemed = sum((u for k, _, u in settled if k == "withdrawal"), D(0))
        gains = -sum((e.amount for e in session.scalars(select(JournalEntry).where(
            JournalEntry.pool_id == pool_id, JournalEntry.account == "gain"))), D(0))
        # no lost update: the cached totals are exactly what the settled flows add up to
        assert pool.units_outstanding == issued - redeemed
        assert pool.total_assets == contributed - withdrawn + gains
        return pool


def test_sixteen_writers_on_one_pool(pg_db):
    db = pg_db
    manager, holders, pool = _world(db)
    rng = random.Random(20241124)
    shared = {f"twin-{n}": _request(rng, holders) for n in range(24)}  # one thread owns each, others resend some
    plans: list[list[tuple[str, dict]]] = []
    for t in range(THREADS):
        plan = [(f"solo-{t}-{i}", _request(rng, holders)) for i in range(PER_THREAD)]
        plan += [(key, req) for key, req in shared.items() if rng.random() < 0.12 or int(key[5:]) % THREADS == t]
        rng.shuffle(plan)
        plans.append(plan)
    outcomes: dict[str, list] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def writer(plan):
        start.wait()
        for key, request in plan:
            try:
                result = _post(db, manager, pool.id, request, key)
                outcome = ("ok", result.id, result.replayed)
            except ValidationError as exc:
                outcome = ("refused", exc.message, None)
            except BaseException as exc:  # noqa: BLE001 - anything else is a failure to report
                with lock:
                    errors.append(exc)
                continue
            with lock:
                outcomes.setdefault(key, []).append(outcome)

    with ThreadPoolExecutor(THREADS) as executor:
        list(executor.map(writer, plans))
    assert errors == []

    posted = [k for k, results in outcomes.items() if any(r[0] == "ok" for r in results)]
    assert len(posted) > THREADS * PER_THREAD // 2  # most requests went through
    with db.read() as session:
        per_key = Counter(session.scalars(select(Transaction.idempotency_key).where(
            Transaction.pool_id == pool.id, Transaction.idempotency_key.is_not(None))))
    for key, results in outcomes.items():
        oks = {r[1] for r in results if r[0] == "ok"}
        if oks:
            assert per_key[key] == 1, key  # posted exactly once, however many threads sent it
            assert len(oks) == 1, (key, results)  # every twin got the same transaction back
            assert sum(1 for r in results if r[0] == "ok" and r[2] is False) == 1, (key, results)
        else:
            assert per_key[key] == 0, key
    twins = [k for k in shared if len(outcomes.get(k, [])) > 1]
    assert len(twins) >= 5
    assert sum(1 for k in twins for r in outcomes[k] if r[0] == "ok" and r[2]) >= 5  # replays happened
    _check_books(db, pool.id)


def test_valuations_see_a_consistent_units_outstanding(pg_db):
    db = pg_db
    manager, holders, pool = _world(db)
    rng = random.Random(7)
    errors: list[BaseException] = []

    def flows(seed):
        local = random.Random(seed)
        for i in range(20):
            try:
                _post(db, manager, pool.id, _request(local, holders), key=None)
            except ValidationError:
                pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    def valuer():
        for n in range(8):
            try:
                current = pools.get_pool(db, actor=manager, pool_id=pool.id)
                valuations.record_valuation(db, actor=manager, pool_id=pool.id, valuation_date=date(2024, 2, 1 + n),
                                            total_assets=current.total_assets + rng.randint(-500, 500), key=None)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    with ThreadPoolExecutor(9) as executor:
        futures = [executor.submit(flows, s) for s in range(8)] + [executor.submit(valuer)]
        for future in futures:
            future.result()
    assert errors == []
    with db.read() as session:
        legs = session.execute(select(JournalEntry.id, JournalEntry.valuation_id, JournalEntry.units).where(
            JournalEntry.pool_id == pool.id, JournalEntry.account == "pool").order_by(JournalEntry.id)).all()
        recorded = {v.id: v for v in session.scalars(select(Valuation).where(Valuation.pool_id == pool.id))}
    assert len(recorded) == 8
    # Writers queue on the pool row, so journal ids follow commit order: the units a valuation saw
    # must be exactly those issued by the legs written before its own.
    running = D(0)
    seen = 0
    for _id, valuation_id, units in legs:
        if valuation_id is not None:
            valuation = recorded[valuation_id]
            assert valuation.units_outstanding == running, valuation.valuation_date
            assert valuation.nav_per_unit == divide(valuation.nav, valuation.units_outstanding, PRICE_Q)
            seen += 1
        running -= units
    assert seen == 8
    _check_books(db, pool.id)
    with db.read() as session:
        flows_between = session.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.pool_id == pool.id, Transaction.status == "settled"))
    assert flows_between > 8


def test_a_connection_the_server_dropped_is_replaced_and_nothing_is_posted_twice(pg_db):
    """The settled-flow path keeps pooled connections; one the server closed (a restart, an idle
    timeout) is thrown away and the posting goes through once on a new one."""
    manager, holders, pool = _world(pg_db, investors=1)
    with pg_db.engine.connect() as conn:  # the other pool's connection, so the posting path's are all cut
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    assert killed >= 1
    view = ledger.record_contribution(pg_db, actor=manager, pool_id=pool.id, investor_id=holders[0].id,
                                      amount="10.00", key="after-restart", effective_date=DAY, payment="received")
    again = ledger.record_contribution(pg_db, actor=manager, pool_id=pool.id, investor_id=holders[0].id,
                                       amount="10.00", key="after-restart", effective_date=DAY, payment="received")
    assert again.id == view.id and view.status == "settled"
    with pg_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.idempotency_key == "after-restart")) == 1
    assert reconcile(pg_db) == []
