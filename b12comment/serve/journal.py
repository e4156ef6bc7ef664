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

What happens to a message after its intake (processed, forwarded, a failed
attempt, dead) is committed without an fsync of its own (synchronous=NORMAL
for that transaction only): such a commit survives a crash of the process
at once, and a power cut as soon as the next intake commit (or checkpoint)
fsyncs the WAL, which holds it. A power cut can therefore only undo the
last few state changes, which means doing them again: `process()` is pure,
and delivery is at least once anyway (see forwarder.py). Intake and
`queue retry` always fsync.

The processed bytes are stored only when they differ from the received
bytes (about 97% of messages get no comment); `Row.processed` is then the
received bytes again, so readers see no difference.

`Journal` is synchronous and not thread-safe; the service drives it from a
single thread through `JournalThread` (journal_writer.py), so the event loop never waits on disk.
`JournalThread` commits the intake of every frame waiting for the journal in
one transaction (group commit: one fsync for all of them, each ACKed only
after that commit) and runs intake before any other work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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


_COLUMNS = (
    "id, received_at, updated_at, peer, conn_seq, control_id, message_type, raw, "
    "processed, state, attempts, last_error, commented, reasons"
)


def _row(r) -> Row:
    raw = bytes(r[7])
    # commented is set by mark_processed; processed is NULL there when unchanged.
    processed = bytes(r[8]) if r[8] is not None else (raw if r[12] is not None else None)
    return Row(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        raw,
        processed,
        r[9],
        r[10],
        r[11],
        None if r[12] is None else bool(r[12]),
        tuple(json.loads(r[13] or "[]")),
    )


def digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


