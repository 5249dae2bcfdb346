"""The fast path of CSV import: the file as columns, flows priced a segment at a time.

Under ``latest`` pricing, p only changes at a valuation or a distribution (or when
the pool empties and the next flow is priced at the initial unit price). Between
two such events every flow of the file is priced at the same p, so the units of a
whole segment are computed at once with exact integer arithmetic on the scaled
values the database stores, and each investor's holding is checked with a running
sum. Valuations, distributions and withdrawals of 'all' are rare and go through the
reference replay's own methods (``importer._Replay``), one at a time.

Every text field is checked by the same validators as the reference reader, once
per distinct value (a file has few distinct dates, types, investors and notes);
amounts in plain decimal notation are parsed column-wise.

This path never words an error. When a file has anything it does not take
(quotes, blank lines, forward pricing, any bad row, any rule refusing a row),
``import_columns`` returns None with nothing written and the reference replay
imports the file, or lists its errors. tests/integration/test_import_equivalence.py
checks that both ways give the same database.

Integer forms of the rounding rules (core/domain/accounting.py), with money scaled
by 10**4 and units and prices by 10**6, so that units6 = amount4 * 10**8 / price6:
- units_for_contribution: q, r = divmod(A * 10**8, p); q + 1 if 2r > p or (2r == p and q odd);
- units_for_withdrawal: q + 1 if r > 0;
- amount_for_units: floor(u * p / 10**(12 - minor units)).
They equal the Decimal functions: those divide at 50 significant digits and then
round once more, and since p6 < 10**15 here, a remainder r/p that is not exactly 0
or 1/2 is at least 10**-15 away from them, far beyond the 10**-26 that rounding at
50 digits can move a quotient below 10**18; products of units and prices (at most
34 digits) are exact in both.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy.orm import Session

from core.db.models import Pool
from core.domain.errors import PooldeskError
from core.domain.money import minor_units, parse_amount, parse_units
from core.services import import_writer as iw
from core.services.context import Actor
from core.services.importer import (
    FIELD_LIMIT, HEADER, SHOWN_ERRORS, TYPES, ImportOptions, ImportResult, Row, Source, _book, _create_investors,
    _Holding, _investors, _position_rows, _Replay, _update_pool, _history_floor, recorded_rows, recorded_rows_text,
    repeated_rows_text,
)
from core.services.users import EMAIL_RE

CONTRIBUTION, WITHDRAWAL, DISTRIBUTION, VALUATION = (TYPES.index(t) for t in
                                                     ("contribution", "withdrawal", "distribution", "valuation"))
BY_AMOUNT, BY_UNITS = 1, 2  # flow codes next to CONTRIBUTION = 0
EMPTY, ALL, VALUE, BAD = 0, 1, 2, 3
PRICE_LIMIT = (2**63 - 1) // 10**4  # keeps remainder * 10**4 inside int64
QUOTIENT_LIMIT = (2**63 - 1) // 10**8 - 1
SAFE = 2**62  # running totals stay below this, or the reference replay takes the file
MIN_SEGMENT = 16  # rows per priced segment below which the row-by-row replay is as quick


class _Decline(Exception):
    """The fast path does not take this file; the reference replay will."""


def import_columns(session: Session, actor: Actor, pool: Pool, source: Source,
                   options: ImportOptions) -> ImportResult | None:
    """Import the file if the fast path takes it, else return None having written nothing."""
    if pool.pricing_policy != "latest":
        return None
    try:
        columns = _read(source)
        rows = _check(columns, pool.currency)
        del columns
        count, named = _repeats(rows)
        on_record, rows_on_record = _on_record(session, pool, rows)
        if (count or on_record) and options.refuse_identical_rows:
            raise _Decline()  # the reference words the errors
    except _Decline:
        return None
    result = _apply(session, actor, pool, rows, options)
    if result is not None and count:
        result.warnings.append(repeated_rows_text(count, named))
    if result is not None and on_record:
        result.warnings.append(recorded_rows_text(on_record, rows_on_record, _history_floor(pool)))
    return result


def _on_record(session: Session, pool: Pool, rows: _Rows) -> tuple[int, list[int]]:
    """importer.recorded_rows for the file's flows on the last date of the recorded history."""
    floor = _history_floor(pool)
    codes = [code for code, day in enumerate(rows.dates) if day == floor]
    if not codes or pool.last_flow_date != floor:
        return 0, []
    candidates = []
    for i in np.flatnonzero(np.isin(rows.date_code, codes) & (rows.kind <= WITHDRAWAL)).tolist():
        amount = Decimal(int(rows.amount[i])).scaleb(-4) if rows.amount_state[i] == VALUE else None
        units_state = rows.units_state[i]
        units = ("all" if units_state == ALL else
                 Decimal(int(rows.units[i])).scaleb(-6) if units_state == VALUE else None)
        candidates.append(Row(i + 2, floor, TYPES[rows.kind[i]], rows.emails[rows.email_code[i]], amount, units,
                              rows.notes[int(rows.note_code[i])].as_py()))
    return recorded_rows(session, pool, candidates)


