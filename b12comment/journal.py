"""The durable journal: one SQLite row per received frame, in WAL mode.

States of a row::

    received --process--> processed --forward--> forwarded
                                      \\-------> dead  --queue retry--> processed
    rejected   (a frame that was not an HL7 message; kept for inspection)

`record()` commits before it returns, so the caller may ACK afterwards.
`synchronous=FULL`: in WAL mode each commit then fsyncs the WAL file, so a
message ACKed with AA survives a power cut, not only a crash of the process
(NORMAL would be durable against a crash but may lose the last commits on
power loss, and an AA is a promise to the sender).

`Journal` is synchronous and not thread-safe; the service drives it from a
single thread through `JournalThread`, so the event loop never waits on disk.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

RECEIVED, PROCESSED, FORWARDED, DEAD, REJECTED = "received", "processed", "forwarded", "dead", "rejected"
STATES = (RECEIVED, PROCESSED, FORWARDED, DEAD, REJECTED)
UNDELIVERED = (RECEIVED, PROCESSED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    peer         TEXT    NOT NULL DEFAULT '',
    conn_seq     INTEGER NOT NULL DEFAULT 0,
    control_id   TEXT    NOT NULL DEFAULT '',
    message_type TEXT    NOT NULL DEFAULT '',
    digest       BLOB    NOT NULL,
    raw          BLOB    NOT NULL,
    processed    BLOB,
    state        TEXT    NOT NULL CHECK (state IN ('received', 'processed', 'forwarded', 'dead', 'rejected')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    commented    INTEGER,
    reasons      TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, id);
CREATE INDEX IF NOT EXISTS messages_by_control_id ON messages (control_id, received_at);
"""


class JournalError(Exception):
    """The journal cannot be opened, read or written."""


@dataclass(frozen=True)
class Receipt:
    id: int
    duplicate: bool  # a retransmission of a message already journaled


@dataclass(frozen=True)
class Row:
    id: int
    received_at: float
    updated_at: float
    peer: str
    conn_seq: int
    control_id: str
    message_type: str
    raw: bytes
    processed: bytes | None
    state: str
    attempts: int
    last_error: str | None
    commented: bool | None
    reasons: tuple[str, ...]


_COLUMNS = ("id, received_at, updated_at, peer, conn_seq, control_id, message_type, raw, "
            "processed, state, attempts, last_error, commented, reasons")


def _row(r) -> Row:
    return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]),
               bytes(r[8]) if r[8] is not None else None, r[9], r[10], r[11],
               None if r[12] is None else bool(r[12]), tuple(json.loads(r[13] or "[]")))


def digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


