"""The audit store: the decisions on B12 results of children, kept for
clinical governance, behind one small interface (`AuditStore`).

The SQLite backend is the default (`[audit] path` a file path, created 0600,
WAL, synchronous=FULL: an audit row is a record, not derived data). A
`postgresql://` URL names the PostgreSQL backend where one is installed.

The store keeps the fingerprint of the key its hashes were made with and
refuses another key: a new key gives the same child other hashes, so rows
of two keys can never be linked, and mixing them would silently split every
child in two.

Not thread-safe: one thread uses a store at a time.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

from b12comment.context.store import key_fingerprint
from b12comment.errors import B12Error
from b12comment.files import create_private

from .rows import AuditRow

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    id               INTEGER PRIMARY KEY,
    decided_at       REAL    NOT NULL,
    source           TEXT    NOT NULL,
    control_id       TEXT    NOT NULL,
    sending_facility TEXT    NOT NULL,
    rule_version     TEXT    NOT NULL,
    config_digest    TEXT    NOT NULL,
    obx_index        INTEGER NOT NULL,
    age_band         TEXT    NOT NULL,
    value_pmol_l     REAL,
    comparator       TEXT    NOT NULL,
    limit_pmol_l     REAL,
    limit_source     TEXT    NOT NULL,
    commented        INTEGER NOT NULL,
    reasons          TEXT    NOT NULL,
    vetoed_by        TEXT    NOT NULL,
    collected        TEXT    NOT NULL,
    collected_day    TEXT    NOT NULL,
    patients         TEXT    NOT NULL,
    requisition      TEXT    NOT NULL,
    blocked_by       TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (decided_at);
CREATE INDEX IF NOT EXISTS decisions_by_day ON decisions (collected_day);
CREATE TABLE IF NOT EXISTS followups (
    patient       TEXT NOT NULL,
    collected_day TEXT NOT NULL,
    control_id    TEXT NOT NULL,
    recorded_at   REAL NOT NULL,
    PRIMARY KEY (patient, collected_day, control_id)
) WITHOUT ROWID;
"""

COLUMNS = (
    "decided_at, source, control_id, sending_facility, rule_version, config_digest, obx_index, age_band, "
    "value_pmol_l, comparator, limit_pmol_l, limit_source, commented, reasons, vetoed_by, collected, "
    "collected_day, patients, requisition, blocked_by"
)


def row_values(r: AuditRow) -> tuple:
    """An AuditRow as the values of COLUMNS (every backend stores these)."""
    return (
        r.decided_at,
        r.source,
        r.control_id,
        r.sending_facility,
        r.rule_version,
        r.config_digest,
        r.obx_index,
        r.age_band,
        r.value_pmol_l,
        r.comparator,
        r.limit_pmol_l,
        r.limit_source,
        int(r.commented),
        ",".join(r.reasons),
        ",".join(r.vetoed_by),
        r.collected,
        r.collected_day,
        " ".join(r.patients),
        r.requisition,
        json.dumps(r.blockers(), separators=(",", ":")),
    )


def row_of(r) -> AuditRow:
    """The values of COLUMNS back as an AuditRow."""
    return AuditRow(
        decided_at=r[0],
        source=r[1],
        control_id=r[2],
        sending_facility=r[3],
        rule_version=r[4],
        config_digest=r[5],
        obx_index=r[6],
        age_band=r[7],
        value_pmol_l=r[8],
        comparator=r[9],
        limit_pmol_l=r[10],
        limit_source=r[11],
        commented=bool(r[12]),
        reasons=tuple(x for x in r[13].split(",") if x),
        vetoed_by=tuple(x for x in r[14].split(",") if x),
        collected=r[15],
        collected_day=r[16],
        patients=tuple(x for x in r[17].split(" ") if x),
        requisition=r[18],
        blocked_by=tuple(
            (b["source"], b["control_id"], b["obx"], b["code"], b["system"], b["verdict"]) for b in json.loads(r[19])
        ),
    )


def another_key(location: str, stored: str, fingerprint: str) -> B12Error:
    """The error of a store made with another key than the one given."""
    return AuditError(
        f"the audit store {location} was written with another key (fingerprint {stored}, "
        f"this key's is {fingerprint}): a child's rows under two keys cannot be linked, so they "
        "are not mixed; use the key the store was made with, or start a new store ([audit] path)"
    )


class AuditError(B12Error):
    """The audit store or its key cannot be used; the message is one line."""


@dataclass(frozen=True)
class Followup:
    """An abnormal result of a child who got the comment, within the safety
    line's days after it: only its keyed patient hash and its day."""

    patient: str
    collected_day: str
    control_id: str