# --- reading ---------------------------------------------------------------------------

NAMES = ["date", "type", "investor", "amount", "units", "note"]


def _read(source: Source) -> pa.Table:
    """The data rows as six dictionary-encoded string columns (a file repeats its dates, types,
    investors, amounts and notes: the table holds each text once and a number a row), when row i of
    the table is row i + 2 of the file."""
    if source.quote or source.nul:
        raise _Decline()  # quoting: records may span lines; leave csv semantics to the csv module
    if source.lone_cr:
        raise _Decline()
    if source.blank_lines:
        raise _Decline()  # blank lines are skipped but still numbered
    if [h.strip().lower() for h in source.header.split(",")] != HEADER:
        raise _Decline()
    text = pa.dictionary(pa.int32(), pa.string())
    try:
        table = pacsv.read_csv(
            source.open(),
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=NAMES, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={n: text for n in NAMES},
                                                 strings_can_be_null=False, check_utf8=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise _Decline() from None
    if table.num_rows == 0:
        raise _Decline()
    return table


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A dictionary column as one code a row into one list of distinct texts."""
    column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return np.empty(0, dtype=np.int64), []
    codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in column.chunks])
    return codes.astype(np.int64), column.chunk(0).dictionary.to_pylist()


class _Rows:
    """Checked rows in file order, as arrays; values are per distinct text (``*_values``) and codes per row."""

    def __init__(self, n: int):
        self.n = n
        self.number = np.arange(2, n + 2, dtype=np.int64)


def _check(table: pa.Table, currency: str) -> _Rows:
    """The checks of importer._check_row, on distinct values and then row-wise on codes."""
    rows = _Rows(table.num_rows)
    # Dates: date.fromisoformat of the stripped text, as the reference reader does.
    date_codes, raw_dates = _encode(table.column("date"))
    try:
        rows.dates = [date.fromisoformat(raw.strip()) for raw in raw_dates]
    except ValueError:
        raise _Decline() from None
    rows.date_code = date_codes
    # Types.
    type_codes, raw_types = _encode(table.column("type"))
    kinds = [raw.strip().lower() for raw in raw_types]
    if any(kind not in TYPES for kind in kinds):
        raise _Decline()
    kind = np.array([TYPES.index(k) for k in kinds], dtype=np.int8)[type_codes]
    rows.kind = kind
    # Investors.
    email_codes, raw_emails = _encode(table.column("investor"))
    rows.emails = [raw.strip().lower() for raw in raw_emails]
    email_empty = np.array([not e for e in rows.emails], dtype=bool)[email_codes]
    email_ok = np.array([bool(e) and bool(EMAIL_RE.match(e)) for e in rows.emails], dtype=bool)[email_codes]
    rows.email_code = email_codes
    # Amounts and units.
    amount_codes, amount_state, amount_values, rows.amount_texts = _amounts(table.column("amount"), currency)
    rows.amount_code = amount_codes
    rows.amount = amount_values[amount_codes]
    a_state = amount_state[amount_codes]
    units_codes, raw_units = _encode(table.column("units"))
    u_state, u_values = _units(raw_units)
    rows.units = u_values[units_codes]
    units_state = u_state[units_codes]
    # Notes: stripped, kept per distinct text.
    note_codes, raw_notes = _encode(table.column("note"))
    if any(len(raw) > FIELD_LIMIT for raw in raw_notes):
        raise _Decline()  # the reference reader refuses a field this long
    rows.note_code = note_codes
    rows.notes = pa.array([raw.strip() for raw in raw_notes], pa.string())

    event = (kind == VALUATION) | (kind == DISTRIBUTION)
    flow = ~event
    ok = np.ones(rows.n, dtype=bool)
    # valuation / distribution: no investor, no units, an amount (zero only for a valuation).
    ok &= ~event | (email_empty & (units_state == EMPTY) & (a_state == VALUE))
    ok &= ~((kind == DISTRIBUTION) & (rows.amount == 0))
    # contribution / withdrawal: a valid email.
    ok &= ~flow | email_ok
    contribution = kind == CONTRIBUTION
    ok &= ~contribution | ((units_state == EMPTY) & (a_state == VALUE) & (rows.amount > 0))
    withdrawal = kind == WITHDRAWAL
    has_amount = a_state != EMPTY
    has_units = units_state != EMPTY
    ok &= ~withdrawal | (has_amount != has_units)
    ok &= ~(withdrawal & has_amount) | ((a_state == VALUE) & (rows.amount > 0))
    ok &= ~(withdrawal & has_units) | ((units_state == ALL) | (units_state == VALUE))
    if not ok.all():
        raise _Decline()
    rows.amount_state, rows.units_state = a_state, units_state
    rows.flow = np.where(contribution, 0, np.where(withdrawal & has_amount, BY_AMOUNT, BY_UNITS)).astype(np.int8)
    rows.all_units = withdrawal & (units_state == ALL)
    if int(np.abs(rows.amount).sum(dtype=np.float64)) >= SAFE or int(rows.units.sum(dtype=np.float64)) >= SAFE:
        raise _Decline()
    return rows


def _canonical(values: list, codes: np.ndarray) -> np.ndarray:
    """Per row, one code per distinct value (distinct texts may read as the same value)."""
    seen: dict = {}
    return np.array([seen.setdefault(v, len(seen)) for v in values], dtype=np.int64)[codes]


def _repeats(rows: _Rows) -> tuple[int, list[tuple[int, int]]]:
    """importer.repeated_rows on columns: rows equal in every field, as read, to an earlier row.
    The fields of a row are hashed to one number; rows that share one are compared field by field."""
    if rows.n < 2:
        return 0, []
    # Day, type and the states of amount and units in one number; then investor, amount, units, note.
    head = (_canonical([d.toordinal() for d in rows.dates], rows.date_code) << 8) | (
        rows.kind.astype(np.int64) << 4 | rows.amount_state.astype(np.int64) << 2 | rows.units_state)
    fields = [head, _canonical(rows.emails, rows.email_code), rows.amount, rows.units,
              _canonical(rows.notes.to_pylist(), rows.note_code)]
    digest = fields[0].astype(np.uint64)
    for column in fields[1:]:
        digest *= np.uint64(0x100000001B3)
        digest ^= column.view(np.uint64)
    ordered = np.sort(digest)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])  # digests of two rows or more
    if not shared.size:
        return 0, []
    found = shared[np.minimum(np.searchsorted(shared, digest), len(shared) - 1)] == digest
    first: dict[tuple, int] = {}
    count, named = 0, []
    for i in np.flatnonzero(found).tolist():  # those rows, in file order
        key = tuple(int(column[i]) for column in fields)
        earlier = first.setdefault(key, i)
        if earlier != i:
            count += 1
            if len(named) < SHOWN_ERRORS:
                named.append((i + 2, earlier + 2))
    return count, named


def _amounts(column: pa.ChunkedArray, currency: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per distinct text: state (EMPTY / VALUE / BAD) and the amount scaled by 10**4, as parse_amount reads it
    (zero allowed here; the row checks refuse it where the reference does)."""
    codes, texts = _encode(column)
    distinct = pa.array(texts, pa.string())
    places = minor_units(currency)
    state = np.full(len(distinct), BAD, dtype=np.int8)
    values = np.zeros(len(distinct), dtype=np.int64)
    # Plain notation ("1200", "1200.5", "1200.50"): read column-wise. parse_amount gives the same number.
    pattern = r"^[0-9]{1,13}$" if places == 0 else r"^[0-9]{1,13}(\.[0-9]{1,%d})?$" % places
    plain = pc.match_substring_regex(distinct, pattern).to_numpy(zero_copy_only=False)
    if plain.any():
        decimals = pc.cast(distinct.filter(pa.array(plain)), pa.decimal128(18, places))
        raw = np.frombuffer(decimals.buffers()[1], dtype="<i8", count=2 * len(decimals),
                            offset=decimals.offset * 16)[0::2]
        limit = 10**12 * 10**places
        scaled = raw * 10 ** (4 - places)
        within = raw <= limit
        index = np.flatnonzero(plain)
        values[index[within]] = scaled[within]
        state[index[within]] = VALUE
    # Anything else ("1,200.00", " 5 ", "1e3", junk, empty): the validator itself, once per distinct text.
    for i in np.flatnonzero(~plain).tolist():
        raw_text = distinct[i].as_py().strip()
        if not raw_text:
            state[i] = EMPTY
            continue
        try:
            values[i] = iw.scaled(parse_amount(raw_text, currency, allow_zero=True), 4)
            state[i] = VALUE
        except PooldeskError:
            state[i] = BAD
    return codes, state, values, texts


def _units(raw_units: list[str]) -> tuple[np.ndarray, np.ndarray]:
    state = np.full(len(raw_units), BAD, dtype=np.int8)
    values = np.zeros(len(raw_units), dtype=np.int64)
    for i, raw in enumerate(raw_units):
        text = raw.strip()
        if not text:
            state[i] = EMPTY
        elif text.lower() == "all":
            state[i] = ALL
        else:
            try:
                values[i] = iw.scaled(parse_units(text), 6)
                state[i] = VALUE
            except PooldeskError:
                pass
    return state, values


# --- applying --------------------------------------------------------------------------

def _apply(session: Session, actor: Actor, pool: Pool, rows: _Rows, options: ImportOptions) -> ImportResult | None:
    """importer._apply's checks on distinct values, then the segment replay, writing as it goes."""
    has_flows = bool((rows.kind != VALUATION).any())
    if pool.status != "open" and has_flows:
        return None
    floor, today = _history_floor(pool), date.today()
    if any(d < pool.inception_date or d < floor or d > today for d in rows.dates):
        # Only dates the file uses are in rows.dates; any of them out of range is some row's error.
        return None
    emails = {e for e in rows.emails if e}
    known, others = _investors(session, emails)
    missing = sorted(emails - set(known))
    if missing and (not options.create_investors or any(e in others for e in missing)):
        return None
    savepoint = session.begin_nested()
    writer = None
    try:
        created = _create_investors(session, actor, pool, missing, known) if options.create_investors else 0
        holdings, valuation_dates = _book(session, pool)
        replay = _SegmentReplay(pool, holdings, valuation_dates, datetime.now(timezone.utc), rows, known)
        if replay.boundaries * MIN_SEGMENT > rows.n and rows.n > 64 * MIN_SEGMENT:
            raise _Decline()
        writer = iw.PostingWriter(session, pool_id=pool.id, actor_id=actor.id, now=replay.now,
                                  valuations=int((rows.kind == VALUATION).sum()),
                                  distributions=int((rows.kind == DISTRIBUTION).sum()), rows=int(rows.n),
                                  notify=options.notify)
        replay.run(writer)
        replay.settle_holdings()
        writer.finish(replay.valuations, replay.fees, replay.distributions, _position_rows(replay.holdings.values()))
        _update_pool(session, pool.id, replay, replay.last_flow)
    except (_Decline, PooldeskError):
        if writer is not None:
            writer.abort()
        savepoint.rollback()
        return None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    savepoint.commit()
    result = replay.result
    result.bulk = writer.bulk
    result.rows = rows.n
    result.investors_created = created
    return result


class _SegmentReplay(_Replay):
    """The reference replay's book, with holdings in arrays and flows priced a segment at a time."""

    def __init__(self, pool: Pool, holdings: dict[int, _Holding], valuation_dates: set[date], now: datetime,
                 rows: _Rows, known: dict[str, int]):
        super().__init__(pool, holdings, valuation_dates, now)
        self.rows = rows
        self.minor = minor_units(self.currency)
        # Investors as dense indexes: holders before the import, then the file's investors.
        investor_of_email = np.array([known.get(e, -1) for e in rows.emails], dtype=np.int64)
        ids = np.unique(np.concatenate([np.fromiter(holdings.keys(), dtype=np.int64, count=len(holdings)),
                                        investor_of_email[investor_of_email >= 0]]))
        self.ids = ids
        index_of_email = np.searchsorted(ids, investor_of_email)
        count = len(ids)
        self.units = np.zeros(count, dtype=np.int64)
        self.contributed = np.zeros(count, dtype=np.int64)
        self.withdrawn = np.zeros(count, dtype=np.int64)
        self.seq = np.zeros(count, dtype=np.int64)  # 0: no holding yet
        self.new = np.zeros(count, dtype=bool)
        self.touched = np.zeros(count, dtype=bool)
        for h in holdings.values():
            k = int(np.searchsorted(ids, h.investor_id))
            self.units[k] = iw.scaled(h.units, 6)
            self.contributed[k] = iw.scaled(h.contributed, 4)
            self.withdrawn[k] = iw.scaled(h.withdrawn, 4)
            self.seq[k] = h.opened_seq
        # Rows in replay order: by date, valuations first, then file order.
        order = np.lexsort((rows.number, rows.kind != VALUATION, np.array([d.toordinal() for d in rows.dates])[rows.date_code]))
        self.order = order
        self.kind = rows.kind[order]
        self.flow = rows.flow[order]
        self.inv = np.where(rows.kind[order] <= WITHDRAWAL, index_of_email[rows.email_code[order]], -1)
        self.amount = rows.amount[order]
        self.units_in = rows.units[order]
        day_numbers = np.array([iw.day_number(d) for d in rows.dates], dtype=np.int32)
        self.day = day_numbers[rows.date_code[order]]
        self.note_code = rows.note_code[order]
        boundary = (self.kind == VALUATION) | (self.kind == DISTRIBUTION) | rows.all_units[order]
        self.boundary_at = np.flatnonzero(boundary)
        self.boundaries = len(self.boundary_at)
        self.initial6 = iw.scaled(pool.initial_unit_price, 6)
        self.uo = iw.scaled(self.units_outstanding, 6)
        self.ta = iw.scaled(self.total_assets, 4)
        self.last_flow: date | None = None
        self.max_day = None

    # --- the walk ------------------------------------------------------------------------

    def run(self, writer: iw.PostingWriter) -> None:
        self.writer = writer
        lo = 0
        for at in self.boundary_at.tolist() + [len(self.kind)]:
            if lo < at:
                self._flows(lo, at)
            if at < len(self.kind):
                self._event(at)
            lo = at + 1
        self._flush_rows()
        self.units_outstanding = Decimal(self.uo).scaleb(-6)
        self.total_assets = Decimal(self.ta).scaleb(-4)
        if self.max_day is not None:
            self.last_flow = date.fromordinal(int(self.max_day) + date(1970, 1, 1).toordinal())

    def _event(self, at: int) -> None:
        """A valuation, distribution or withdrawal of 'all': the reference replay's method, on synced state."""
        rows, source = self.rows, int(self.order[at])
        kind = int(self.kind[at])
        day = rows.dates[rows.date_code[source]]
        note = rows.notes[int(rows.note_code[source])].as_py()
        self.units_outstanding = Decimal(self.uo).scaleb(-6)
        self.total_assets = Decimal(self.ta).scaleb(-4)
        if kind == VALUATION:
            amount = parse_amount(rows.amount_texts[rows.amount_code[source]].strip(), self.currency, allow_zero=True)
            self.valuation(Row(int(rows.number[source]), day, "valuation", "", amount, None, note))
        elif kind == DISTRIBUTION:
            amount = parse_amount(rows.amount_texts[rows.amount_code[source]].strip(), self.currency)
            held = np.flatnonzero(self.seq > 0)
            self._materialise(held)
            self.distribution(Row(int(rows.number[source]), day, "distribution", "", amount, None, note))
            self._absorb(held)
        else:
            k = int(self.inv[at])
            self._materialise(np.array([k]) if self.seq[k] > 0 else np.empty(0, dtype=np.int64))
            email = rows.emails[rows.email_code[source]]
            self.withdrawal(Row(int(rows.number[source]), day, "withdrawal", email, None, "all", note), int(self.ids[k]))
            self._absorb(np.array([k]))
        self.uo = iw.scaled(self.units_outstanding, 6)
        self.ta = iw.scaled(self.total_assets, 4)
        if self.uo >= SAFE or self.ta >= SAFE:
            raise _Decline()

    def _materialise(self, indexes: np.ndarray) -> None:
        for k in indexes.tolist():
            investor_id = int(self.ids[k])
            h = self.holdings.get(investor_id)
            if h is None:
                h = self.holdings[investor_id] = _Holding(investor_id)
            h.units = Decimal(int(self.units[k])).scaleb(-6)
            h.contributed = Decimal(int(self.contributed[k])).scaleb(-4)
            h.withdrawn = Decimal(int(self.withdrawn[k])).scaleb(-4)
            h.opened_seq = int(self.seq[k])
            h.new = bool(self.new[k])
            h.touched = bool(self.touched[k])

    def _absorb(self, indexes: np.ndarray) -> None:
        for k in indexes.tolist():
            h = self.holdings.get(int(self.ids[k]))
            if h is None:
                continue
            self.units[k] = iw.scaled(h.units, 6)
            self.contributed[k] = iw.scaled(h.contributed, 4)
            self.withdrawn[k] = iw.scaled(h.withdrawn, 4)
            self.seq[k] = h.opened_seq
            self.new[k] = h.new
            self.touched[k] = h.touched

    def settle_holdings(self) -> None:
        """Leave the final holdings in self.holdings, as the reference replay does, for writing."""
        self._materialise(np.flatnonzero((self.seq > 0) & (self.new | self.touched)))
        for investor_id in [i for i, h in self.holdings.items() if not (h.new or h.touched)]:
            del self.holdings[investor_id]

    def _flush_rows(self) -> None:
        """Hand rows the reference methods produced to the writer, keeping replay order."""
        if self.transactions:
            days = [t[7] for t in self.transactions]
            self._note_days(iw.day_number(max(days)))
            self.writer.add_transactions(iw.tx_batch_from_rows(self.transactions))
            self.tx_base += len(self.transactions)
            self.transactions = []
        if self.journal:
            self.writer.add_journal(iw.journal_batch_from_rows(self.journal))
            self.journal = []

    def _note_days(self, day: int) -> None:
        if self.max_day is None or day > self.max_day:
            self.max_day = day

    # --- a segment of flows --------------------------------------------------------------

    def _flows(self, lo: int, hi: int) -> None:
        while lo < hi:
            if self.uo > 0:
                price, end = self.price6(), hi
            else:
                # Rule 1: the next flow restarts an empty pool at the initial price, which becomes p.
                price, end = self.initial6, lo + 1
                self.price = Decimal(self.initial6).scaleb(-6)
            lo = self._priced(lo, end, price)

    def price6(self) -> int:
        return iw.scaled(self.price, 6)

    def _priced(self, lo: int, hi: int, price: int) -> int:
        """Price rows lo..hi-1 at ``price`` up to the first that empties the pool; returns where it stopped."""
        if not 0 < price < PRICE_LIMIT:
            raise _Decline()
        flow = self.flow[lo:hi]
        amount = self.amount[lo:hi]
        contribution = flow == 0
        by_amount = flow == BY_AMOUNT
        by_units = flow == BY_UNITS
        units = np.empty(hi - lo, dtype=np.int64)
        if contribution.any():
            q, r = _divide(amount[contribution], price)
            twice = 2 * r
            units[contribution] = q + ((twice > price) | ((twice == price) & (q % 2 == 1)))
            if (units[contribution] <= 0).any():
                raise _Decline()  # "the amount is too small to buy any units"
        if by_amount.any():
            q, r = _divide(amount[by_amount], price)
            units[by_amount] = q + (r > 0)
        if by_units.any():
            units[by_units] = self.units_in[lo:hi][by_units]
            amount = amount.copy()
            amount[by_units] = _amount_for_units(units[by_units], price, self.minor)
            if (amount[by_units] <= 0).any():
                raise _Decline()  # "the withdrawal is worth nothing at the unit value"
        signed = np.where(contribution, units, -units)
        if self.uo + int(np.abs(signed).sum(dtype=np.float64)) >= SAFE:
            raise _Decline()
        outstanding = self.uo + np.cumsum(signed)
        emptied = np.flatnonzero(outstanding[:-1] == 0)
        stop = lo + (int(emptied[0]) + 1 if emptied.size else hi - lo)
        n = stop - lo
        flow, amount, units, signed, contribution = flow[:n], amount[:n], units[:n], signed[:n], contribution[:n]
        inv = self.inv[lo:stop]
        # Each investor's holding after each of their rows, in order: a withdrawal may not take it below zero.
        order = np.argsort(inv, kind="stable")
        inv_sorted, change = inv[order], signed[order]
        starts = np.flatnonzero(np.r_[True, inv_sorted[1:] != inv_sorted[:-1]])
        running = np.cumsum(change)
        before_group = np.repeat((running - change)[starts], np.diff(np.r_[starts, n]))
        after = self.units[inv_sorted] + running - before_group
        if (after[~contribution[order]] < 0).any():
            raise _Decline()  # "the withdrawal needs X units but ... holds Y"
        # Holdings opened by this segment, in order of their first row.
        firsts, first_at = np.unique(inv, return_index=True)
        opening = self.seq[firsts] == 0
        if opening.any():
            opened = firsts[opening][np.argsort(first_at[opening], kind="stable")]
            self.seq[opened] = np.arange(self.next_seq, self.next_seq + len(opened))
            self.new[opened] = True
            self.next_seq += len(opened)
        group = inv_sorted[starts]
        self.units[group] += np.add.reduceat(change, starts)
        self.contributed[group] += np.add.reduceat(np.where(contribution, amount, 0)[order], starts)
        self.withdrawn[group] += np.add.reduceat(np.where(contribution, 0, amount)[order], starts)
        self.touched[group] = True
        self.uo = int(outstanding[n - 1])
        self.ta += int(np.where(contribution, amount, -amount).sum())
        self.result.contributions += int(contribution.sum())
        self.result.withdrawals += int(n - contribution.sum())
        self._emit(lo, stop, flow, amount, units, price)
        return stop

    def _emit(self, lo: int, hi: int, flow, amount, units, price: int) -> None:
        self._flush_rows()
        n = hi - lo
        contribution = flow == 0
        day = self.day[lo:hi]
        investor = self.ids[self.inv[lo:hi]]
        self.writer.add_transactions(iw.TxBatch(
            kind=np.where(contribution, iw.KINDS.index("contribution"), iw.KINDS.index("withdrawal")).astype(np.uint8),
            status=np.zeros(n, dtype=np.uint8),
            investor_id=investor,
            amount=amount, units=units, price=np.full(n, price, dtype=np.int64),
            mode=np.where(contribution, -1, np.where(flow == BY_AMOUNT, iw.MODES.index("amount"),
                                                     iw.MODES.index("units"))).astype(np.int8),
            day=day,
            note=pc.take(self.rows.notes, pa.array(self.note_code[lo:hi])),
            dist_ref=np.full(n, iw.NULL, dtype=np.int64),
            settled=np.ones(n, dtype=bool)))
        # Two legs a flow: the pool's, then the investor's (contribution: cash in, units out of the pool).
        sign = np.where(contribution, 1, -1)
        refs = np.arange(self.tx_base, self.tx_base + n, dtype=np.int64)
        self.tx_base += n
        self._note_days(int(day.max()))
        self.writer.add_journal(iw.JournalBatch(
            ref_kind=np.zeros(2 * n, dtype=np.uint8),
            ref=np.repeat(refs, 2),
            account=np.tile(np.array([iw.ACCOUNTS.index("pool"), iw.ACCOUNTS.index("investor")], dtype=np.uint8), n),
            investor_id=np.column_stack([np.full(n, iw.NULL, dtype=np.int64), investor]).ravel(),
            amount=np.column_stack([sign * amount, -sign * amount]).ravel(),
            units=np.column_stack([-sign * units, sign * units]).ravel(),
            day=np.repeat(day, 2)))


def _divide(amount: np.ndarray, price: int) -> tuple[np.ndarray, np.ndarray]:
    """floor(amount * 10**8 / price) and its remainder, in int64 without overflow."""
    q0, r = np.divmod(amount, price)
    if (q0 >= QUOTIENT_LIMIT).any():
        raise _Decline()
    q1, r = np.divmod(r * 10**4, price)
    q2, r = np.divmod(r * 10**4, price)
    return q0 * 10**8 + q1 * 10**4 + q2, r


def _amount_for_units(units: np.ndarray, price: int, minor: int) -> np.ndarray:
    """floor(units * price) at the minor unit, scaled by 10**4; Python ints where int64 would overflow."""
    divisor = 10 ** (12 - minor)
    out = np.empty(len(units), dtype=np.int64)
    small = units <= (2**63 - 1) // price
    out[small] = (units[small] * price) // divisor
    for i in np.flatnonzero(~small).tolist():
        value = int(units[i]) * price // divisor
        if value * 10 ** (4 - minor) >= SAFE:
            raise _Decline()
        out[i] = value
    return out * 10 ** (4 - minor)
