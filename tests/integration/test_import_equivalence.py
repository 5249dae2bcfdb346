"""The columnar fast path of CSV import and the row-by-row reference replay agree.

Each example imports one random file twice, into two pools with the same settings and
the same history: once as ``pooldesk import`` does (fast path first), once through the
reference replay alone. Both must refuse it with the same errors, or write the same
rows: transactions, journal legs (with what they point at), valuations, fee accruals,
distributions, positions and the pool's running totals.
"""
from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select

from core.db.models import Distribution, FeeAccrual, JournalEntry, Pool, Position, Transaction, Valuation
from core.domain import accounting
from core.services import import_columns
from core.services.importer import ImportRejected, import_csv
from core.services.ledger import set_reinvestment
from core.services.reconcile import reconcile
from tests.factories import make_pool, make_user

HEADER = "date,type,investor,amount,units,note\n"
START = date(2024, 1, 1)
INVESTORS = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
_codes = itertools.count(1)


def people(db) -> dict:
    """A manager, four investors and a user who is not an investor, once per test database."""
    if not hasattr(db, "equivalence_people"):
        manager = make_user(db, "manager")
        ids = {email: make_user(db, "investor", email=email).id for email in INVESTORS}
        make_user(db, "analyst", email="analyst@example.com")
        db.equivalence_people = {"manager": manager, "ids": ids}
    return db.equivalence_people


@contextmanager
def reference_only():
    with mock.patch.object(import_columns, "import_columns", return_value=None):
        yield


class Spy:
    """Counts the imports the fast path took."""

    def __init__(self):
        self.taken = 0
        self.real = import_columns.import_columns

    def __call__(self, *args, **kwargs):
        result = self.real(*args, **kwargs)
        self.taken += result is not None
        return result


def attempt(db, manager, code: str, text: str, create: bool = False):
    try:
        result = import_csv(db, actor=manager, pool_code=code, source=text, create_investors=create)
        return ("ok", result.rows, result.contributions, result.withdrawals, result.distributions,
                result.valuations, result.pending, tuple(result.warnings), result.investors_created)
    except ImportRejected as exc:
        return ("rejected", tuple(exc.errors))


def snapshot(db, pool_id: int) -> dict:
    """Everything an import wrote for one pool, with surrogate ids replaced by their order."""
    with db.read() as s:
        txs = s.scalars(select(Transaction).where(Transaction.pool_id == pool_id).order_by(Transaction.id)).all()
        vals = s.scalars(select(Valuation).where(Valuation.pool_id == pool_id).order_by(Valuation.id)).all()
        dists = s.scalars(select(Distribution).where(Distribution.pool_id == pool_id).order_by(Distribution.id)).all()
        tx_rank = {t.id: i for i, t in enumerate(txs)}
        val_rank = {v.id: i for i, v in enumerate(vals)}
        dist_rank = {d.id: i for i, d in enumerate(dists)}
        legs = s.scalars(select(JournalEntry).where(JournalEntry.pool_id == pool_id).order_by(JournalEntry.id)).all()
        fees = s.scalars(select(FeeAccrual).where(FeeAccrual.pool_id == pool_id).order_by(FeeAccrual.id)).all()
        positions = s.scalars(select(Position).where(Position.pool_id == pool_id)
                              .order_by(Position.investor_id)).all()
        pool = s.get(Pool, pool_id)
        return {
            "transactions": [(t.kind, t.status, t.investor_id, t.amount, t.units, t.price, t.withdrawal_mode,
                              t.effective_date, t.source, dist_rank.get(t.distribution_id), t.note,
                              t.settled_at is None, t.payment_received_at is None, t.version) for t in txs],
            "journal": [(j.account, j.investor_id, j.amount, j.units, j.effective_date, tx_rank.get(j.transaction_id),
                         val_rank.get(j.valuation_id), dist_rank.get(j.distribution_id)) for j in legs],
            "valuations": [(v.valuation_date, v.total_assets, v.nav_before_fees, v.management_fee, v.performance_fee,
                            v.nav, v.units_outstanding, v.nav_per_unit, v.high_water_mark, v.note) for v in vals],
            "fees": [(val_rank[f.valuation_id], f.kind, f.amount, f.basis, f.accrual_date) for f in fees],
            "distributions": [(d.record_date, d.total, d.per_unit, d.units_outstanding, d.nav_per_unit_after, d.note)
                              for d in dists],
            "positions": [(p.investor_id, p.units, p.contributed, p.withdrawn, p.distributions,
                           p.reinvest_distributions, p.opened_seq, p.version) for p in positions],
            "pool": (pool.units_outstanding, pool.total_assets, pool.fees_payable, pool.nav_per_unit,
                     pool.high_water_mark, pool.last_valuation_date, pool.last_flow_date, pool.ledger_version),
        }


