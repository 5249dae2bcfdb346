"""Importing history from CSV, whole file or nothing.

The file format is in ACCOUNTING.md: ``date,type,investor,amount,units,note``.
The importer reads every row, checks it, and replays the pool's history in memory
with the same accounting rules the services use (valuations of a date first, then
that date's rows in file order; forward-priced flows wait for the next valuation).
Only when no row has an error does it write, in one transaction and in bulk (COPY
on PostgreSQL), so a million rows take seconds. Imported flows are settled
history: no payment is taken and nobody is notified.

There are two ways through a file. ``import_columns`` reads a well-formed file
as columns and prices the flows between two valuations all at once; it takes
only what it can do exactly (``latest`` pricing, every row valid) and otherwise
steps aside, leaving nothing written. The row-by-row replay here is the
reference: it takes every file, and is the one that words the errors. Both hand
their postings to ``import_writer``.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import heapq
import io
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import BinaryIO, Callable, Iterable, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ImportFile, Pool, Position, User, Valuation
from core.db.session import Database
from core.domain import accounting
from core.domain.errors import PooldeskError, ValidationError
from core.domain.money import PRICE_Q, divide, parse_amount, parse_units
from core.services import audit, import_writer
from core.services.common import lock_pool
from core.services.context import Actor, require_pool_manager
from core.services.users import EMAIL_RE

HEADER = ["date", "type", "investor", "amount", "units", "note"]
TYPES = ("contribution", "withdrawal", "distribution", "valuation")
ZERO = Decimal(0)
MAX_ERRORS = 1000  # replay errors: after this many the replay stops (what it would find next is noise)
SHOWN_ERRORS = 50  # errors kept and shown, the first by row; the rest are counted
SHOWN_REPEATS = 5  # identical rows named in the warning
FIELD_LIMIT = csv.field_size_limit()  # characters in one field (131,072)
READ_CHARS = 1 << 22  # text given as a stream is read this many characters at a time
READ_BYTES = 1 << 22  # a file is read this many bytes at a time
CHECKED_KEPT = 1 << 17  # combinations of fields read_rows keeps, once checked


@dataclass(frozen=True, slots=True)
class Row:
    number: int  # the header is row 1
    day: date
    type: str
    email: str
    amount: Decimal | None
    units: Decimal | str | None  # Decimal, "all" or None
    note: str


@dataclass
class ImportResult:
    rows: int = 0
    contributions: int = 0
    withdrawals: int = 0
    distributions: int = 0
    valuations: int = 0
    pending: int = 0
    investors_created: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the import went on (identical rows)
    bulk: bool = False  # loaded in bulk (docs/import.md): every pool's postings waited for it

    @property
    def ok(self) -> bool:
        return not self.errors


class ImportRejected(ValidationError):
    """``errors``: the first SHOWN_ERRORS errors by row, then "... and N more errors." when there
    were more; ``total``: how many in all."""

    def __init__(self, errors: list[str], total: int | None = None):
        total = len(errors) if total is None else total
        super().__init__(f"The file was not imported: {total:,} error(s).")
        self.total = total
        self.errors = errors[:SHOWN_ERRORS]
        if total > len(self.errors):
            self.errors.append(f"... and {total - len(self.errors):,} more errors.")


class DuplicateFile(ValidationError):
    """The same file (by content) was imported into this pool before."""

    def __init__(self, pool_code: str, imported_at: datetime, imported_by: str | None, rows: int):
        when = imported_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        super().__init__(
            f"This file was already imported into {pool_code} on {when}"
            + (f" by {imported_by}" if imported_by else "") + f" ({rows:,} rows); nothing was imported. "
            "Importing it again would record every row twice. If it really is new history, "
            "import it again allowing a duplicate file (pooldesk import --allow-duplicate-file).", field="file")
        self.imported_at, self.imported_by, self.rows = imported_at, imported_by, rows


class Errors:
    """Every error counted; kept are only the first SHOWN_ERRORS by row (then by when they were found),
    so a file of a million bad rows costs no more memory than one of fifty."""

    def __init__(self):
        self.count = 0
        self._kept: list[tuple[int, int, str]] = []  # a max-heap of (-row, -seq, message)

    def append(self, message: str) -> None:
        self.count += 1
        item = (-_row_number(message), -self.count, message)
        if len(self._kept) < SHOWN_ERRORS:
            heapq.heappush(self._kept, item)
        elif item > self._kept[0]:
            heapq.heapreplace(self._kept, item)

    def __len__(self) -> int:
        return self.count

    def shown(self) -> list[str]:
        return [message for _, _, message in sorted(self._kept, reverse=True)]

    def rejected(self) -> ImportRejected:
        return ImportRejected(self.shown(), self.count)


class Fingerprint:
    """sha256 of a file's text, fed a piece of its UTF-8 bytes at a time. Line endings (CR LF, CR,
    LF), a leading byte-order mark and line ends at the very end do not count: the same rows saved
    on another system are the same file. The order of the rows does count (see docs/import.md).
    CR and LF never occur inside a multi-byte UTF-8 character, so the bytes can be normalised as they are."""

    def __init__(self):
        self._sha = hashlib.sha256()
        self._held = b""  # line ends at the end of what was fed so far
        self._started = False

    def update(self, data: bytes) -> None:
        if not self._started and data:
            self._started = True
            data = data.removeprefix(b"\xef\xbb\xbf")
        data = self._held + data if self._held else data
        body = data.rstrip(b"\r\n")
        self._held = data[len(body):]
        if b"\r" in body:
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._sha.update(body)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


# --- reading ---------------------------------------------------------------------------

def read_rows(lines: Iterable[str], currency: str, errors: Errors, nul: bool = True) -> list[Row]:
    """Every data row checked; a bad one is counted in ``errors`` (and named, among the first).
    ``nul``: whether the text may hold a NUL character (the caller looked once, for the whole file)."""
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error:
        header = [""]
    if header is None:
        errors.append("Row 1: the file is empty (expected the header date,type,investor,amount,units,note).")
        return []
    if [h.strip().lower() for h in header] != HEADER:
        errors.append(f"Row 1: the header must be {','.join(HEADER)}.")
        return []
    rows: list[Row] = []
    dates: dict[str, date] = {}
    # The checked fields of rows that differ only in date: a file repeats few combinations (an investor's
    # monthly saving), and rows that share them share one amount and one note instead of a copy each.
    checked: dict[tuple, tuple] = {}
    number = 1
    while True:
        number += 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over the csv module's limit; a quote left open to the end
            errors.append(f"Row {number}: " + (f"a field is longer than {FIELD_LIMIT:,} characters."
                                                if "field limit" in str(exc) else f"this is not CSV ({exc})."))
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if nul and any("\x00" in value for value in record):
            errors.append(f"Row {number}: the row holds a NUL character (a zero byte): this is not a CSV text file.")
            continue
        if len(record) != 6:
            errors.append(f"Row {number}: expected 6 columns, found {len(record)}.")
            continue
        raw_date, kind, email, raw_amount, raw_units, note = (value.strip() for value in record)
        try:
            day = dates.get(raw_date)
            if day is None:
                day = dates[raw_date] = date.fromisoformat(raw_date)
        except ValueError:
            errors.append(f"Row {number}: {raw_date!r} is not a date (use YYYY-MM-DD).")
            continue
        kind = kind.lower()
        if kind not in TYPES:
            errors.append(f"Row {number}: unknown type {kind!r} (use one of {', '.join(TYPES)}).")
            continue
        email = email.lower()
        key = (kind, email, raw_amount, raw_units, note)
        fields = checked.get(key)
        if fields is None:
            try:
                row = _check_row(number, day, kind, email, raw_amount, raw_units, note, currency)
            except PooldeskError as exc:
                errors.append(f"Row {number}: {exc.message}")
                continue
            fields = (row.type, row.email, row.amount, row.units, row.note)
            if len(checked) < CHECKED_KEPT:
                checked[key] = fields
        rows.append(Row(number, day, *fields))
    return rows


def repeated_rows(rows: list[Row]) -> tuple[int, list[tuple[int, int]]]:
    """Rows equal in every field to an earlier row of the file: how many, and the first SHOWN_ERRORS as
    (row, the earlier row). Fields are compared as read: 100 and 100.00 are the same amount.
    ``rows`` are in replay order (replay_order): equal rows share their date, so one date is compared
    at a time."""
    first: dict[tuple, int] = {}
    day = None
    count, named = 0, []  # a max-heap by row of the first SHOWN_ERRORS
    for row in rows:
        if row.day != day:
            first.clear()
            day = row.day
        earlier = first.setdefault((row.type, row.email, row.amount, row.units, row.note), row.number)
        if earlier != row.number:
            count += 1
            if len(named) < SHOWN_ERRORS:
                heapq.heappush(named, (-row.number, -earlier))
            elif -row.number > named[0][0]:
                heapq.heapreplace(named, (-row.number, -earlier))
    return count, sorted((-number, -earlier) for number, earlier in named)


def replay_order(rows: list[Row]) -> None:
    """By date, a date's valuations first, then file order (ACCOUNTING.md)."""
    rows.sort(key=lambda r: (r.day, r.type != "valuation", r.number))


