"""The audit store in PostgreSQL (`[audit] path` a `postgresql://` URL), for
instances that share one database: the same tables, rows and promises as the
SQLite store (store.py), over the journal's PostgreSQL connections
(storage/postgres/connect.py: psycopg 3, the extra `b12comment[postgres]`,
imported only when such a URL is configured).

Each call is one transaction, committed when it returns. Not thread-safe:
one thread uses a store at a time (each recorder opens its own).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime

from b12comment.context.store import key_fingerprint
from b12comment.storage.postgres.connect import connect, describe, psycopg_module, redact

from .rows import AuditRow
from .store import COLUMNS, SCHEMA_VERSION, AuditError, Followup, _day_bounds, another_key, row_of, row_values

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_decisions (
    id               BIGSERIAL PRIMARY KEY,
    decided_at       DOUBLE PRECISION NOT NULL,
    source           TEXT    NOT NULL,
    control_id       TEXT    NOT NULL,
    sending_facility TEXT    NOT NULL,
    rule_version     TEXT    NOT NULL,
    config_digest    TEXT    NOT NULL,
    obx_index        INTEGER NOT NULL,
    age_band         TEXT    NOT NULL,
    value_pmol_l     DOUBLE PRECISION,
    comparator       TEXT    NOT NULL,
    limit_pmol_l     DOUBLE PRECISION,
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
ALTER TABLE audit_decisions ADD COLUMN IF NOT EXISTS blocked_by TEXT NOT NULL DEFAULT '[]';
CREATE INDEX IF NOT EXISTS audit_decisions_by_time ON audit_decisions (decided_at);
CREATE INDEX IF NOT EXISTS audit_decisions_by_day ON audit_decisions (collected_day);
CREATE TABLE IF NOT EXISTS audit_followups (
    patient       TEXT NOT NULL,
    collected_day TEXT NOT NULL,
    control_id    TEXT NOT NULL,
    recorded_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (patient, collected_day, control_id)
);
"""

# Several instances may create the tables at once: one at a time.
_SCHEMA_LOCK = 0x6231_3263_6175_6474  # "b12caudt"


class PostgresAuditStore:
    def __init__(self, url: str, key: bytes | None):
        self.location = redact(url)
        self.fingerprint = key_fingerprint(key) if key is not None else ""
        psycopg = self._pg = psycopg_module()
        self._db = connect(url, "audit", autocommit=True)  # (the journal's connections, keepalives and all)
        try:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO audit_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),)
                )
                if self.fingerprint:
                    self._db.execute(
                        "INSERT INTO audit_meta VALUES ('key_fingerprint', %s) ON CONFLICT DO NOTHING",
                        (self.fingerprint,),
                    )
                found = self._db.execute("SELECT value FROM audit_meta WHERE name = 'key_fingerprint'").fetchone()
        except psycopg.Error as exc:
            self._db.close()
            raise AuditError(f"cannot open the audit store {self.location}: {describe(exc)}") from None
        stored = str(found[0]) if found else ""
        if not self.fingerprint:
            self.fingerprint = stored
        elif stored != self.fingerprint:
            self._db.close()
            raise another_key(self.location, stored, self.fingerprint)

    def close(self) -> None:
        with contextlib.suppress(self._pg.Error):
            self._db.close()

    def _write(self, sql: str, values: list) -> None:
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.executemany(sql, values)
        except self._pg.Error as exc:
            raise AuditError(f"audit store {self.location}: {describe(exc)}") from None

    def add(self, rows: Iterable[AuditRow]) -> None:
        values = [row_values(r) for r in rows]
        if values:
            marks = ",".join(["%s"] * len(values[0]))
            self._write(f"INSERT INTO audit_decisions ({COLUMNS}) VALUES ({marks})", values)

    def add_followups(self, followups: Iterable[Followup], now: float | None = None) -> None:
        now = time.time() if now is None else now
        values = [(f.patient, f.collected_day, f.control_id, now) for f in followups]
        if values:
            self._write("INSERT INTO audit_followups VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", values)

    def decisions(self, first_day: date | None = None, last_day: date | None = None) -> Iterator[AuditRow]:
        lo, hi = _day_bounds(first_day, last_day)
        try:
            with self._db.transaction():
                found = self._db.execute(
                    f"SELECT {COLUMNS} FROM audit_decisions WHERE decided_at >= %s AND decided_at < %s ORDER BY id",
                    (lo, hi),
                ).fetchall()
        except self._pg.Error as exc:
            raise AuditError(f"audit store {self.location}: {describe(exc)}") from None
        for r in found:
            yield row_of(r)

    def followups(self) -> list[Followup]:
        try:
            with self._db.transaction():
                found = self._db.execute("SELECT patient, collected_day, control_id FROM audit_followups").fetchall()
        except self._pg.Error as exc:
            raise AuditError(f"audit store {self.location}: {describe(exc)}") from None
        return [Followup(*f) for f in found]

    def purge(self, retention_days: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - retention_days * 86400
        cutoff_day = datetime.fromtimestamp(cutoff, UTC).date().isoformat()
        try:
            with self._db.transaction():
                removed = self._db.execute(
                    "DELETE FROM audit_decisions WHERE decided_at < %s OR (collected_day != '' AND collected_day < %s)",
                    (cutoff, cutoff_day),
                ).rowcount
                self._db.execute(
                    "DELETE FROM audit_followups WHERE recorded_at < %s OR collected_day < %s", (cutoff, cutoff_day)
                )
        except self._pg.Error as exc:
            raise AuditError(f"audit store {self.location}: {describe(exc)}") from None
        return removed
