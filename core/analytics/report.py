"""The pool report behind ``pooldesk report``: the pool's NAV and return, and every investor's position.

Shaped as issue 2 asks: decimals as strings, money at the currency's minor
units, units at 6 places, returns at 10, ``xirr`` null when not available. As of
a date means: valuations, flows and distributions on or before it. Analysts get
investor ids (key ``investor_id``) instead of emails. In the CSV form, text cells
(the pool code, currency and emails) that a spreadsheet would run as a formula get a
leading single quote (core.domain.spreadsheet); the JSON form keeps them as stored.
"""
from __future__ import annotations

import csv
import io
from datetime import date

from sqlalchemy import select

from core.analytics.metrics import pool_metrics, results
from core.db.models import User
from core.db.session import Database
from core.domain.spreadsheet import neutralise
from core.services.context import Actor

POOL_FIELDS = ("code", "currency", "as_of", "units_outstanding", "nav", "nav_per_unit", "twr_since_inception")
INVESTOR_FIELDS = ("units", "value", "contributed", "withdrawn", "distributions", "xirr")
TEXT_FIELDS = ("code", "currency", "email")  # the rest are dates and numbers: a negative figure is not quoted


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    return format(value, "f") if not isinstance(value, str) else value


def pool_report(db: Database, *, actor: Actor, pool_code: str, as_of: date | None = None) -> dict:
    """Admins, analysts and the pool's managers (PermissionDenied otherwise)."""
    figures = pool_metrics(db, actor=actor, pool_code=pool_code, as_of=as_of)
    found = results(db, as_of=figures["as_of"], pool_ids=[figures["pool_id"]])
    rows = found.positions.to_pylist()
    by_ids = actor.role == "analyst"
    emails: dict[int, str] = {}
    if not by_ids:
        with db.read() as session:
            ids = [r["investor_id"] for r in rows]
            emails = dict(session.execute(select(User.id, User.email).where(User.id.in_(ids or [-1]))).all())
    quantum = figures["total_assets"].as_tuple().exponent
    investors = []
    for r in rows:
        who = {"investor_id": r["investor_id"]} if by_ids else {"email": emails.get(r["investor_id"], "")}
        entry = dict(who)
        entry["units"] = _text(r["units"].quantize(figures["units_outstanding"]))
        for name in ("value", "contributed", "withdrawn", "distributions"):
            entry[name] = _text(r[name].quantize(_q(quantum)))
        entry["xirr"] = r["xirr"]
        investors.append(entry)
    investors.sort(key=lambda e: (e.get("email") or "", e.get("investor_id") or 0))
    pool = {name: _text(figures[name]) for name in POOL_FIELDS}
    return {"pool": pool, "investors": investors}


def _q(exponent: int):
    from decimal import Decimal

    return Decimal(1).scaleb(exponent)


def pool_report_csv(db: Database, *, actor: Actor, pool_code: str, as_of: date | None = None) -> str:
    """The same report as CSV: a pool block, a blank line, then one row per investor."""
    report = pool_report(db, actor=actor, pool_code=pool_code, as_of=as_of)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(POOL_FIELDS)
    writer.writerow([_cell(f, report["pool"][f]) for f in POOL_FIELDS])
    writer.writerow([])
    who = "investor_id" if actor.role == "analyst" else "email"
    writer.writerow((who, *INVESTOR_FIELDS))
    for row in report["investors"]:
        writer.writerow([_cell(who, row[who]), *(_cell(f, row[f]) for f in INVESTOR_FIELDS)])
    return out.getvalue()


def _cell(field: str, value) -> str:
    if value is None:
        return ""
    return neutralise(value) if field in TEXT_FIELDS else value
