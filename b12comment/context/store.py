"""The context store: the minimal rows of every result seen, keyed by HMAC.

One SQLite file (WAL, created 0600). A row per result (OBX) and per order
(OBR) of every result message: a keyed hash of each patient identifier
(PID-3 with its assigning authority), a keyed hash of the requisition (ORC-4,
else OBR-2 or OBR-3), the analyte code, the verdict the rule gives it, OBX-11,
OBR-25, the collection time and the message's control ID. No name, no
identifier, no birth date: the hashes are HMAC-SHA256 with a secret key, so a
CPR number (a birth date and four digits) cannot be found by trying them all.

The store is derived data: `b12comment context rebuild` makes it again from
the journal, and losing it loses no message. Each commit is fsynced
(synchronous=FULL): the rows of a processing batch are on disk before the
journal records the batch as processed, so that a power cut cannot leave a
message the journal calls processed whose rows, which veto a later comment
of its patient, are gone (the journal's own record of it becomes durable
at its next intake commit).

A commit appends to the WAL; moving the WAL's pages into the file (a
checkpoint, with its fsyncs: 5 to 10 ms on a shared disk) is, in serve, done
on a thread of its own (`checkpoint_in_background`), so that no request
waits for one. SQLite's own checkpoint after a commit stays as a backstop,
at a larger WAL, should that thread fall behind.

Not thread-safe: one thread uses a store at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from b12comment.context import open_rows
from b12comment.core.chain import decide
from b12comment.core.context import Context, PriorResult
from b12comment.core.keys import KEY_DERIVATION, Keys, earlier_requisition, requisition_aliases
from b12comment.core.rows import Extract
from b12comment.errors import B12Error
from b12comment.files import LockHeld, create_private, take_lock

KEY_BYTES = 32
MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq          INTEGER NOT NULL,  -- the message's arrival: its place in the store's order
    row_index    INTEGER NOT NULL,
    patient      BLOB    NOT NULL,
    requisition  BLOB    NOT NULL,
    kind         TEXT    NOT NULL,
    analyte      TEXT    NOT NULL,
    is_b12       INTEGER NOT NULL,
    verdict      TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    order_status TEXT    NOT NULL,
    collected    TEXT    NOT NULL,
    control_id   TEXT    NOT NULL,
    stored_at    REAL    NOT NULL,
    obx          INTEGER NOT NULL DEFAULT 0,
    system       TEXT    NOT NULL DEFAULT '',
    display      TEXT    NOT NULL DEFAULT '',
    value_type   TEXT    NOT NULL DEFAULT '',
    derivation   INTEGER NOT NULL DEFAULT 1,  -- the key derivation its requisition hash was made with
    PRIMARY KEY (seq, row_index, patient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_by_patient ON results (patient);
CREATE INDEX IF NOT EXISTS results_by_time ON results (stored_at);
CREATE TABLE IF NOT EXISTS comments (
    seq        INTEGER NOT NULL,
    patient    BLOB    NOT NULL,
    control_id TEXT    NOT NULL,
    stored_at  REAL    NOT NULL,
    PRIMARY KEY (seq, patient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS comments_by_patient ON comments (patient);
CREATE TABLE IF NOT EXISTS contradictions (
    comment_control_id TEXT NOT NULL,
    control_id         TEXT NOT NULL,
    why                TEXT NOT NULL,
    found_at           REAL NOT NULL,
    PRIMARY KEY (comment_control_id, control_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS later_reviews (
    seq        INTEGER PRIMARY KEY,
    control_id TEXT NOT NULL,
    why        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

_FIELDS = (
    "seq, control_id, requisition, kind, analyte, is_b12, verdict, status, order_status, collected, "
    "obx, system, display, value_type, derivation"
)
# The columns of a row as add() writes them.
_COLUMNS = (
    "seq",
    "row_index",
    "patient",
    "requisition",
    "kind",
    "analyte",
    "is_b12",
    "verdict",
    "status",
    "order_status",
    "collected",
    "control_id",
    "stored_at",
    "obx",
    "system",
    "display",
    "value_type",
    "derivation",
)
# Columns a store made by an earlier version lacks: added when it is opened.
_ADDED_COLUMNS = (
    ("obx", "INTEGER NOT NULL DEFAULT 0"),
    ("system", "TEXT NOT NULL DEFAULT ''"),
    ("display", "TEXT NOT NULL DEFAULT ''"),
    ("value_type", "TEXT NOT NULL DEFAULT ''"),
    # A store made before the key derivation was recorded: its rows are of the first.
    ("derivation", "INTEGER NOT NULL DEFAULT 1"),
)


class ContextError(B12Error):
    """The context store or its key cannot be used; the message is one line."""


def keyed_hash(key: bytes, raw: bytes) -> bytes:
    """The keyed hash of one identifier (HMAC-SHA256); b"" for an empty one.
    The context store's and the audit's hashes are both made here."""
    return hmac.new(key, raw, hashlib.sha256).digest() if raw else b""


def key_fingerprint(key: bytes) -> str:
    """Names a key without revealing it: a store records the fingerprint of
    the key its hashes were made with, and refuses another."""
    return hmac.new(key, b"b12comment key fingerprint", hashlib.sha256).hexdigest()[:16]


def load_key(path: str | Path, what: str = "context") -> bytes:
    """The HMAC key: made (32 random bytes, mode 0600) if the file is missing.
    `what` names the key's user in an error ("context", "audit")."""
    p = Path(path)
    try:
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
        key = p.read_bytes()
    except FileExistsError:  # made meanwhile by another process
        return load_key(p, what)
    except OSError as exc:
        raise ContextError(f"cannot read the {what} key file {p}: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise ContextError(f"the {what} key file {p} must hold exactly {KEY_BYTES} bytes, it holds {len(key)}")
    return key


def lock_path(store: str | Path) -> Path:
    p = Path(store)
    return p.with_name(f".{p.name}.lock")


# The store locks this process holds: path -> [file descriptor, users]. One
# process may open a store more than once (serve's processing stage and its
# HTTP endpoint); another process is refused.
_LOCKS: dict[str, list[int]] = {}


def lock_store(store: str | Path) -> str:
    """Take (or share, within this process) the exclusive lock on the store's
    `.<store>.lock`; raises ContextError naming the process that holds it."""
    path = lock_path(store)
    key = str(path.resolve())
    held = _LOCKS.get(key)
    if held is not None:
        held[1] += 1
        return key
    try:
        fd = take_lock(path)
    except LockHeld as held_elsewhere:
        raise ContextError(
            f"another process is using the context store {store}{held_elsewhere.holder}: one store serves one "
            f"process (a second serve, or a rebuild while serve runs; lock file {path})"
        ) from None
    except OSError as exc:
        raise ContextError(f"cannot lock the context store {store}: {exc.strerror or exc} ({path})") from None
    _LOCKS[key] = [fd, 1]
    return key


def unlock_store(key: str) -> None:
    held = _LOCKS.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _LOCKS[key]
        os.close(held[0])


CHECKPOINT_EVERY_S = 0.25  # the background checkpoint's pace, while rows are committed
CHECKPOINT_PASSES = 4  # checkpoints in a row at most, to catch up with a busy writer
BACKSTOP_PAGES = 4000  # SQLite's own checkpoint after a commit past this WAL size (16 MiB): the thread fell behind


class Checkpointer(threading.Thread):
    """Checkpoints a store's WAL on its own connection and thread, at most
    every `every_s` seconds and only after commits (`poke`). A PASSIVE
    checkpoint: it never waits for, nor blocks, the store's writer; the
    writer starts the WAL again from its beginning once a checkpoint has
    caught up. The same fsyncs as SQLite's own (synchronous=NORMAL)."""

    def __init__(self, path: str, every_s: float = CHECKPOINT_EVERY_S):
        super().__init__(name="context-checkpoint", daemon=True)
        self.every_s = every_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._busy = threading.Lock()  # held while checkpointing
        self.caught_up = True  # the last checkpoint left nothing of the WAL behind
        self.checkpoints = 0  # how many ran (health of the thread, for tests)
        self.error: str | None = None  # the last checkpoint's error; SQLite's backstop still bounds the WAL
        self.start()

    def poke(self) -> None:
        """Rows were committed: a checkpoint is due at the next beat."""
        self._dirty.set()

    def run(self) -> None:
        try:
            while not self._stopping.wait(self.every_s):
                if self._dirty.is_set():
                    with self._busy:
                        self._dirty.clear()
                        self._checkpoint()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    def _checkpoint(self) -> None:
        """PASSIVE checkpoints until one ends with every page of the WAL in
        the file (then the writer's next transaction starts the WAL again
        from its beginning), a few at most: each further one has only the
        pages committed during the one before to move."""
        try:
            for _ in range(CHECKPOINT_PASSES):
                _, wal_pages, moved = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
                self.caught_up = moved >= wal_pages
                if self.caught_up:
                    break
            self.error = None
        except sqlite3.Error as exc:
            self.caught_up = False
            self.error = str(exc)

    def settled(self) -> bool:
        """Every commit so far is in the database file (no checkpoint due,
        none running, the last one caught up)."""
        return not self._dirty.is_set() and not self._busy.locked() and self.caught_up

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class ContextStore:
    """Rows in, a `Context` out. `path` ":memory:" keeps it in memory (preview)."""

    new = False  # made empty by this open (a store of another kind says no)
    has_earlier = False  # holds rows of an earlier key derivation (until they age out)
    _lock: str | None = None
    checkpointer: Checkpointer | None = None

    def __init__(self, path: str | Path, key: bytes, *, durable: bool = True, lock: bool = False):
        """`durable=False`: no fsync at all (replay's temporary store, deleted
        after the run, made again by a new one). `lock`: hold the store's
        lock (serve, rebuild: one process per store). The store records its
        key's fingerprint and refuses another key (ContextError). `new`
        says whether the store was made empty by this open."""
        self.path = str(path)
        self._key = key
        self._lock = lock_store(self.path) if lock and self.path != MEMORY else None
        try:
            self.new = self.path == MEMORY or not Path(self.path).is_file() or Path(self.path).stat().st_size == 0
            if self.path != MEMORY:
                # Keyed hashes only, but the file is still the service's (serve
                # opens it for processing, for HTTP and to checkpoint).
                create_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
            open_rows.create(self._db, _COLUMNS)
            self._check_key()
            self._check_derivation()
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS results_of_earlier_derivation ON results (stored_at) "
                f"WHERE derivation < {KEY_DERIVATION}"
            )
            self.has_earlier = self.earlier_derivation(0)[0] > 0
        except (sqlite3.Error, OSError) as exc:
            self._release()
            raise ContextError(f"cannot open the context store {self.path}: {exc}") from None
        except ContextError:
            self._release()
            raise
        self._in_tx = False

    def remove_new(self) -> None:
        """Close a store this open made (`new`) and remove its files."""
        self.close()
        if self.new and self.path != MEMORY:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _check_key(self) -> None:
        """The store's key fingerprint is this key's: recorded by the first
        open (a store of an earlier version adopts the key it is opened with)."""
        mine = key_fingerprint(self._key)
        found = self._db.execute("SELECT value FROM meta WHERE name = 'key_fingerprint'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", (mine,))
        elif found[0] != mine:
            self._db.close()
            raise ContextError(
                f"the context store {self.path} was made with another key (fingerprint {found[0]}, "
                f"the key file's is {mine}): its hashes would match no patient; restore the key file, "
                "or make the store again with `b12comment context rebuild`"
            )

    def _check_derivation(self) -> None:
        """The store records the version of its key derivation (core/keys.py):
        a store of an earlier one keeps its rows, each marked with the
        derivation it was written with (found by `_earlier_keys`); a store
        of a later one is refused."""
        found = self._db.execute("SELECT value FROM meta WHERE name = 'key_derivation'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('key_derivation', ?)", (str(KEY_DERIVATION),))
        elif int(found[0]) > KEY_DERIVATION:
            self._db.close()
            raise ContextError(later_derivation(self.path, int(found[0])))

    def earlier_derivation(self, lookback_days: float) -> tuple[int, float | None]:
        """(rows kept under an earlier key derivation, the time (epoch) the
        newest of them leaves the look-back window, or None without any)."""
        count, newest = self._run(f"SELECT COUNT(*), MAX(stored_at) FROM results WHERE derivation < {KEY_DERIVATION}")[
            0
        ]
        return (count, newest + lookback_days * 86400) if count else (0, None)

    def _release(self) -> None:
        if self._lock is not None:
            unlock_store(self._lock)
            self._lock = None

    def checkpoint_in_background(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        """Checkpoint the WAL on a thread of its own (Checkpointer) instead
        of after the commit that fills it: a commit then never waits for a
        checkpoint's writes and fsyncs. SQLite's own stays, past BACKSTOP_PAGES."""
        if self.path == MEMORY or self.checkpointer is not None:
            return
        try:
            self.checkpointer = Checkpointer(self.path, every_s)
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.commit()
        if self.checkpointer is not None:
            self.checkpointer.stop()  # (the last connection's close checkpoints the rest, as before)
            self.checkpointer = None
        self._db.close()
        self._release()

    def _hash(self, raw: bytes) -> bytes:
        return keyed_hash(self._key, raw)

    def _begin(self) -> None:
        if not self._in_tx:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                raise ContextError(f"context store {self.path}: {exc}") from None
            self._in_tx = True

    def commit(self) -> None:
        """Rows added since the last commit become durable (and visible to others)."""
        if self._in_tx:
            self._in_tx = False
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise ContextError(f"context store {self.path}: {exc}") from None
            if self.checkpointer is not None:
                self.checkpointer.poke()

    def _run(self, sql: str, args=()) -> list:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    # -- writing

    def add(self, arrival: int, extract: Extract, now: float | None = None) -> None:
        """Keep the rows of the message that arrived `arrival`th (again: the same
        arrival replaces its rows; the column `seq`)."""
        if not extract.rows:
            return
        now = time.time() if now is None else now
        hashes: dict[bytes, bytes] = {}

        def h(raw: bytes) -> bytes:
            if raw not in hashes:
                hashes[raw] = self._hash(raw)
            return hashes[raw]

        rows = []
        for r in extract.rows:
            requisition = h(r.requisition_key)
            for patient in [h(k) for k in r.patient_keys] or [b""]:
                rows.append(
                    (
                        arrival,
                        r.row_index,
                        patient,
                        requisition,
                        r.kind,
                        r.analyte,
                        int(r.is_b12),
                        r.verdict,
                        r.status,
                        r.order_status,
                        r.collected,
                        extract.control_id,
                        now,
                        r.obx,
                        r.system,
                        r.display,
                        r.value_type,
                        KEY_DERIVATION,
                    )
                )
        try:
            self._begin()
            if self.has_earlier:
                rekey = self.rekeyed(extract)
                self._db.executemany(
                    "UPDATE results SET requisition = ?, derivation = ? "
                    f"WHERE requisition = ? AND patient = ? AND derivation < {KEY_DERIVATION}",
                    [(new, KEY_DERIVATION, old, patient) for new, old, patient in rekey],
                )
                open_rows.rekey(self._db, rekey, KEY_DERIVATION)
            self._db.executemany(
                f"INSERT OR REPLACE INTO results ({', '.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                rows,
            )
            open_rows.record(self._db, _COLUMNS, rows)
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    def purge(self, lookback_days: float, now: float | None = None) -> int:
        """Delete what is older than the look-back; returns the result rows removed."""
        now = time.time() if now is None else now
        cutoff = now - lookback_days * 86400
        self._begin()
        try:
            removed = self._db.execute("DELETE FROM results WHERE stored_at < ?", (cutoff,)).rowcount
            self._db.execute("DELETE FROM comments WHERE stored_at < ?", (cutoff,))
            open_rows.purge(self._db, cutoff)
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None
        self.commit()
        if self.has_earlier:
            self.has_earlier = self.earlier_derivation(0)[0] > 0
        return removed

    # -- reading

    def _keys(self, extract: Extract) -> tuple[list[bytes], list[bytes]]:
        patients = {self._hash(k) for r in extract.rows for k in r.patient_keys}
        requisitions = {
            self._hash(k)
            for r in extract.rows
            if r.requisition_key
            for k in requisition_aliases(r.requisition_key, r.patient_keys)
        }
        return sorted(patients), sorted(requisitions)

    def _earlier_keys(self, extract: Extract) -> dict[bytes, bytes]:
        """The hash each of the message's requisitions had under the earlier
        key derivation (its number alone) -> its hash now. A row kept under
        it, of one of the message's patients, is of that requisition: the
        store of an earlier version is read so until its rows age out."""
        found: dict[bytes, bytes] = {}
        for r in extract.rows:
            earlier = earlier_requisition(r.requisition_key)
            if earlier != r.requisition_key:
                found.setdefault(self._hash(earlier), self._hash(r.requisition_key))
        return found

    def rekeyed(self, extract: Extract) -> list[tuple[bytes, bytes, bytes]]:
        """(hash now, hash under the earlier key derivation, patient hash) of
        each of the message's requisitions and patients: as a message is
        kept, the rows an earlier version kept of its requisition and
        patients take its key (re-keyed where the earlier key's input, the
        message's own number, is at hand), so a newer row supersedes them
        as it would its own requisition's."""
        found: dict[tuple[bytes, bytes, bytes], None] = {}
        for r in extract.rows:
            earlier = earlier_requisition(r.requisition_key)
            if earlier != r.requisition_key:
                new, old = self._hash(r.requisition_key), self._hash(earlier)
                found.update(dict.fromkeys((new, old, self._hash(k)) for k in r.patient_keys))
        return list(found)

    def context(self, arrival: int, extract: Extract, mode: str, lookback_days: float) -> Context:
        """What the store knows of message `arrival`'s requisitions (mode
        "requisition"), and also of its patients (mode "patient")."""
        patients, requisitions = self._keys(extract)
        earlier = self._earlier_keys(extract) if self.has_earlier else {}
        found: list = []
        try:
            long = [r for r in requisitions if open_rows.is_long(self._db, r)]
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None
        short = [r for r in requisitions if r not in long]
        if short:
            # The newest row of each (requisition, kind, analyte) of the
            # message's requisitions, as core.context.latest() would pick it
            # (SQLite takes the bare columns from the MAX(seq) row).
            found += self._run(
                f"SELECT {_FIELDS}, MAX(seq) FROM results WHERE requisition IN ({','.join('?' * len(short))}) "
                "GROUP BY requisition, kind, analyte",
                short,
            )
        for requisition in long:  # sent again and again: not every row of it (open_rows.py)
            found += self._run(open_rows.requisition_query(_FIELDS), (requisition,))
        if earlier and patients:
            # Rows of an earlier key derivation, found by the number alone
            # within the message's patients (the newest of each, as above).
            hashes = sorted(earlier)
            found += self._run(
                f"SELECT {_FIELDS}, MAX(seq) FROM results WHERE requisition IN ({','.join('?' * len(hashes))}) "
                f"AND derivation < ? AND patient IN ({','.join('?' * len(patients))}) "
                "GROUP BY requisition, kind, analyte",
                [*hashes, KEY_DERIVATION, *patients],
            )
        if mode == "patient" and patients:
            # Of the patient's other requisitions, only what may veto: the
            # open rows (open_rows.py), never the whole history.
            found += self._run(open_rows.query(_FIELDS, patients), patients + patients)
        return prior_context(arrival, found, requisitions, earlier, lookback_days)

    # -- replay's first pass: which messages to keep

    def key_hashes(self, keys: Keys) -> list[bytes]:
        return [b"P" + self._hash(k) for k in keys.patients] + [b"R" + self._hash(k) for k in keys.requisitions]

    # -- the review alert

    def add_comment(self, arrival: int, extract: Extract, now: float | None = None) -> None:
        """Message `arrival` got the comment: later results of its patient are watched."""
        now = time.time() if now is None else now
        patients, _ = self._keys(extract)
        self._begin()
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO comments VALUES (?, ?, ?, ?)",
                [(arrival, p, extract.control_id, now) for p in patients],
            )
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    def forget_comment(self, arrival: int) -> None:
        """Message `arrival` did not get the comment after all (a hold ended in a veto)."""
        self._begin()
        try:
            self._db.execute("DELETE FROM comments WHERE seq = ?", (arrival,))
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    def contradicted(self, arrival: int, extract: Extract, why: str, now: float | None = None) -> list[str]:
        """The control IDs of earlier comments of this patient that `why`
        (a new abnormal result, a corrected B12) contradicts; each recorded once."""
        now = time.time() if now is None else now
        patients, _ = self._keys(extract)
        if not patients:
            return []
        found = self._run(
            f"SELECT DISTINCT control_id FROM comments WHERE seq < ? AND patient IN ({','.join('?' * len(patients))})",
            [arrival, *patients],
        )
        new = []
        self._begin()
        try:
            for (comment_id,) in found:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO contradictions VALUES (?, ?, ?, ?)",
                    (comment_id, extract.control_id, why, now),
                )
                if cur.rowcount:
                    new.append(comment_id)
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None
        return new

    # -- replay's review list: which later messages contradict a comment

    def add_review(self, arrival: int, extract: Extract, why: str) -> None:
        """Message `arrival` would contradict an earlier comment of its
        patients (`why`: context.contradiction); replay's first pass."""
        self._begin()
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO later_reviews VALUES (?, ?, ?)", (arrival, extract.control_id, why)
            )
        except sqlite3.Error as exc:
            raise ContextError(f"context store {self.path}: {exc}") from None

    def later_reviews(self, arrival: int, extract: Extract) -> list[tuple[str, str]]:
        """(control ID, why) of the later messages of this message's patients
        that would contradict a comment on it, in arrival order."""
        patients, _ = self._keys(extract)
        if not patients:
            return []
        return [
            (r[0], r[1])
            for r in self._run(
                "SELECT control_id, why FROM later_reviews WHERE seq > ? AND seq IN (SELECT seq FROM results "
                f"WHERE patient IN ({','.join('?' * len(patients))})) ORDER BY seq",
                [arrival, *patients],
            )
        ]

    def contradictions(self) -> list[tuple[str, str, str, float]]:
        """(comment's control ID, contradicting control ID, why, when), oldest first."""
        return self._run("SELECT comment_control_id, control_id, why, found_at FROM contradictions ORDER BY found_at")

    def has(self, arrival: int) -> bool:
        """Whether message `arrival` has rows in the store."""
        return bool(self._run("SELECT 1 FROM results WHERE seq = ? LIMIT 1", (arrival,)))

    def count(self) -> int:
        return self._run("SELECT COUNT(*) FROM results")[0][0]


