"""Encryption key rotation: every encrypted column re-encrypted under the first key.

The columns are found from the models (every column of type ``Encrypted``), so a
column added later is rotated without a change here. The work runs in two passes over
each table, in batches by primary key: the first only reads, and stops the whole run
with one line naming the table, column and row when a value is not readable with any
configured key (nothing is changed then); the second rewrites the values that are not
yet under the first key, one short transaction per batch. A row whose values are all
under the first key already is left alone and not counted, so a second run reports zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Column, Table, text

from core.config import ConfigurationError, get_settings
from core.db.session import Database
from core.services import audit
from core.services.context import Actor, require_role

BATCH = 500


@dataclass(frozen=True)
class RotationReport:
    rows_reencrypted: dict[str, int] = field(default_factory=dict)  # table -> rows rewritten
    rows_checked: dict[str, int] = field(default_factory=dict)  # table -> rows with an encrypted value

    @property
    def total(self) -> int:
        return sum(self.rows_reencrypted.values())


def encrypted_columns() -> dict[Table, list[Column]]:
    """Each table with its columns of type ``Encrypted``, from the models."""
    from core.db.models import Base
    from core.db.types import Encrypted

    found: dict[Table, list[Column]] = {}
    for table in Base.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, Encrypted)]
        if columns:
            found[table] = columns
    return found


def _batches(db: Database, table: Table, columns: list[Column]):
    """The rows holding an encrypted value, as stored (ciphertext), BATCH at a time by primary key."""
    (key,) = table.primary_key.columns  # every table with an encrypted column has a single-column key
    names = ", ".join(f'"{c.name}"' for c in columns)
    some = " OR ".join(f'"{c.name}" IS NOT NULL' for c in columns)
    last = None
    while True:
        after = "" if last is None else f'AND "{key.name}" > :last '
        with db.read() as session:
            rows = session.execute(text(f'SELECT "{key.name}", {names} FROM "{table.name}" WHERE ({some}) {after}'
                                        f'ORDER BY "{key.name}" LIMIT {BATCH}'), {"last": last}).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def rotate_encryption(db: Database, *, actor: Actor) -> RotationReport:
    """Re-encrypt every encrypted value under the first key of POOLDESK_ENCRYPTION_KEYS, so that the
    other keys can then be removed. Refused, with nothing changed, when a value cannot be read."""
    require_role(actor, "admin", action="rotate encryption keys")
    keys = get_settings().fernet_keys()  # a malformed key was refused when the settings were read
    current, every = Fernet(keys[0]), MultiFernet([Fernet(k) for k in keys])
    tables = encrypted_columns()

    def is_current(token: str) -> bool:
        try:
            current.decrypt(token.encode())
            return True
        except InvalidToken:
            return False

    stale: dict[str, int] = {}
    checked: dict[str, int] = {}
    for table, columns in tables.items():  # pass 1: read everything, change nothing
        for rows in _batches(db, table, columns):
            for row in rows:
                checked[table.name] = checked.get(table.name, 0) + 1
                for column, token in zip(columns, row[1:]):
                    if token is None or is_current(token):
                        continue
                    try:
                        every.decrypt(token.encode())
                    except InvalidToken:
                        raise ConfigurationError(
                            f"{table.name}.{column.name} of row {row[0]} cannot be decrypted with any key in "
                            "POOLDESK_ENCRYPTION_KEYS: add the key it was written with (after the first), then run "
                            "rotate-keys again. Nothing was changed.") from None
                    stale[table.name] = stale.get(table.name, 0) + 1
    rewritten: dict[str, int] = {}
    for table, columns in tables.items():  # pass 2: rewrite what is not under the first key
        if not stale.get(table.name):
            continue
        (key,) = table.primary_key.columns
        for rows in _batches(db, table, columns):
            updates: dict[tuple[str, ...], list[dict]] = {}  # the columns to set -> one parameter set per row
            for row in rows:
                values = {c.name: every.rotate(t.encode()).decode()
                          for c, t in zip(columns, row[1:]) if t is not None and not is_current(t)}
                if values:
                    updates.setdefault(tuple(values), []).append(dict(values, _id=row[0]))
            if not updates:
                continue
            with db.transaction() as session:
                for names, params in updates.items():  # one executemany per shape: a round trip per batch
                    assignments = ", ".join(f'"{name}" = :{name}' for name in names)
                    session.execute(text(f'UPDATE "{table.name}" SET {assignments} WHERE "{key.name}" = :_id'),
                                    params)
                    rewritten[table.name] = rewritten.get(table.name, 0) + len(params)
    report = RotationReport({t.name: rewritten.get(t.name, 0) for t in tables}, {t.name: checked.get(t.name, 0)
                                                                                 for t in tables})
    with db.transaction() as session:
        audit.record(session, actor, "encryption.rotate_keys", "encryption_keys", "*", None,
                     {"rows_reencrypted": report.rows_reencrypted, "keys": len(keys)})
    return report