def repeated_rows_text(count: int, named: list[tuple[int, int]]) -> str:
    listed = ", ".join(f"row {row} (as row {earlier})" for row, earlier in named[:SHOWN_REPEATS])
    more = f" and {count - SHOWN_REPEATS:,} more" if count > SHOWN_REPEATS else ""
    return (f"{count:,} row(s) repeat an earlier row of the file in every field: {listed}{more}. "
            "They were imported as written; if the file holds a row twice by mistake, reverse the copies.")


def recorded_rows(session: Session, pool: Pool, candidates: Iterable[Row]) -> tuple[int, list[int]]:
    """Contributions and withdrawals of the file equal in every field (date, investor, amount or units,
    note) to a transaction the pool already holds: how many, and the first SHOWN_ERRORS row numbers.
    Only the last date of the recorded history can hold both (nothing may be dated before it, and
    nothing recorded is dated after it), so the caller passes the rows of that date, and only those
    recorded on it are read."""
    candidates = [r for r in candidates if r.type in ("contribution", "withdrawal")]
    if not candidates or pool.last_flow_date is None or pool.last_flow_date != _history_floor(pool):
        return 0, []
    from core.db.models import Transaction

    recorded = set()
    for kind, email, amount, units, mode, note in session.execute(
            select(Transaction.kind, User.email, Transaction.amount, Transaction.units, Transaction.withdrawal_mode,
                   Transaction.note).join(User, User.id == Transaction.investor_id)
            .where(Transaction.pool_id == pool.id, Transaction.effective_date == pool.last_flow_date,
                   Transaction.kind.in_(("contribution", "withdrawal")))):
        if kind == "contribution" or mode == "amount":
            recorded.add((kind, email, amount, None, note))
        else:
            recorded.add((kind, email, None, "all" if mode == "all" else units, note))
    named = []
    count = 0
    for row in candidates:
        if (row.type, row.email, row.amount, row.units, row.note) in recorded:
            count += 1
            if len(named) < SHOWN_ERRORS:
                named.append(row.number)
    return count, named


