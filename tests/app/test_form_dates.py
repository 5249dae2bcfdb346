"""A date typed in a form reaches the service as typed: out of range, it is refused with a message, never
recorded as today (st.date_input used to put it back to its default without a word)."""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import func, select

from core.db.models import Distribution, Transaction, Valuation
from tests.app.conftest import button, errors, open_app
from tests.app.test_forms import _manager_world


def count(db, model) -> int:
    with db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("typed, message", [
    (date(2099, 1, 1), f"The date 2099-01-01 is in the future (today is {date.today()})."),
    (date(1900, 1, 1), "The date 1900-01-01 is before the pool's inception (2024-01-01)."),
])
def test_a_flow_dated_out_of_range_is_refused_not_recorded_as_today(db, typed, message):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.date_input(key="flow_date").set_value(typed)
    at.text_input(key="flow_amount").input("250.00")
    at.radio(key="flow_payment").set_value("received")
    button(at, "Record contribution").click()
    at.run()
    assert errors(at) == [message]
    assert count(db, Transaction) == 1  # only the one recorded before
    assert at.date_input(key="flow_date").value == typed  # what was typed is still there to correct


@pytest.mark.parametrize("typed, message", [
    (date(2099, 1, 1), f"The valuation date 2099-01-01 is in the future (today is {date.today()})."),
    (date(1900, 1, 1), "The date 1900-01-01 is before the pool's inception (2024-01-01)."),
])
def test_a_valuation_dated_out_of_range_is_refused_not_recorded_as_today(db, typed, message):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.date_input(key="val_date").set_value(typed)
    at.text_input(key="val_assets").input("110.00")
    button(at, "Preview").click()
    at.run()
    assert errors(at) == [message]
    assert "valuation_preview" not in at.session_state
    assert count(db, Valuation) == 0


def test_a_distribution_dated_in_the_future_is_refused(db):
    manager, investor, pool = _manager_world(db)
    at = open_app(db, manager, "transactions")
    at.date_input(key="dist_date").set_value(date(2099, 1, 1))
    at.text_input(key="dist_total").input("10.00")
    [b for b in at.button if b.label == "Preview"][1].click()  # the second tab's Preview
    at.run()
    assert errors(at) == [f"The record date 2099-01-01 is in the future (today is {date.today()})."]
    assert count(db, Distribution) == 0
