"""The context store in PostgreSQL (`[context] store = "postgresql://..."`):
the same rows, keyed hashes only, as the SQLite store (context/store.py),
in tables of its own (`b12_context_*`, beside the journal's if it is the
same database), so that the instance that takes over from a leader knows
the results the old leader saw, and a veto recorded before a failover
still vetoes after it.

Derived data, as in SQLite: `context rebuild` makes it again from the
journal. Not thread-safe: one thread uses a store at a time; rows added
are seen by others once `commit()` is called.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from b12comment.context.store import _FIELDS, ContextError, ContextStore, later_derivation, prior_context
from b12comment.core.context import Context
from b12comment.core.keys import KEY_DERIVATION
from b12comment.core.rows import Extract
from b12comment.storage.postgres.connect import connect, describe, psycopg_module, redact

MIGRATION_LOCK = 0x6231_3278  # pg_advisory_xact_lock key while the tables are made

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS b12_context_results (
        seq bigint NOT NULL, row_index integer NOT NULL, patient bytea NOT NULL, requisition bytea NOT NULL,
        kind text NOT NULL, analyte text NOT NULL, is_b12 boolean NOT NULL, verdict text NOT NULL,
        status text NOT NULL, order_status text NOT NULL, collected text NOT NULL, control_id text NOT NULL,
        stored_at double precision NOT NULL, obx integer NOT NULL DEFAULT 0, system text NOT NULL DEFAULT '',
        display text NOT NULL DEFAULT '', value_type text NOT NULL DEFAULT '',
        PRIMARY KEY (seq, row_index, patient))""",
    # A store made before the key derivation was recorded: its rows are of the first.
    "ALTER TABLE b12_context_results ADD COLUMN IF NOT EXISTS derivation smallint NOT NULL DEFAULT 1",
    "CREATE INDEX IF NOT EXISTS b12_context_results_of_earlier_derivation ON b12_context_results (stored_at) "
    f"WHERE derivation < {KEY_DERIVATION}",
    "CREATE TABLE IF NOT EXISTS b12_context_meta (name text PRIMARY KEY, value text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS b12_context_results_by_patient ON b12_context_results (patient)",
    "CREATE INDEX IF NOT EXISTS b12_context_results_by_requisition ON b12_context_results (requisition)",
    "CREATE INDEX IF NOT EXISTS b12_context_results_by_time ON b12_context_results (stored_at)",
    """CREATE TABLE IF NOT EXISTS b12_context_comments (
        seq bigint NOT NULL, patient bytea NOT NULL, control_id text NOT NULL, stored_at double precision NOT NULL,
        PRIMARY KEY (seq, patient))""",
    "CREATE INDEX IF NOT EXISTS b12_context_comments_by_patient ON b12_context_comments (patient)",
    """CREATE TABLE IF NOT EXISTS b12_context_contradictions (
        comment_control_id text NOT NULL, control_id text NOT NULL, why text NOT NULL,
        found_at double precision NOT NULL, PRIMARY KEY (comment_control_id, control_id))""",
]