def recorded_rows_text(count: int, named: list[int], day: date) -> str:
    listed = ", ".join(f"row {row}" for row in named[:SHOWN_REPEATS])
    more = f" and {count - SHOWN_REPEATS:,} more" if count > SHOWN_REPEATS else ""
    return (f"{count:,} row(s) equal in every field a transaction the pool already has on {day}: {listed}{more}. "
            "They were imported as written; if this history was imported before, reverse them.")


def refuse_recorded_rows(errors: Errors, count: int, named: list[int], day: date) -> None:
    for row in named:
        errors.append(f"Row {row}: equals a transaction the pool already has on {day} (identical rows are refused).")
    errors.count += count - len(named)


def refuse_repeated_rows(errors: Errors, count: int, named: list[tuple[int, int]]) -> None:
    for row, earlier in named:
        errors.append(f"Row {row}: repeats row {earlier} in every field (identical rows are refused).")
    errors.count += count - len(named)  # later rows than those named: counted, never shown


def _check_row(number, day, kind, email, raw_amount, raw_units, note, currency) -> Row:
    units: Decimal | str | None = None
    amount: Decimal | None = None
    if kind in ("valuation", "distribution"):
        if email:
            raise ValidationError(f"a {kind} row has no investor.")
        if raw_units:
            raise ValidationError(f"a {kind} row has no units.")
        amount = parse_amount(raw_amount, currency, field="amount", allow_zero=kind == "valuation")
    else:
        if not email:
            raise ValidationError(f"a {kind} row needs the investor's email.")
        if not EMAIL_RE.match(email):
            raise ValidationError(f"{email!r} is not an email address.")
        if kind == "contribution":
            if raw_units:
                raise ValidationError("units are given only for a withdrawal by units.")
            amount = parse_amount(raw_amount, currency)
        else:
            if bool(raw_amount) == bool(raw_units):
                raise ValidationError("a withdrawal gives either an amount or units (a number or 'all').")
            if raw_amount:
                amount = parse_amount(raw_amount, currency)
            elif raw_units.lower() == "all":
                units = "all"
            else:
                units = parse_units(raw_units)
    return Row(number, day, kind, email, amount, units, note)


# --- replaying -------------------------------------------------------------------------

@dataclass
class _Holding:
    investor_id: int
    units: Decimal = ZERO
    contributed: Decimal = ZERO
    withdrawn: Decimal = ZERO
    distributions: Decimal = ZERO
    reinvest: bool = False
    opened_seq: int = 0
    new: bool = False
    touched: bool = False


