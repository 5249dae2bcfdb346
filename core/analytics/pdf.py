"""PDF documents: the investor statement and the pool factsheet (reportlab).

Figures come from the analytics engine (Decimal, formatted with the currency's
minor units); the NAV chart is drawn with reportlab's own graphics, so no
browser or image renderer is needed. Floats appear only as chart coordinates.
A Paragraph reads reportlab's mini-markup (<a href>, <img>, <font>...), so every
stored string (names, emails, pool codes) goes into one through ``_text``, which
escapes it; table cells are plain strings and are drawn as they are.
"""
from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from xml.sax.saxutils import escape

from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from sqlalchemy import select

from core.analytics import metrics
from core.db.models import User
from core.db.session import Database
from core.domain.errors import NotFound, PermissionDenied, ValidationError
from core.domain.money import format_money
from core.services.context import Actor

_STYLES = getSampleStyleSheet()
_TABLE = TableStyle([
    ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
    ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
    ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
])
PERIOD_LABELS = {"mtd": "Month to date", "ytd": "Year to date", "1y": "1 year", "3y": "3 years",
                 "since_inception": "Since inception", "range": "Statement period"}


def pct(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _text(value) -> str:
    """A stored string as literal Paragraph text (``<a href=...>`` printed, not followed)."""
    return escape(str(value))


def _table(rows: list[list[str]]) -> Table:
    table = Table(rows, repeatRows=1)
    table.setStyle(_TABLE)
    return table


def _document(title: str, story: list) -> bytes:
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, title=title, author="Pooldesk",
                            leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm, bottomMargin=15 * mm)
    doc.build(story)
    return buffer.getvalue()


def investor_statement_pdf(db: Database, *, actor: Actor, investor_id: int, period_start: date,
                           period_end: date) -> bytes:
    """Holdings and value at the period end, the period's flows, and returns: the investor's XIRR over the
    period (opening value, the period's flows, closing value) and since their first flow, and each pool's TWR
    over the period and since inception. The investor, admins, and managers (their pools only)."""
    if actor.role == "analyst":
        raise PermissionDenied("Statements carry personal data; analysts see investor ids only.")
    if period_start > period_end:
        raise ValidationError("The statement period must start on or before its end.", field="period_start")
    summary = metrics.investor_summary(db, actor=actor, investor_id=investor_id, as_of=period_end)
    in_period, in_period_by_currency = metrics.investor_period(db, actor=actor, investor_id=investor_id,
                                                               start=period_start, end=period_end)
    with db.read() as session:
        investor = session.get(User, investor_id)
        if investor is None:
            raise NotFound(f"No investor with id {investor_id}.")
        name, email = investor.name, investor.email
    story = [Paragraph(f"Statement for {_text(name)}", _STYLES["Title"]),
             Paragraph(f"{_text(email)} &middot; period {period_start.isoformat()} to {period_end.isoformat()}",
                       _STYLES["Normal"]), Spacer(1, 6 * mm),
             Paragraph(f"Holdings on {period_end.isoformat()}", _STYLES["Heading2"])]
    rows = [["Pool", "Units", "NAV per unit", "Value", "Contributed", "Withdrawn", "Distributions", "Gain",
             "XIRR since first flow"]]
    for p in summary["positions"]:
        cur = p["currency"]
        rows.append([p["code"], f"{p['units']:,.6f}", f"{p['nav_per_unit']:,.6f}" if p["nav_per_unit"] else "",
                     format_money(p["value"], cur), format_money(p["contributed"], cur),
                     format_money(p["withdrawn"], cur), format_money(p["distributions"], cur),
                     format_money(p["gain"], cur), pct(p["xirr"])])
    story += [_table(rows), Spacer(1, 4 * mm)]
    totals = [["Currency", "Value", "Contributed", "Withdrawn", "Distributions", "Gain", "XIRR since first flow",
               "XIRR in the period"]]
    for t in summary["totals"]:
        cur = t["currency"]
        period = in_period_by_currency.get(cur)
        totals.append([cur, format_money(t["value"], cur), format_money(t["contributed"], cur),
                       format_money(t["withdrawn"], cur), format_money(t["distributions"], cur),
                       format_money(t["gain"], cur), pct(t["xirr"]), pct(period.xirr if period else None)])
    story += [Paragraph("Totals", _STYLES["Heading2"]), _table(totals), Spacer(1, 4 * mm)]
    flows = [["Date", "Pool", "Flow", "Amount"]]
    for p in summary["positions"]:
        for day, amount, kind in in_period[p["pool_id"]].flows:
            flows.append([day.isoformat(), p["code"], kind, format_money(amount, p["currency"])])
    story += [Paragraph("Flows in the period (your side: paid in negative, received positive)", _STYLES["Heading2"]),
              _table(flows) if len(flows) > 1 else Paragraph("No flows in this period.", _STYLES["Normal"]),
              Spacer(1, 4 * mm)]
    returns = [["Pool", "Value at the start", "Value at the end", "Your return in the period (XIRR)",
                "Pool return in the period (TWR)", "Pool since inception (TWR)"]]
    for p in summary["positions"]:
        found = metrics.results(db, as_of=period_end, start=period_start, pool_ids=[p["pool_id"]]).pools[p["pool_id"]]
        period = in_period[p["pool_id"]]
        returns.append([p["code"], format_money(period.opening, p["currency"]),
                        format_money(period.closing, p["currency"]), pct(period.xirr),
                        pct(found["returns"]["range"]["return"]), pct(found["returns"]["since_inception"]["return"])])
    story += [Paragraph("Returns", _STYLES["Heading2"]), _table(returns),
              Paragraph("Your return in the period counts the value at the start as paid in on the first day and "
                        "the value at the end as received on the last (money-weighted, a year's rate); the pool's "
                        "return chains its unit value between valuations (time-weighted).", _STYLES["Normal"])]
    return _document(f"Pooldesk statement {period_end.isoformat()}", story)