class Journal:
    """The journal file. Every method commits (or fails) before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Whole messages with patient data: readable by the service user only.
            # SQLite gives its -wal and -shm files the same permissions.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._full = True
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn, durable: bool = True):
        """Run fn(cursor) in one IMMEDIATE transaction; errors become JournalError.
        `durable=False` commits without an fsync of its own (see the module's
        docstring); the connection is back to synchronous=FULL afterwards."""
        try:
            cur = self._db.cursor()
            if not durable:
                self._full = False
                cur.execute("PRAGMA synchronous=NORMAL")
            elif not self._full:  # an earlier restore failed: never commit intake without the fsync
                cur.execute("PRAGMA synchronous=FULL")
                self._full = True
            try:
                cur.execute("BEGIN IMMEDIATE")
                result = fn(cur)
                cur.execute("COMMIT")
            finally:
                if not durable:
                    self._restore_full()
            return result
        except BaseException as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"journal {self.path}: {exc}") from None
            raise

    def _restore_full(self) -> None:
        if self._db.in_transaction:  # a failed commit: roll back first
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        self._db.execute("PRAGMA synchronous=FULL")
        self._full = True

    def _query(self, sql: str, args=()) -> list:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from None

    # -- the listener

    def record(
        self,
        raw: bytes,
        *,
        control_id: str,
        message_type: str,
        peer: str = "",
        conn_seq: int = 0,
        retransmit_window_s: float = 0.0,
        now: float | None = None,
    ) -> Receipt:
        """Journal a received message, or find it already journaled when it is a
        retransmission (same MSH-10 and same bytes within the window)."""
        return self._tx(
            lambda cur: self._record(
                cur,
                raw,
                control_id=control_id,
                message_type=message_type,
                peer=peer,
                conn_seq=conn_seq,
                retransmit_window_s=retransmit_window_s,
                now=now,
            )
        )

    def reject(
        self,
        raw: bytes,
        reason: str,
        *,
        peer: str = "",
        conn_seq: int = 0,
        control_id: str = "",
        message_type: str = "",
        now: float | None = None,
    ) -> int:
        """Keep a frame that was answered AR (not an HL7 message, too large), for inspection."""
        return self._tx(
            lambda cur: self._reject(
                cur,
                raw,
                reason,
                peer=peer,
                conn_seq=conn_seq,
                control_id=control_id,
                message_type=message_type,
                now=now,
            )
        )

    def intake(self, calls: list[tuple[str, tuple, dict]]) -> list:
        """Several `record` and `reject` calls, (method, args, kwargs), in one
        transaction and one fsync (group commit), in the order given. Returns
        one result per call, or the JournalError of a call that failed alone;
        raises JournalError when the commit fails (then nothing is stored)."""
        if len(calls) == 1:
            method, args, kwargs = calls[0]
            return [getattr(self, method)(*args, **kwargs)]
        bodies: dict[str, Callable[..., Any]] = {"record": self._record, "reject": self._reject}

        def tx(cur):
            results = []
            for method, args, kwargs in calls:
                cur.execute("SAVEPOINT item")
                try:
                    results.append(bodies[method](cur, *args, **kwargs))
                except sqlite3.Error as exc:
                    cur.execute("ROLLBACK TO item")
                    results.append(JournalError(f"journal {self.path}: {exc}"))
                cur.execute("RELEASE item")
            return results

        return self._tx(tx)

    @staticmethod
    def _record(
        cur,
        raw: bytes,
        *,
        control_id: str,
        message_type: str,
        peer: str = "",
        conn_seq: int = 0,
        retransmit_window_s: float = 0.0,
        now: float | None = None,
    ) -> Receipt:
        now = time.time() if now is None else now
        sha = digest(raw)
        if retransmit_window_s > 0:
            hit = cur.execute(
                "SELECT id FROM messages WHERE control_id = ? AND digest = ? AND received_at >= ? "
                "AND state != 'rejected' ORDER BY id DESC LIMIT 1",
                (control_id, sha, now - retransmit_window_s),
            ).fetchone()
            if hit:
                return Receipt(hit[0], True)
        cur.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, "
            "digest, raw, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'received')",
            (now, now, peer, conn_seq, control_id, message_type, sha, raw),
        )
        return Receipt(cur.lastrowid, False)

    @staticmethod
    def _reject(
        cur,
        raw: bytes,
        reason: str,
        *,
        peer: str = "",
        conn_seq: int = 0,
        control_id: str = "",
        message_type: str = "",
        now: float | None = None,
    ) -> int:
        now = time.time() if now is None else now
        return cur.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, digest, "
            "raw, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rejected', ?)",
            (now, now, peer, conn_seq, control_id, message_type, digest(raw), raw, reason),
        ).lastrowid

    # -- the processing stage

    def unprocessed(self, limit: int = 100) -> list[Row]:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' ORDER BY id LIMIT ?", (limit,))
        return [_row(r) for r in rows]

    def mark_processed(self, id: int, processed: bytes, commented: bool, reasons, now: float | None = None) -> None:
        self.mark_processed_many([(id, processed, commented, reasons)], now)

    def mark_processed_many(self, results, now: float | None = None) -> None:
        """(id, processed bytes, commented, reasons) of each message, in one
        transaction. Processed bytes equal to the received ones are not stored again."""
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.executemany(
                "UPDATE messages SET processed = CASE WHEN raw = ?1 THEN NULL ELSE ?1 END, commented = ?2, "
                "reasons = ?3, state = 'processed', updated_at = ?4 WHERE id = ?5 AND state = 'received'",
                [
                    (processed, int(commented), json.dumps(list(reasons)), now, id)
                    for id, processed, commented, reasons in results
                ],
            ),
            durable=False,
        )

    # -- the forwarder

    def next_undelivered(self) -> Row | None:
        """The oldest message not yet forwarded or dead: the head of the queue."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE state IN ('received', 'processed') ORDER BY id LIMIT 1"
        )
        return _row(rows[0]) if rows else None

    def deliverable(self, limit: int = 100) -> list[Row]:
        """The head of the queue: up to `limit` processed messages in journal
        order, stopping before the first one not yet processed."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE state IN ('received', 'processed') ORDER BY id LIMIT ?", (limit,)
        )
        out = []
        for r in rows:
            if r[9] != PROCESSED:
                break
            out.append(_row(r))
        return out

    def mark_forwarded(self, id: int, now: float | None = None) -> None:
        self._set_state(id, FORWARDED, None, now)

    def mark_forwarded_many(self, ids, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.executemany(
                "UPDATE messages SET state = 'forwarded', updated_at = ? WHERE id = ?", [(now, id) for id in ids]
            ),
            durable=False,
        )

    def mark_dead(self, id: int, reason: str, now: float | None = None) -> None:
        self._set_state(id, DEAD, reason, now)

    def _set_state(self, id: int, state: str, error: str | None, now: float | None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.execute(
                "UPDATE messages SET state = ?, last_error = COALESCE(?, last_error), updated_at = ? WHERE id = ?",
                (state, error, now, id),
            ),
            durable=False,
        )

    def mark_attempt_failed(self, id: int, error: str, counts: bool = True, now: float | None = None) -> int:
        """Record a failed delivery (counted as an attempt, or only noted);
        returns the attempts so far."""
        now = time.time() if now is None else now

        def tx(cur):
            cur.execute(
                "UPDATE messages SET attempts = attempts + ?, last_error = ?, updated_at = ? WHERE id = ?",
                (int(counts), error, now, id),
            )
            return cur.execute("SELECT attempts FROM messages WHERE id = ?", (id,)).fetchone()[0]

        return self._tx(tx, durable=False)

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete forwarded and rejected rows older than the retention."""
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        return self._tx(
            lambda cur: cur.execute(
                "DELETE FROM messages WHERE state IN ('forwarded', 'rejected') AND updated_at < ?", (cutoff,)
            ).rowcount
        )

    # -- replay --forward

    def enqueue_processed(self, source: str, batch, now: float | None = None) -> None:
        """Journal messages that replay has already processed, in one transaction:
        (raw, processed, control_id, message_type, commented, reasons, position)
        each. `source` is kept as the peer and the position in the file as
        conn_seq, so that `last_position` can resume an interrupted replay."""
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.executemany(
                "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, digest, raw, "
                "processed, state, commented, reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'processed', ?, ?)",
                [
                    (
                        now,
                        now,
                        source,
                        position,
                        control_id,
                        message_type,
                        digest(raw),
                        raw,
                        None if processed == raw else processed,
                        int(commented),
                        json.dumps(list(reasons)),
                    )
                    for raw, processed, control_id, message_type, commented, reasons, position in batch
                ],
            )
        )

    def last_position(self, source: str) -> int:
        """The highest position journaled from `source` (0 if none)."""
        return self._query("SELECT COALESCE(MAX(conn_seq), 0) FROM messages WHERE peer = ?", (source,))[0][0]

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
        where, args = "state = 'dead'", cast(tuple[str, ...], ())
        if control_id is not None:
            where, args = "state = 'dead' AND control_id = ?", (control_id,)
        return self._tx(
            lambda cur: cur.execute(
                "UPDATE messages SET state = CASE WHEN commented IS NULL THEN 'received' ELSE 'processed' END, "
                f"attempts = 0, updated_at = ? WHERE {where}",
                (now, *args),
            ).rowcount
        )

    def settings(self) -> tuple[str, int]:
        """(journal_mode, synchronous) as SQLite reports them."""
        mode = self._query("PRAGMA journal_mode")[0][0]
        sync = self._query("PRAGMA synchronous")[0][0]
        return mode, sync