class PostgresContextStore(ContextStore):
    """ContextStore's operations on a PostgreSQL database (a connection of its own)."""

    def __init__(self, url: str, key: bytes, *, durable: bool = True, instance: str = ""):
        self.path = redact(url)
        self._key = key
        self._psycopg = psycopg_module()
        try:
            self._c = connect(url, instance, autocommit=False)
        except Exception as exc:
            raise ContextError(f"cannot open the context store {self.path}: {exc}") from None
        try:
            # Made once; when it exists, no DDL (it would wait for every open transaction on the tables).
            missing = self._c.execute("SELECT to_regclass('b12_context_meta') IS NULL").fetchone()
            if missing is None or missing[0]:
                self._c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                for statement in _SCHEMA:
                    self._c.execute(statement)
            # The version of the key derivation (core/keys.py): a store of an
            # earlier one keeps its rows (each row says its own), a later one's is refused.
            self._c.execute(
                "INSERT INTO b12_context_meta VALUES ('key_derivation', %s) ON CONFLICT DO NOTHING",
                (str(KEY_DERIVATION),),
            )
            found = self._c.execute("SELECT value FROM b12_context_meta WHERE name = 'key_derivation'").fetchone()
            if not durable:
                self._c.execute("SET synchronous_commit = off")
            self._c.commit()
        except self._psycopg.Error as exc:
            self._c.close()
            raise ContextError(f"cannot open the context store {self.path}: {describe(exc)}") from None
        if found is not None and int(found[0]) > KEY_DERIVATION:
            self._c.close()
            raise ContextError(later_derivation(self.path, int(found[0])))
        self._in_tx = False
        self.hold_commits = False  # `context rebuild`: one transaction, committed by replace_all()
        self.has_earlier = self.earlier_derivation(0)[0] > 0
        self._c.commit()
        self._in_tx = False

    def clear_for_rebuild(self) -> None:
        """Start a rebuild: every row goes, in a transaction that the rows
        added next join; `finish_rebuild()` commits it all at once (an
        interrupted rebuild leaves the store as it was)."""
        self.hold_commits = True
        self._begin()
        for table in ("b12_context_results", "b12_context_comments", "b12_context_contradictions"):
            self._exec(f"DELETE FROM {table}")

    def finish_rebuild(self) -> None:
        self.hold_commits = False
        self.commit()

    def close(self) -> None:
        with contextlib.suppress(ContextError):
            self.commit()
        self._c.close()

    def checkpoint_in_background(self, every_s: float = 0.0) -> None:
        """(No WAL of ours to checkpoint: PostgreSQL does its own.)"""

    def _begin(self) -> None:
        self._in_tx = True  # (psycopg begins a transaction at the first statement)

    def commit(self) -> None:
        if self._in_tx and not self.hold_commits:
            self._in_tx = False
            try:
                self._c.commit()
            except self._psycopg.Error as exc:
                self._rollback()
                raise ContextError(f"context store {self.path}: {describe(exc)}") from None

    def _rollback(self) -> None:
        with contextlib.suppress(self._psycopg.Error):
            self._c.rollback()

    def _exec(self, sql: str, args: Any = ()) -> Any:
        try:
            return self._c.execute(sql, args)
        except self._psycopg.Error as exc:
            self._in_tx = False
            self._rollback()
            raise ContextError(f"context store {self.path}: {describe(exc)}") from None

    def _run(self, sql: str, args: Any = ()) -> list:
        self._in_tx = True
        return self._exec(sql, args).fetchall()

    # -- writing

    def add(self, arrival: int, extract: Extract, now: float | None = None) -> None:
        if not extract.rows:
            return
        now = time.time() if now is None else now
        rows = []
        for r in extract.rows:
            requisition = self._hash(r.requisition_key)
            for patient in [self._hash(k) for k in r.patient_keys] or [b""]:
                rows.append(
                    (arrival, r.row_index, patient, requisition, r.kind, r.analyte, bool(r.is_b12), r.verdict)
                    + (r.status, r.order_status, r.collected, extract.control_id, now)
                    + (r.obx, r.system, r.display, r.value_type, KEY_DERIVATION)
                )
        self._begin()
        try:
            with self._c.cursor() as cur:
                if self.has_earlier:  # the earlier key's rows of these requisitions take their key (store.py)
                    cur.executemany(
                        "UPDATE b12_context_results SET requisition = %s, derivation = %s "
                        f"WHERE requisition = %s AND patient = %s AND derivation < {KEY_DERIVATION}",
                        [(new, KEY_DERIVATION, old, patient) for new, old, patient in self.rekeyed(extract)],
                    )
                cur.executemany(
                    "INSERT INTO b12_context_results (seq, row_index, patient, requisition, kind, analyte, is_b12, "
                    "verdict, status, order_status, collected, control_id, stored_at, obx, system, display, "
                    "value_type, derivation) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                    "ON CONFLICT (seq, row_index, patient) DO UPDATE SET requisition = EXCLUDED.requisition, "
                    "kind = EXCLUDED.kind, analyte = EXCLUDED.analyte, is_b12 = EXCLUDED.is_b12, "
                    "verdict = EXCLUDED.verdict, status = EXCLUDED.status, order_status = EXCLUDED.order_status, "
                    "collected = EXCLUDED.collected, control_id = EXCLUDED.control_id, stored_at = EXCLUDED.stored_at, "
                    "obx = EXCLUDED.obx, system = EXCLUDED.system, display = EXCLUDED.display, "
                    "value_type = EXCLUDED.value_type, derivation = EXCLUDED.derivation",
                    rows,
                )
        except self._psycopg.Error as exc:
            self._in_tx = False
            self._rollback()
            raise ContextError(f"context store {self.path}: {describe(exc)}") from None

    def purge(self, lookback_days: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - lookback_days * 86400
        self._begin()
        removed = self._exec("DELETE FROM b12_context_results WHERE stored_at < %s", (cutoff,)).rowcount
        self._exec("DELETE FROM b12_context_comments WHERE stored_at < %s", (cutoff,))
        self.commit()
        if self.has_earlier:
            self.has_earlier = self.earlier_derivation(0)[0] > 0
        return removed

    def earlier_derivation(self, lookback_days: float) -> tuple[int, float | None]:
        count, newest = self._run(
            f"SELECT COUNT(*), MAX(stored_at) FROM b12_context_results WHERE derivation < {KEY_DERIVATION}"
        )[0]
        return (count, newest + lookback_days * 86400) if count else (0, None)

    # -- reading

    def context(self, arrival: int, extract: Extract, mode: str, lookback_days: float) -> Context:
        patients, requisitions = self._keys(extract)
        earlier = self._earlier_keys(extract) if self.has_earlier else {}
        where, args = [], []
        if requisitions:
            where.append("requisition = ANY(%s)")
            args.append(requisitions)
        if earlier and patients:
            # Rows of an earlier key derivation: by the number alone, within the message's patients.
            where.append(f"(requisition = ANY(%s) AND derivation < {KEY_DERIVATION} AND patient = ANY(%s))")
            args += [sorted(earlier), patients]
        if mode == "patient" and patients:
            where.append("patient = ANY(%s)")
            args.append(patients)
        if not where:
            return Context(arrival=arrival, lookback_days=lookback_days)
        # The newest row of each (requisition, kind, analyte), as core.context.latest() would pick it.
        found = self._run(
            f"SELECT DISTINCT ON (grp, kind, analyte) {_FIELDS} FROM (SELECT *, CASE WHEN length(requisition) = 0 "
            "THEN convert_to(seq::text, 'UTF8') ELSE requisition END AS grp FROM b12_context_results "
            f"WHERE {' OR '.join(where)}) AS found ORDER BY grp, kind, analyte, seq DESC",
            args,
        )
        return prior_context(arrival, found, requisitions, earlier, lookback_days)

    # -- the review alert

    def add_comment(self, arrival: int, extract: Extract, now: float | None = None) -> None:
        now = time.time() if now is None else now
        patients, _ = self._keys(extract)
        self._begin()
        for p in patients:
            self._exec(
                "INSERT INTO b12_context_comments VALUES (%s, %s, %s, %s) ON CONFLICT (seq, patient) "
                "DO UPDATE SET control_id = EXCLUDED.control_id, stored_at = EXCLUDED.stored_at",
                (arrival, p, extract.control_id, now),
            )

    def forget_comment(self, arrival: int) -> None:
        self._begin()
        self._exec("DELETE FROM b12_context_comments WHERE seq = %s", (arrival,))

    def contradicted(self, arrival: int, extract: Extract, why: str, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        patients, _ = self._keys(extract)
        if not patients:
            return []
        found = self._run(
            "SELECT DISTINCT control_id FROM b12_context_comments WHERE seq < %s AND patient = ANY(%s)",
            (arrival, patients),
        )
        new = []
        self._begin()
        for (comment_id,) in found:
            cur = self._exec(
                "INSERT INTO b12_context_contradictions VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (comment_id, extract.control_id, why, now),
            )
            if cur.rowcount:
                new.append(comment_id)
        return new

    def contradictions(self) -> list[tuple[str, str, str, float]]:
        return self._run(
            "SELECT comment_control_id, control_id, why, found_at FROM b12_context_contradictions ORDER BY found_at"
        )

    def has(self, arrival: int) -> bool:
        return bool(self._run("SELECT 1 FROM b12_context_results WHERE seq = %s LIMIT 1", (arrival,)))

    def count(self) -> int:
        return self._run("SELECT COUNT(*) FROM b12_context_results")[0][0]


def read_contradictions(url: str) -> list[tuple[str, str, str, float]]:
    """The review list, read without the key."""
    psycopg = psycopg_module()
    try:
        with connect(url, autocommit=True) as conn:
            missing = conn.execute("SELECT to_regclass('b12_context_contradictions') IS NULL").fetchone()
            if missing is None or missing[0]:
                return []
            return conn.execute(
                "SELECT comment_control_id, control_id, why, found_at FROM b12_context_contradictions ORDER BY found_at"
            ).fetchall()
    except (psycopg.Error, Exception) as exc:
        raise ContextError(f"cannot read the context store {redact(url)}: {exc}") from None
