"""Writing an import's postings in bulk, the same way whichever replay produced them.

Both the reference replay (``importer._Replay``) and the columnar fast path
(``import_columns``) hand their output here as column batches of scaled integers
(money at 4 places, units and prices at 6, as the ``Fixed`` columns store them), so
one writer decides what lands in the database and two equal replays give equal
tables.

On PostgreSQL the transactions are streamed with binary COPY from a background
thread while the caller is still replaying, which keeps the server busy from the first
replayed segment on. A first large load goes without the keys and indexes of
``_BULK_PLAN``, which are put back (and checked) before the transaction ends (see
``PostingWriter._enter_bulk``); its journal legs stream right behind the transactions
they belong to. Otherwise the legs go last, sorted by
investor so that the journal's index is filled in order. Binary rows are assembled
column-wise with numpy and pyarrow, never a Python object per field. On SQLite (one
writer at a time anyway) the same batches go through executemany.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.orm import Session

KINDS = ("contribution", "withdrawal", "distribution", "reinvestment")
STATUSES = ("settled", "pending")
MODES = ("amount", "units", "all")
ACCOUNTS = ("pool", "investor", "gain", "fee_expense", "fees_payable", "distribution")
REF_TX, REF_VAL, REF_DIST = 0, 1, 2
NULL = np.iinfo(np.int64).min  # NULL in an int64 column
BATCH_ROWS = 65536  # transactions per streamed COPY statement
FIRST_BATCH_ROWS = 8192  # the first goes sooner, so that the server starts while the rest is replayed
BULK_MIN_ROWS = 100_000  # a first load this large is written without foreign keys and indexes, then checked
BULK_LOCK_TIMEOUT = "3s"
ID_BLOCK = 65536  # ids a bulk load takes at a time when it needs more than it expected
# How long a posting to any other pool waited behind a bulk load of a million rows (bench.importer --probe,
# docs/import.md), on a quiet and on a busy 2-core machine: the locks are held from the start of the load
# until the import commits.
BULK_WAIT_DS_PER_MILLION = (54, 142)  # tenths of a second
# What a bulk load takes off and puts back, each with the statement that recreates it exactly:
# - the foreign keys of transactions, those that refer to it (payments, payouts), and those of
#   positions (one row per investor, each check a query of its own);
# - the primary keys of transactions and the journal;
# - the secondary (not unique) indexes of both, but for BULK_KEEP.
# Taken off in the order of the first column (foreign keys before the keys they refer to), put back
# in the order of the second. It runs with parameters, so %% stands for format()'s %.
_BULK_PLAN = """
SELECT 1, 2, format('ALTER TABLE %%s DROP CONSTRAINT %%I', conrelid::regclass, conname),
       format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', conrelid::regclass, conname, pg_get_constraintdef(oid))
  FROM pg_constraint
 WHERE contype = 'f' AND ('transactions'::regclass IN (conrelid, confrelid) OR conrelid = 'positions'::regclass)
UNION ALL
SELECT 2, 1, format('ALTER TABLE %%s DROP CONSTRAINT %%I', conrelid::regclass, conname),
       format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', conrelid::regclass, conname, pg_get_constraintdef(oid))
  FROM pg_constraint
 WHERE contype = 'p' AND conrelid IN ('transactions'::regclass, 'journal_entries'::regclass)
