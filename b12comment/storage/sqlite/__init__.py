"""The SQLite journal, the default backend: a file beside serve."""

from b12comment.storage.sqlite.journal import SqliteJournal
from b12comment.storage.sqlite.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SqliteJournal"]