class _Replay:
    """The pool's book in memory; each method applies one row exactly as the services would."""

    def __init__(self, pool: Pool, holdings: dict[int, _Holding], valuation_dates: set[date], now: datetime):
        self.pool = pool
        self.currency = pool.currency
        self.units_outstanding = pool.units_outstanding
        self.total_assets = pool.total_assets
        self.fees_payable = pool.fees_payable
        self.price = pool.nav_per_unit
        self.hwm = pool.high_water_mark
        self.last_valuation = pool.last_valuation_date
        self.last_flow = pool.last_flow_date
        self.holdings = holdings
        self.valuation_dates = valuation_dates
        self.next_seq = max((h.opened_seq for h in holdings.values()), default=0) + 1
        self.now = now
        # Output, as plain tuples in column order (see _write). A transaction's index counts from the
        # start of the import; the fast path moves rows out in batches and adds them to tx_base.
        self.tx_base = 0
        self.transactions: list[list] = []
        self.journal: list[tuple] = []
        self.valuations: list[tuple] = []
        self.fees: list[tuple] = []
        self.distributions: list[tuple] = []
        self.waiting: list[tuple[Row, int]] = []  # forward pricing
        self.result = ImportResult()
        # Output already packed into column batches (see pack): a few dozen bytes a row instead of objects.
        # Each batch of legs names only transactions of its own batch or of those before.
        self.packed: list[tuple[import_writer.TxBatch | None, import_writer.JournalBatch | None]] = []
        self.last_flow: date | None = None

    def pack(self) -> None:
        """Move the rows made so far into column batches, unless a row still waits for its price
        (forward pricing fills in a waiting row when it settles)."""
        if self.waiting:
            return
        transactions = journal = None
        if self.transactions:
            last = max(t[7] for t in self.transactions)
            self.last_flow = last if self.last_flow is None else max(self.last_flow, last)
            transactions = import_writer.tx_batch_from_rows(self.transactions)
            self.tx_base += len(self.transactions)
            self.transactions = []
        if self.journal:
            journal = import_writer.journal_batch_from_rows(self.journal)
            self.journal = []
        if transactions or journal:
            self.packed.append((transactions, journal))

    def current_price(self) -> Decimal:
        return self.price if self.units_outstanding > 0 else self.pool.initial_unit_price

    def holding(self, investor_id: int) -> _Holding:
        h = self.holdings.get(investor_id)
        if h is None:
            h = self.holdings[investor_id] = _Holding(investor_id, opened_seq=self.next_seq, new=True)
            self.next_seq += 1
        h.touched = True
        return h

    # Each posting appends (kind-specific) rows; ids are assigned at write time by position.
    def _tx(self, row: Row, kind: str, investor_id: int | None, amount, units, price, status: str,
            mode: str | None = None, distribution_ref: int | None = None) -> int:
        self.transactions.append([kind, status, investor_id, amount, units, price, mode, row.day, row.note,
                                  distribution_ref, status == "settled"])
        return self.tx_base + len(self.transactions) - 1

    def _row(self, index: int) -> list:
        return self.transactions[index - self.tx_base]

    def _legs(self, day: date, ref: tuple[str, int], legs: list[tuple[str, int | None, Decimal, Decimal]]) -> None:
        for account, investor_id, amount, units in legs:
            self.journal.append((ref, account, investor_id, amount, units, day))

    def contribution(self, row: Row, investor_id: int, settle_price: Decimal | None = None, tx_index: int | None = None,
                     kind: str = "contribution") -> None:
        if self.pool.pricing_policy == "forward" and settle_price is None:
            index = self._tx(row, kind, investor_id, row.amount, None, None, "pending")
            self.waiting.append((row, index))
            self.result.pending += 1
            return
        price = settle_price or self.current_price()
        units = accounting.units_for_contribution(row.amount, price)
        if units <= 0:
            raise ValidationError("the amount is too small to buy any units.")
        if tx_index is None:
            tx_index = self._tx(row, kind, investor_id, row.amount, units, price, "settled")
        else:
            self._row(tx_index)[1:6] = ["settled", investor_id, row.amount, units, price]
            self._row(tx_index)[10] = True
        self._legs(row.day, ("tx", tx_index), [("pool", None, row.amount, -units), ("investor", investor_id, -row.amount, units)])
        h = self.holding(investor_id)
        h.units += units
        h.contributed += row.amount
        if self.units_outstanding == 0:
            self.price = price  # rule 1: an emptied pool restarts at the price these units were issued at
        self.units_outstanding += units
        self.total_assets += row.amount
        self.result.contributions += 1

    def withdrawal(self, row: Row, investor_id: int, settle_price: Decimal | None = None,
                   tx_index: int | None = None) -> None:
        mode = "all" if row.units == "all" else ("units" if row.units is not None else "amount")
        h = self.holding(investor_id)
        if self.pool.pricing_policy == "forward" and settle_price is None:
            if h.units <= 0:
                raise ValidationError(f"{row.email} holds no units to withdraw.")
            index = self._tx(row, "withdrawal", investor_id, row.amount, row.units if mode == "units" else None,
                             None, "pending", mode)
            self.waiting.append((row, index))
            self.result.pending += 1
            return
        price = settle_price or self.current_price()
        if mode == "amount":
            units, amount = accounting.units_for_withdrawal(row.amount, price), row.amount
        else:
            units = h.units if mode == "all" else row.units
            amount = accounting.amount_for_units(units, price, self.currency)
        if units <= 0 or units > h.units:
            raise ValidationError(f"the withdrawal needs {units} units but {row.email} holds {h.units}.")
        if amount <= 0:
            raise ValidationError("the withdrawal is worth nothing at the unit value.")
        if tx_index is None:
            tx_index = self._tx(row, "withdrawal", investor_id, amount, units, price, "settled", mode)
        else:
            self._row(tx_index)[1:6] = ["settled", investor_id, amount, units, price]
            self._row(tx_index)[10] = True
        self._legs(row.day, ("tx", tx_index), [("pool", None, -amount, units), ("investor", investor_id, amount, -units)])
        h.units -= units
        h.withdrawn += amount
        self.units_outstanding -= units
        self.total_assets -= amount
        self.result.withdrawals += 1

    def valuation(self, row: Row) -> None:
        if row.day in self.valuation_dates:
            raise ValidationError(f"the pool already has a valuation on {row.day}.")
        book = accounting.PoolBook(self.currency, self.pool.initial_unit_price, self.units_outstanding,
                                   self.fees_payable, self.hwm, self.last_valuation, self.pool.inception_date,
                                   self.pool.management_fee_bps, self.pool.performance_fee_rate)
        result = accounting.value_pool(book, row.amount, row.day)
        self.valuations.append((row.day, row.amount, result.nav_before_fees, result.management_fee,
                                result.performance_fee, result.nav, self.units_outstanding, result.nav_per_unit,
                                result.high_water_mark, row.note))
        ref = ("val", len(self.valuations) - 1)
        gain = row.amount - self.total_assets
        legs = [("pool", None, gain, ZERO), ("gain", None, -gain, ZERO)]
        fees = result.management_fee + result.performance_fee
        if fees:
            legs += [("fee_expense", None, fees, ZERO), ("fees_payable", None, -fees, ZERO)]
        self._legs(row.day, ref, legs)
        if result.management_fee:
            self.fees.append((ref[1], "management", result.management_fee, row.day,
                              f"{self.pool.management_fee_bps} bps a year on NAV {result.nav_before_fees} for "
                              f"{result.management_fee_days} days (Actual/365)"))
        if result.performance_fee:
            self.fees.append((ref[1], "performance", result.performance_fee, row.day,
                              f"{self.pool.performance_fee_rate * 100}% of the gain over the high-water mark "
                              f"{self.hwm or self.pool.initial_unit_price}"))
        self.total_assets = row.amount
        self.fees_payable = result.fees_payable
        self.price = result.nav_per_unit
        self.hwm = result.high_water_mark
        self.last_valuation = row.day
        self.valuation_dates.add(row.day)
        self.result.valuations += 1
        if self.waiting:
            ready = [(r, i) for r, i in self.waiting if r.day < row.day]
            self.waiting = [(r, i) for r, i in self.waiting if r.day >= row.day]
            for waiting_row, index in ready:
                investor_id = self._row(index)[2]
                self.result.pending -= 1
                try:
                    if waiting_row.type == "contribution":
                        self.contribution(waiting_row, investor_id, self.price, index)
                    else:
                        self.withdrawal(waiting_row, investor_id, self.price, index)
                except ValidationError as exc:
                    raise ValidationError(f"row {waiting_row.number}, priced at the valuation of {row.day}: {exc.message}")

    def distribution(self, row: Row) -> None:
        holders = sorted(((h.opened_seq, h.investor_id, h.units) for h in self.holdings.values() if h.units > 0))
        if not holders:
            raise ValidationError("nobody holds units on this date, so there is nobody to distribute to.")
        nav = self.total_assets - self.fees_payable
        price_after = accounting.price_after_distribution(nav, row.amount, self.units_outstanding)
        shares = accounting.split_distribution(row.amount, [(inv, units) for _, inv, units in holders], self.currency)
        self.distributions.append((row.day, row.amount, divide(row.amount, self.units_outstanding, PRICE_Q),
                                   self.units_outstanding, price_after, row.note))
        dist_index = len(self.distributions) - 1
        legs = [("pool", None, -row.amount, ZERO)]
        self.total_assets -= row.amount
        self.price = price_after
        reinvest = []
        for (_, investor_id, _units), share in zip(holders, shares):
            if not share:
                continue
            legs.append(("distribution", investor_id, share, ZERO))
            self._tx(row, "distribution", investor_id, share, None, price_after, "settled", None, dist_index)
            h = self.holding(investor_id)
            h.distributions += share
            if h.reinvest:
                reinvest.append((investor_id, share))
        self._legs(row.day, ("dist", dist_index), legs)
        self.result.distributions += 1
        for investor_id, share in reinvest:
            part = Row(row.number, row.day, "contribution", "", share, None, "reinvested distribution")
            index = self._tx(part, "reinvestment", investor_id, share, None, None, "pending", None, dist_index)
            self.contribution(part, investor_id, price_after, index, kind="reinvestment")
            self.result.contributions -= 1