UNION ALL
SELECT 3, 3, format('DROP INDEX %%s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE NOT i.indisunique AND i.indrelid IN ('transactions'::regclass, 'journal_entries'::regclass)
   AND c.relname <> ALL (%(keep)s)
"""
# Partial indexes that take few imported rows (open transactions; valuations' gain and fee legs):
# keeping them up to date costs less than the scan that would rebuild them.
BULK_KEEP = ("ix_transactions_open", "ix_journal_balances")

_KIND = {k: i for i, k in enumerate(KINDS)}
_STATUS = {s: i for i, s in enumerate(STATUSES)}
_MODE = {m: i for i, m in enumerate(MODES)}
_ACCOUNT = {a: i for i, a in enumerate(ACCOUNTS)}
_EPOCH = date(1970, 1, 1).toordinal()
_PG_DAYS = 10957  # 2000-01-01 - 1970-01-01, PostgreSQL's binary epoch for dates and timestamps
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_TRAILER = b"\xff\xff"
_NULL_CELL = pa.scalar(b"\xff\xff\xff\xff", pa.binary())


def bulk_notice(rows: int) -> str:
    low, high = (max(1, (rows * tenths + 5_000_000) // 10_000_000) for tenths in BULK_WAIT_DS_PER_MILLION)
    quiet, busy = (f"{tenths // 10}.{tenths % 10}" for tenths in BULK_WAIT_DS_PER_MILLION)
    return (f"Loading {rows:,} rows in bulk: until this import commits, postings, pages and sign-ins of every "
            f"pool wait for it, about {low if low == high else f'{low} to {high}'} s (measured for a million rows: "
            f"{quiet} s on a quiet 2-core machine, {busy} s on a busy one).")


def day_number(day: date) -> int:
    return day.toordinal() - _EPOCH


def scaled(value: Decimal | None, scale: int) -> int:
    return NULL if value is None else int(value.scaleb(scale))


@dataclass
class TxBatch:
    """Transaction rows in replay order. Ints use NULL for a missing value; dist_ref indexes distributions."""

    kind: np.ndarray        # uint8 into KINDS
    status: np.ndarray      # uint8 into STATUSES
    investor_id: np.ndarray  # int64
    amount: np.ndarray      # int64, money scale 4
    units: np.ndarray       # int64, scale 6
    price: np.ndarray       # int64, scale 6
    mode: np.ndarray        # int8 into MODES, -1 none
    day: np.ndarray         # int32 days since 1970-01-01
    note: pa.Array          # string
    dist_ref: np.ndarray    # int64
    settled: np.ndarray     # bool

    def __len__(self) -> int:
        return len(self.kind)


@dataclass
class JournalBatch:
    ref_kind: np.ndarray    # uint8: REF_TX, REF_VAL, REF_DIST
    ref: np.ndarray         # int64 index of the transaction, valuation or distribution
    account: np.ndarray     # uint8 into ACCOUNTS
    investor_id: np.ndarray  # int64
    amount: np.ndarray      # int64, scale 4
    units: np.ndarray       # int64, scale 6
    day: np.ndarray         # int32

    def __len__(self) -> int:
        return len(self.ref)


def _cat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def concat_tx(batches: Sequence[TxBatch]) -> TxBatch:
    if len(batches) == 1:
        return batches[0]
    return TxBatch(*(pa.concat_arrays([b.note for b in batches]) if name == "note"
                     else _cat([getattr(b, name) for b in batches]) for name in TxBatch.__dataclass_fields__))


def concat_journal(batches: Sequence[JournalBatch]) -> JournalBatch:
    return JournalBatch(*(_cat([getattr(b, name) for b in batches]) for name in JournalBatch.__dataclass_fields__))


def tx_batch_from_rows(rows: Sequence[Sequence]) -> TxBatch:
    """Rows as the reference replay keeps them:
    [kind, status, investor_id, amount, units, price, mode, day, note, distribution_ref, settled]."""
    def ints(position: int, scale: int) -> np.ndarray:
        return np.array([scaled(r[position], scale) for r in rows], dtype=np.int64)

    return TxBatch(
        kind=np.array([_KIND[r[0]] for r in rows], dtype=np.uint8),
        status=np.array([_STATUS[r[1]] for r in rows], dtype=np.uint8),
        investor_id=np.array([NULL if r[2] is None else r[2] for r in rows], dtype=np.int64),
        amount=ints(3, 4), units=ints(4, 6), price=ints(5, 6),
        mode=np.array([-1 if r[6] is None else _MODE[r[6]] for r in rows], dtype=np.int8),
        day=np.array([day_number(r[7]) for r in rows], dtype=np.int32),
        note=pa.array([r[8] for r in rows], pa.string()),
        dist_ref=np.array([NULL if r[9] is None else r[9] for r in rows], dtype=np.int64),
        settled=np.array([bool(r[10]) for r in rows], dtype=bool),
    )


def journal_batch_from_rows(rows: Sequence[tuple]) -> JournalBatch:
    """Rows as the reference replay keeps them: (("tx"|"val"|"dist", index), account, investor_id, amount, units, day)."""
    refs = {"tx": REF_TX, "val": REF_VAL, "dist": REF_DIST}
    return JournalBatch(
        ref_kind=np.array([refs[r[0][0]] for r in rows], dtype=np.uint8),
        ref=np.array([r[0][1] for r in rows], dtype=np.int64),
        account=np.array([_ACCOUNT[r[1]] for r in rows], dtype=np.uint8),
        investor_id=np.array([NULL if r[2] is None else r[2] for r in rows], dtype=np.int64),
        amount=np.array([scaled(r[3], 4) for r in rows], dtype=np.int64),
        units=np.array([scaled(r[4], 6) for r in rows], dtype=np.int64),
        day=np.array([day_number(r[5]) for r in rows], dtype=np.int32),
    )


# --- binary COPY rows ------------------------------------------------------------------

def _pg_micros(moment: datetime) -> int:
    delta = moment.astimezone(timezone.utc) - datetime(2000, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _fixed_cells(values: np.ndarray, width: int) -> pa.Array:
    """One binary COPY field per row: a 4-byte length, then the big-endian value; NULL where values == NULL."""
    n = len(values)
    layout = np.dtype([("length", ">i4"), ("value", ">i4" if width == 4 else ">i8")])
    block = np.empty(n, layout)
    block["length"] = width
    block["value"] = values
    cells = pa.FixedSizeBinaryArray.from_buffers(pa.binary(layout.itemsize), n, [None, pa.py_buffer(block)])
    cells = cells.cast(pa.binary())
    missing = values == NULL
    if missing.any():
        cells = pc.if_else(pa.array(missing), _NULL_CELL, cells)
    return cells


def _constant_cell(value: int | None, width: int) -> pa.Scalar:
    if value is None:
        return _NULL_CELL
    return pa.scalar(width.to_bytes(4, "big") + value.to_bytes(width, "big", signed=True), pa.binary())


def _text_cell(value: str | None) -> pa.Scalar:
    if value is None:
        return _NULL_CELL
    data = value.encode()
    return pa.scalar(len(data).to_bytes(4, "big") + data, pa.binary())


def _coded_cells(codes: np.ndarray, labels: Sequence[str | None]) -> pa.Array:
    """Text fields drawn from a few labels (a code of -1 is NULL)."""
    cells = pa.array([_text_cell(label).as_py() for label in labels] + [b"\xff\xff\xff\xff"], pa.binary())
    index = codes.astype(np.int32)
    index[index < 0] = len(labels)
    return pc.take(cells, pa.array(index))


def _string_cells(strings: pa.Array) -> pa.Array:
    data = strings.cast(pa.binary())
    lengths = pc.binary_length(data).to_numpy(zero_copy_only=False).astype(">i4")
    prefix = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), len(lengths), [None, pa.py_buffer(lengths)])
    return pc.binary_join_element_wise(prefix.cast(pa.binary()), data, pa.scalar(b"", pa.binary()))


def _binary_rows(fields: int, cells: list) -> pa.Buffer:
    """Concatenate per-row cells (arrays or constants) into the rows of a binary COPY."""
    joined = pc.binary_join_element_wise(pa.scalar(fields.to_bytes(2, "big"), pa.binary()), *cells,
                                         pa.scalar(b"", pa.binary()))
    if isinstance(joined, pa.Scalar):  # every input was a constant
        raise ValueError("binary rows need at least one column that varies")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
    return joined.buffers()[2][offsets[0]:offsets[-1]]


# --- the writer --------------------------------------------------------------------------

TX_COLUMNS = ["id", "pool_id", "investor_id", "kind", "status", "amount", "units", "price", "withdrawal_mode",
              "effective_date", "source", "payment_received_at", "distribution_id", "note", "created_by",
              "created_at", "settled_at", "version"]
JOURNAL_COLUMNS = ["pool_id", "transaction_id", "valuation_id", "distribution_id", "account", "investor_id",
                   "amount", "units", "effective_date", "created_at"]


class _Stop(Exception):
    pass


@contextmanager
def _local_setting(raw, name: str, value: str):
    """A setting for the statements inside, then back to what it was (for the rest of the transaction)."""
    from psycopg.pq import TransactionStatus

    with raw.cursor() as cursor:
        before = cursor.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
        cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
    try:
        yield
    finally:
        if raw.info.transaction_status == TransactionStatus.INTRANS:  # after an error, the rollback undoes it
            with raw.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, %s, true)", (name, before))


class PostingWriter:
    """Writes one import: transactions as they are replayed, then everything that points at them.

    ``valuations`` and ``distributions`` are how many of each the import will write: their ids are
    taken first, because transaction rows name their distribution."""

    def __init__(self, session: Session, *, pool_id: int, actor_id: int, now: datetime,
                 valuations: int, distributions: int, rows: int = 0, notify=None):
        self.session = session
        self.connection = session.connection()
        self.postgres = self.connection.dialect.name == "postgresql"
        self.raw = self.connection.connection.driver_connection
        self.pool_id, self.actor_id, self.now = pool_id, actor_id, now
        self.bulk = False  # see _enter_bulk
        self._block: dict[str, list[int]] = {}  # table: [next, end) of the ids a bulk load has taken
        self.val_ids = self._ids("valuations", valuations)
        self.dist_ids = self._ids("distributions", distributions)
        self.tx_ids: list[np.ndarray] = []
        self.tx_count = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending: list[TxBatch] = []
        self._pending_rows = 0
        self._journal: list[JournalBatch] = []  # legs written last, in index order
        self._pending_journal: list[JournalBatch] = []  # a bulk load's legs, streamed behind their transactions
        self._restore: list[str] = []
        self._defaulted: dict[str, set[str]] = {}  # table: columns sent as defaults (a bulk load)
        if self.postgres and rows >= BULK_MIN_ROWS:
            self._enter_bulk(rows)
        self.bulk = bool(self._restore)
        if self.bulk and notify is not None:
            notify(bulk_notice(rows))

    # ids: PostgreSQL hands out sequence values (another writer may take some in between);
    # SQLite has one writer, so the next ids follow the largest.
    def _ids(self, table: str, count: int) -> np.ndarray:
        if not count:
            return np.empty(0, dtype=np.int64)
        if table in self._block:
            return self._take(table, count)
        if self.postgres:
            with self.raw.cursor() as cursor:
                cursor.execute(
                    f"SELECT min(v), max(v), count(*), CASE WHEN max(v) - min(v) + 1 <> count(*) "
                    f"THEN array_agg(v ORDER BY v) END FROM (SELECT nextval('{table}_id_seq') AS v "
                    f"FROM generate_series(1, %s)) AS s", (int(count),))
                low, high, _, spread = cursor.fetchone()
            if spread is not None:
                return np.array(spread, dtype=np.int64)
            return np.arange(low, high + 1, dtype=np.int64)
        cursor = self.raw.cursor()
        start = (cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0] or 0) + 1
        cursor.close()
        return np.arange(start, start + count, dtype=np.int64)

    # --- bulk loading ---------------------------------------------------------------------

    def _enter_bulk(self, rows: int) -> None:
        """A first large load (at least BULK_MIN_ROWS rows, more than the ledger holds already) is
        written without the keys and indexes of ``_BULK_PLAN``, and with the columns every row shares
        as column defaults; ``_leave_bulk`` puts all of it back, exactly as it was, in this same
        transaction. Adding a key checks every row, so nothing is taken on trust. Until the commit no
        one else can read or write these tables, nor ``payments``, ``distribution_payouts``, ``users``
        and ``pools`` (taking a foreign key off locks the table at its other end too): others wait for
        the import instead of seeing a ledger without its constraints, which is why this is kept to a
        first load. When the tables are busy (a lock not had within BULK_LOCK_TIMEOUT), or the
        database user does not own them, the import goes row by row."""
        import psycopg

        with self.raw.cursor() as cursor:
            held = cursor.execute(
                "SELECT greatest(c.reltuples, s.n_live_tup, 0)::bigint FROM pg_class c "
                "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = 'transactions'::regclass").fetchone()[0]
            if rows <= held:
                return  # rebuilding would cost the whole table: cheaper to keep the indexes up to date
            plan = cursor.execute(_BULK_PLAN, {"keep": list(BULK_KEEP)}).fetchall()
        try:
            with self.raw.transaction():  # a savepoint: given up as a whole when a lock is not had in time
                with _local_setting(self.raw, "lock_timeout", BULK_LOCK_TIMEOUT), self.raw.cursor() as cursor:
                    for _, _, drop, _ in sorted(plan):
                        cursor.execute(drop)
                    defaults, defaulted = self._set_defaults(cursor)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                psycopg.errors.InsufficientPrivilege):  # busy, or a database user that does not own the tables
            return
        self._defaulted = defaulted
        self._restore = defaults + [create for _, _, _, create in sorted(plan, key=lambda step: (step[1], step[2]))]
        self._block = {table: self._reserve(table, count) for table, count in self._expected_ids(rows).items()}

    @staticmethod
    def _expected_ids(rows: int) -> dict[str, int]:
        """Ids a file of ``rows`` rows usually needs: a transaction and two legs a row."""
        return {"transactions": rows + 1024, "journal_entries": 2 * rows + 1024}

    # Ids in a bulk load: no one else can take an id of the transactions or the journal while the load
    # holds its locks (every statement that does, an insert or another import, which first locks its
    # pool, waits for them). So they are taken in blocks, one setval each, and the writer numbers its
    # rows itself, which lets it build them before the connection is free. The ids left unused go back
    # to the sequences at the end.
    def _reserve(self, table: str, count: int) -> list[int]:
        with self.raw.cursor() as cursor:
            last = cursor.execute(f"SELECT setval('{table}_id_seq', nextval('{table}_id_seq') + %s - 1)",
                                  (int(count),)).fetchone()[0]
        return [last - count + 1, last + 1]

    def _take(self, table: str, count: int) -> np.ndarray:
        start, end = self._block[table]
        if end - start < count:  # more rows than expected (a distribution to many holders): take another block
            self._join()  # the connection is the stream's until it has written what it was given
            start, end = self._reserve(table, max(count, ID_BLOCK))
        self._block[table] = [start + count, end]
        return np.arange(start, start + count, dtype=np.int64)

    def _constants(self, table: str) -> dict[str, tuple[object, pa.Scalar]]:
        """The columns that hold the same value in every row this import writes to ``table``:
        (value, its binary COPY cell)."""
        now = _constant_cell(_pg_micros(self.now), 8)
        same = {"pool_id": (self.pool_id, _constant_cell(self.pool_id, 4)), "created_at": (self.now, now)}
        if table == "transactions":
            same.update({"source": ("import", _text_cell("import")), "payment_received_at": (self.now, now),
                         "created_by": (self.actor_id, _constant_cell(self.actor_id, 4)),
                         "version": (1, _constant_cell(1, 4))})
        return same

    def _set_defaults(self, cursor) -> tuple[list[str], dict[str, set[str]]]:
        """For the load, the columns every row shares become column defaults and are left out of the
        COPY: the server then takes no field per row for them (a time stamp costs it most). Returns
        the statements that put the defaults back as they were, and the columns per table."""
        from psycopg import sql

        restore, defaulted = [], {}
        for table in ("transactions", "journal_entries"):
            constants = self._constants(table)
            before = dict(cursor.execute(
                "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
                "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = %s::regclass AND a.attname = ANY(%s)", (table, list(constants))).fetchall())
            cursor.execute(sql.SQL("ALTER TABLE {} {}").format(sql.Identifier(table), sql.SQL(", ").join(
                sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(column), sql.Literal(value))
                for column, (value, _) in constants.items())))
            restore.append(sql.SQL("ALTER TABLE {} {}").format(sql.Identifier(table), sql.SQL(", ").join(
                sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(sql.Identifier(column)) if before[column] is None
                else sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(sql.Identifier(column), sql.SQL(before[column]))
                for column in constants)).as_string(self.raw))
            defaulted[table] = set(constants)
        return restore, defaulted

    def _copy_columns(self, table: str) -> list[str]:
        """The columns a COPY sends: a bulk load gives the journal's ids itself and leaves out the
        columns it made defaults of."""
        columns = TX_COLUMNS if table == "transactions" else (["id"] if self.bulk else []) + JOURNAL_COLUMNS
        return [c for c in columns if c not in self._defaulted.get(table, ())]

    def _leave_bulk(self) -> None:
        if not self._restore:
            return
        with self.raw.cursor() as cursor:
            for table, (unused, _) in self._block.items():  # the next id is the first one not used
                cursor.execute(f"SELECT setval('{table}_id_seq', %s, false)", (int(unused),))
        self._block = {}
        with _local_setting(self.raw, "maintenance_work_mem", "256MB"), self.raw.cursor() as cursor:
            for statement in self._restore:
                cursor.execute(statement)
        self._restore = []

    # --- transactions -------------------------------------------------------------------

    def add_transactions(self, batch: TxBatch) -> None:
        """Queue rows (in replay order) for writing; on PostgreSQL they stream while the caller goes on."""
        if not len(batch):
            return
        self._pending.append(batch)
        self._pending_rows += len(batch)
        if self._pending_rows >= (BATCH_ROWS if self.tx_count else FIRST_BATCH_ROWS):
            self._flush()

    def add_journal(self, batch: JournalBatch) -> None:
        """Queue legs, after the transactions they name. A bulk load streams them behind those
        transactions (its indexes are rebuilt anyway); otherwise they are written last, in index order."""
        if not len(batch):
            return
        (self._pending_journal if self.bulk else self._journal).append(batch)

    def _flush(self) -> None:
        if self._pending:
            batch = concat_tx(self._pending)
            self._pending, self._pending_rows = [], 0
            self.tx_count += len(batch)
            if not self.postgres:
                self._write_tx(batch)
            elif self.bulk:  # numbered and built here, so the stream only writes
                ids = self._ids("transactions", len(batch))
                self.tx_ids.append(ids)
                self._send(("copy", "transactions", [self._tx_rows(batch, ids)]))
            else:
                self._send(("tx", batch))
        if self._pending_journal:  # every transaction these legs name has been numbered before them
            legs = concat_journal(self._pending_journal)
            self._pending_journal = []
            self._send(("copy", "journal_entries", list(self._journal_parts(legs, ordered=False))))

    def _send(self, item) -> None:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._stream, name="import-copy", daemon=True)
            self._thread.start()
        self._put(item)

    def _put(self, item) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _stream(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None or self._stopping:
                    return
                if item[0] == "tx":
                    self._write_tx(item[1])
                else:
                    _, table, parts = item
                    self._copy_binary(table, self._copy_columns(table), parts)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc

    def _write_tx(self, batch: TxBatch) -> None:
        ids = self._ids("transactions", len(batch))
        self.tx_ids.append(ids)
        if self.postgres:
            self._copy_binary("transactions", self._copy_columns("transactions"), [self._tx_rows(batch, ids)])
        else:
            self._insert_many("transactions", TX_COLUMNS, self._tx_tuples(batch, ids))

    def _dist_id(self, refs: np.ndarray) -> np.ndarray:
        out = np.full(len(refs), NULL, dtype=np.int64)
        present = refs != NULL
        if present.any():
            out[present] = self.dist_ids[refs[present]]
        return out

    def _tx_rows(self, b: TxBatch, ids: np.ndarray) -> pa.Buffer:
        cells = {column: cell for column, (_, cell) in self._constants("transactions").items()}
        cells.update({
            "id": _fixed_cells(ids, 4), "investor_id": _fixed_cells(b.investor_id, 4),
            "kind": _coded_cells(b.kind, KINDS), "status": _coded_cells(b.status, STATUSES),
            "amount": _fixed_cells(b.amount, 8), "units": _fixed_cells(b.units, 8), "price": _fixed_cells(b.price, 8),
            "withdrawal_mode": _coded_cells(b.mode, MODES),
            "effective_date": _fixed_cells(b.day.astype(np.int64) - _PG_DAYS, 4),
            "distribution_id": _fixed_cells(self._dist_id(b.dist_ref), 4), "note": _string_cells(b.note),
            "settled_at": _fixed_cells(np.where(b.settled, _pg_micros(self.now), NULL), 8)})
        columns = self._copy_columns("transactions")
        return _binary_rows(len(columns), [cells[column] for column in columns])

    def _tx_tuples(self, b: TxBatch, ids: np.ndarray) -> Iterable[tuple]:
        now = _sqlite_time(self.now)
        days = _iso_days(b.day)
        dist = self._dist_id(b.dist_ref)
        notes = b.note.to_pylist()
        for i in range(len(b)):
            yield (int(ids[i]), self.pool_id, _int(b.investor_id[i]), KINDS[b.kind[i]], STATUSES[b.status[i]],
                   _int(b.amount[i]), _int(b.units[i]), _int(b.price[i]),
                   MODES[b.mode[i]] if b.mode[i] >= 0 else None, days[i], "import", now, _int(dist[i]), notes[i],
                   self.actor_id, now, now if b.settled[i] else None, 1)

    # --- everything else ------------------------------------------------------------------

    def finish(self, valuations: list[tuple], fees: list[tuple], distributions: list[tuple],
               positions: tuple[list[tuple], list[tuple]]) -> None:
        """Wait for the transactions (and a bulk load's legs), then write valuations, fees, distributions,
        the remaining journal legs and the positions (see ``_write_positions``); a bulk load then puts its
        keys and indexes back.

        valuations: (day, V, nav_before_fees, management_fee, performance_fee, nav, units, p, hwm, note);
        fees: (valuation index, kind, amount, day, basis);
        distributions: (day, total, per_unit, units_outstanding, nav_per_unit_after, note)."""
        self._flush()
        self._join()
        m, u = 4, 6
        self.rows("valuations", ["id", "pool_id", "valuation_date", "total_assets", "nav_before_fees",
                                 "management_fee", "performance_fee", "nav", "units_outstanding", "nav_per_unit",
                                 "high_water_mark", "note", "created_by", "created_at"],
                  ((int(self.val_ids[i]), self.pool_id, d, _num(v, m), _num(nb, m), _num(mf, m), _num(pf, m),
                    _num(nav, m), _num(units, u), _num(p, u), _num(hwm, u), note, self.actor_id, self.now)
                   for i, (d, v, nb, mf, pf, nav, units, p, hwm, note) in enumerate(valuations)))
        self.rows("fee_accruals", ["pool_id", "valuation_id", "kind", "amount", "accrual_date", "basis"],
                  ((self.pool_id, int(self.val_ids[i]), kind, _num(amount, m), d, basis)
                   for i, kind, amount, d, basis in fees))
        self.rows("distributions", ["id", "pool_id", "record_date", "total", "per_unit", "units_outstanding",
                                    "nav_per_unit_after", "note", "created_by", "created_at"],
                  ((int(self.dist_ids[i]), self.pool_id, d, _num(total, m), _num(per_unit, u), _num(units, u),
                    _num(after, u), note, self.actor_id, self.now)
                   for i, (d, total, per_unit, units, after, note) in enumerate(distributions)))
        if self._journal:
            self._write_journal(concat_journal(self._journal))
            self._journal = []
        self._write_positions(*positions)
        self._leave_bulk()

    def abort(self) -> None:
        """Stop streaming (the caller then rolls the rows back)."""
        self._pending, self._pending_rows = [], 0
        self._journal, self._pending_journal = [], []
        self._stopping = True
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass
            self._thread.join()
            self._thread = None

    def _join(self) -> None:
        if self._thread is not None:
            self._put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def _journal_refs(self, j: JournalBatch) -> list[np.ndarray]:
        """The transaction, valuation and distribution id of each leg (NULL where it names another)."""
        tx_ids = _cat(self.tx_ids) if self.tx_ids else np.empty(0, dtype=np.int64)
        columns = {REF_TX: tx_ids, REF_VAL: self.val_ids, REF_DIST: self.dist_ids}
        refs = []
        for kind in (REF_TX, REF_VAL, REF_DIST):
            out = np.full(len(j), NULL, dtype=np.int64)
            mine = j.ref_kind == kind
            if mine.any():
                out[mine] = columns[kind][j.ref[mine]]
            refs.append(out)
        return refs

    def _journal_parts(self, j: JournalBatch, ordered: bool) -> Iterable[pa.Buffer]:
        """Binary COPY rows of the legs, a part at a time. A bulk load numbers them itself; otherwise
        the column's default does."""
        refs = self._journal_refs(j)
        order = _investor_order(j) if ordered else None
        ids = self._ids("journal_entries", len(j)) if self.bulk else None
        columns = self._copy_columns("journal_entries")
        constants = {column: cell for column, (_, cell) in self._constants("journal_entries").items()}
        step = 262144
        for start in range(0, len(j), step):
            o = order[start:start + step] if ordered else slice(start, start + step)
            cells = dict(constants)
            cells.update({
                "transaction_id": _fixed_cells(refs[0][o], 4), "valuation_id": _fixed_cells(refs[1][o], 4),
                "distribution_id": _fixed_cells(refs[2][o], 4), "account": _coded_cells(j.account[o], ACCOUNTS),
                "investor_id": _fixed_cells(j.investor_id[o], 4), "amount": _fixed_cells(j.amount[o], 8),
                "units": _fixed_cells(j.units[o], 8),
                "effective_date": _fixed_cells(j.day[o].astype(np.int64) - _PG_DAYS, 4)})
            if ids is not None:
                cells["id"] = _fixed_cells(ids[start:start + step], 4)
            yield _binary_rows(len(columns), [cells[column] for column in columns])

    def _write_journal(self, j: JournalBatch) -> None:
        """Legs written last (not a bulk load), in investor order."""
        if self.postgres:  # each part built while the server takes in the previous one
            self._copy_binary("journal_entries", self._copy_columns("journal_entries"), self._journal_parts(j, True))
            return
        refs = self._journal_refs(j)
        order = _investor_order(j)
        now = _sqlite_time(self.now)
        days = _iso_days(j.day)
        self._insert_many("journal_entries", JOURNAL_COLUMNS, (
            (self.pool_id, _int(refs[0][i]), _int(refs[1][i]), _int(refs[2][i]), ACCOUNTS[j.account[i]],
             _int(j.investor_id[i]), int(j.amount[i]), int(j.units[i]), days[i], now) for i in order))

    def _write_positions(self, new: list[tuple], changed: list[tuple]) -> None:
        """new: (investor_id, units, contributed, withdrawn, distributions, reinvest, opened_seq) as scaled ints;
        changed: (investor_id, units, contributed, withdrawn, distributions) for positions held before."""
        self.rows("positions", ["pool_id", "investor_id", "units", "contributed", "withdrawn", "distributions",
                                "reinvest_distributions", "opened_seq", "version"],
                  ((self.pool_id, inv, units, c, w, d, reinvest, seq, 1) for inv, units, c, w, d, reinvest, seq in new))
        if not changed:
            return
        if self.postgres:
            columns = list(zip(*changed))
            with self.raw.cursor() as cursor:
                cursor.execute(
                    "UPDATE positions AS p SET units = c.units, contributed = c.contributed, withdrawn = c.withdrawn, "
                    "distributions = c.distributions, version = p.version + 1 "
                    "FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) "
                    "AS c(investor_id, units, contributed, withdrawn, distributions) "
                    "WHERE p.pool_id = %s AND p.investor_id = c.investor_id",
                    [list(c) for c in columns] + [self.pool_id])
            return
        cursor = self.raw.cursor()
        cursor.executemany("UPDATE positions SET units=?, contributed=?, withdrawn=?, distributions=?, "
                           "version=version+1 WHERE pool_id=? AND investor_id=?",
                           [(units, c, w, d, self.pool_id, inv) for inv, units, c, w, d in changed])
        cursor.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _copy_binary(self, table: str, columns: list[str], parts: Iterable[pa.Buffer]) -> None:
        with self.raw.cursor() as cursor:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(_SIGNATURE)
                for part in parts:
                    if self._stopping:
                        raise _Stop()
                    view = memoryview(part)
                    for start in range(0, len(view), 1 << 20):
                        copy.write(view[start:start + (1 << 20)])
                copy.write(_TRAILER)

    def rows(self, table: str, columns: list[str], rows: Iterable[tuple]) -> None:
        """Small tables: text COPY on PostgreSQL, executemany on SQLite."""
        if self.postgres:
            with self.raw.cursor() as cursor:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            return
        self._insert_many(table, columns, (tuple(_sqlite_value(v) for v in row) for row in rows))

    def _insert_many(self, table: str, columns: list[str], rows: Iterable[tuple]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        cursor = self.raw.cursor()
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 5000:
                cursor.executemany(sql, batch)
                batch.clear()
        if batch:
            cursor.executemany(sql, batch)
        cursor.close()


def _investor_order(j: JournalBatch) -> np.ndarray:
    """Legs in investor order fill the journal's index from left to right."""
    return np.lexsort((np.arange(len(j)), j.investor_id))


def _int(value) -> int | None:
    return None if value == NULL else int(value)


def _num(value: Decimal | None, scale: int) -> int | None:
    return None if value is None else int(value.scaleb(scale))


def _iso_days(days: np.ndarray) -> list[str]:
    return np.datetime_as_string(days.astype("datetime64[D]")).tolist()


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_value(value):
    if isinstance(value, datetime):
        return _sqlite_time(value)
    if isinstance(value, date):
        return value.isoformat()
    return value
