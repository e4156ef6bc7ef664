"""The SQLite journal (the default backend): one row per received frame, in
one file in WAL mode (see file.py for what is fsynced when).

`intake()` commits before it returns, so the caller may ACK afterwards.

The processed bytes are stored only when they differ from the received
bytes (about 97% of messages get no comment); `Row.processed` is then the
received bytes again, so readers see no difference. A large message's bytes
are kept out of its row (blobs.py).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from b12comment.storage.model import (
    BATCH_BYTES,
    INVALID,
    LARGE_BYTES,
    PROCESSED,
    STATES,
    TRAILING,
    UNDELIVERED,
    Arrival,
    InvalidFrame,
    JournalError,
    JournalGone,
    NewMessage,
    Processed,
    Receipt,
    Replayed,
    Row,
    discard_record,
)
from b12comment.storage.sqlite.blobs import large_equals, read_large, write_large
from b12comment.storage.sqlite.file import SqliteFile, is_corrupt
from b12comment.storage.sqlite.schema import LARGE_TABLES

GONE_VOID_REASON = (
    "void: committed after the journal's file was deleted or replaced, and answered AE; "
    "never delivered (the sender sends it again)"
)

# The columns every reader of rows selects, in this order (see _row).
_NAMES = (
    "id",
    "received_at",
    "updated_at",
    "peer",
    "conn_seq",
    "source",
    "position",
    "control_id",
    "message_type",
    "raw",
    "processed",
    "state",
    "attempts",
    "last_error",
    "commented",
    "reasons",
)
_COLUMNS = ", ".join(_NAMES)
_STATE = _NAMES.index("state")  # read before the row is made: a large message's bytes are not read for nothing


class SqliteJournal(SqliteFile):
    """The journal file. Every method commits (or fails) before returning."""

    # -- rows

    def _row(self, r: tuple[Any, ...]) -> Row:
        """A Row from the columns of _COLUMNS; a large message's bytes are read
        from their own table (one `bytes` each, no other copy)."""
        (
            id,
            received_at,
            updated_at,
            peer,
            conn_seq,
            source,
            position,
            control_id,
            message_type,
            raw,
            processed,
            state,
            attempts,
            last_error,
            commented,
            reasons,
        ) = r
        if not raw and state != INVALID:
            raw = self._read_large("large_raw", id)
        if processed is not None and not processed:
            processed = self._read_large("large_processed", id)
        # commented is set by mark_processed_many; processed is NULL there when unchanged.
        if processed is None and commented is not None:
            processed = raw
        return Row(
            id=id,
            received_at=received_at,
            updated_at=updated_at,
            peer=peer,
            conn_seq=conn_seq,
            source=source,
            position=position,
            control_id=control_id,
            message_type=message_type,
            raw=raw,
            processed=processed,
            state=state,
            attempts=attempts,
            last_error=last_error,
            commented=None if commented is None else bool(commented),
            reasons=tuple(json.loads(reasons or "[]")),
        )

    def _read_large(self, table: str, id: int) -> bytes:
        try:
            return read_large(self._db, table, id)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _rows_within(
        self,
        sql: str,
        args: tuple[Any, ...],
        max_bytes: int,
        until: Callable[[tuple[Any, ...]], bool] = lambda r: False,
    ) -> list[Row]:
        """The rows of a query, read one at a time, up to the first for which
        until(selected columns) is true, or until `max_bytes` of message bytes
        are held (the row that crosses it is the last; the first is always taken)."""
        out: list[Row] = []
        held = 0
        try:
            cur = self._db.execute(sql, args)
            while held < max_bytes:
                r = cur.fetchone()
                if r is None or until(r):
                    break
                row = self._row(r)
                out.append(row)
                held += len(row.raw)
                if row.processed is not None and row.processed is not row.raw:
                    held += len(row.processed)
            cur.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return out

    # -- the listener: intake, and a retransmission found rather than stored again

    def intake(self, arrivals: Sequence[Arrival]) -> list[Receipt | int | JournalError]:
        """Journal frames in one transaction and one fsync (group commit); see JournalStore.intake."""

        def tx(cur: sqlite3.Cursor) -> list[Receipt | int | JournalError]:
            if len(arrivals) == 1:
                return [self._arrive(cur, arrivals[0])]
            results: list[Receipt | int | JournalError] = []
            for arrival in arrivals:
                cur.execute("SAVEPOINT item")
                try:
                    results.append(self._arrive(cur, arrival))
                except sqlite3.Error as exc:
                    if is_corrupt(exc):
                        raise
                    cur.execute("ROLLBACK TO item")
                    results.append(JournalError(f"journal {self.path}: {exc}"))
                cur.execute("RELEASE item")
            return results

        # Invalid frames are kept for inspection only: a batch of nothing else
        # needs no fsync of its own (a flood of junk costs no disk flushes).
        results = self._tx(tx, durable=any(isinstance(a, NewMessage) for a in arrivals))
        try:
            self.check_file()  # did the commit land in the file the path names?
        except JournalGone:
            # No: its senders are answered AE. Void what it wrote in the file
            # open here, so that nothing reading this file (serve's stages, a
            # salvage, `queue export`) delivers it.
            ids = [r.id for r in results if isinstance(r, Receipt) and not r.duplicate]
            if ids:
                with contextlib.suppress(JournalError):
                    self.void_many(ids, GONE_VOID_REASON)
            raise
        return results

    def _arrive(self, cur: sqlite3.Cursor, a: Arrival) -> Receipt | int:
        now = time.time() if a.now is None else a.now
        if isinstance(a, InvalidFrame):
            return cast(
                int,
                cur.execute(
                    "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, "
                    "raw, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, 'invalid', ?)",
                    (now, now, a.peer, a.conn_seq, a.control_id, a.message_type, a.raw, a.reason),
                ).lastrowid,
            )
        large = len(a.raw) > LARGE_BYTES
        reused = None
        if a.retransmit_window_s > 0:
            # A retransmission is the same bytes under the same control ID: the
            # index on control_id finds the few rows to compare (usually none),
            # so a new message costs no hash at all.
            if large:
                candidates = cur.execute(
                    "SELECT id FROM messages WHERE control_id = ? AND received_at >= ? "
                    "AND state != 'invalid' AND length(raw) = 0 ORDER BY id DESC",
                    (a.control_id, now - a.retransmit_window_s),
                ).fetchall()
                hit = next(((i,) for (i,) in candidates if large_equals(self._db, "large_raw", i, a.raw)), None)
            else:
                hit = cur.execute(
                    "SELECT id FROM messages WHERE control_id = ? AND received_at >= ? "
                    "AND state != 'invalid' AND length(raw) > 0 AND rtrim(raw, ?) = rtrim(?, ?) "
                    "ORDER BY id DESC LIMIT 1",
                    (a.control_id, now - a.retransmit_window_s, TRAILING, a.raw, TRAILING),
                ).fetchone()
            if hit:
                return Receipt(hit[0], True)
            reused = cur.execute(
                "SELECT 1 FROM messages WHERE control_id = ? AND received_at >= ? AND state != 'invalid' LIMIT 1",
                (a.control_id, now - a.retransmit_window_s),
            ).fetchone()
        cur.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, raw, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'received')",
            (now, now, a.peer, a.conn_seq, a.control_id, a.message_type, b"" if large else a.raw),
        )
        id = cast(int, cur.lastrowid)
        if large:
            write_large(self._db, "large_raw", id, a.raw)
        return Receipt(id, False, a.retransmit_window_s > 0 and reused is not None)

    # -- the processing stage

    def unprocessed(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        return self._rows_within(
            f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' AND id NOT IN (SELECT id FROM holds) "
            "ORDER BY id LIMIT ?",
            (limit,),
            max_bytes,
        )

    def mark_processed_many(self, results: Sequence[Processed], now: float | None = None) -> None:
        """Processed bytes equal to the received ones are not stored again."""
        now = time.time() if now is None else now

        def tx(cur: sqlite3.Cursor) -> None:
            small = [p for p in results if p.processed is None or len(p.processed) <= LARGE_BYTES]
            cur.executemany(
                "UPDATE messages SET processed = CASE WHEN raw = ?1 THEN NULL ELSE ?1 END, commented = ?2, "
                "reasons = ?3, state = 'processed', updated_at = ?4 WHERE id = ?5 AND state = 'received'",
                [(p.processed, int(p.commented), json.dumps(list(p.reasons)), now, p.id) for p in small],
            )
            for p in results:
                if p.processed is None or len(p.processed) <= LARGE_BYTES:
                    continue
                if large_equals(self._db, "large_raw", p.id, p.processed):  # unchanged after all
                    value: bytes | None = None
                else:
                    value = b""
                changed = cur.execute(
                    "UPDATE messages SET processed = ?, commented = ?, reasons = ?, state = 'processed', "
                    "updated_at = ? WHERE id = ? AND state = 'received'",
                    (value, int(p.commented), json.dumps(list(p.reasons)), now, p.id),
                ).rowcount
                if changed and value is not None:
                    write_large(self._db, "large_processed", p.id, p.processed)
            cur.executemany("DELETE FROM holds WHERE id = ?", [(p.id,) for p in results])  # released

        self._tx(tx, durable=False)

    # -- the hold window ([context] hold_s): a message waits for the rest of its requisition

    def hold_many(self, holds: Sequence[tuple[int, float]]) -> None:
        """Not delivered, and not in the way of the messages after them,
        until `mark_processed_many` releases them."""
        self._tx(lambda cur: cur.executemany("INSERT OR REPLACE INTO holds (id, until) VALUES (?, ?)", holds))

    def held(self) -> list[tuple[Row, float]]:
        until = dict(self._query("SELECT id, until FROM holds"))
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' AND id IN (SELECT id FROM holds) ORDER BY id"
        )
        return [(row, until[row.id]) for row in map(self._row, rows)]

    # -- the forwarder: the state machine after processing

    def deliverable(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        """A held message is passed over: the messages of its own patient stay
        behind it, since the processing stage releases it before it processes them."""
        return self._rows_within(
            f"SELECT {_COLUMNS} FROM messages WHERE state IN ('received', 'processed') "
            "AND id NOT IN (SELECT id FROM holds) ORDER BY id LIMIT ?",
            (limit,),
            max_bytes,
            until=lambda r: r[_STATE] != PROCESSED,
        )

    def mark_forwarded_many(self, ids: Sequence[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.executemany(
                "UPDATE messages SET state = 'forwarded', updated_at = ? WHERE id = ?", [(now, id) for id in ids]
            ),
            durable=False,
        )

    def mark_dead(self, id: int, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.execute(
                "UPDATE messages SET state = 'dead', last_error = COALESCE(?, last_error), updated_at = ? WHERE id = ?",
                (reason, now, id),
            ),
            durable=False,
        )

    def void_many(self, ids: Sequence[int], reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda cur: cur.executemany(
                "UPDATE messages SET state = 'invalid', last_error = ?, updated_at = ? "
                "WHERE id = ? AND state IN ('received', 'processed')",
                [(reason, now, id) for id in ids],
            )
        )

    def mark_attempt_failed(self, id: int, error: str, counts: bool = True, now: float | None = None) -> int:
        now = time.time() if now is None else now

        def tx(cur: sqlite3.Cursor) -> int:
            cur.execute(
                "UPDATE messages SET attempts = attempts + ?, last_error = ?, updated_at = ? WHERE id = ?",
                (int(counts), error, now, id),
            )
            return cur.execute("SELECT attempts FROM messages WHERE id = ?", (id,)).fetchone()[0]

        return self._tx(tx, durable=False)

    def prune(self, retention_days: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        where = "state IN ('forwarded', 'invalid') AND updated_at < ?"

        def tx(cur: sqlite3.Cursor) -> int:
            for table in LARGE_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM messages WHERE {where})", (cutoff,))
            return cur.execute(f"DELETE FROM messages WHERE {where}", (cutoff,)).rowcount

        return self._tx(tx)

    # -- replay --forward: its queue, resumable by position

    def enqueue_processed(self, source: str, batch: Sequence[Replayed], now: float | None = None) -> None:
        """With their source (`replay:<file>`) and position in the file, so
        that `last_position` can resume an interrupted replay."""
        now = time.time() if now is None else now
        sql = (
            "INSERT INTO messages (received_at, updated_at, source, position, control_id, message_type, "
            "raw, processed, state, commented, reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'processed', ?, ?)"
        )

        def values(m: Replayed, raw: bytes, processed: bytes | None) -> tuple[Any, ...]:
            return (now, now, source, m.position, m.control_id, m.message_type, raw, processed) + (
                int(m.commented),
                json.dumps(list(m.reasons)),
            )

        def tx(cur: sqlite3.Cursor) -> None:
            if all(len(m.raw) <= LARGE_BYTES and len(m.processed) <= LARGE_BYTES for m in batch):
                cur.executemany(sql, [values(m, m.raw, None if m.processed == m.raw else m.processed) for m in batch])
                return
            for m in batch:  # one at a time, in order: each large one's bytes go to their table
                changed = m.processed != m.raw
                raw_large, processed_large = len(m.raw) > LARGE_BYTES, changed and len(m.processed) > LARGE_BYTES
                processed = (b"" if processed_large else m.processed) if changed else None
                id = cast(int, cur.execute(sql, values(m, b"" if raw_large else m.raw, processed)).lastrowid)
                if raw_large:
                    write_large(self._db, "large_raw", id, m.raw)
                if processed_large:
                    write_large(self._db, "large_processed", id, m.processed)

        self._tx(tx)

    def last_position(self, source: str) -> int:
        return self._query("SELECT COALESCE(MAX(position), 0) FROM messages WHERE source = ?", (source,))[0][0]

    # -- inspection (queue commands, metrics), retry, rebuild

    def get(self, id: int) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (id,))
        return self._row(rows[0]) if rows else None

    def rows(self, state: str | None = None) -> list[Row]:
        if state is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM messages ORDER BY id")
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE state = ? ORDER BY id", (state,))
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._query("SELECT state, COUNT(*) FROM messages GROUP BY state"))
        return {state: found.get(state, 0) for state in STATES}

    def depth(self) -> int:
        return self._query("SELECT COUNT(*) FROM messages WHERE state IN ('received', 'processed')")[0][0]

    def oldest_undelivered(self) -> float | None:
        return self._query("SELECT MIN(received_at) FROM messages WHERE state IN ('received', 'processed')")[0][0]

    def discard(self, control_id: str, reason: str, by: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now

        def tx(cur: sqlite3.Cursor) -> int:
            found = cur.execute(
                "SELECT id, control_id, message_type, received_at, updated_at, attempts, last_error FROM messages "
                "WHERE state = 'dead' AND control_id = ? ORDER BY id",
                (control_id,),
            ).fetchall()
            for id, cid, mtype, received, dead_since, attempts, error in found:
                record = discard_record(id, cid, mtype, received, dead_since, attempts, error, reason, by, now)
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"discarded:{id:012d}", record))
                for table in LARGE_TABLES:
                    cur.execute(f"DELETE FROM {table} WHERE id = ?", (id,))
                cur.execute("DELETE FROM holds WHERE id = ?", (id,))
                cur.execute("DELETE FROM messages WHERE id = ?", (id,))
            return len(found)

        return self._tx(tx)

    def discarded(self) -> list[dict]:
        rows = self._query("SELECT value FROM meta WHERE key LIKE 'discarded:%' ORDER BY key")
        return [json.loads(value) for (value,) in rows]

    def retry(self, control_id: str | None = None, now: float | None = None) -> int:
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

    def raw_rows(self) -> Iterator[tuple[int, float, bytes]]:
        try:
            cur = self._db.execute("SELECT id, received_at, raw FROM messages WHERE state != 'invalid' ORDER BY id")
            for id, received_at, raw in cur:
                yield id, received_at, bytes(raw) or self._read_large("large_raw", id)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from None

    # -- salvage: what can still be read of a damaged or deleted journal

    def salvage_undelivered(self) -> Iterator[Row | int]:
        """Read one row at a time, so that a damaged page costs only the rows
        on it: a `Row` for each that can be read, its id (an int) for each that cannot."""
        try:
            ids = [r[0] for r in self._db.execute("SELECT id FROM messages WHERE state IN ('received', 'processed')")]
        except sqlite3.Error:
            ids = None
        if ids is None:  # the index is damaged too: try every id the table may hold
            try:
                top = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
                last = int(top[0]) if top else 0
            except sqlite3.Error:
                last = 0
            ids = list(range(1, last + 1))
        for id in sorted(ids):
            try:
                found = self._db.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (id,)).fetchall()
                row = self._row(found[0]) if found else None
            except (sqlite3.Error, JournalError):
                yield id
                continue
            if row is not None and row.state in UNDELIVERED:
                yield row