# --- applying --------------------------------------------------------------------------

def import_csv(db: Database, *, actor: Actor, pool_code: str, source: TextIO | Iterable[str] | str,
               create_investors: bool = False, allow_duplicate_file: bool = False,
               refuse_identical_rows: bool = False, notify: Callable[[str], None] | None = None) -> ImportResult:
    """Check the whole file, then apply it in one transaction; raise ImportRejected listing the first
    bad rows (and how many in all), DuplicateFile when this pool has had the same file before (unless
    ``allow_duplicate_file``). Rows identical to an earlier row are imported with a warning in the
    result, or refused with ``refuse_identical_rows``. ``notify`` hears, before the rows are written,
    that a bulk load will hold every pool's postings until it commits."""
    from core.services import import_columns

    with db.transaction() as session:
        pool = session.scalar(select(Pool).where(Pool.code == (pool_code or "").strip().upper()))
        if pool is None:
            raise ValidationError(f"No pool with the code {pool_code!r}.", field="pool")
        pool = lock_pool(session, pool.id)
        require_pool_manager(session, actor, pool.id, "import into this pool")
        text = Source(source)
        digest = text.digest
        _refuse_duplicate_file(session, pool, digest, allow_duplicate_file)
        options = ImportOptions(create_investors, refuse_identical_rows, notify)
        legs_before = audit.last_journal_id(session)
        result = import_columns.import_columns(session, actor, pool, text, options)
        if result is None:
            errors = Errors()
            lines = _lines(text.open())
            try:
                rows = read_rows(lines, pool.currency, errors, text.nul)
            finally:
                lines.detach()  # the caller's file stays open
            replay_order(rows)
            count, named = repeated_rows(rows)
            floor = _history_floor(pool)
            on_record, rows_on_record = recorded_rows(session, pool, (r for r in rows if r.day == floor))
            if refuse_identical_rows:
                if count:
                    refuse_repeated_rows(errors, count, named)
                if on_record:
                    refuse_recorded_rows(errors, on_record, rows_on_record, floor)
            result = _apply(session, actor, pool, rows, errors, options)
            if errors:
                raise errors.rejected()
            if count:
                result.warnings.append(repeated_rows_text(count, named))
            if on_record:
                result.warnings.append(recorded_rows_text(on_record, rows_on_record, floor))
        audit.record(session, actor, "import.apply", "pool", pool.id, None, {
            "rows": result.rows, "sha256": digest, "contributions": result.contributions,
            "withdrawals": result.withdrawals, "distributions": result.distributions,
            "valuations": result.valuations, "pending": result.pending,
            "investors_created": result.investors_created, **audit.journal_since(session, pool.id, legs_before)})
        _record_file(session, actor, pool, digest, result.rows, allow_duplicate_file)
        return result


