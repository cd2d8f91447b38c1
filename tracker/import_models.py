"""The history of contact imports: one row per import, from the admin or the command line."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tracker.db import db
from tracker.models import utcnow

IMPORT_STATUSES = ("queued", "running", "done", "failed")
"""An import waits for a worker, runs, and ends done or failed."""


class ContactImport(db.Model):
    """One contact import: who started it, the file, when it ran, and what it did.

    `token` names its admin page (`/admin/import/<token>`, the upload's token;
    the command line makes one too). Rows and counters are written as the
    import goes; `errors` keeps the first skipped rows as `[line, message]`.
    """

    __tablename__ = "contact_imports"
    __table_args__ = (Index("ix_contact_imports_created", "created_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    # None for the command line, or once the user who imported is deleted (see `source`).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(10))  # admin | cli
    filename: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10), default="queued")
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    repeated: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Why a failed import stopped (its batches before that are imported).
    failure: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
