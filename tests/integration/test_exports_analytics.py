"""Exports and PDFs open and carry the expected figures (parsed back); monthly statements are queued once."""
import csv
import io
from datetime import date
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import select

from core.analytics import cache, exports, pdf
from core.db.models import Notification, OutboxMessage
from core.domain.errors import PermissionDenied
from core.services import ledger
from tests.factories import make_user, make_valued_pool


@pytest.fixture
def book(db):
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "EXP", contributed="10000.00", valued_at="12345.67",
                                      investor_email="holder@example.com")
    return db, mgr, inv, pool


def test_xlsx_holdings_parse_back_with_exact_figures(book):
    db, mgr, inv, pool = book
    seen = []
    data = exports.export_bytes(db, actor=mgr, dataset="holdings", fmt="xlsx", as_of=date(2024, 6, 30),
                                progress=lambda done, total: seen.append((done, total)))
    rows = list(load_workbook(io.BytesIO(data), read_only=True)["holdings"].values)
    header, first = rows[0], dict(zip(rows[0], rows[1]))
    assert "xirr" in header and first["pool"] == "EXP" and first["investor_id"] == inv.id
    assert Decimal(str(first["value"])) == Decimal("12345.67")
    assert Decimal(str(first["units"])) == Decimal("1000")
    assert seen[0] == (0, 1) and seen[-1] == (1, 1)


def test_transactions_csv_streams_in_chunks_and_analysts_see_ids_only(book):
    db, mgr, inv, pool = book
    for day in range(2, 7):
        ledger.record_contribution(db, actor=mgr, pool_id=pool.id, investor_id=inv.id, amount="1.00", key=None,
                                   effective_date=date(2024, 7, day), payment="received")
    analyst = make_user(db, "analyst")
    seen = []
    text = exports.export_bytes(db, actor=analyst, dataset="transactions", fmt="csv", chunk_size=2,
                                progress=lambda done, total: seen.append(done)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6 and seen == [0, 2, 4, 6]
    assert "holder@example.com" not in text and "investor_email" not in rows[0]
    assert rows[0]["amount"] == "10000.0000" and rows[0]["units"] == "1000.000000"
    table = pq.read_table(io.BytesIO(exports.export_bytes(db, actor=analyst, dataset="transactions", fmt="parquet")))
    assert table.num_rows == 6 and table.column("amount")[0].as_py() == Decimal("10000.0000")
    own = exports.export_bytes(db, actor=inv, dataset="transactions", fmt="csv").decode()
    assert len(own.splitlines()) == 7
    ranged = exports.export_bytes(db, actor=analyst, dataset="transactions", fmt="csv", start=date(2024, 7, 3),
                                  as_of=date(2024, 7, 5)).decode()  # the page's date range, both ends included
    assert [r["effective_date"] for r in csv.DictReader(io.StringIO(ranged))] == ["2024-07-03", "2024-07-04",
                                                                                   "2024-07-05"]
    with pytest.raises(PermissionDenied):
        exports.export_bytes(db, actor=inv, dataset="transactions", fmt="parquet")
    with pytest.raises(PermissionDenied):
        exports.export_bytes(db, actor=make_user(db, "investor"), dataset="performance", fmt="csv")


def test_statement_and_factsheet_pdfs_contain_the_figures(book):
    db, mgr, inv, pool = book
    statement = pdf.investor_statement_pdf(db, actor=inv, investor_id=inv.id, period_start=date(2024, 1, 1),
                                           period_end=date(2024, 6, 30))
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(statement)).pages)
    assert "holder@example.com" in text and "USD 12,345.67" in text and "USD -10,000.00" in text
    assert "23.46%" in text  # the pool's TWR: 12.345670 / 10 - 1
    factsheet = pdf.pool_factsheet_pdf(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 6, 30))
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(factsheet)).pages)
    assert "EXP" in text and "USD 12,345.67" in text and "23.46%" in text and "12.345670" in text
    with pytest.raises(PermissionDenied):
        pdf.investor_statement_pdf(db, actor=make_user(db, "analyst"), investor_id=inv.id,
                                   period_start=date(2024, 1, 1), period_end=date(2024, 6, 30))
    with pytest.raises(PermissionDenied):
        pdf.investor_statement_pdf(db, actor=make_user(db, "investor"), investor_id=inv.id,
                                   period_start=date(2024, 1, 1), period_end=date(2024, 6, 30))