@dataclass(frozen=True)
class ImportOptions:
    create_investors: bool = False
    refuse_identical_rows: bool = False
    notify: Callable[[str], None] | None = None


class Source:
    """The file's UTF-8 bytes, read from the start as often as the import needs, and what one pass
    over them found: the fingerprint and what decides whether the columnar path may take the file.

    A file opened from disk is read from disk each time, a piece at a time, and never held in
    memory; text given as a string or as lines is held once, as bytes."""

    def __init__(self, source: TextIO | Iterable[str] | str):
        self._file: BinaryIO | None = None
        self._data: bytes | None = None
        raw = _utf8_file(source)
        if raw is not None:
            self._file, self._start = raw
        elif isinstance(source, str):
            self._data = source.encode("utf-8", "surrogatepass")
        else:
            pieces = iter(lambda: source.read(READ_CHARS), "") if hasattr(source, "read") else iter(source)
            self._data = b"".join(piece.encode("utf-8", "surrogatepass") for piece in pieces)
        self._scan()

    def open(self) -> BinaryIO:
        """The bytes from the start (the same handle each time for a file: read one at a time)."""
        if self._file is None:
            return io.BytesIO(self._data)
        self._file.seek(self._start)
        return self._file

    def _scan(self) -> None:
        fingerprint = Fingerprint()
        decoder = codecs.getincrementaldecoder("utf-8")() if self._file is not None else None
        stream = self.open()
        self.quote = self.nul = self.blank_lines = False
        carriage_returns = crlf = 0
        first = b""
        tail = b"\n"  # as if a line ended just before the file: a blank first line counts
        while piece := stream.read(READ_BYTES):
            if decoder is not None:
                decoder.decode(piece)  # UnicodeDecodeError for a file that is not UTF-8
            fingerprint.update(piece)
            self.quote = self.quote or b'"' in piece
            self.nul = self.nul or b"\x00" in piece
            carriage_returns += piece.count(b"\r")
            joined = tail + piece
            crlf += (tail[-1:] + piece).count(b"\r\n")
            self.blank_lines = self.blank_lines or b"\n\n" in joined or b"\n\r\n" in joined
            if len(first) < 4096 and b"\n" not in first:
                first += piece[:4096]
            tail = joined[-2:]
        if decoder is not None:
            decoder.decode(b"", final=True)
        self.lone_cr = carriage_returns != crlf
        self.header = first.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
        self.digest = fingerprint.hexdigest()
        self.empty = not first


