"""Loading the ledger from the primary database into Arrow tables.

Money, units and prices are stored as scaled integers (core.db.types), so they
travel as int64 from the database to Arrow to DuckDB and are only turned into
exact DECIMALs there: no value passes through a float. On PostgreSQL the rows
come out with ``COPY ... TO STDOUT`` (CSV, parsed by pyarrow's multi-threaded
reader), which is several times faster than fetching rows through a cursor; on
SQLite they are fetched through the driver.

Every statement here is built from integers and dates only (never user text),
which is what makes it safe to inline them into COPY, which takes no bind
parameters.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.csv as pacsv

from core.db.models import ledger as ledger_models
from core.db.session import Database

# Journal accounts other than the investor's own legs, summed per pool: with the
# investor and distribution legs they give the pool's total assets and fees
# payable as of a date (every posting balances, so the pool leg is minus the rest).
BALANCE_ACCOUNTS = ledger_models.BALANCE_ACCOUNTS  # read through ix_journal_balances


@dataclass(frozen=True)
class Book:
    """Everything the engine needs, as of one date, for a set of pools (and optionally one investor)."""

    as_of: date
    pools: pa.Table
    valuations: pa.Table
    distributions: pa.Table
    legs: pa.Table
    balances: pa.Table
    investor_id: int | None = None


POOLS = pa.schema([
    ("pool_id", pa.int64()), ("code", pa.string()), ("name", pa.string()), ("currency", pa.string()),
    ("status", pa.string()), ("inception_date", pa.date32()), ("initial_price", pa.int64()),
    ("ledger_version", pa.int64()),
])
VALUATIONS = pa.schema([
    ("pool_id", pa.int64()), ("valuation_date", pa.date32()), ("total_assets", pa.int64()), ("nav", pa.int64()),
    ("units_outstanding", pa.int64()), ("nav_per_unit", pa.int64()), ("management_fee", pa.int64()),
    ("performance_fee", pa.int64()),
])
DISTRIBUTIONS = pa.schema([
    ("distribution_id", pa.int64()), ("pool_id", pa.int64()), ("record_date", pa.date32()), ("total", pa.int64()),
    ("per_unit", pa.int64()), ("nav_per_unit_after", pa.int64()),
])
# account: 0 = the investor's capital leg, 1 = their share of a distribution.
LEGS = pa.schema([
    ("pool_id", pa.int64()), ("investor_id", pa.int64()), ("effective_date", pa.date32()), ("account", pa.int8()),
    ("amount", pa.int64()), ("units", pa.int64()), ("reversal", pa.int8()),
])
BALANCES = pa.schema([("pool_id", pa.int64()), ("account", pa.string()), ("amount", pa.int64())])


def _in_list(column: str, ids: list[int] | None) -> str:
    if ids is None:
        return ""
    return f" AND {column} IN ({', '.join(str(int(i)) for i in ids) or 'NULL'})"


def _date(value: date) -> str:
    return f"DATE '{date.fromordinal(value.toordinal()).isoformat()}'"


def _query(db: Database, sql: str, schema: pa.Schema) -> pa.Table:
    if db.is_postgres:
        return _copy_csv(db, sql, schema)
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql.replace("DATE '", "'")).fetchall()
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    arrays = []
    for field, values in zip(schema, columns):
        if pa.types.is_date32(field.type):
            values = [v if isinstance(v, date) or v is None else date.fromisoformat(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _copy_csv(db: Database, sql: str, schema: pa.Schema) -> pa.Table:
    raw = db.engine.raw_connection()
    try:
        buffer = io.BytesIO()
        with raw.cursor() as cursor:
            with cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
                for chunk in copy:
                    buffer.write(chunk)
        raw.rollback()
    finally:
        raw.close()
    if buffer.tell() == 0:
        return schema.empty_table()
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=8 << 20),
        convert_options=pacsv.ConvertOptions(column_types={f.name: f.type for f in schema},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    ).cast(schema)


def _legs_sql(cut: str, pool_ids: list[int] | None, investor_id: int | None) -> str:
    investor_filter = f" AND j.investor_id = {int(investor_id)}" if investor_id is not None else ""
    return ("SELECT j.pool_id, j.investor_id, j.effective_date, "
            "CASE WHEN j.account = 'investor' THEN 0 ELSE 1 END, j.amount, j.units, "
            "CASE WHEN j.transaction_id IN (SELECT id FROM transactions WHERE kind = 'reversal') THEN 1 ELSE 0 END "
            "FROM journal_entries j WHERE j.account IN ('investor', 'distribution') "
            f"AND j.effective_date <= {cut}{_in_list('j.pool_id', pool_ids)}{investor_filter}")


def load_investor_legs(db: Database, *, as_of: date, investor_id: int, pool_ids: list[int]) -> pa.Table:
    """One investor's cash and distribution legs in these pools up to ``as_of`` (no pool-wide figures)."""
    return _query(db, _legs_sql(_date(as_of), pool_ids, investor_id), LEGS)


