"""The SQLite journal's file: opening it (WAL, synchronous=FULL), its
transactions, and noticing a file that was deleted, replaced or damaged.

`synchronous=FULL`: in WAL mode each commit then fsyncs the WAL file, so a
message ACKed with AA survives a power cut, not only a crash of the process
(NORMAL would be durable against a crash but may lose the last commits on
power loss, and an AA is a promise to the sender).

What happens to a message after its intake (processed, forwarded, a failed
attempt, dead) is committed without an fsync of its own (synchronous=NORMAL
for that transaction only, `durable=False`): such a commit survives a crash
of the process at once, and a power cut as soon as the next intake commit
(or checkpoint) fsyncs the WAL, which holds it. A power cut can therefore
only undo the last few state changes, which means doing them again:
`process()` is pure, and delivery is at least once anyway (see
forwarder.py). Intake and `queue retry` always fsync.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from b12comment.files import create_private
from b12comment.storage.model import JournalCorrupt, JournalError, JournalGone
from b12comment.storage.sqlite.schema import migrate

T = TypeVar("T")

# SQLite's primary result codes for a damaged file.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _path_ident(path: str | Path) -> tuple[int, int] | None:
    try:
        return _ident(os.stat(path))
    except FileNotFoundError:
        return None


class SqliteFile:
    """One journal file, open for writing (or, with `read_only`, as it is:
    no schema change, no write, for recovery from a damaged file)."""

    _db: sqlite3.Connection

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self._path_s, self._wal_s = str(self.path), f"{self.path}-wal"  # (checked at every commit: no Path work)
        self._full = True
        if read_only:
            self._open_read_only()
            return
        try:
            create_private(self.path)  # whole messages with patient data (serve opens it twice)
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            migrate(self._db, str(self.path))
            # The file SQLite opened, to notice when the path no longer leads to
            # it. (By its device and inode: a descriptor of our own would drop
            # SQLite's locks when closed, see above.)
            self._ident = _ident(os.stat(self.path))
            self._wal_ident = _path_ident(self._wal_s)
        except (sqlite3.Error, OSError, JournalError) as exc:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._db.close()
            if isinstance(exc, JournalError):
                raise
            if isinstance(exc, sqlite3.Error) and is_corrupt(exc):
                raise JournalCorrupt(f"journal {self.path} is damaged: {exc}") from None
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None

    def _open_read_only(self) -> None:
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._ident = _ident(os.stat(self.path))
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None
        self._wal_ident = None

    @property
    def location(self) -> str:
        return self._path_s

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    @property
    def journal_id(self) -> str:
        return self._query("SELECT value FROM meta WHERE key = 'journal_id'")[0][0]

    def check_file(self) -> None:
        """Raise JournalGone when the journal's path (or its WAL's) no longer
        leads to the file open here: deleted, renamed or replaced."""
        try:
            now = _path_ident(self._path_s)
        except OSError as exc:
            raise JournalGone(f"journal {self.path} cannot be checked: {exc.strerror or exc}") from None
        if now is None:
            raise JournalGone(f"journal {self.path} was deleted while serve had it open")
        if now != self._ident:
            raise JournalGone(f"journal {self.path} was replaced by another file while serve had it open")
        wal = _path_ident(self._wal_s)
        if self._wal_ident is None:
            self._wal_ident = wal
        elif wal != self._wal_ident:
            raise JournalGone(f"the journal's write-ahead log {self.wal_path} was deleted or replaced")

    def integrity_problems(self) -> list[str]:
        """SQLite's PRAGMA quick_check: [] when the file is sound, else its first findings."""
        try:
            found = [r[0] for r in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.Error as exc:
            return [str(exc)]
        return [] if found == ["ok"] else found

    def settings(self) -> tuple[str, int]:
        """(journal_mode, synchronous) as SQLite reports them."""
        mode = self._query("PRAGMA journal_mode")[0][0]
        sync = self._query("PRAGMA synchronous")[0][0]
        return mode, sync

    def close(self) -> None:
        self._db.close()

    def _error(self, exc: sqlite3.Error) -> JournalError:
        if is_corrupt(exc):
            return JournalCorrupt(f"journal {self.path} is damaged: {exc}")
        return JournalError(f"journal {self.path}: {exc}")

    def _tx(self, fn: Callable[[sqlite3.Cursor], T], durable: bool = True) -> T:
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

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
