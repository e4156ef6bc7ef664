"""Short forms of the journal's real calls, for tests that fill or read a
journal by hand. Each is one call of the product's own API."""

from __future__ import annotations

from b12comment.storage import UNDELIVERED, InvalidFrame, NewMessage, Processed, Receipt, Row
from b12comment.storage.sqlite import SqliteJournal


def record(j: SqliteJournal, raw: bytes, cid: str, message_type: str = "ORU^R01", **kw) -> Receipt:
    result = j.intake([NewMessage(raw, cid, message_type, **kw)])[0]
    assert isinstance(result, Receipt), result
    return result


def keep_invalid(j: SqliteJournal, raw: bytes, reason: str, **kw) -> int:
    result = j.intake([InvalidFrame(raw, reason, **kw)])[0]
    assert isinstance(result, int), result
    return result


def mark_processed(
    j: SqliteJournal, id: int, processed: bytes, commented: bool, reasons, now: float | None = None
) -> None:
    j.mark_processed_many([Processed(id, processed, commented, tuple(reasons))], now)


def head(j: SqliteJournal) -> Row | None:
    """The oldest message not yet forwarded or dead: the head of the queue."""
    return next((r for r in j.rows() if r.state in UNDELIVERED), None)