def test_the_statement_gives_the_investors_return_over_the_period(book):
    """Opening value (paid in on the first day), the period's flows, closing value (received on the last)."""
    from core.analytics import metrics
    from core.domain import returns

    db, mgr, inv, pool = book  # 1,000 units bought at 10.00 on 2024-01-01; p = 12.345670 from 2024-06-30
    tx = ledger.record_contribution(db, actor=mgr, pool_id=pool.id, investor_id=inv.id, amount="1000.00", key=None,
                                    effective_date=date(2024, 7, 10), payment="received")
    per_pool, per_currency = metrics.investor_period(db, actor=inv, investor_id=inv.id, start=date(2024, 4, 1),
                                                     end=date(2024, 7, 31))
    period = per_pool[pool.id]
    closing = ((Decimal("1000") + tx.units) * Decimal("12.345670")).quantize(Decimal("0.0001"))  # value = units x p
    assert (period.opening, period.closing) == (Decimal("10000.00"), closing)
    assert period.flows == [(date(2024, 7, 10), Decimal("-1000.00"), "contribution")]
    assert period.xirr == returns.xirr([(date(2024, 4, 1), Decimal("-10000.00")),
                                        (date(2024, 7, 10), Decimal("-1000.00")), (date(2024, 7, 31), closing)])
    assert per_currency["USD"] == period
    statement = pdf.investor_statement_pdf(db, actor=inv, investor_id=inv.id, period_start=date(2024, 4, 1),
                                           period_end=date(2024, 7, 31))
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(statement)).pages).split())
    assert f"{period.xirr * 100:.2f}%" in text and "USD 10,000.00" in text
    assert "2024-07-10 EXP contribution USD -1,000.00" in text
    with pytest.raises(PermissionDenied):
        metrics.investor_period(db, actor=make_user(db, "investor"), investor_id=inv.id, start=date(2024, 4, 1),
                                end=date(2024, 7, 31))


def test_monthly_statements_are_queued_once_per_investor_and_month(book):
    db, mgr, inv, pool = book
    from jobs.statements import JOB, schedule_monthly_statements
    from tests.factories import system

    admin = system(db)
    assert schedule_monthly_statements(db, actor=admin, month=date(2024, 6, 1)) == 1
    assert schedule_monthly_statements(db, actor=admin, month=date(2024, 6, 1)) == 0
    with db.read() as session:
        rows = [m for m in session.query(OutboxMessage).filter(OutboxMessage.job == JOB)]
    assert [r.payload for r in rows] == [{"investor_id": inv.id, "period_start": "2024-06-01",
                                          "period_end": "2024-06-30"}]
    with pytest.raises(PermissionDenied):
        schedule_monthly_statements(db, actor=mgr, month=date(2024, 6, 1))


def test_with_monthly_statements_on_the_workers_queue_last_month_once(book, monkeypatch):
    db, mgr, inv, pool = book
    import jobs.statements
    from jobs.settings import reset_job_settings
    from jobs.statements import JOB, schedule_if_due

    def queued():
        with db.read() as session:
            return [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.job == JOB))]

    jobs.statements.LOOK.reset()
    reset_job_settings()
    assert schedule_if_due(db, today=date(2024, 7, 1)) == 0 and queued() == []  # off unless configured
    monkeypatch.setenv("POOLDESK_MONTHLY_STATEMENTS", "true")
    reset_job_settings()
    assert schedule_if_due(db, today=date(2024, 7, 1)) == 1
    assert queued() == [{"investor_id": inv.id, "period_start": "2024-06-01", "period_end": "2024-06-30"}]
    jobs.statements.LOOK.reset()
    assert schedule_if_due(db, today=date(2024, 7, 2)) == 0  # June is done
    jobs.statements.LOOK.reset()
    assert schedule_if_due(db, today=date(2024, 8, 1)) == 1  # then July
    monkeypatch.delenv("POOLDESK_MONTHLY_STATEMENTS")
    reset_job_settings()


def test_the_statement_job_sends_the_pdf(book, monkeypatch):
    db, mgr, inv, pool = book
    import jobs.notify
    import jobs.statements

    sent = []
    monkeypatch.setattr(jobs.statements, "database", lambda: db)
    monkeypatch.setattr(jobs.notify, "send_email_now", lambda **kw: sent.append(kw) or "sent")
    assert jobs.statements.send_monthly_statement(inv.id, "2024-06-01", "2024-06-30") == "sent"
    (mail,) = sent
    assert mail["to_email"] == "holder@example.com" and mail["subject"] == "Your Pooldesk statement for June 2024"
    name, blob, mime = mail["attachments"][0]
    assert (name, mime) == ("pooldesk-statement-2024-06-30.pdf", "application/pdf")
    assert "USD 12,345.67" in PdfReader(io.BytesIO(blob)).pages[0].extract_text()
    with db.read() as session:
        notices = session.scalars(select(Notification.title).where(Notification.user_id == inv.id,
                                                                   Notification.event == "monthly_statement")).all()
    assert notices == ["Your statement for June 2024 is ready"]


def test_the_statement_job_follows_the_investors_choices(book, monkeypatch):
    db, mgr, inv, pool = book
    import jobs.notify
    import jobs.statements
    from core.services import notifications

    sent = []
    monkeypatch.setattr(jobs.statements, "database", lambda: db)
    monkeypatch.setattr(jobs.notify, "send_email_now", lambda **kw: sent.append(kw) or "sent")
    notifications.set_preferences(db, actor=inv, choices={"monthly_statement": {"email": False, "in_app": False}})
    assert jobs.statements.send_monthly_statement(inv.id, "2024-06-01", "2024-06-30") == "email not wanted"
    assert sent == []
    with db.read() as session:
        assert session.scalars(select(Notification).where(Notification.user_id == inv.id)).all() == []
