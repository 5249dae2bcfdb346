"""Issue 10, points 1-2 outside the screens: an export never carries a live spreadsheet formula, a hostile
email is refused at every door (invitation, import, CLI), and a name full of markup is printed as text in the PDF.

Addresses such as ``=1+2@example.org`` were accepted before the email check was tightened, so rows like them
may already be stored: the export tests write one straight into the database, as such a legacy row would be.
"""
import csv
import io
from datetime import date

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import func, select, update

from app.cli import cli
from core.analytics import cache, exports, pdf
from core.db.models import AuditEvent, Invitation, Pool, Transaction, User
from core.domain.errors import ValidationError
from core.services import auth, users
from core.services.importer import ImportRejected, import_csv
from tests.factories import make_pool, make_user, make_valued_pool, system

HOSTILE_EMAILS = ["=2+5+cmd|'/ccalc'!a0@evil.com", "=1+2@example.org", "+1-2@example.org", "-3+4@example.org",
                  "@sum(1+1)@example.org"]
LEGACY = "=1+2@example.org"


def _store_email(db, user_id: int, email: str) -> None:
    with db.transaction() as session:
        session.execute(update(User).where(User.id == user_id).values(email=email))


@pytest.fixture
def legacy_book(db):
    """A pool whose holder is under water (a negative gain) and whose stored email is a formula."""
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "INJ", contributed="10000.00", valued_at="9000.00")
    _store_email(db, inv.id, LEGACY)
    return db, mgr, inv, pool


def test_xlsx_text_cells_are_strings_and_never_formulas(legacy_book):
    db, mgr, inv, pool = legacy_book
    data = exports.export_bytes(db, actor=mgr, dataset="transactions", fmt="xlsx")
    sheet = load_workbook(io.BytesIO(data))["transactions"]
    header = [c.value for c in sheet[1]]
    email = sheet.cell(row=2, column=header.index("investor_email") + 1)
    assert email.data_type == "s" and email.value == "'" + LEGACY
    for row in sheet.iter_rows():
        for cell in row:
            assert cell.data_type != "f", (cell.coordinate, cell.value)
    holdings = load_workbook(io.BytesIO(exports.export_bytes(db, actor=mgr, dataset="holdings", fmt="xlsx",
                                                             as_of=date(2024, 6, 30))))["holdings"]
    names = [c.value for c in holdings[1]]
    gain = holdings.cell(row=2, column=names.index("gain") + 1)
    assert gain.data_type == "n" and gain.value == -1000  # a negative amount stays a number, unquoted


def test_csv_text_fields_are_quoted_and_negative_numbers_are_not(legacy_book):
    db, mgr, inv, pool = legacy_book
    rows = list(csv.DictReader(io.StringIO(exports.export_bytes(db, actor=mgr, dataset="transactions",
                                                                  fmt="csv").decode())))
    assert rows[0]["investor_email"] == "'" + LEGACY
    holdings = list(csv.DictReader(io.StringIO(exports.export_bytes(db, actor=mgr, dataset="holdings", fmt="csv",
                                                                      as_of=date(2024, 6, 30)).decode())))
    assert holdings[0]["gain"] == "-1000.00"


