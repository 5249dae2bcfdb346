"""Tables size figure and date columns to their longest value, so no amount, unit count or date is cut off."""
from __future__ import annotations

import pandas as pd

from app.components.tables import _widths


def test_figures_and_dates_get_room_for_their_longest_value_and_text_shares_the_rest():
    frame = pd.DataFrame({
        "Investor": ["Ivan Investor <ivan@example.com>", "Ann <ann@example.com>"],
        "Amount": ["USD 1,500.00", "USD -12,345,678.90"],
        "Units": ["150.000000", "1234567.123456"],
        "Settled": ["2026-12-02 12:58", ""],
        "Status": ["settled", "pending"],
    })
    config = _widths(frame)
    assert set(config) == {"Amount", "Units", "Settled"}  # text columns are left to the grid
    widths = {header: column["width"] for header, column in config.items()}
    assert widths["Amount"] >= len("USD -12,345,678.90") * 6.5  # the longest value fits, not the first
    assert widths["Units"] >= len("1234567.123456") * 6.5
    assert widths["Settled"] >= len("2026-12-02 12:58") * 6.5
