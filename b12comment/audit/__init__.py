"""Clinical governance: every decision on a B12 result of a child, kept
with keyed hashes only (store, rows, recorder), and whether the comment
worked (outcomes), as aggregates only."""

from .recorder import SAFETY_DAYS, Recorder, open_recorder
from .rows import HTTP, REPLAY, SERVE, SHADOW, SOURCES, AuditRow, config_digest, rows_for
from .store import AuditError, AuditStore, Followup, SQLiteAuditStore, open_audit

__all__ = [
    "HTTP",
    "REPLAY",
    "SAFETY_DAYS",
    "SERVE",
    "SHADOW",
    "SOURCES",
    "AuditError",
    "AuditRow",
    "AuditStore",
    "Followup",
    "Recorder",
    "SQLiteAuditStore",
    "config_digest",
    "open_audit",
    "open_recorder",
    "rows_for",
]