def _utf8_file(source) -> tuple[BinaryIO, int] | None:
    """A text file opened as UTF-8 and not yet read: its binary file, and where its text starts
    (after a byte-order mark)."""
    raw = getattr(source, "buffer", None)
    encoding = (getattr(source, "encoding", None) or "").lower().replace("_", "-")
    if raw is None or encoding not in ("utf-8", "utf-8-sig", "utf8") or not getattr(raw, "seekable", lambda: False)():
        return None
    try:
        if source.tell() != 0:
            return None
        start = raw.tell()
        bom = raw.read(3) == codecs.BOM_UTF8
        return raw, start + 3 if bom else start
    except (OSError, ValueError):
        return None


def _lines(stream: BinaryIO) -> TextIO:
    """The bytes as the lines a csv reader is meant to be given (newline=''), decoded as they are read."""
    return io.TextIOWrapper(stream, encoding="utf-8", errors="surrogatepass", newline="")


def _refuse_duplicate_file(session: Session, pool: Pool, digest: str, allowed: bool) -> None:
    if allowed:
        return
    first = session.execute(
        select(ImportFile.imported_at, User.email, ImportFile.rows)
        .join(User, User.id == ImportFile.imported_by, isouter=True)
        .where(ImportFile.pool_id == pool.id, ImportFile.sha256 == digest)
        .order_by(ImportFile.imported_at, ImportFile.id).limit(1)).first()
    if first is not None:
        raise DuplicateFile(pool.code, *first)


def _record_file(session: Session, actor: Actor, pool: Pool, digest: str, rows: int, allowed: bool) -> None:
    session.add(ImportFile(pool_id=pool.id, sha256=digest, rows=rows, imported_by=actor.id,
                           imported_at=datetime.now(timezone.utc), duplicate_allowed=allowed))
    session.flush()


def _row_number(error: str) -> int:
    """Errors about the whole file first, then by row."""
    head = error.split(":", 1)[0]
    return int(head[4:]) if head.startswith("Row ") and head[4:].isdigit() else 0


def _history_floor(pool: Pool) -> date:
    return max(d for d in (pool.last_valuation_date, pool.last_flow_date, pool.inception_date) if d)


def _investors(session: Session, emails: set[str]) -> tuple[dict[str, int], set[str]]:
    """Active investors among ``emails`` (email -> id), and the emails that belong to anyone else."""
    known: dict[str, int] = {}
    others: set[str] = set()
    if emails:
        # One pass over the users table: cheaper than an IN list of thousands of addresses.
        for email, user_id, role, status in session.execute(select(User.email, User.id, User.role, User.status)):
            if email in emails:
                if role == "investor" and status == "active":
                    known[email] = user_id
                else:
                    others.add(email)
    return known, others


def _create_investors(session: Session, actor: Actor, pool: Pool, missing: list[str], known: dict[str, int]) -> int:
    for email in missing:
        user = User(email=email, name=email.split("@")[0].replace(".", " ").title(), role="investor",
                    status="active")
        session.add(user)
        session.flush()
        known[email] = user.id
    if missing:
        audit.record(session, actor, "import.create_investors", "pool", pool.id, None, {"emails": missing})
    return len(missing)


def _book(session: Session, pool: Pool) -> tuple[dict[int, _Holding], set[date]]:
    holdings = {p.investor_id: _Holding(p.investor_id, p.units, p.contributed, p.withdrawn, p.distributions,
                                        p.reinvest_distributions, p.opened_seq)
                for p in session.scalars(select(Position).where(Position.pool_id == pool.id))}
    valuation_dates = set(session.scalars(select(Valuation.valuation_date).where(Valuation.pool_id == pool.id)))
    return holdings, valuation_dates