def load_book(db: Database, *, as_of: date, pool_ids: list[int] | None = None,
              investor_id: int | None = None) -> Book:
    """Pools, valuations and distributions up to ``as_of``, and the investors' legs up to it.

    ``investor_id`` restricts the legs to that investor (their own statement or
    portfolio); pool-wide figures that need every holder are then not computed.
    """
    pool_filter = _in_list("id", pool_ids)
    pools = _query(db, "SELECT id, code, name, currency, status, inception_date, initial_unit_price, ledger_version "
                       f"FROM pools WHERE 1=1{pool_filter} ORDER BY id", POOLS)
    ids = pools.column("pool_id").to_pylist()
    if not ids:
        empty = Book(as_of, pools, VALUATIONS.empty_table(), DISTRIBUTIONS.empty_table(), LEGS.empty_table(),
                     BALANCES.empty_table(), investor_id)
        return empty
    pool_in = _in_list("pool_id", ids if pool_ids is not None else None)
    cut = _date(as_of)
    legs_sql = _legs_sql(cut, ids if pool_ids is not None else None, investor_id)
    accounts = ", ".join(f"'{a}'" for a in BALANCE_ACCOUNTS)
    work = {
        "valuations": ("SELECT pool_id, valuation_date, total_assets, nav, units_outstanding, nav_per_unit, "
                       f"management_fee, performance_fee FROM valuations WHERE valuation_date <= {cut}{pool_in}",
                       VALUATIONS),
        "distributions": ("SELECT id, pool_id, record_date, total, per_unit, nav_per_unit_after FROM distributions "
                          f"WHERE record_date <= {cut}{pool_in}", DISTRIBUTIONS),
        "balances": (f"SELECT pool_id, account, SUM(amount) FROM journal_entries WHERE account IN ({accounts}) "
                     f"AND effective_date <= {cut}{pool_in} GROUP BY pool_id, account", BALANCES),
    }
    # The investors' legs are most of the rows: on PostgreSQL read them in parallel slices by pool.
    slices = 2 if db.is_postgres and investor_id is None else 1
    for part in range(slices):
        where = f" AND j.pool_id % {slices} = {part}" if slices > 1 else ""
        work[f"legs{part}"] = (legs_sql + where, LEGS)
    if db.is_postgres:
        with ThreadPoolExecutor(max_workers=len(work)) as pool:
            futures = {name: pool.submit(_query, db, sql, schema) for name, (sql, schema) in work.items()}
            done = {name: future.result() for name, future in futures.items()}
    else:
        done = {name: _query(db, sql, schema) for name, (sql, schema) in work.items()}
    valuations, distributions, balances = done["valuations"], done["distributions"], done["balances"]
    legs = pa.concat_tables([done[f"legs{part}"] for part in range(slices)])
    return Book(as_of, pools, valuations, distributions, legs, balances, investor_id)
