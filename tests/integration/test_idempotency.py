"""An idempotency key identifies a request by what it means, not by how the number was typed."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select

from core.db.models import Transaction
from core.domain.errors import IdempotencyError
from core.services import ledger
from tests.factories import make_pool, make_user


@pytest.mark.parametrize("payment", ["received", "gateway"])
def test_the_same_amount_written_differently_is_the_same_request(db, payment):
    manager = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="10.00")
    first = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                       amount="1000", key="k-1", payment=payment)
    again = ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                       amount="1,000.00", key="k-1", payment=payment)
    assert (again.id, again.replayed, first.replayed) == (first.id, True, False)
    assert again.amount == Decimal("1000")
    with pytest.raises(IdempotencyError):
        ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id,
                                   amount="1000.01", key="k-1", payment=payment)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Transaction)) == 1


@pytest.mark.parametrize("payment", ["received", "gateway"])
def test_another_user_cannot_replay_someone_elses_key(db, payment):
    manager = make_user(db, "manager")
    colleague = make_user(db, "manager")
    investor = make_user(db, "investor")
    pool = make_pool(db, manager, initial_unit_price="10.00")
    from core.services import pools

    pools.update_pool(db, actor=make_user(db, "admin"), pool_id=pool.id, expected_version=pool.version,
                      settings=pools.PoolSettings(name=pool.name), manager_ids=[manager.id, colleague.id])
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="10",
                               key="shared", payment=payment)
    with pytest.raises(IdempotencyError):
        ledger.record_contribution(db, actor=colleague, pool_id=pool.id, investor_id=investor.id, amount="10",
                                   key="shared", payment=payment)
