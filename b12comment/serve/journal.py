"""The durable journal: one SQLite row per received frame, in WAL mode.

States of a row::

    received --process--> processed --forward--> forwarded
                                      \\-------> dead  --queue retry--> processed
    invalid    (a frame answered AR: not an HL7 message, or over the size limit;
                kept for inspection; not to be confused with a message the
                downstream rejected, which is dead)

`intake()` commits before it returns, so the caller may ACK afterwards.
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

A large message (over `LARGE_BYTES`) is kept out of its row: its bytes are
in `large_raw` (and its processed bytes, if they differ, in
`large_processed`), under the row's id, and the row's column holds an empty
blob. SQLite rewrites a whole row on every UPDATE, so a state change of a
row that held 20 MB would read those 20 MB into memory twice and may write
them to the WAL again; kept apart, the bytes are written once, with
SQLite's incremental blob I/O (no copy of them is made on the way in), and
read once into one `bytes` object on the way out.

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
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

RECEIVED, PROCESSED, FORWARDED, DEAD, INVALID = "received", "processed", "forwarded", "dead", "invalid"
STATES = (RECEIVED, PROCESSED, FORWARDED, DEAD, INVALID)
UNDELIVERED = (RECEIVED, PROCESSED)

# The schema's version, in PRAGMA user_version. A journal of an older version
# is migrated when it is opened (see _migrate); one of a newer version is refused.
SCHEMA_VERSION = 2  # 2: the tables large_raw and large_processed
BATCH_BYTES = 8 * 1024 * 1024  # the message bytes one batch of rows may hold (processing, forwarding)
LARGE_BYTES = 256 * 1024  # larger message bytes are kept out of their row (see the module's docstring)
_COMPARE_CHUNK = 1024 * 1024

# peer and conn_seq: where a frame came from (address, its number on that
# connection). source and position: where `replay --forward` read a message
# (`replay:<file>`, its number in the file).
_TABLE = """
CREATE TABLE {name} (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    peer         TEXT    NOT NULL DEFAULT '',
    conn_seq     INTEGER NOT NULL DEFAULT 0,
    source       TEXT    NOT NULL DEFAULT '',
    position     INTEGER NOT NULL DEFAULT 0,
    control_id   TEXT    NOT NULL DEFAULT '',
    message_type TEXT    NOT NULL DEFAULT '',
    digest       BLOB    NOT NULL,
    raw          BLOB    NOT NULL,
    processed    BLOB,
    state        TEXT    NOT NULL CHECK (state IN ({states})),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    commented    INTEGER,
    reasons      TEXT
)
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (state, id);
CREATE INDEX IF NOT EXISTS messages_by_control_id ON messages (control_id, received_at);
CREATE INDEX IF NOT EXISTS messages_by_source ON messages (source, position) WHERE source != '';
CREATE TABLE IF NOT EXISTS holds (id INTEGER PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS large_raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS large_processed (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""
_LARGE_TABLES = ("large_raw", "large_processed")


def _table(name: str) -> str:
    return _TABLE.format(name=name, states=", ".join(f"'{s}'" for s in STATES))


class JournalError(Exception):
    """The journal cannot be opened, read or written."""


class JournalFault(JournalError):
    """The journal can no longer be trusted with a new message: nothing is
    ACKed AA again until serve is restarted on a sound journal."""


class JournalGone(JournalFault):
    """The journal's file was deleted or replaced while open: what is
    committed now would be lost at the next start."""


class JournalCorrupt(JournalFault):
    """SQLite found the journal's file damaged (malformed, not a database)."""


# SQLite's primary result codes for a damaged file.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


@dataclass(frozen=True)
class Receipt:
    id: int
    duplicate: bool  # a retransmission of a message already journaled


@dataclass(frozen=True)
class NewMessage:
    """Intake: a frame that is an HL7 message, to be journaled before its AA."""

    raw: bytes
    control_id: str
    message_type: str
    peer: str = ""
    conn_seq: int = 0
    retransmit_window_s: float = 0.0
    now: float | None = None


@dataclass(frozen=True)
class InvalidFrame:
    """Intake: a frame answered AR (not an HL7 message, or too large), kept for inspection."""

    raw: bytes
    reason: str
    peer: str = ""
    conn_seq: int = 0
    control_id: str = ""
    message_type: str = ""
    now: float | None = None


Arrival = NewMessage | InvalidFrame


@dataclass(frozen=True)
class Replayed:
    """A message `replay --forward` has processed, from `position` in its file."""

    raw: bytes
    processed: bytes
    control_id: str
    message_type: str
    commented: bool
    reasons: tuple[str, ...]
    position: int


@dataclass(frozen=True)
class Processed:
    """What the processing stage made of one journaled message (`processed`
    None: the received bytes, unchanged)."""

    id: int
    processed: bytes | None
    commented: bool
    reasons: tuple[str, ...] | list[str]


@dataclass(frozen=True)
class Row:
    id: int
    received_at: float
    updated_at: float
    peer: str
    conn_seq: int
    source: str
    position: int
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
    "id, received_at, updated_at, peer, conn_seq, source, position, control_id, message_type, raw, "
    "processed, state, attempts, last_error, commented, reasons"
)


def batch_full(rows: Sequence[Row], limit: int, max_bytes: int = BATCH_BYTES) -> bool:
    """Whether a batch read with `limit` (and `max_bytes`) may have left rows
    behind: the caller reads again at once rather than waiting for news."""
    if len(rows) >= limit:
        return True
    held = 0
    for row in rows:
        held += len(row.raw)
        if row.processed is not None and row.processed is not row.raw:
            held += len(row.processed)
    return held >= max_bytes


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _path_ident(path: str | Path) -> tuple[int, int] | None:
    try:
        return _ident(os.stat(path))
    except FileNotFoundError:
        return None


def digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


class Journal:
    """The journal file. Every method commits (or fails) before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._path_s, self._wal_s = str(self.path), f"{self.path}-wal"  # (checked at every commit: no Path work)
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
            self._migrate()
            # The file SQLite opened, to notice when the path no longer leads to it.
            self._fd = os.open(self.path, os.O_RDONLY)
            self._ident = _ident(os.fstat(self._fd))
            self._wal_ident = _path_ident(self.wal_path)
        except (sqlite3.Error, OSError, JournalError) as exc:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._db.close()
            if isinstance(exc, JournalError):
                raise
            if isinstance(exc, sqlite3.Error) and _is_corrupt(exc):
                raise JournalCorrupt(f"journal {self.path} is damaged: {exc}") from None
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None

    @classmethod
    def for_reading(cls, path: str | Path) -> Journal:
        """The journal opened read-only, as it is: no schema change, no write
        (for recovery from a damaged file). Only reading methods may be used."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._path_s, self._wal_s = str(self.path), f"{self.path}-wal"  # (checked at every commit: no Path work)
        self._full = True
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._fd = os.open(self.path, os.O_RDONLY)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None
        self._ident = _ident(os.fstat(self._fd))
        self._wal_ident = None
        return self

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    @property
    def journal_id(self) -> str:
        """A random name given to this journal when it was created."""
        return self._query("SELECT value FROM meta WHERE key = 'journal_id'")[0][0]

    def check_file(self) -> None:
        """Raise JournalGone when the journal's path (or its WAL's) no longer
        leads to the file open here: deleted, renamed or replaced."""
        try:
            fst = os.fstat(self._fd)
            now = _path_ident(self._path_s)
        except OSError as exc:
            raise JournalGone(f"journal {self.path} cannot be checked: {exc.strerror or exc}") from None
        if fst.st_nlink == 0 or now is None:
            raise JournalGone(f"journal {self.path} was deleted while serve had it open")
        if now != _ident(fst):
            raise JournalGone(f"journal {self.path} was replaced by another file while serve had it open")
        wal = _path_ident(self._wal_s)
        if self._wal_ident is None:
            self._wal_ident = wal
        elif wal != self._wal_ident:
            raise JournalGone(f"the journal's write-ahead log {self.wal_path} was deleted or replaced")

    def quick_check(self) -> list[str]:
        """SQLite's PRAGMA quick_check: [] when the file is sound, else its first findings."""
        try:
            found = [r[0] for r in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.Error as exc:
            return [str(exc)]
        return [] if found == ["ok"] else found

    def _migrate(self) -> None:
        """Create the schema, or bring an older journal's up to SCHEMA_VERSION
        in one transaction (a crash half-way leaves the old one intact)."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            exists = cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'").fetchone()
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path} has schema version {version}; this b12comment knows up to {SCHEMA_VERSION}"
                )
            if not exists:
                cur.execute(_table("messages"))
            elif version < 1:
                # Version 0: replay's rows kept their file in peer and their
                # position in conn_seq, and a frame answered AR was 'rejected'.
                cur.execute(_table("messages_v1"))
                cur.execute(
                    "INSERT INTO messages_v1 (id, received_at, updated_at, peer, conn_seq, source, position, "
                    "control_id, message_type, digest, raw, processed, state, attempts, last_error, commented, "
                    "reasons) SELECT id, received_at, updated_at, "
                    "CASE WHEN peer LIKE 'replay:%' THEN '' ELSE peer END, "
                    "CASE WHEN peer LIKE 'replay:%' THEN 0 ELSE conn_seq END, "
                    "CASE WHEN peer LIKE 'replay:%' THEN peer ELSE '' END, "
                    "CASE WHEN peer LIKE 'replay:%' THEN conn_seq ELSE 0 END, "
                    "control_id, message_type, digest, raw, processed, "
                    "CASE WHEN state = 'rejected' THEN 'invalid' ELSE state END, "
                    "attempts, last_error, commented, reasons FROM messages ORDER BY id"
                )
                cur.execute("DROP TABLE messages")
                cur.execute("ALTER TABLE messages_v1 RENAME TO messages")
            for statement in _INDEXES.strip().splitlines():
                cur.execute(statement)
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?)", (uuid.uuid4().hex,))
            if version != SCHEMA_VERSION:
                cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            cur.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    def _row(self, r) -> Row:
        """A Row from the columns of _COLUMNS; a large message's bytes are read
        from their own table (one `bytes` each, no other copy)."""
        raw = r[9]
        if not raw and r[11] != INVALID:
            raw = self._read_large("large_raw", r[0])
        processed = r[10]
        if processed is not None and not processed:
            processed = self._read_large("large_processed", r[0])
        # commented is set by mark_processed_many; processed is NULL there when unchanged.
        if processed is None and r[14] is not None:
            processed = raw
        return Row(
            id=r[0],
            received_at=r[1],
            updated_at=r[2],
            peer=r[3],
            conn_seq=r[4],
            source=r[5],
            position=r[6],
            control_id=r[7],
            message_type=r[8],
            raw=raw,
            processed=processed,
            state=r[11],
            attempts=r[12],
            last_error=r[13],
            commented=None if r[14] is None else bool(r[14]),
            reasons=tuple(json.loads(r[15] or "[]")),
        )

    def _read_large(self, table: str, id: int) -> bytes:
        try:
            with self._db.blobopen(table, "data", id, readonly=True) as blob:
                return blob.read()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _write_large(self, table: str, id: int, data: bytes) -> None:
        """Keep `data` under `id` in a large table (in the open transaction):
        room is made with zeroblob() and filled in place, so SQLite makes no
        copy of the bytes."""
        self._db.execute(f"INSERT OR REPLACE INTO {table} (id, data) VALUES (?, zeroblob(?))", (id, len(data)))
        with self._db.blobopen(table, "data", id) as blob:
            blob.write(data)

    def _large_equals(self, table: str, id: int, data: bytes) -> bool:
        """Whether the large bytes kept under `id` are `data` (read a piece at a time)."""
        try:
            blob = self._db.blobopen(table, "data", id, readonly=True)
        except sqlite3.OperationalError:  # no such row
            return False
        with blob:
            if len(blob) != len(data):
                return False
            for pos in range(0, len(data), _COMPARE_CHUNK):
                if blob.read(_COMPARE_CHUNK) != data[pos : pos + _COMPARE_CHUNK]:
                    return False
        return True

    def _error(self, exc: sqlite3.Error) -> JournalError:
        if _is_corrupt(exc):
            return JournalCorrupt(f"journal {self.path} is damaged: {exc}")
        return JournalError(f"journal {self.path}: {exc}")

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
                raise self._error(exc) from None
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
            raise self._error(exc) from None

    # -- the listener

    def intake(self, arrivals: Sequence[Arrival]) -> list[Receipt | int | JournalError]:
        """Journal frames in one transaction and one fsync (group commit), in
        the order given: a `Receipt` for each `NewMessage` (a retransmission,
        same MSH-10 and same bytes within its window, is found, not stored
        again), the row id of each `InvalidFrame`, or the JournalError of one
        that failed alone. Raises JournalError when the commit fails: then
        nothing is stored."""

        def tx(cur):
            self.check_file()  # before the commit: nothing goes into a file that is no longer the journal
            if len(arrivals) == 1:
                return [self._arrive(cur, arrivals[0])]
            results: list[Receipt | int | JournalError] = []
            for arrival in arrivals:
                cur.execute("SAVEPOINT item")
                try:
                    results.append(self._arrive(cur, arrival))
                except sqlite3.Error as exc:
                    if _is_corrupt(exc):
                        raise
                    cur.execute("ROLLBACK TO item")
                    results.append(JournalError(f"journal {self.path}: {exc}"))
                cur.execute("RELEASE item")
            return results

        # Invalid frames are kept for inspection only: a batch of nothing else
        # needs no fsync of its own (a flood of junk costs no disk flushes).
        results = self._tx(tx, durable=any(isinstance(a, NewMessage) for a in arrivals))
        self.check_file()  # and after it: did the commit land in the file the path names?
        return results

    def _arrive(self, cur, a: Arrival) -> Receipt | int:
        now = time.time() if a.now is None else a.now
        if isinstance(a, InvalidFrame):
            return cur.execute(
                "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, digest, "
                "raw, state, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'invalid', ?)",
                (now, now, a.peer, a.conn_seq, a.control_id, a.message_type, digest(a.raw), a.raw, a.reason),
            ).lastrowid
        large = len(a.raw) > LARGE_BYTES
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
                hit = next(((i,) for (i,) in candidates if self._large_equals("large_raw", i, a.raw)), None)
            else:
                hit = cur.execute(
                    "SELECT id FROM messages WHERE control_id = ? AND received_at >= ? "
                    "AND state != 'invalid' AND raw = ? ORDER BY id DESC LIMIT 1",
                    (a.control_id, now - a.retransmit_window_s, a.raw),
                ).fetchone()
            if hit:
                return Receipt(hit[0], True)
        cur.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, message_type, "
            "digest, raw, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'received')",
            (now, now, a.peer, a.conn_seq, a.control_id, a.message_type, b"", b"" if large else a.raw),
        )
        id = cur.lastrowid
        if large:
            self._write_large("large_raw", id, a.raw)
        return Receipt(id, False)

    # -- the processing stage

    def unprocessed(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        """Up to `limit` received messages in journal order, and no more than
        `max_bytes` of them (at least one): large messages come a few at a time."""
        return self._rows_within(
            f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' AND id NOT IN (SELECT id FROM holds) "
            "ORDER BY id LIMIT ?",
            (limit,),
            max_bytes,
        )

    def _rows_within(self, sql: str, args: tuple, max_bytes: int, until=lambda r: False) -> list[Row]:
        """The rows of a query, read one at a time, up to the first for which
        until(raw row) is true, or until `max_bytes` of message bytes are held
        (the row that crosses it is the last; the first is always taken)."""
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

    def mark_processed_many(self, results: Sequence[Processed], now: float | None = None) -> None:
        """Record what processing made of each message, in one transaction.
        Processed bytes equal to the received ones are not stored again."""
        now = time.time() if now is None else now

        def tx(cur) -> None:
            small = [p for p in results if p.processed is None or len(p.processed) <= LARGE_BYTES]
            cur.executemany(
                "UPDATE messages SET processed = CASE WHEN raw = ?1 THEN NULL ELSE ?1 END, commented = ?2, "
                "reasons = ?3, state = 'processed', updated_at = ?4 WHERE id = ?5 AND state = 'received'",
                [(p.processed, int(p.commented), json.dumps(list(p.reasons)), now, p.id) for p in small],
            )
            for p in results:
                if p.processed is None or len(p.processed) <= LARGE_BYTES:
                    continue
                if self._large_equals("large_raw", p.id, p.processed):  # unchanged after all
                    value: bytes | None = None
                else:
                    value = b""
                changed = cur.execute(
                    "UPDATE messages SET processed = ?, commented = ?, reasons = ?, state = 'processed', "
                    "updated_at = ? WHERE id = ? AND state = 'received'",
                    (value, int(p.commented), json.dumps(list(p.reasons)), now, p.id),
                ).rowcount
                if changed and value is not None:
                    self._write_large("large_processed", p.id, p.processed)
            cur.executemany("DELETE FROM holds WHERE id = ?", [(p.id,) for p in results])  # released

        self._tx(tx, durable=False)

    # -- the hold window ([context] hold_s): a message waits for the rest of its requisition

    def hold_many(self, holds: Sequence[tuple[int, float]]) -> None:
        """Keep received messages back until a time each, (id, until): the
        processing stage decides them again then, or when a newer message of
        the same patient comes. Not delivered, and not in the way of the
        messages after them, until `mark_processed_many` releases them."""
        self._tx(lambda cur: cur.executemany("INSERT OR REPLACE INTO holds (id, until) VALUES (?, ?)", holds))

    def held(self) -> list[tuple[Row, float]]:
        """The messages held, oldest first, each with the time its hold ends."""
        until = dict(self._query("SELECT id, until FROM holds"))
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE state = 'received' AND id IN (SELECT id FROM holds) ORDER BY id"
        )
        return [(self._row(r), until[r[0]]) for r in rows]

    # -- the forwarder

    def deliverable(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        """The head of the queue: up to `limit` processed messages in journal
        order, stopping before the first one not yet processed. A held message
        is passed over: the messages of its own patient stay behind it, since
        the processing stage releases it before it processes them."""
        return self._rows_within(
            f"SELECT {_COLUMNS} FROM messages WHERE state IN ('received', 'processed') "
            "AND id NOT IN (SELECT id FROM holds) ORDER BY id LIMIT ?",
            (limit,),
            max_bytes,
            until=lambda r: r[11] != PROCESSED,
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
        """Delete forwarded rows and invalid frames older than the retention."""
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        where = "state IN ('forwarded', 'invalid') AND updated_at < ?"

        def tx(cur) -> int:
            for table in _LARGE_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM messages WHERE {where})", (cutoff,))
            return cur.execute(f"DELETE FROM messages WHERE {where}", (cutoff,)).rowcount

        return self._tx(tx)

    # -- replay --forward

    def enqueue_processed(self, source: str, batch: Sequence[Replayed], now: float | None = None) -> None:
        """Journal messages that replay has already processed, in one
        transaction, with their source (`replay:<file>`) and position in the
        file, so that `last_position` can resume an interrupted replay."""
        now = time.time() if now is None else now
        sql = (
            "INSERT INTO messages (received_at, updated_at, source, position, control_id, message_type, digest, "
            "raw, processed, state, commented, reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'processed', ?, ?)"
        )

        def values(m: Replayed, raw: bytes, processed: bytes | None) -> tuple:
            return (now, now, source, m.position, m.control_id, m.message_type, digest(m.raw), raw, processed) + (
                int(m.commented),
                json.dumps(list(m.reasons)),
            )

        def tx(cur) -> None:
            if all(len(m.raw) <= LARGE_BYTES and len(m.processed) <= LARGE_BYTES for m in batch):
                cur.executemany(sql, [values(m, m.raw, None if m.processed == m.raw else m.processed) for m in batch])
                return
            for m in batch:  # one at a time, in order: each large one's bytes go to their table
                changed = m.processed != m.raw
                raw_large, processed_large = len(m.raw) > LARGE_BYTES, changed and len(m.processed) > LARGE_BYTES
                processed = (b"" if processed_large else m.processed) if changed else None
                id = cur.execute(sql, values(m, b"" if raw_large else m.raw, processed)).lastrowid
                if raw_large:
                    self._write_large("large_raw", id, m.raw)
                if processed_large:
                    self._write_large("large_processed", id, m.processed)

        self._tx(tx)

    def last_position(self, source: str) -> int:
        """The highest position journaled from `source` (0 if none)."""
        return self._query("SELECT COALESCE(MAX(position), 0) FROM messages WHERE source = ?", (source,))[0][0]

    # -- inspection (queue CLI, metrics)

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

    def raw_rows(self):
        """(id, received_at, raw) of every message row (not invalid frames), oldest first."""
        try:
            cur = self._db.execute("SELECT id, received_at, raw FROM messages WHERE state != 'invalid' ORDER BY id")
            for r in cur:
                yield r[0], r[1], bytes(r[2]) or self._read_large("large_raw", r[0])
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from None

    def salvage_undelivered(self) -> Iterator[Row | int]:
        """Every message not yet delivered or dead, in journal order, read one
        row at a time so that a damaged page costs only the rows on it: a
        `Row` for each that can be read, its id (an int) for each that cannot."""
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

    def settings(self) -> tuple[str, int]:
        """(journal_mode, synchronous) as SQLite reports them."""
        mode = self._query("PRAGMA journal_mode")[0][0]
        sync = self._query("PRAGMA synchronous")[0][0]
        return mode, sync
