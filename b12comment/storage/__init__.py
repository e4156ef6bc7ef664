"""The journal behind one interface (interface.JournalStore), with its
backends: SQLite (sqlite/, the default: a path) and PostgreSQL (postgres/:
a `postgresql://` URL, the optional extra `b12comment[postgres]`).

`open_journal(location)` picks the backend from what is configured where
`[journal] path` is.
"""

from __future__ import annotations

from pathlib import Path

from b12comment.storage.interface import Fence, JournalStore
from b12comment.storage.model import (
    BATCH_BYTES,
    DEAD,
    FORWARDED,
    INVALID,
    LARGE_BYTES,
    PROCESSED,
    RECEIVED,
    STATES,
    UNDELIVERED,
    Arrival,
    InvalidFrame,
    JournalCorrupt,
    JournalError,
    JournalFault,
    JournalGone,
    NewMessage,
    NotLeader,
    Processed,
    Receipt,
    Replayed,
    Row,
    batch_full,
)

__all__ = [
    "BATCH_BYTES",
    "DEAD",
    "FORWARDED",
    "INVALID",
    "LARGE_BYTES",
    "PROCESSED",
    "RECEIVED",
    "STATES",
    "UNDELIVERED",
    "Arrival",
    "InvalidFrame",
    "JournalCorrupt",
    "JournalError",
    "JournalFault",
    "JournalGone",
    "JournalStore",
    "NewMessage",
    "NotLeader",
    "Fence",
    "Processed",
    "Receipt",
    "Replayed",
    "Row",
    "batch_full",
    "is_url",
    "open_journal",
    "open_journal_for_reading",
    "shown",
]

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str | Path) -> bool:
    """Whether a configured location names a database server rather than a file."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def shown(location: str | Path) -> str:
    """A journal's location for messages and reports: a URL without its password."""
    if is_url(location):
        from b12comment.storage.postgres.connect import redact

        return redact(str(location))
    return str(location)


def open_journal(location: str | Path, instance: str = "", fence: Fence | None = None) -> JournalStore:
    """The journal at `location` (a path: SQLite; a `postgresql://` URL:
    PostgreSQL), created or migrated as needed. Raises JournalError.
    `instance` names this instance's connections to a database; `fence` is
    the lease it leads by (every write checks it; PostgreSQL only)."""
    if is_url(location):
        from b12comment.storage.postgres.journal import PostgresJournal

        return PostgresJournal(str(location), instance, fence)
    from b12comment.storage.sqlite import SqliteJournal

    return SqliteJournal(location)


def open_journal_for_reading(location: str | Path) -> JournalStore:
    """The journal opened as it is, for salvage: no schema change, no write
    (a database is opened as for serve: it has no damaged pages to step around)."""
    if is_url(location):
        return open_journal(location)
    from b12comment.storage.sqlite import SqliteJournal

    return SqliteJournal(location, read_only=True)