def _nav_chart(series, pool_id: int, width: float = 170 * mm, height: float = 60 * mm) -> Drawing:
    rows = [r for r in series.to_pylist() if r["pool_id"] == pool_id]
    drawing = Drawing(width, height)
    if len(rows) < 2:
        drawing.add(String(10, height / 2, "Not enough valuations for a chart yet.", fontSize=9))
        return drawing
    first = rows[0]["date"].toordinal()
    step = max(1, len(rows) // 600)
    points = [(r["date"].toordinal() - first, float(r["nav_per_unit"])) for r in rows[::step]]  # chart only
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 35, 20, width - 50, height - 30
    plot.data = [points]
    plot.lines[0].strokeColor = colors.HexColor("#1f77b4")
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = 0, points[-1][0] or 1
    plot.xValueAxis.labelTextFormat = lambda x: date.fromordinal(int(x) + first).isoformat()
    plot.xValueAxis.labels.fontSize = plot.yValueAxis.labels.fontSize = 7
    drawing.add(plot)
    drawing.add(String(35, height - 8, "NAV per unit", fontSize=8))
    return drawing


def pool_factsheet_pdf(db: Database, *, actor: Actor, pool_id: int, as_of: date | None = None) -> bytes:
    """NAV chart, returns table, risk, fees and AUM of a pool (its readers: admins, analysts, its managers)."""
    figures = metrics.pool_metrics(db, actor=actor, pool_id=pool_id, as_of=as_of)
    series = metrics.pool_series(db, actor=actor, pool_ids=[pool_id], as_of=figures["as_of"])["series"]
    cur = figures["currency"]
    story = [Paragraph(f"{_text(figures['name'])} ({_text(figures['code'])})", _STYLES["Title"]),
             Paragraph(f"Factsheet as of {figures['as_of'].isoformat()} &middot; currency {_text(cur)} &middot; "
                       f"inception {figures['inception_date'].isoformat()}", _STYLES["Normal"]), Spacer(1, 4 * mm),
             _nav_chart(series, pool_id), Spacer(1, 4 * mm),
             Paragraph("Returns (time-weighted)", _STYLES["Heading2"])]
    rows = [["Period", "From", "To", "Return", "Annualised"]]
    for key in ("mtd", "ytd", "1y", "3y", "since_inception"):
        r = figures["returns"][key]
        rows.append([PERIOD_LABELS[key], r["start"].isoformat() if r["start"] else "",
                     r["end"].isoformat() if r["end"] else "", pct(r["return"]), pct(r["annualised"])])
    story += [_table(rows), Spacer(1, 4 * mm), Paragraph("Risk", _STYLES["Heading2"])]
    mdd = figures["max_drawdown"] or {}
    story.append(_table([
        ["Volatility (annualised)", "Sharpe", "Max drawdown", "Peak", "Trough", "Recovered"],
        [pct(figures["volatility"]), f"{figures['sharpe']:.2f}" if figures["sharpe"] is not None else "n/a",
         pct(mdd.get("depth")), str(mdd.get("peak_date") or ""), str(mdd.get("trough_date") or ""),
         str(mdd.get("recovery_date") or "not yet")]]))
    story += [Spacer(1, 4 * mm), Paragraph("Assets and fees", _STYLES["Heading2"]), _table([
        ["AUM (NAV)", "Units outstanding", "NAV per unit", "Management fees", "Performance fees", "Holders",
         "Top-10 share"],
        [format_money(figures["nav"], cur), f"{figures['units_outstanding']:,.6f}", f"{figures['nav_per_unit']:,.6f}",
         format_money(figures["fees"]["management"], cur), format_money(figures["fees"]["performance"], cur),
         str(figures["holders"]), pct(figures["top10_concentration"])]])]
    return _document(f"Pooldesk factsheet {figures['code']}", story)


def investor_email(db: Database, investor_id: int) -> tuple[str, str]:
    with db.read() as session:
        row = session.execute(select(User.email, User.name).where(User.id == investor_id)).one_or_none()
        if row is None:
            raise NotFound(f"No investor with id {investor_id}.")
        return row[0], row[1]