def _apply(session: Session, actor: Actor, pool: Pool, rows: list[Row], errors: Errors,
           options: ImportOptions) -> ImportResult:
    today = date.today()
    has_flows = any(r.type != "valuation" for r in rows)
    if pool.status != "open" and has_flows:
        errors.append(f"Pool {pool.code} is {pool.status}: it takes no contributions, withdrawals or distributions.")
    floor = _history_floor(pool)
    emails = {r.email for r in rows if r.email}
    known, others = _investors(session, emails)
    missing = sorted(emails - set(known))
    for row in rows:
        if row.day < pool.inception_date:
            errors.append(f"Row {row.number}: {row.day} is before the pool's inception ({pool.inception_date}).")
        elif row.day < floor:
            errors.append(f"Row {row.number}: {row.day} is before the pool's recorded history ends ({floor}).")
        elif row.day > today:
            errors.append(f"Row {row.number}: {row.day} is in the future.")
        elif row.email and row.email not in known and (not options.create_investors or row.email in others):
            why = "is not an active investor" if row.email in others else "is not a known investor (use --create-investors to add)"
            errors.append(f"Row {row.number}: {row.email} {why}.")
    if errors:
        return ImportResult(rows=len(rows))
    created = _create_investors(session, actor, pool, missing, known) if options.create_investors else 0
    holdings, valuation_dates = _book(session, pool)
    replay = _Replay(pool, holdings, valuation_dates, datetime.now(timezone.utc))
    replay_order(rows)  # a no-op when import_csv has put them in order
    count = len(rows)
    for index in range(count):
        row, rows[index] = rows[index], None  # a row replayed is let go (its output is packed)
        if len(replay.transactions) >= import_writer.BATCH_ROWS:
            replay.pack()
        try:
            if row.type == "valuation":
                replay.valuation(row)
            elif row.type == "contribution":
                replay.contribution(row, known[row.email])
            elif row.type == "withdrawal":
                replay.withdrawal(row, known[row.email])
            else:
                replay.distribution(row)
        except PooldeskError as exc:
            errors.append(f"Row {row.number}: {exc.message}")
            if len(errors) >= MAX_ERRORS:
                break
    if errors:
        return ImportResult(rows=count)
    bulk = _write(session, actor, pool, replay, options.notify)
    result = replay.result
    result.bulk = bulk
    result.rows = count
    result.investors_created = created
    return result


def _write(session: Session, actor: Actor, pool: Pool, replay: _Replay,
           notify: Callable[[str], None] | None = None) -> bool:
    """Write what the reference replay produced (the demo data uses this too); whether it went in bulk."""
    replay.waiting = []  # what still waits is written pending
    replay.pack()
    writer = import_writer.PostingWriter(session, pool_id=pool.id, actor_id=actor.id, now=replay.now,
                                         valuations=len(replay.valuations), distributions=len(replay.distributions),
                                         rows=replay.tx_base, notify=notify)
    # A bulk load streams each batch of legs right behind its transactions (otherwise the writer keeps
    # the legs for the end); a batch is let go once handed over.
    packed, replay.packed = replay.packed, []
    packed.reverse()
    while packed:
        transactions, journal = packed.pop()
        if transactions is not None:
            writer.add_transactions(transactions)
        if journal is not None:
            writer.add_journal(journal)
        del transactions, journal
    writer.finish(replay.valuations, replay.fees, replay.distributions, _position_rows(replay.holdings.values()))
    _update_pool(session, pool.id, replay, replay.last_flow)
    return writer.bulk


def _position_rows(holdings: Iterable[_Holding]) -> tuple[list[tuple], list[tuple]]:
    m, u = import_writer.scaled, import_writer.scaled
    new, changed = [], []
    for h in holdings:
        if h.new:
            new.append((h.investor_id, u(h.units, 6), m(h.contributed, 4), m(h.withdrawn, 4),
                        m(h.distributions, 4), h.reinvest, h.opened_seq))
        elif h.touched:
            changed.append((h.investor_id, u(h.units, 6), m(h.contributed, 4), m(h.withdrawn, 4),
                            m(h.distributions, 4)))
    return new, changed


def _update_pool(session: Session, pool_id: int, replay: _Replay, last_flow: date | None) -> None:
    session.expire_all()
    pool = session.get(Pool, pool_id)
    pool.units_outstanding = replay.units_outstanding
    pool.total_assets = replay.total_assets
    pool.fees_payable = replay.fees_payable
    pool.nav_per_unit = replay.price
    pool.high_water_mark = replay.hwm
    pool.last_valuation_date = replay.last_valuation
    if last_flow and (pool.last_flow_date is None or last_flow > pool.last_flow_date):
        pool.last_flow_date = last_flow
    pool.ledger_version += 1
    session.flush()