def test_pooldesk_report_csv_quotes_the_formula_email_only(legacy_book):
    db, mgr, inv, pool = legacy_book
    out = CliRunner().invoke(cli, ["report", "--pool", "INJ", "--as-of", "2024-06-30", "--format", "csv"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = list(csv.reader(io.StringIO(out.output)))
    investors = [dict(zip(lines[3], line)) for line in lines[4:]]
    assert [r["email"] for r in investors] == ["'" + LEGACY]
    assert investors[0]["value"] == "9000.00" and investors[0]["units"] == "1000.000000"
    as_json = CliRunner().invoke(cli, ["report", "--pool", "INJ", "--format", "json"], catch_exceptions=False)
    assert LEGACY in as_json.output  # JSON is data, not a spreadsheet: it keeps the stored value


def _counts(db):
    with db.read() as session:
        return (session.scalar(select(func.count()).select_from(User)),
                session.scalar(select(func.count()).select_from(Invitation)),
                session.scalar(select(func.count()).select_from(Transaction)),
                session.scalar(select(func.count()).select_from(AuditEvent)))


@pytest.mark.parametrize("email", HOSTILE_EMAILS)
def test_invitation_refuses_formula_emails_and_writes_nothing(db, email):
    admin = make_user(db, "admin")
    before = _counts(db)
    with pytest.raises(ValidationError) as caught:
        auth.invite_user(db, actor=admin, email=email, name="Mallory", role="investor")
    assert "is not an email address we accept" in caught.value.message and caught.value.field == "email"
    assert _counts(db) == before


def test_import_refuses_formula_emails_and_writes_nothing(db):
    manager = make_user(db, "manager")
    make_pool(db, manager, code="IMPI", initial_unit_price="10.00", inception=date(2024, 1, 1))
    text = "date,type,investor,amount,units,note\n" + "".join(
        f'2024-01-0{n + 2},contribution,"{email}",100.00,,\n' for n, email in enumerate(HOSTILE_EMAILS))
    before = _counts(db)
    with pytest.raises(ImportRejected) as caught:
        import_csv(db, actor=manager, pool_code="IMPI", source=text, create_investors=True)
    assert [e.split(":")[0] for e in caught.value.errors] == [f"Row {n}" for n in range(2, 2 + len(HOSTILE_EMAILS))]
    assert all("is not an email address" in e for e in caught.value.errors)
    assert _counts(db) == before


def test_cli_user_create_refuses_formula_emails(db):
    system(db)
    before = _counts(db)
    for email in HOSTILE_EMAILS:
        result = CliRunner().invoke(cli, ["user", "create", "--email", email, "--name", "M", "--role", "investor"],
                                    input="a-long-password\n", catch_exceptions=False)
        assert result.exit_code == 1 and "is not an email address we accept" in result.output
    assert _counts(db) == before


@pytest.mark.parametrize("email", ["ann+pooldesk@example.com", "first.last@mail.example.co.uk",
                                   "x-y_z@sub-domain.example.org", "O.Brien-2@Example.COM", "a1@xn--80ak6aa92e.xn--p1ai"])
def test_ordinary_addresses_are_still_accepted(db, email):
    view = users.create_user(db, actor=system(db), email=email, name="Ordinary", role="investor")
    assert view.email == email.lower()


@pytest.mark.parametrize("email", ["a b@example.com", '"a"@example.com', "a|b@example.com", "a\x07@example.com",
                                   "a..b@example.com", ".a@example.com", "a@example", "a@-x.example.com"])
def test_other_malformed_addresses_are_refused(email):
    with pytest.raises(ValidationError):
        users.normalise_email(email)


def _pdf_text(data: bytes) -> tuple[str, bytes]:
    reader = PdfReader(io.BytesIO(data))  # the title wraps: compare with runs of white space made one space
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split()), data


@pytest.mark.parametrize("name", ['<a href="http://evil.example">Pay here</a>', '<img src="x"> Eve',
                                  "Tom & Jerry <b>bold</b> <font size=40>big</font>"])
def test_statement_pdf_prints_markup_in_a_name_as_text(db, name):
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "PDFN")
    with db.transaction() as session:
        session.execute(update(User).where(User.id == inv.id).values(name=name))
    data = pdf.investor_statement_pdf(db, actor=inv, investor_id=inv.id, period_start=date(2024, 1, 1),
                                      period_end=date(2024, 6, 30))
    text, raw = _pdf_text(data)
    assert f"Statement for {name}" in text
    assert b"/URI" not in raw and b"/Link" not in raw


def test_factsheet_pdf_prints_markup_in_a_pool_name_as_text(db):
    cache.get_cache().clear()
    mgr, inv, pool = make_valued_pool(db, "PDFP")
    name = '<a href="http://evil.example">Growth</a> & <img src="x">'
    with db.transaction() as session:
        session.execute(update(Pool).where(Pool.id == pool.id).values(name=name))
    text, raw = _pdf_text(pdf.pool_factsheet_pdf(db, actor=mgr, pool_id=pool.id, as_of=date(2024, 6, 30)))
    assert f"{name} (PDFP)" in text
    assert b"/URI" not in raw