class AuditStore(Protocol):
    """What serve, HTTP, replay, `audit export` and `outcomes` need of a backend."""

    location: str
    fingerprint: str  # of the key the store's hashes were made with

    def add(self, rows: Iterable[AuditRow]) -> None:
        """Keep rows (committed when it returns)."""
        ...

    def add_followups(self, followups: Iterable[Followup], now: float | None = None) -> None: ...

    def decisions(self, first_day: date | None = None, last_day: date | None = None) -> Iterator[AuditRow]:
        """Rows decided (UTC) on first_day .. last_day, both included, oldest first."""
        ...

    def followups(self) -> list[Followup]: ...

    def purge(self, retention_days: float, now: float | None = None) -> int:
        """Delete what is older than the retention: a row decided, or a result
        collected, more than `retention_days` ago. Returns the decisions removed."""
        ...

    def close(self) -> None: ...


def open_audit(location: str, key: bytes | None, *, read_only: bool = False) -> AuditStore:
    """The backend `[audit] path` names: a file path (SQLite), or a
    `postgresql://` URL. `key` None (reading only: export, outcomes): the
    hashes are only compared, the key is not needed."""
    if location.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresAuditStore

        return PostgresAuditStore(location, key)
    return SQLiteAuditStore(location, key, read_only=read_only)


def _day_bounds(first_day: date | None, last_day: date | None) -> tuple[float, float]:
    lo = datetime.combine(first_day, datetime.min.time(), UTC).timestamp() if first_day else float("-inf")
    hi = (
        datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC).timestamp()
        if last_day
        else float("inf")
    )
    return lo, hi


class SQLiteAuditStore:
    def __init__(self, path: str | Path, key: bytes | None, *, read_only: bool = False):
        self.location = str(path)
        self.fingerprint = key_fingerprint(key) if key is not None else ""
        p = Path(self.location)
        try:
            if read_only:
                if not p.exists():
                    raise AuditError(f"no audit store at {p} (nothing has been recorded)")
                self._db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None, timeout=10.0)
            else:
                create_private(p)  # keyed hashes, still personal data (serve opens it twice)
                self._db = sqlite3.connect(self.location, isolation_level=None, check_same_thread=False, timeout=10.0)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                if "blocked_by" not in self._columns():  # a store of the first version
                    self._db.execute("ALTER TABLE decisions ADD COLUMN blocked_by TEXT NOT NULL DEFAULT '[]'")
            # (read-only, a store of the first version is read as it is)
            self._select = COLUMNS if "blocked_by" in self._columns() else COLUMNS.replace("blocked_by", "'[]'")
            self._check_key(read_only)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit store {p}: {exc}") from None
        except OSError as exc:
            raise AuditError(f"cannot open the audit store {p}: {exc.strerror or exc}") from None

    def _columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(decisions)")}

    def _check_key(self, read_only: bool) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE name = 'key_fingerprint'").fetchone()
        if not self.fingerprint:
            self.fingerprint = found[0] if found else ""
            return
        if found is None:
            if read_only:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('key_fingerprint', ?)", (self.fingerprint,))
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            found = self._db.execute("SELECT value FROM meta WHERE name = 'key_fingerprint'").fetchone()
        if found[0] != self.fingerprint:
            self._db.close()
            raise another_key(self.location, found[0], self.fingerprint)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _write(self, sql: str, rows: list) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise AuditError(f"audit store {self.location}: {exc}") from None

    def add(self, rows: Iterable[AuditRow]) -> None:
        values = [row_values(r) for r in rows]
        if values:
            self._write(f"INSERT INTO decisions ({COLUMNS}) VALUES ({','.join('?' * len(values[0]))})", values)

    def add_followups(self, followups: Iterable[Followup], now: float | None = None) -> None:
        now = time.time() if now is None else now
        values = [(f.patient, f.collected_day, f.control_id, now) for f in followups]
        if values:
            self._write("INSERT OR IGNORE INTO followups VALUES (?, ?, ?, ?)", values)

    def decisions(self, first_day: date | None = None, last_day: date | None = None) -> Iterator[AuditRow]:
        lo, hi = _day_bounds(first_day, last_day)
        try:
            cur = self._db.execute(
                f"SELECT {self._select} FROM decisions WHERE decided_at >= ? AND decided_at < ? ORDER BY id", (lo, hi)
            )
            for r in cur:
                yield row_of(r)
        except sqlite3.Error as exc:
            raise AuditError(f"audit store {self.location}: {exc}") from None

    def followups(self) -> list[Followup]:
        try:
            found = self._db.execute("SELECT patient, collected_day, control_id FROM followups").fetchall()
        except sqlite3.Error as exc:
            raise AuditError(f"audit store {self.location}: {exc}") from None
        return [Followup(*f) for f in found]

    def purge(self, retention_days: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        cutoff_day = datetime.fromtimestamp(cutoff, UTC).date().isoformat()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            removed = self._db.execute(
                "DELETE FROM decisions WHERE decided_at < ? OR (collected_day != '' AND collected_day < ?)",
                (cutoff, cutoff_day),
            ).rowcount
            self._db.execute("DELETE FROM followups WHERE recorded_at < ? OR collected_day < ?", (cutoff, cutoff_day))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise AuditError(f"audit store {self.location}: {exc}") from None
        if removed:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
