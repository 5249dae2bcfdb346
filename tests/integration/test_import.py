"""CSV import: the format of ACCOUNTING.md, whole file or nothing, every bad row named."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from core.db.models import AuditEvent, JournalEntry, Position, Transaction, User, Valuation
from core.services.importer import ImportRejected, import_csv
from core.services.reconcile import reconcile
from core.services.pools import get_pool
from tests.factories import make_pool, make_user, system

HEADER = "date,type,investor,amount,units,note\n"


def counts(db):
    with db.read() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Transaction, JournalEntry, Valuation, Position))


def test_worked_example_4_imports_exactly(db):
    """1,000 units at 10.00; V 11,000 -> p 11.00; 5,500 buys 500 units; V 15,000 -> p 10.00."""
    manager = make_user(db, "manager")
    pool = make_pool(db, manager, code="EX4", initial_unit_price="10.00")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,10000.00,,seed\n"
        "2024-02-01,valuation,,11000.00,,\n"
        "2024-02-01,contribution,b@example.com,5500.00,,joins after the valuation\n"
        "2024-03-01,valuation,,15000.00,,\n"
    )
    result = import_csv(db, actor=manager, pool_code="EX4", source=text)
    assert (result.rows, result.contributions, result.valuations) == (4, 2, 2)
    view = get_pool(db, actor=manager, pool_id=pool.id)
    assert view.units_outstanding == Decimal("1500.000000")
    assert view.nav_per_unit == Decimal("10.000000")
    with db.read() as s:
        b_units = s.scalar(select(Position.units).join(User, User.id == Position.investor_id)
                           .where(User.email == "b@example.com"))
        prices = list(s.scalars(select(Valuation.nav_per_unit).order_by(Valuation.valuation_date)))
    assert b_units == Decimal("500.000000")
    assert prices == [Decimal("11.000000"), Decimal("10.000000")]
    assert reconcile(db) == []


def test_valuations_of_a_date_come_before_its_flows(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="ORDER", initial_unit_price="100.00")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,5000.00,,\n"
        "2024-01-05,contribution,b@example.com,100.00,,listed before the valuation of the same date\n"
        "2024-01-05,valuation,,5600.00,,\n"
    )
    import_csv(db, actor=manager, pool_code="ORDER", source=text)
    with db.read() as s:
        b = s.scalar(select(Transaction).join(User, User.id == Transaction.investor_id)
                     .where(User.email == "b@example.com"))
    # p = 5,600 / 50 = 112.00 is set first; then 100.00 buys 0.892857 units at 112.00.
    assert b.price == Decimal("112.000000")
    assert b.units == Decimal("0.892857")


def test_bad_rows_are_all_reported_with_row_numbers_and_nothing_is_written(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="BAD", initial_unit_price="10.00", inception=date(2024, 1, 1))
    make_user(db, "investor", email="a@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,100.00,,good row\n"          # row 2
        "2024-01-02,contribution,a@example.com,100.00,\n"                  # row 3: 5 columns
        "2024-13-40,contribution,a@example.com,100.00,,\n"                 # row 4: bad date
        "2024-01-03,transfer,a@example.com,100.00,,\n"                     # row 5: unknown type
        "2024-01-03,contribution,nobody@example.com,100.00,,\n"            # row 6: unknown investor
        "2024-01-03,contribution,a@example.com,100.001,,\n"                # row 7: 3 decimals in USD
        "2024-01-03,contribution,a@example.com,abc,,\n"                    # row 8: text
        "2024-01-03,contribution,a@example.com,NaN,,\n"                    # row 9: NaN
        "2024-01-03,contribution,a@example.com,-5,,\n"                     # row 10: negative
        "2024-01-03,contribution,a@example.com,2000000000000,,\n"          # row 11: over 1e12
        "2023-12-31,contribution,a@example.com,100.00,,\n"                 # row 12: before inception
    )
    before = counts(db)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="BAD", source=text)
    errors = caught.value.errors
    assert [e.split(":")[0] for e in errors] == [f"Row {n}" for n in range(3, 13)]
    assert "expected 6 columns, found 5" in errors[0]
    assert "is not a date" in errors[1]
    assert "unknown type 'transfer'" in errors[2]
    assert "nobody@example.com is not a known investor" in errors[3]
    assert "USD has 2 decimal places" in errors[4]
    assert "is not a number" in errors[5]
    assert "not a finite number" in errors[6]
    assert "must be greater than zero" in errors[7]
    assert "must not exceed 1,000,000,000,000" in errors[8]
    assert "before the pool's inception" in errors[9]
    assert counts(db) == before


def test_replay_errors_withdrawal_and_second_valuation(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="RPL", initial_unit_price="10.00")
    make_user(db, "investor", email="a@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,100.00,,\n"
        "2024-01-03,withdrawal,a@example.com,,11,more units than held\n"
        "2024-01-04,valuation,,100.00,,\n"
        "2024-01-04,valuation,,101.00,,same date again\n"
    )
    before = counts(db)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="RPL", source=text)
    assert caught.value.errors == [
        "Row 3: the withdrawal needs 11.000000 units but a@example.com holds 10.000000.",
        "Row 5: the pool already has a valuation on 2024-01-04.",
    ]
    assert counts(db) == before


def test_withdrawals_by_amount_units_and_all(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="WD", initial_unit_price="3.00")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,100.00,,\n"   # 33.333333 units
        "2024-01-02,contribution,b@example.com,30.00,,\n"    # 10 units
        "2024-01-03,withdrawal,a@example.com,10.00,,\n"      # 3.333334 units (rounded up)
        "2024-01-03,withdrawal,a@example.com,,1.000001,\n"   # 3.00 (3.000003 rounded down)
        "2024-01-04,withdrawal,b@example.com,,all,\n"        # 10 units, 30.00
    )
    import_csv(db, actor=manager, pool_code="WD", source=text)
    with db.read() as s:
        rows = s.execute(select(Transaction.withdrawal_mode, Transaction.units, Transaction.amount)
                         .where(Transaction.kind == "withdrawal").order_by(Transaction.id)).all()
    assert [(m, u, a.quantize(Decimal("0.01"))) for m, u, a in rows] == [
        ("amount", Decimal("3.333334"), Decimal("10.00")),
        ("units", Decimal("1.000001"), Decimal("3.00")),
        ("all", Decimal("10.000000"), Decimal("30.00")),
    ]
    assert reconcile(db) == []


def test_forward_pricing_waits_for_the_next_valuation(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="FWD", initial_unit_price="10.00", pricing_policy="forward")
    make_user(db, "investor", email="a@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,1000.00,,\n"
        "2024-01-05,valuation,,0.00,,prices the waiting contribution at the initial price\n"
        "2024-01-10,contribution,a@example.com,1100.00,,\n"
        "2024-01-12,valuation,,1100.00,,p = 11.00\n"
        "2024-01-20,contribution,a@example.com,500.00,,no valuation after it yet\n"
    )
    result = import_csv(db, actor=manager, pool_code="FWD", source=text)
    assert result.pending == 1
    with db.read() as s:
        rows = s.execute(select(Transaction.status, Transaction.units, Transaction.price)
                         .order_by(Transaction.id)).all()
    assert rows == [("settled", Decimal("100.000000"), Decimal("10.000000")),
                    ("settled", Decimal("100.000000"), Decimal("11.000000")),
                    ("pending", None, None)]
    assert reconcile(db) == []


def test_distribution_rows_split_exactly(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="DST", initial_unit_price="1.00")
    for e in ("a", "b", "c"):
        make_user(db, "investor", email=f"{e}@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,1.00,,\n"
        "2024-01-02,contribution,b@example.com,1.00,,\n"
        "2024-01-02,contribution,c@example.com,1.00,,\n"
        "2024-01-03,valuation,,300.00,,\n"
        "2024-01-03,distribution,,100.00,,\n"
    )
    import_csv(db, actor=manager, pool_code="DST", source=text)
    with db.read() as s:
        parts = list(s.scalars(select(Transaction.amount).where(Transaction.kind == "distribution")
                               .order_by(Transaction.id)))
    assert [p.quantize(Decimal("0.01")) for p in parts] == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]


def test_create_investors_adds_unknown_emails(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="NEW", initial_unit_price="10.00")
    text = HEADER + "2024-01-02,contribution,New.Person@Example.com,50.00,,\n"
    with pytest.raises(ImportRejected):
        import_csv(db, actor=manager, pool_code="NEW", source=text)
    result = import_csv(db, actor=manager, pool_code="NEW", source=text, create_investors=True)
    assert result.investors_created == 1
    with db.read() as s:
        user = s.scalar(select(User).where(User.email == "new.person@example.com"))
        assert user.role == "investor"
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "import.apply")) == 1


def test_import_refused_on_closed_pool_and_for_other_managers(db):
    from core.domain.errors import PermissionDenied
    from core.services.pools import set_pool_status

    manager = make_user(db, "manager")
    other = make_user(db, "manager")
    pool = make_pool(db, manager, code="CLS", initial_unit_price="10.00")
    make_user(db, "investor", email="a@example.com")
    text = HEADER + "2024-01-02,contribution,a@example.com,50.00,,\n"
    with pytest.raises(PermissionDenied):
        import_csv(db, actor=other, pool_code="CLS", source=text)
    set_pool_status(db, actor=manager, pool_id=pool.id, status="closed", expected_version=pool.version)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="CLS", source=text)
    assert "Pool CLS is closed" in caught.value.errors[0]


def test_header_must_match(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="HDR")
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="HDR", source="day,kind\n2024-01-01,valuation\n")
    assert caught.value.errors == ["Row 1: the header must be date,type,investor,amount,units,note."]


def test_import_on_top_of_existing_history_keeps_positions(db):
    manager = make_user(db, "manager")
    pool = make_pool(db, manager, code="TOP", initial_unit_price="10.00")
    make_user(db, "investor", email="a@example.com")
    import_csv(db, actor=manager, pool_code="TOP", source=HEADER + "2024-01-02,contribution,a@example.com,100.00,,\n")
    import_csv(db, actor=manager, pool_code="TOP", source=HEADER + "2024-01-03,contribution,a@example.com,50.00,,\n")
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="TOP", source=HEADER + "2024-01-02,contribution,a@example.com,1.00,,\n")
    assert "before the pool's recorded history ends (2024-01-03)" in caught.value.errors[0]
    assert get_pool(db, actor=system(db), pool_id=pool.id).units_outstanding == Decimal("15.000000")
    assert reconcile(db) == []


def test_an_emptied_pool_restarts_at_the_price_new_units_are_issued_at(db):
    """Rule 1, as in the services: after everyone left, the next money buys at the initial price and
    that becomes the unit value for the flows after it."""
    manager = make_user(db, "manager")
    pool = make_pool(db, manager, code="EMPTY", initial_unit_price="10.00")
    make_user(db, "investor", email="a@example.com")
    make_user(db, "investor", email="b@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,100.00,,\n"
        "2024-01-03,valuation,,150.00,,p = 15.00\n"
        "2024-01-04,withdrawal,a@example.com,,all,\n"
        "2024-01-05,contribution,a@example.com,100.00,,empty pool: initial price 10.00\n"
        "2024-01-05,contribution,b@example.com,50.00,,\n"
    )
    import_csv(db, actor=manager, pool_code="EMPTY", source=text)
    with db.read() as s:
        last = s.execute(select(Transaction.price, Transaction.units).order_by(Transaction.id.desc())).first()
    assert last == (Decimal("10.000000"), Decimal("5.000000"))
    assert get_pool(db, actor=manager, pool_id=pool.id).nav_per_unit == Decimal("10.000000")
    assert reconcile(db) == []


def test_a_valuation_that_rounds_the_unit_value_to_zero_is_refused(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="ZERO", initial_unit_price="1.00")
    make_user(db, "investor", email="a@example.com")
    text = HEADER + (
        "2024-01-02,contribution,a@example.com,100000.00,,\n"
        "2024-01-03,valuation,,0.01,,\n"
        "2024-01-04,contribution,a@example.com,10.00,,\n"
    )
    before = counts(db)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="ZERO", source=text)
    assert caught.value.errors == ["Row 3: At this total the unit value would round to zero; record the assets "
                                   "the pool really has, or take the units out first."]
    assert counts(db) == before