# --- random files ------------------------------------------------------------------------

def decimal_text(value: int, places: int) -> str:
    return str(value) if places == 0 else f"{value // 10**places}.{value % 10**places:0{places}d}"


def money(places: int):
    plain = st.integers(1, 400 * 10**places * 10).map(lambda v: decimal_text(v, places))
    odd = st.sampled_from(["1,000", " 250 ", "0", "-5", "abc", "NaN", "1e2", "100.001", "2000000000000", ""])
    return st.one_of(plain, plain, plain, plain, plain, plain, st.integers(1, 999).map(str), odd)


def small_money(places: int):
    return st.integers(1, 200 * 10**places).map(lambda v: decimal_text(v, places))


@st.composite
def clean_files(draw, places: int):
    """Files whose every row should import: flows that stay within holdings, valuations near the assets."""
    days = sorted(draw(st.lists(st.integers(0, 30), min_size=1, max_size=60)))
    contributed = {e: 0 for e in INVESTORS}
    assets = 0
    rows = []
    for offset in days:
        day = (START + timedelta(days=offset)).isoformat()
        kind = draw(st.sampled_from(["contribution"] * 5 + ["withdrawal"] * 3 + ["valuation", "distribution"]))
        email = draw(st.sampled_from(INVESTORS))
        note = draw(st.sampled_from(["", "monthly", " padded ", "café"]))
        if kind == "withdrawal" and contributed[email] > 20:
            how = draw(st.sampled_from(["amount", "amount", "units", "all"]))
            if how == "all":
                rows.append(f"{day},withdrawal,{email},,{draw(st.sampled_from(['all', ' All ']))},{note}")
                assets -= contributed[email]
                contributed[email] = 0
            elif how == "units":
                rows.append(f"{day},withdrawal,{email},,{draw(st.sampled_from(['0.5', '1', '0.000001']))},{note}")
            else:
                value = draw(st.integers(1, contributed[email] * 10**places // 10))
                rows.append(f"{day},withdrawal,{email},{decimal_text(value, places)},,{note}")
                contributed[email] -= value // 10**places
                assets -= value // 10**places
        elif kind == "valuation" and assets > 0:
            factor = draw(st.integers(90, 115))
            rows.append(f"{day},valuation,,{assets * factor // 100},,{note}")
        elif kind == "distribution" and assets > 100:
            value = draw(st.integers(1, assets * 10**places // 100))
            rows.append(f"{day},distribution,,{decimal_text(value, places)},,{note}")
        else:
            value = draw(st.integers(10 * 10**places, 4000 * 10**places))
            amount = draw(st.sampled_from([decimal_text(value, places), str(value // 10**places or 10)]))
            rows.append(f"{day},contribution,{email},{amount},,{note}")
            contributed[email] += int(Decimal(amount))
            assets += int(Decimal(amount))
    return HEADER + "\n".join(rows) + "\n"


@st.composite
def files(draw, places: int):
    if draw(st.integers(0, 9)) < 6:
        return draw(clean_files(places))
    rows = []
    for _ in range(draw(st.integers(1, 40))):
        day = (START + timedelta(days=draw(st.integers(0, 30)))).isoformat()
        kind = draw(st.sampled_from(["contribution"] * 6 + ["withdrawal"] * 3 + ["valuation"] * 2 + ["distribution"]))
        email = draw(st.sampled_from(INVESTORS * 6 + ["", "nobody@example.com", "analyst@example.com", "not-an-email"]))
        note = draw(st.sampled_from(["", "monthly", " padded ", "café"]))
        units = ""
        if kind == "contribution":
            amount = draw(money(places))
        elif kind == "withdrawal":
            choice = draw(st.integers(0, 3))
            if choice <= 1:
                amount = draw(small_money(places))
            elif choice == 2:
                amount = ""
                units = draw(st.sampled_from(["all", "ALL", "0.5", "1.000001", "0.0000001", "3"]))
            else:  # both or neither: refused
                amount, units = draw(st.sampled_from([("", ""), ("5", "2")]))
        elif kind == "valuation":
            email = draw(st.sampled_from(["", "", "", "a@example.com"]))
            amount = draw(st.one_of(money(places), st.just("0")))
        else:
            email = draw(st.sampled_from(["", "", "", "b@example.com"]))
            amount = draw(small_money(places))
        rows.append(f"{day},{kind},{email},{amount},{units},{note}")
    if draw(st.integers(0, 9)) == 0:
        rows.insert(draw(st.integers(0, len(rows))), draw(st.sampled_from(["2024-01-05,contribution", "", "x,y,z,,,"])))
    return HEADER + "\n".join(rows) + "\n"


pool_settings = st.fixed_dictionaries({
    "currency": st.sampled_from(["USD", "USD", "JPY", "KWD"]),
    "initial_unit_price": st.sampled_from(["10.00", "1.00", "3.00", "7.123457"]),
    "pricing_policy": st.sampled_from(["latest", "latest", "latest", "forward"]),
    "management_fee_bps": st.sampled_from([0, 150]),
    "performance_fee_pct": st.sampled_from(["0", "20"]),
})


@settings(max_examples=int(os.environ.get("POOLDESK_EQUIVALENCE_EXAMPLES", "80")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data(), pool=pool_settings, history=st.booleans(), reinvest=st.booleans(), create=st.booleans())
def test_fast_path_and_reference_write_the_same(db, data, pool, history, reinvest, create):
    who = people(db)
    manager = who["manager"]
    places = {"USD": 2, "JPY": 0, "KWD": 3}[pool["currency"]]
    text = data.draw(files(places))
    fast_code, ref_code = f"F{next(_codes)}", f"R{next(_codes)}"
    fast = make_pool(db, manager, code=fast_code, inception=START, **pool)
    ref = make_pool(db, manager, code=ref_code, inception=START, **pool)
    if history:
        first = HEADER + "2024-01-01,contribution,a@example.com,500,,\n2024-01-01,contribution,b@example.com,300,,\n"
        assert attempt(db, manager, fast_code, first)[0] == "ok"
        with reference_only():
            assert attempt(db, manager, ref_code, first)[0] == "ok"
    if reinvest:
        for p in (fast, ref):
            set_reinvestment(db, actor=manager, pool_id=p.id, investor_id=who["ids"]["a@example.com"], reinvest=True)
    spy = Spy()
    with mock.patch.object(import_columns, "import_columns", spy):
        got = attempt(db, manager, fast_code, text, create)
    with reference_only():
        expected = attempt(db, manager, ref_code, text, create)
    if create and got[0] == "ok":
        # The first import created any new investor; the second finds them known.
        got, expected = got[:-1], expected[:-1]
    assert got == expected
    assert snapshot(db, fast.id) == snapshot(db, ref.id)


def test_a_clean_file_takes_the_fast_path_and_matches_the_reference(db):
    """A year of weekly valuations, flows of every kind, a distribution with a reinvesting holder."""
    who = people(db)
    manager = who["manager"]
    rng = np.random.default_rng(5)
    lines = [HEADER.strip()]
    units_held = {e: 0 for e in INVESTORS}
    for day in range(0, 120):
        when = (START + timedelta(days=day)).isoformat()
        if day % 7 == 6:
            lines.append(f"{when},valuation,,{int(rng.integers(40_000, 60_000))}.{int(rng.integers(0, 100)):02d},,weekly")
        if day == 60:
            lines.append(f"{when},distribution,,123.45,,half year")
        for _ in range(int(rng.integers(0, 6))):
            email = INVESTORS[int(rng.integers(0, 4))]
            if units_held[email] > 50 and rng.random() < 0.3:
                lines.append(f"{when},withdrawal,{email},{int(rng.integers(1, 20))}.{int(rng.integers(0, 100)):02d},,")
            elif units_held[email] > 50 and rng.random() < 0.1:
                lines.append(f"{when},withdrawal,{email},,1.5,by units")
            else:
                lines.append(f"{when},contribution,{email},{int(rng.integers(100, 900))}.00,,saving")
                units_held[email] += 100
    lines.append(f"{(START + timedelta(days=119)).isoformat()},withdrawal,d@example.com,,all,leaving")
    text = "\r\n".join(lines) + "\r\n"
    fast = make_pool(db, manager, code=f"F{next(_codes)}", inception=START, management_fee_bps=100,
                     performance_fee_pct="20", initial_unit_price="10.00")
    ref = make_pool(db, manager, code=f"R{next(_codes)}", inception=START, management_fee_bps=100,
                    performance_fee_pct="20", initial_unit_price="10.00")
    for p in (fast, ref):
        set_reinvestment(db, actor=manager, pool_id=p.id, investor_id=who["ids"]["c@example.com"], reinvest=True)
    spy = Spy()
    with mock.patch.object(import_columns, "import_columns", spy):
        got = attempt(db, manager, fast.code, text)
    assert spy.taken == 1
    with reference_only():
        expected = attempt(db, manager, ref.code, text)
    assert got == expected and got[0] == "ok"
    fast_book, ref_book = snapshot(db, fast.id), snapshot(db, ref.id)
    assert fast_book == ref_book
    assert len(fast_book["distributions"]) == 1 and len(fast_book["valuations"]) == 17
    assert any(t[0] == "reinvestment" for t in fast_book["transactions"])
    assert reconcile(db) == []


def test_a_bad_row_hands_the_file_to_the_reference_which_names_it(db):
    who = people(db)
    make_pool(db, who["manager"], code="BADF", inception=START)
    text = HEADER + "2024-01-02,contribution,a@example.com,100.00,,\n2024-01-03,withdrawal,a@example.com,,11,\n"
    spy = Spy()
    with mock.patch.object(import_columns, "import_columns", spy):
        with pytest.raises(ImportRejected) as caught:
            import_csv(db, actor=who["manager"], pool_code="BADF", source=text)
    assert spy.taken == 0
    assert caught.value.errors == ["Row 3: the withdrawal needs 11.000000 units but a@example.com holds 10.000000."]


# --- the integer rounding rules against core/domain/accounting.py -----------------------------

amounts4 = st.integers(1, 10**16)  # money scaled by 10**4, up to 1e12
prices6 = st.one_of(st.integers(1, 10**9), st.integers(1, import_columns.PRICE_LIMIT - 1))


@settings(max_examples=400, deadline=None)
@given(amount=amounts4, price=prices6)
def test_integer_unit_rules_equal_the_decimal_rules(amount, price):
    a = Decimal(amount).scaleb(-4)
    p = Decimal(price).scaleb(-6)
    try:
        q, r = import_columns._divide(np.array([amount], dtype=np.int64), price)
    except import_columns._Decline:
        return  # beyond int64: the reference replay takes such a file
    twice = 2 * r
    half_even = int(q[0] + ((twice[0] > price) or (twice[0] == price and q[0] % 2 == 1)))
    ceiling = int(q[0] + (r[0] > 0))
    assert Decimal(half_even).scaleb(-6) == accounting.units_for_contribution(a, p)
    assert Decimal(ceiling).scaleb(-6) == accounting.units_for_withdrawal(a, p)


@settings(max_examples=400, deadline=None)
@given(units=st.integers(1, 9 * 10**18), price=prices6, currency=st.sampled_from(["USD", "JPY", "KWD"]))
def test_integer_amount_for_units_equals_the_decimal_rule(units, price, currency):
    from core.domain.money import minor_units

    try:
        got = import_columns._amount_for_units(np.array([units], dtype=np.int64), price, minor_units(currency))
    except import_columns._Decline:
        return  # beyond int64: the reference replay takes such a file
    expected = accounting.amount_for_units(Decimal(units).scaleb(-6), Decimal(price).scaleb(-6), currency)
    assert Decimal(int(got[0])).scaleb(-4) == expected
