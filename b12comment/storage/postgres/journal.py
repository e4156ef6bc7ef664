"""The PostgreSQL journal: the same rows, states and promises as the SQLite
one, in a database that several instances share (one leads: lease.py).

- `intake()` returns after the commit; PostgreSQL's synchronous_commit=on
  (its default) makes that commit durable on the primary, and, with
  synchronous replication, on a standby too (README: the database's own
  failover). A commit whose answer is lost (the server or the connection
  went away) raises JournalError: the frame is answered AE, and its resend
  is found as a retransmission if the commit had landed.
- With a `fence` (the leader's lease), every write, and every read that
  feeds processing or delivery, first checks in the same transaction that
  this instance still holds the lease (FOR SHARE on the lease row, so a
  takeover waits for the commit, or the commit sees the takeover). An
  instance that lost it gets `NotLeader`, never a commit.
- A broken connection is opened again at the next call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from b12comment.storage.interface import Fence
from b12comment.storage.model import (
    BATCH_BYTES,
    PROCESSED,
    STATES,
    TRAILING,
    Arrival,
    InvalidFrame,
    JournalError,
    NotLeader,
    Processed,
    Receipt,
    Replayed,
    Row,
    discard_record,
)
from b12comment.storage.postgres.connect import connect, describe, psycopg_module, redact
from b12comment.storage.postgres.schema import migrate

T = TypeVar("T")

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
_INSERT_INTO = "INSERT INTO b12_messages"
_NEW = "(received_at, updated_at, peer, conn_seq, control_id, message_type, raw, state)"
_VALUES = "%s, %s, %s, %s, %s, %s, %s"
_FENCE = (
    "SELECT 1 FROM b12_lease WHERE name = 'leader' AND holder = %s AND epoch = %s "
    "AND expires_at > clock_timestamp() FOR SHARE"
)


class PostgresJournal:
    """The journal in a PostgreSQL database. Every method commits (or fails) before returning."""

    def __init__(self, url: str, instance: str = "", fence: Fence | None = None):
        self.url = url
        self.instance = instance
        self.fence = fence
        self._psycopg = psycopg_module()
        self._c: Any = None
        conn = self._conn()
        try:
            migrate(conn, self.location)
        except self._psycopg.Error as exc:
            raise JournalError(f"cannot open journal {self.location}: {describe(exc)}") from None

    @property
    def location(self) -> str:
        return redact(self.url)

    def _conn(self) -> Any:
        if self._c is None or self._c.closed or self._c.broken:
            if self._c is not None:
                self._c.close()
            self._c = connect(self.url, self.instance, autocommit=True)
        return self._c

    def _error(self, exc: Exception) -> JournalError:
        return JournalError(f"journal {self.location}: {describe(exc)}")

    def _fence_query(self, conn: Any, lock: bool = True) -> Any:
        """Send the lease check (in a pipeline its answer comes with the
        work's); returns the cursor to read it from, None without a fence."""
        f = self.fence
        if f is None:
            return None
        if not f.holds():
            raise NotLeader(f"instance {f.instance} no longer holds the lease of journal {self.location}")
        return conn.execute(_FENCE if lock else _FENCE.removesuffix(" FOR SHARE"), (f.instance, f.epoch))

    def _fence_holds(self, cursor: Any) -> None:
        if cursor is not None and cursor.fetchone() is None:
            f = self.fence
            assert f is not None
            raise NotLeader(f"instance {f.instance} lost the lease of journal {self.location} (another leads)")

    def _tx(self, fn: Callable[[Any], T], fenced: bool = True, durable: bool = True) -> T:
        """fn(conn) in one transaction, pipelined with the lease check (FOR
        SHARE, sent first): a lost lease rolls the whole of it back. Few
        round trips: the statements go together, the answers come together.
        `durable=False` (what happens to a message after its intake): the
        commit does not wait for its WAL flush (synchronous_commit off for
        it), as the SQLite journal commits those without an fsync; a crash
        of the database can undo the last few, which means doing them again
        (delivery is at least once). Intake, retry and replay's queue always
        wait for the flush (and for a synchronous standby)."""
        try:
            conn = self._conn()
            with conn.pipeline(), conn.transaction():
                if not durable:  # as SQLite's synchronous=NORMAL for these: no flush of their own
                    conn.execute("SET LOCAL synchronous_commit = off")
                fence = self._fence_query(conn) if fenced else None
                result = fn(conn)
                self._fence_holds(fence)  # before the COMMIT
                return result
        except self._psycopg.Error as exc:
            raise self._error(exc) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except self._psycopg.Error as exc:
            raise self._error(exc) from None

    @property
    def journal_id(self) -> str:
        return self._query("SELECT value FROM b12_meta WHERE key = 'journal_id'")[0][0]

    def integrity_problems(self) -> list[str]:
        try:
            self._query("SELECT count(*) FROM b12_messages WHERE id < 0")
        except JournalError as exc:
            return [str(exc)]
        return []

    def close(self) -> None:
        if self._c is not None:
            self._c.close()
            self._c = None

    # -- rows

    @staticmethod
    def _row(r: tuple[Any, ...]) -> Row:
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
        raw = bytes(raw)
        processed = raw if processed is None and commented is not None else processed
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
            processed=None if processed is None else bytes(processed),
            state=state,
            attempts=attempts,
            last_error=last_error,
            commented=commented,
            reasons=tuple(_json_list(reasons)),
        )

    def _rows_within(self, where: str, args: tuple[Any, ...], limit: int, max_bytes: int, stop_unprocessed: bool):
        """Rows in id order, up to `limit` and `max_bytes` of message bytes
        (the first always), in one statement: the bytes of the rows before
        each are summed in the database, and the bytes of a row past the
        bound are not sent (its columns come back empty, and it is left)."""
        sized = ", ".join(n if n not in ("raw", "processed") else f"CASE WHEN before < %s THEN {n} END" for n in _NAMES)
        sql = (
            f"SELECT {sized}, before FROM (SELECT *, coalesce(sum(octet_length(raw) + "
            "coalesce(octet_length(processed), 0)) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 "
            f"PRECEDING), 0) AS before FROM (SELECT * FROM b12_messages WHERE {where} "
            "AND id NOT IN (SELECT id FROM b12_holds) ORDER BY id LIMIT %s) AS head) AS sized ORDER BY id"
        )
        try:
            conn = self._conn()
            with conn.pipeline():
                fence = self._fence_query(conn, lock=False)
                found = conn.execute(sql, (max_bytes, max_bytes, *args, limit)).fetchall()
                self._fence_holds(fence)
        except self._psycopg.Error as exc:
            raise self._error(exc) from None
        out: list[Row] = []
        state_at = _NAMES.index("state")
        for r in found:
            if (out and r[-1] >= max_bytes) or (stop_unprocessed and r[state_at] != PROCESSED):
                break
            out.append(self._row(r[:-1]))
        return out

    # -- the listener

    def intake(self, arrivals: Sequence[Arrival]) -> list[Receipt | int | JournalError]:
        """All in one transaction, pipelined: the statements of every frame go
        together. When one frame's statement fails, the batch is done again
        one frame at a time, each in a savepoint, so that it fails alone."""

        def tx(conn: Any) -> list[Receipt | int | JournalError]:
            sent = [self._send(conn, a) for a in arrivals]
            return [_answer(cursor, is_message) for cursor, is_message in sent]

        try:
            return self._tx(tx)
        except JournalError:
            if len(arrivals) == 1 or self._c is None or self._c.broken or self._c.closed:
                raise
        return self._intake_one_by_one(arrivals)

    def _intake_one_by_one(self, arrivals: Sequence[Arrival]) -> list[Receipt | int | JournalError]:
        results: list[Receipt | int | JournalError] = []
        try:
            conn = self._conn()
            with conn.transaction():
                self._fence_holds(self._fence_query(conn))
                for arrival in arrivals:
                    try:
                        with conn.transaction():  # a savepoint: one that fails fails alone
                            results.append(_answer(*self._send(conn, arrival)))
                    except self._psycopg.Error as exc:
                        if isinstance(exc, self._psycopg.OperationalError):
                            raise
                        results.append(self._error(exc))
        except self._psycopg.Error as exc:
            raise self._error(exc) from None
        return results

    def _send(self, conn: Any, a: Arrival) -> tuple[Any, bool]:
        """Send one frame's statement; (its cursor, whether it is a message)."""
        now = time.time() if a.now is None else a.now
        if isinstance(a, InvalidFrame):
            return conn.execute(
                f"{_INSERT_INTO} (received_at, updated_at, peer, conn_seq, control_id, message_type, raw, state, "
                "last_error) VALUES (%s, %s, %s, %s, %s, %s, %s, 'invalid', %s) RETURNING id, false",
                (now, now, _text(a.peer), a.conn_seq, _text(a.control_id), _text(a.message_type), a.raw)
                + (_text(a.reason),),
            ), False
        values = (now, now, _text(a.peer), a.conn_seq, _text(a.control_id), _text(a.message_type), a.raw)
        if a.retransmit_window_s <= 0:
            return conn.execute(
                f"{_INSERT_INTO} {_NEW} VALUES ({_VALUES}, 'received') RETURNING id, false", values
            ), True
        # A retransmission (same control ID, same bytes, within the window) is
        # found, else the row is inserted: one statement.
        # Bytes compared without what ends the message (model.TRAILING); a
        # control ID seen within the window with other bytes is reported reused.
        cid, since = _text(a.control_id), now - a.retransmit_window_s
        return conn.execute(
            "WITH hit AS (SELECT id FROM b12_messages WHERE control_id = %s AND received_at >= %s "
            "AND state != 'invalid' AND rtrim(raw, %s::bytea) = rtrim(%s::bytea, %s::bytea) ORDER BY id DESC LIMIT 1), "
            f"ins AS ({_INSERT_INTO} {_NEW} SELECT {_VALUES}, 'received' WHERE NOT EXISTS (SELECT 1 FROM hit) "
            "RETURNING id) SELECT id, true, false FROM hit UNION ALL SELECT id, false, EXISTS (SELECT 1 FROM "
            "b12_messages WHERE control_id = %s AND received_at >= %s AND state != 'invalid') FROM ins",
            (cid, since, _TRAILING, a.raw, _TRAILING, *values, cid, since),
        ), True

    # -- the processing stage

    def unprocessed(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        return self._rows_within("state = 'received'", (), limit, max_bytes, stop_unprocessed=False)

    def mark_processed_many(self, results: Sequence[Processed], now: float | None = None) -> None:
        now = time.time() if now is None else now

        def tx(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE b12_messages SET processed = CASE WHEN raw = %(p)s THEN NULL ELSE %(p)s END, "
                    "commented = %(c)s, reasons = %(r)s, state = 'processed', updated_at = %(t)s "
                    "WHERE id = %(id)s AND state = 'received'",
                    [
                        dict(p=p.processed, c=bool(p.commented), r=_json_dump(p.reasons), t=now, id=p.id)
                        for p in results
                    ],
                )
                cur.execute("DELETE FROM b12_holds WHERE id = ANY(%s)", ([p.id for p in results],))

        self._tx(tx, durable=False)

    def hold_many(self, holds: Sequence[tuple[int, float]]) -> None:
        def tx(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO b12_holds (id, until) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET until = "
                    "EXCLUDED.until",
                    list(holds),
                )

        self._tx(tx)

    def held(self) -> list[tuple[Row, float]]:
        rows = self._query(
            f"SELECT {', '.join('m.' + n for n in _NAMES)}, h.until FROM b12_messages m JOIN b12_holds h "
            "ON h.id = m.id WHERE m.state = 'received' ORDER BY m.id"
        )
        return [(self._row(r[:-1]), r[-1]) for r in rows]

    # -- the forwarder

    def deliverable(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        return self._rows_within("state IN ('received', 'processed')", (), limit, max_bytes, stop_unprocessed=True)

    def mark_forwarded_many(self, ids: Sequence[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda conn: conn.execute(
                "UPDATE b12_messages SET state = 'forwarded', updated_at = %s WHERE id = ANY(%s)", (now, list(ids))
            ),
            durable=False,
        )

    def void_many(self, ids: Sequence[int], reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda conn: conn.execute(
                "UPDATE b12_messages SET state = 'invalid', last_error = %s, updated_at = %s "
                "WHERE id = ANY(%s) AND state IN ('received', 'processed')",
                (_text(reason), now, list(ids)),
            )
        )

    def mark_dead(self, id: int, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(
            lambda conn: conn.execute(
                "UPDATE b12_messages SET state = 'dead', last_error = COALESCE(%s, last_error), updated_at = %s "
                "WHERE id = %s",
                (_text(reason), now, id),
            ),
            durable=False,
        )

    def mark_attempt_failed(self, id: int, error: str, counts: bool = True, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return self._tx(
            lambda conn: conn.execute(
                "UPDATE b12_messages SET attempts = attempts + %s, last_error = %s, updated_at = %s WHERE id = %s "
                "RETURNING attempts",
                (int(counts), _text(error), now, id),
            ).fetchone()[0],
            durable=False,
        )

    def prune(self, retention_days: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        return self._tx(
            lambda conn: conn.execute(
                "WITH gone AS (DELETE FROM b12_messages WHERE state IN ('forwarded', 'invalid') AND updated_at < %s "
                "RETURNING 1) SELECT count(*) FROM gone",
                (cutoff,),
            ).fetchone()[0]
        )

    # -- replay --forward

    def enqueue_processed(self, source: str, batch: Sequence[Replayed], now: float | None = None) -> None:
        now = time.time() if now is None else now

        def tx(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO b12_messages (received_at, updated_at, source, position, control_id, message_type, "
                    "raw, processed, state, commented, reasons) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'processed', %s, %s)",
                    [
                        (now, now, _text(source), m.position, _text(m.control_id), _text(m.message_type), m.raw)
                        + (None if m.processed == m.raw else m.processed, bool(m.commented), _json_dump(m.reasons))
                        for m in batch
                    ],
                )

        self._tx(tx)

    def last_position(self, source: str) -> int:
        return self._query("SELECT COALESCE(MAX(position), 0) FROM b12_messages WHERE source = %s", (source,))[0][0]

    # -- inspection, retry, rebuild, salvage

    def get(self, id: int) -> Row | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM b12_messages WHERE id = %s", (id,))
        return self._row(rows[0]) if rows else None

    def rows(self, state: str | None = None) -> list[Row]:
        if state is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM b12_messages ORDER BY id")
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM b12_messages WHERE state = %s ORDER BY id", (state,))
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._query("SELECT state, COUNT(*) FROM b12_messages GROUP BY state"))
        return {state: found.get(state, 0) for state in STATES}

    def depth(self) -> int:
        return self._query("SELECT COUNT(*) FROM b12_messages WHERE state IN ('received', 'processed')")[0][0]

    def oldest_undelivered(self) -> float | None:
        return self._query("SELECT MIN(received_at) FROM b12_messages WHERE state IN ('received', 'processed')")[0][0]

    def discard(self, control_id: str, reason: str, by: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now

        def tx(conn) -> int:
            found = conn.execute(
                "DELETE FROM b12_messages WHERE state = 'dead' AND control_id = %s RETURNING id, control_id, "
                "message_type, received_at, updated_at, attempts, last_error",
                (control_id,),
            ).fetchall()
            for id, cid, mtype, received, dead_since, attempts, error in found:
                record = discard_record(id, cid, mtype, received, dead_since, attempts, error, reason, by, now)
                conn.execute(
                    "INSERT INTO b12_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                    "EXCLUDED.value",
                    (f"discarded:{id:012d}", record),
                )
            return len(found)

        return self._tx(tx, fenced=False)  # an operator's command, from any host

    def discarded(self) -> list[dict]:
        rows = self._query("SELECT value FROM b12_meta WHERE key LIKE 'discarded:%%' ORDER BY key")
        return [json.loads(value) for (value,) in rows]

    def retry(self, control_id: str | None = None, now: float | None = None) -> int:
        now = time.time() if now is None else now
        where, args = "state = 'dead'", tuple[str, ...]()
        if control_id is not None:
            where, args = "state = 'dead' AND control_id = %s", (control_id,)
        return self._tx(
            lambda conn: conn.execute(
                "WITH back AS (UPDATE b12_messages SET state = CASE WHEN commented IS NULL THEN 'received' "
                f"ELSE 'processed' END, attempts = 0, updated_at = %s WHERE {where} RETURNING 1) "
                "SELECT count(*) FROM back",
                (now, *args),
            ).fetchone()[0],
            fenced=False,  # an operator's command, from any host
        )

    def raw_rows(self) -> Iterator[tuple[int, float, bytes]]:
        last = 0
        while True:  # a page at a time: the whole journal is never in memory
            page = self._query(
                "SELECT id, received_at, raw FROM b12_messages WHERE state != 'invalid' AND id > %s "
                "ORDER BY id LIMIT 500",
                (last,),
            )
            if not page:
                return
            for id, received_at, raw in page:
                yield id, received_at, bytes(raw)
            last = page[-1][0]

    def salvage_undelivered(self) -> Iterator[Row | int]:
        """The database has no damaged pages to step around: every undelivered row."""
        for row in self.rows():
            if row.state in ("received", "processed"):
                yield row

    # -- the lease, for `queue status`

    def leader(self) -> tuple[str, int, float] | None:
        """(holder, epoch, seconds its lease has left; negative: lapsed), or None if no instance ever led."""
        rows = self._query(
            "SELECT holder, epoch, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 FROM b12_lease "
            "WHERE name = 'leader' AND holder != ''"
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


_TRAILING = TRAILING.encode()


def _json_dump(reasons: Sequence[str]) -> str:
    return json.dumps(list(reasons))


def _json_list(text: str | None) -> list[str]:
    return json.loads(text or "[]")


def _answer(cursor: Any, is_message: bool) -> Receipt | int:
    row = cursor.fetchone()  # (id, duplicate) or (id, duplicate, reused)
    return Receipt(row[0], row[1], len(row) > 2 and bool(row[2])) if is_message else row[0]


def _text(s: str) -> str:
    """PostgreSQL's text holds no NUL and only valid UTF-8 (SQLite's holds anything)."""
    if "\x00" in s or not s.isascii():
        s = s.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return s