class Journal:
    """The journal file. Every method commits (or fails) before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn):
        """Run fn(cursor) in one IMMEDIATE transaction; errors become JournalError."""
        try:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            result = fn(cur)
            cur.execute("COMMIT")
            return result
        except BaseException as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"journal {self.path}: {exc}") from None
            raise

    def _query(self, sql: str, args=()) -> list:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from None

    # -- the listener

    def record(self, raw: bytes, *, control_id: str, message_type: str, peer: str = "",
               conn_seq: int = 0, retransmit_window_s: float = 0.0, now: float | None = None) -> Receipt:
        """Journal a received message, or find it already journaled when it is a
        retransmission (same MSH-10 and same bytes within the window)."""
        now = time.time() if now is None else now
        sha = digest(raw)

        def tx(cur):
            if retransmit_window_s > 0:
                hit = cur.execute(
                    "SELECT id FROM messages WHERE control_id = ? AND digest = ? AND received_at >= ? "
                    "AND state != 'rejected' ORDER BY id DESC LIMIT 1",
                    (control_id, sha, now - retransmit_window_s)).fetchone()
                if hit:
                    return Receipt(hit[0], True)
            cur.execute(
                "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, "
                "digest, raw, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'received')",
                (now, now, peer, conn_seq, control_id, message_type, sha, raw))
            return Receipt(cur.lastrowid, False)
        return self._tx(tx)

    def reject(self, raw: bytes, reason: str, *, peer: str = "", conn_seq: int = 0, control_id: str = "",
               message_type: str = "", now: float | None = None) -> int:
        """Keep a frame that was answered AR (not an HL7 message, too large), for inspection."""
        now = time.time() if now is None else now
        return self._tx(lambda cur: cur.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, digest, "
            "raw, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rejected', ?)",
            (now, now, peer, conn_seq, control_id, message_type, digest(raw), raw, reason)).lastrowid)

    # -- the processing stage

    def unprocessed(self, limit: int = 100) -> list[Row]:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' ORDER BY id LIMIT ?",
                           (limit,))
        return [_row(r) for r in rows]

    def mark_processed(self, id: int, processed: bytes, commented: bool, reasons, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda cur: cur.execute(
            "UPDATE messages SET processed = ?, commented = ?, reasons = ?, state = 'processed', updated_at = ? "
            "WHERE id = ? AND state = 'received'",
            (processed, int(commented), json.dumps(list(reasons)), now, id)))

    # -- the forwarder

    def next_undelivered(self) -> Row | None:
        """The oldest message not yet forwarded or dead: the head of the queue."""
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE state IN ('received', 'processed') "
                           "ORDER BY id LIMIT 1")
        return _row(rows[0]) if rows else None

    def mark_forwarded(self, id: int, now: float | None = None) -> None:
        self._set_state(id, FORWARDED, None, now)

    def mark_dead(self, id: int, reason: str, now: float | None = None) -> None:
        self._set_state(id, DEAD, reason, now)

    def _set_state(self, id: int, state: str, error: str | None, now: float | None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda cur: cur.execute(
            "UPDATE messages SET state = ?, last_error = COALESCE(?, last_error), updated_at = ? WHERE id = ?",
            (state, error, now, id)))

    def mark_attempt_failed(self, id: int, error: str, counts: bool = True, now: float | None = None) -> int:
        """Record a failed delivery (counted as an attempt, or only noted);
        returns the attempts so far."""
        now = time.time() if now is None else now

        def tx(cur):
            cur.execute("UPDATE messages SET attempts = attempts + ?, last_error = ?, updated_at = ? WHERE id = ?",
                        (int(counts), error, now, id))
            return cur.execute("SELECT attempts FROM messages WHERE id = ?", (id,)).fetchone()[0]
        return self._tx(tx)

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete forwarded and rejected rows older than the retention."""
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        return self._tx(lambda cur: cur.execute(
            "DELETE FROM messages WHERE state IN ('forwarded', 'rejected') AND updated_at < ?",
            (cutoff,)).rowcount)

    # -- inspection (queue CLI, metrics)

    def get(self, id: int) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (id,))
        return _row(rows[0]) if rows else None

    def rows(self, state: str | None = None) -> list[Row]:
        if state is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM messages ORDER BY id")
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE state = ? ORDER BY id", (state,))
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._query("SELECT state, COUNT(*) FROM messages GROUP BY state"))
        return {state: found.get(state, 0) for state in STATES}

    def depth(self) -> int:
        return self._query("SELECT COUNT(*) FROM messages WHERE state IN ('received', 'processed')")[0][0]

    def oldest_undelivered(self) -> float | None:
        """received_at of the oldest message not yet forwarded or dead."""
        return self._query("SELECT MIN(received_at) FROM messages WHERE state IN ('received', 'processed')")[0][0]

    def retry(self, control_id: str | None = None, now: float | None = None) -> int:
        """Put dead messages (all, or those with this control ID) back in the queue."""
        now = time.time() if now is None else now
        where, args = "state = 'dead'", ()
        if control_id is not None:
            where, args = "state = 'dead' AND control_id = ?", (control_id,)
        return self._tx(lambda cur: cur.execute(
            "UPDATE messages SET state = CASE WHEN processed IS NULL THEN 'received' ELSE 'processed' END, "
            f"attempts = 0, updated_at = ? WHERE {where}", (now, *args)).rowcount)

    def settings(self) -> tuple[str, int]:
        """(journal_mode, synchronous) as SQLite reports them."""
        mode = self._query("PRAGMA journal_mode")[0][0]
        sync = self._query("PRAGMA synchronous")[0][0]
        return mode, sync


class JournalThread:
    """Runs every journal call on one thread, for asyncio code.

    The journal is opened lazily and opened again after a failed open, so a
    service whose disk is unavailable at start keeps answering (AE) and
    recovers when the disk comes back.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._journal: Journal | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    def _call(self, method: str, args, kwargs):
        if self._journal is None:
            self._journal = Journal(self.path)
        return getattr(self._journal, method)(*args, **kwargs)

    async def call(self, method: str, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, method, args, kwargs)

    async def available(self) -> bool:
        try:
            await self.call("depth")
            return True
        except JournalError:
            return False

    async def close(self) -> None:
        loop = asyncio.get_running_loop()

        def close():
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        await loop.run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)
