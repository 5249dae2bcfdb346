"""Downloads: transactions, holdings and performance as CSV, Excel (xlsx) or Parquet.

Large exports stream: rows are read from the database in chunks (a server-side
cursor on PostgreSQL) and written chunk by chunk, with ``progress(done, total)``
called after each, so a page can show a progress bar and memory stays flat.
Money stays Decimal (text in CSV, exact numbers in xlsx, decimal128 in Parquet).
Text columns (emails, pool codes...) never become formulas: in CSV and xlsx a text
cell starting with = + - @, a tab or a carriage return gets a leading single quote,
and xlsx text cells are written as strings (see core.domain.spreadsheet).
Who sees what: admins everything; analysts every pool, investors by id only;
managers their pools; investors only their own transactions and holdings.
Parquet is the analysts' format (admins and analysts).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select

from core.analytics import metrics
from core.db.models import Pool, PoolManager, Transaction, User
from core.db.session import Database
from core.domain.errors import PermissionDenied, ValidationError
from core.domain.spreadsheet import neutralise
from core.services.context import Actor

FORMATS = ("csv", "xlsx", "parquet")
DATASETS = ("transactions", "holdings", "performance")
MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int | text | date | money | units | price | ratio


def _check(actor: Actor, fmt: str, dataset: str) -> None:
    if fmt not in FORMATS:
        raise ValidationError(f"Unknown format {fmt!r}; choose csv, xlsx or parquet.", field="format")
    if dataset not in DATASETS:
        raise ValidationError(f"Unknown export {dataset!r}; choose transactions, holdings or performance.",
                              field="dataset")
    if fmt == "parquet" and actor.role not in ("admin", "analyst"):
        raise PermissionDenied("Parquet exports are for analysts.")
    if dataset == "performance" and actor.role == "investor":
        raise PermissionDenied("Investors see their own figures on My portfolio.")


def _transaction_source(db: Database, actor: Actor, pool_id: int | None, chunk_size: int,
                        start: date | None = None, as_of: date | None = None):
    who = [Column("investor_id", "int")] if actor.role == "analyst" else [Column("investor_id", "int"),
                                                                          Column("investor_email", "text")]
    columns = [Column("id", "int"), Column("pool", "text"), *who, Column("kind", "text"), Column("status", "text"),
               Column("effective_date", "date"), Column("amount", "money"), Column("units", "units"),
               Column("price", "price"), Column("reverses_id", "int")]
    query = (select(Transaction.id, Pool.code, Transaction.investor_id, User.email, Transaction.kind,
                    Transaction.status, Transaction.effective_date, Transaction.amount, Transaction.units,
                    Transaction.price, Transaction.reverses_id)
             .join(Pool, Pool.id == Transaction.pool_id).outerjoin(User, User.id == Transaction.investor_id)
             .order_by(Transaction.id))
    count = select(func.count()).select_from(Transaction)
    if actor.role == "investor":
        query, count = query.where(Transaction.investor_id == actor.id), count.where(Transaction.investor_id == actor.id)
    elif actor.role == "manager":
        mine = select(PoolManager.pool_id).where(PoolManager.user_id == actor.id)
        query, count = query.where(Transaction.pool_id.in_(mine)), count.where(Transaction.pool_id.in_(mine))
    elif actor.role not in ("admin", "analyst"):
        raise PermissionDenied("You may not export transactions.")
    if pool_id is not None:
        query, count = query.where(Transaction.pool_id == pool_id), count.where(Transaction.pool_id == pool_id)
    if start is not None:  # the date range: by effective date, both ends included
        query, count = (query.where(Transaction.effective_date >= start),
                        count.where(Transaction.effective_date >= start))
    if as_of is not None:
        query, count = (query.where(Transaction.effective_date <= as_of),
                        count.where(Transaction.effective_date <= as_of))

    def rows() -> Iterator[list[tuple]]:
        with db.read() as session:
            result = session.execute(query.execution_options(yield_per=chunk_size))
            for part in result.partitions(chunk_size):
                if actor.role == "analyst":
                    yield [(r[0], r[1], r[2], *r[4:]) for r in part]
                else:
                    yield [tuple(r) for r in part]

    with db.read() as session:
        total = session.scalar(count) or 0
    return columns, total, rows()


def _holdings_source(db: Database, actor: Actor, pool_id: int | None, as_of: date | None, chunk_size: int):
    columns = [Column("pool", "text"), Column("investor_id", "int"), Column("currency", "text"),
               Column("units", "units"), Column("nav_per_unit", "price"), Column("value", "money"),
               Column("contributed", "money"), Column("withdrawn", "money"), Column("distributions", "money"),
               Column("cost_basis", "money"), Column("gain", "money"), Column("xirr", "ratio")]
    if actor.role == "investor":
        summary = metrics.investor_summary(db, actor=actor, investor_id=actor.id, as_of=as_of)
        found = [r for r in summary["positions"] if pool_id is None or r["pool_id"] == pool_id]
    else:
        allowed = metrics.readable_pool_ids(db, actor)
        scope = [pool_id] if pool_id is not None else allowed
        if pool_id is not None and allowed is not None and pool_id not in allowed:
            raise PermissionDenied("You may not see this pool's holders.")
        result = metrics.results(db, as_of=as_of or date.today(), pool_ids=scope)
        found = [metrics._position_row(r, result.pools.get(r["pool_id"])) for r in result.positions.to_pylist()]
    data = [(r["code"], r["investor_id"], r["currency"], r["units"], r["nav_per_unit"], r["value"], r["contributed"],
             r["withdrawn"], r["distributions"], r["cost_basis"], r["gain"], r["xirr"]) for r in found]
    return columns, len(data), (data[i:i + chunk_size] for i in range(0, len(data), chunk_size))


def _performance_source(db: Database, actor: Actor, pool_id: int | None, as_of: date | None, start: date | None):
    columns = [Column("pool", "text"), Column("currency", "text"), Column("as_of", "date"),
               Column("nav", "money"), Column("units_outstanding", "units"), Column("nav_per_unit", "price")]
    columns += [Column(f"return_{p}", "ratio") for p in ("mtd", "ytd", "1y", "3y", "since_inception", "range")]
    columns += [Column(f"annualised_{p}", "ratio") for p in ("1y", "3y", "since_inception")]
    columns += [Column("volatility", "ratio"), Column("sharpe", "ratio"), Column("max_drawdown", "ratio"),
                Column("fees_management", "money"), Column("fees_performance", "money"),
                Column("top10_concentration", "ratio"), Column("holders", "int")]
    found = metrics.compare_pools(db, actor=actor, as_of=as_of, start=start,
                                  pool_ids=[pool_id] if pool_id is not None else None)["pools"]
    data = []
    for p in found:
        r = p["returns"]
        data.append((p["code"], p["currency"], p["as_of"], p["nav"], p["units_outstanding"], p["nav_per_unit"],
                     *(r[k]["return"] for k in ("mtd", "ytd", "1y", "3y", "since_inception", "range")),
                     *(r[k]["annualised"] for k in ("1y", "3y", "since_inception")),
                     p["volatility"], p["sharpe"], (p["max_drawdown"] or {}).get("depth"),
                     p["fees"]["management"], p["fees"]["performance"], p["top10_concentration"], p["holders"]))
    return columns, len(data), iter([data])


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _csv_row(columns: list[Column], row: tuple) -> list[str]:
    return [neutralise(_text(v)) if c.kind == "text" else _text(v) for c, v in zip(columns, row)]


def _xlsx_row(sheet, columns: list[Column], row: tuple) -> list:
    """Text columns as string cells (openpyxl would otherwise make ``=...`` a formula and ``#N/A`` an error)."""
    from openpyxl.cell import WriteOnlyCell

    cells = []
    for column, value in zip(columns, row):
        if column.kind == "text" and value is not None:
            cell = WriteOnlyCell(sheet, value=neutralise(str(value)))
            cell.data_type = "s"
            cells.append(cell)
        else:
            cells.append(value)
    return cells


_ARROW = {"int": pa.int64(), "text": pa.string(), "date": pa.date32(), "money": pa.decimal128(38, 4),
          "units": pa.decimal128(38, 6), "price": pa.decimal128(38, 6), "ratio": pa.decimal128(38, 10)}


def write_export(db: Database, out: io.BufferedIOBase, *, actor: Actor, dataset: str, fmt: str,
                 pool_id: int | None = None, as_of: date | None = None, start: date | None = None,
                 progress: Progress | None = None, chunk_size: int = 50_000) -> int:
    """Write an export to ``out`` chunk by chunk; returns the number of rows written."""
    _check(actor, fmt, dataset)
    if dataset == "transactions":
        columns, total, chunks = _transaction_source(db, actor, pool_id, chunk_size, start, as_of)
    elif dataset == "holdings":
        columns, total, chunks = _holdings_source(db, actor, pool_id, as_of, chunk_size)
    else:
        columns, total, chunks = _performance_source(db, actor, pool_id, as_of, start)
    done = 0
    if progress:
        progress(0, total)
    if fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow([c.name for c in columns])
        for chunk in chunks:
            writer.writerows([_csv_row(columns, row) for row in chunk])
            done += len(chunk)
            if progress:
                progress(done, total)
        text.detach()
    elif fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook(write_only=True)
        sheet = book.create_sheet(dataset)
        sheet.append([c.name for c in columns])
        for chunk in chunks:
            for row in chunk:
                sheet.append(_xlsx_row(sheet, columns, row))
            done += len(chunk)
            if progress:
                progress(done, total)
        book.save(out)
    else:
        schema = pa.schema([(c.name, _ARROW[c.kind]) for c in columns])
        with pq.ParquetWriter(out, schema) as writer:
            for chunk in chunks:
                arrays = [pa.array([row[i] for row in chunk], type=field.type) for i, field in enumerate(schema)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                done += len(chunk)
                if progress:
                    progress(done, total)
    return done


def export_bytes(db: Database, *, actor: Actor, dataset: str, fmt: str, pool_id: int | None = None,
                 as_of: date | None = None, start: date | None = None, progress: Progress | None = None,
                 chunk_size: int = 50_000) -> bytes:
    buffer = io.BytesIO()
    write_export(db, buffer, actor=actor, dataset=dataset, fmt=fmt, pool_id=pool_id, as_of=as_of, start=start,
                 progress=progress, chunk_size=chunk_size)
    return buffer.getvalue()


def filename(dataset: str, fmt: str, as_of: date | None = None) -> str:
    return f"pooldesk-{dataset}-{(as_of or date.today()).isoformat()}.{fmt}"
