"""Files imported into a pool, by content fingerprint: the importer refuses the same file twice."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db.models.base import Base, utcnow
from core.db.types import UTCDateTime


class ImportFile(Base):
    """One row per import that was applied. ``sha256`` is the fingerprint of the file's text
    (``core.services.importer.Fingerprint``: line endings and a byte-order mark do not count)."""

    __tablename__ = "import_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    imported_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    duplicate_allowed: Mapped[bool] = mapped_column(Boolean, default=False)  # imported again on purpose


Index("ix_import_files_pool_sha256", ImportFile.pool_id, ImportFile.sha256)
