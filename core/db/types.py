"""Column types that keep money exact on every database.

``Fixed(scale)`` stores a Decimal as a BIGINT of 10**-scale steps (money at 4
places, units and prices at 6). Integers are exact and sum exactly on SQLite and
PostgreSQL alike, where SQLite's NUMERIC would round through a float.
"""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, String
from sqlalchemy.types import TypeDecorator

MONEY_SCALE = 4
UNITS_SCALE = 6
PRICE_SCALE = 6


class Fixed(TypeDecorator):
    impl = BigInteger
    cache_ok = True

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("Fixed columns take Decimal, never float")
        scaled = Decimal(value).scaleb(self.scale)
        integral = scaled.to_integral_value()
        if integral != scaled:
            raise ValueError(f"{value} has more than {self.scale} decimal places")
        return int(integral)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-self.scale)

    def coerce_compared_value(self, op, value):
        return self

    def __repr__(self) -> str:
        return f"Fixed({self.scale})"


def Money() -> Fixed:
    return Fixed(MONEY_SCALE)


def Units() -> Fixed:
    return Fixed(UNITS_SCALE)


def Price() -> Fixed:
    return Fixed(PRICE_SCALE)


class Encrypted(TypeDecorator):
    """Text encrypted with the installation's Fernet keys; a raw SELECT shows only ciphertext."""

    impl = String
    cache_ok = True

    def __repr__(self) -> str:
        return f"Encrypted({self.impl.length})"

    def process_bind_param(self, value, dialect):
        if value is None or value == "":
            return None
        from core.crypto import encrypt

        return encrypt(value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        from core.crypto import decrypt

        return decrypt(value)


class UTCDateTime(TypeDecorator):
    """Timestamps are stored in UTC and always come back timezone-aware."""

    from sqlalchemy import DateTime as _DateTime

    impl = _DateTime(timezone=True)
    cache_ok = True

    def __repr__(self) -> str:
        return "UTCDateTime()"

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        from datetime import timezone

        if value.tzinfo is None:
            raise ValueError("naive datetime: use datetime.now(timezone.utc)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        from datetime import timezone

        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class JSONText(TypeDecorator):
    """JSON kept as the exact text it was written as (audit rows are hashed over that text).

    Bind a str (already serialised) or a value to serialise canonically; reading gives the
    parsed value. The column stays a JSON column, so the database can still query it.
    """

    from sqlalchemy import JSON as _JSON

    impl = _JSON
    cache_ok = True

    def bind_processor(self, dialect):
        import json

        def process(value):
            if value is None or isinstance(value, str):
                return value
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)

        return process

    def result_processor(self, dialect, coltype):
        import json

        def process(value):
            return json.loads(value) if isinstance(value, str) else value

        return process

    def __repr__(self) -> str:
        return "JSONText()"