def later_derivation(store: str, found: int) -> str:
    return (
        f"the context store {store} was written with key derivation {found}, a later version's "
        f"(this version's is {KEY_DERIVATION}): use that version, or make the store again with "
        "`b12comment context rebuild`"
    )


def prior_context(
    arrival: int, found: list, requisitions: list[bytes], earlier: dict[bytes, bytes], lookback_days: float
) -> Context:
    """The Context of the rows `found` (`_FIELDS`): a row of an earlier key
    derivation kept under one of the message's requisitions' `earlier`
    hashes is taken as of that requisition."""
    own = set(requisitions)
    results = []
    for r in found:
        requisition = bytes(r[2])
        if r[14] < KEY_DERIVATION:
            requisition = earlier.get(requisition, requisition)
        results.append(
            PriorResult(
                arrival=r[0],
                control_id=r[1],
                requisition=requisition.hex() or f"arrival:{r[0]}",
                same_requisition=bool(requisition) and requisition in own,
                kind=r[3],
                analyte=r[4],
                is_b12=bool(r[5]),
                verdict=r[6],
                status=r[7],
                order_status=r[8],
                collected=r[9],
                obx=r[10],
                system=r[11],
                display=r[12],
                value_type=r[13],
            )
        )
    return Context(arrival=arrival, results=tuple(results), lookback_days=lookback_days)


def read_contradictions(path: str | Path) -> list[tuple[str, str, str, float]]:
    """The review list of a store file (or database), read without its key."""
    if str(path).startswith(("postgresql://", "postgres://")):
        from b12comment.storage.postgres.context import read_contradictions as read_in_database

        return read_in_database(str(path))
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=10.0)
        try:
            return db.execute(
                "SELECT comment_control_id, control_id, why, found_at FROM contradictions ORDER BY found_at"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ContextError(f"cannot read the context store {path}: {exc}") from None


def rebuild(store: ContextStore, journal_rows, rule, lookback_days: float, now: float | None = None) -> int:
    """Make the store again from journal rows (id, received_at, raw), oldest
    first: the results, the comments (as the journal recorded them) and the
    review list. Returns the messages read."""
    now = time.time() if now is None else now
    count = 0
    for journal_id, received_at, raw in journal_rows:
        if received_at < now - lookback_days * 86400:
            continue
        outcome = decide(store, journal_id, raw, rule, "patient", lookback_days)
        if outcome.store_error is not None:
            raise outcome.store_error
        count += 1
        if count % 1000 == 0:
            store.commit()
    store.commit()
    return count
