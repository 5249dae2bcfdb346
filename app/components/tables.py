"""Tables of rows already formatted as text, so exact Decimals never pass through floats."""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import pandas as pd
import streamlit as st


def show_table(rows: Iterable[Any], columns: dict[str, Callable[[Any], Any]], *, empty: str,
               key: str | None = None, height: int | None = None) -> None:
    """Render ``rows`` with one column per (header, getter); show ``empty`` (what to do next) when there are none."""
    rows = list(rows)
    if not rows:
        st.info(empty)
        return
    frame = pd.DataFrame([{header: get(row) for header, get in columns.items()} for row in rows])
    kwargs = {"height": height} if height else {}
    st.dataframe(frame, hide_index=True, width="stretch", key=key, column_config=_widths(frame), **kwargs)


_FIGURE = re.compile(r"^([A-Z]{3} )?[-+]?[\d,.:\- ]+%?$")


def _widths(frame: pd.DataFrame) -> dict[str, Any]:
    """Figures and dates get the width of their longest value, so they are never cut off;
    text columns share what is left."""
    config = {}
    for header in frame.columns:
        values = [str(v) for v in frame[header].head(200) if v is not None and str(v) != ""]
        if values and all(_FIGURE.match(v) for v in values):
            longest = max(len(str(header)), *(len(v) for v in values))
            config[header] = st.column_config.Column(width=min(round(longest * 6.5) + 22, 320))
    return config
