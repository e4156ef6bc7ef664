"""The audit as serve, HTTP and replay use it: a decided message in, its
rows in the store; and, where the context is on, the safety line's
follow-ups (an abnormal result of a child who got the comment, within
`SAFETY_DAYS` after it).

Only for those children, only within those days, and only a keyed hash and
a day: the recorder knows which children got the comment (their keyed hashes
and the days), and for any other message it does one byte search for the
patient's identifiers and one keyed hash per identifier, nothing more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from b12comment.context.store import keyed_hash, load_key
from b12comment.core.decision import Decision
from b12comment.core.keys import keys
from b12comment.core.rows import OBX, extract
from b12comment.core.rule_config import RuleConfig
from b12comment.core.verdict import ABNORMAL

from .rows import SHADOW, AuditRow, collected_day, config_digest, day, rows_for
from .store import AuditStore, Followup, open_audit

SAFETY_DAYS = 90


class Recorder:
    def __init__(
        self,
        store: AuditStore,
        key: bytes,
        rule: RuleConfig,
        *,
        source: str,
        digest: str,
        watch: bool,
        buffered: bool = False,
        retention_days: float = 730.0,
        commented: dict[str, set[str]] | None = None,
    ):
        """`watch`: keep the safety line's follow-ups (the context is on).
        `buffered`: rows wait for `flush()` (replay: one commit per file).
        `commented`: another recorder's children with a comment, shared (serve's
        processing and its HTTP endpoint, on two threads, watch for both)."""
        self.store = store
        self.buffered = buffered
        self.retention_days = retention_days
        self._pending: list[AuditRow] = []
        self._pending_followups: list[Followup] = []
        self.rule = rule
        self.source = source
        self.digest = digest
        self.watch_on = watch
        self._key = key
        # keyed patient hash -> days of their comments
        self._commented: dict[str, set[str]] = {} if commented is None else commented
        if watch and commented is None:
            for row in store.decisions():
                if row.commented and row.source != SHADOW and row.collected_day:
                    for p in row.patients:
                        self._commented.setdefault(p, set()).add(row.collected_day)

    def record(self, message: bytes, decision: Decision, now: float | None = None) -> list[AuditRow]:
        """Keep the rows of one decided message (none unless it holds a B12
        result of a patient under 18), then watch it for the safety line."""
        now = time.time() if now is None else now
        rows = []
        if decision.results:
            rows = rows_for(
                message, decision, self.rule, source=self.source, key=self._key, digest=self.digest, now=now
            )
            self._pending.extend(rows)
            if self.source != SHADOW:
                for r in rows:
                    if r.commented and r.collected_day:
                        for p in r.patients:
                            self._commented.setdefault(p, set()).add(r.collected_day)
        if self.watch_on:
            self._pending_followups.extend(self.watch(message, decision.control_id))
        if not self.buffered:
            self.flush(now)
        return rows

    def flush(self, now: float | None = None) -> None:
        """Commit the rows recorded since the last flush."""
        rows, followups = self._pending, self._pending_followups
        self._pending, self._pending_followups = [], []
        self.store.add(rows)
        self.store.add_followups(followups, now)

    def watch(self, message: bytes, control_id: str) -> list[Followup]:
        """The abnormal results in `message` of a child who got the comment,
        collected within SAFETY_DAYS after it."""
        if not self._commented:
            return []
        found = keys(message, self.rule)
        if found is None or not any(keyed_hash(self._key, k).hex() in self._commented for k in found.patients):
            return []
        ex = extract(message, self.rule)
        if ex is None:
            return []
        followups: dict[Followup, None] = {}
        for r in ex.rows:
            if r.kind != OBX or r.is_b12 or r.verdict != ABNORMAL or r.status in self.rule.ignored_statuses:
                continue
            d = collected_day(r.collected)
            if not d:
                continue
            for k in r.patient_keys:
                p = keyed_hash(self._key, k).hex()
                for c in tuple(self._commented.get(p, ())):  # (another thread may add meanwhile)
                    if day(c) <= day(d) <= day(c) + timedelta(days=SAFETY_DAYS):
                        followups[Followup(p, d, control_id)] = None
        return list(followups)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.store.close()


@dataclass(frozen=True)
class AuditSpec:
    """What a process needs to open a recorder (a replay worker its own)."""

    path: str
    key_file: str
    rule: RuleConfig
    source: str
    digest: str
    watch: bool
    retention_days: float


def audit_spec(settings, rule: RuleConfig, context, *, source: str, lookback_days: float | None = None) -> AuditSpec:
    """The recorder `[audit]` (`settings`) names, for decisions made under
    `rule` with the context settings `context` (`[context]`)."""
    lookback = context.lookback_days if lookback_days is None else lookback_days
    return AuditSpec(
        path=settings.path,
        key_file=settings.key_file,
        rule=rule,
        source=source,
        digest=config_digest(rule, context.mode, lookback),
        watch=context.mode != "message",
        retention_days=settings.retention_days,
    )


def open_recorder(
    spec: AuditSpec, *, purge: bool = True, buffered: bool = False, beside: Recorder | None = None
) -> Recorder:
    """Open the store (checking its key), purge what is past the retention.
    `beside`: a recorder of the same store in this process, whose children
    with a comment this one shares."""
    key = load_key(spec.key_file, "audit")
    store = open_audit(spec.path, key)
    try:
        if purge:
            store.purge(spec.retention_days)
        return Recorder(
            store,
            key,
            spec.rule,
            source=spec.source,
            digest=spec.digest,
            watch=spec.watch,
            buffered=buffered,
            retention_days=spec.retention_days,
            commented=beside._commented if beside is not None else None,
        )
    except BaseException:
        store.close()
        raise


_RECORDERS: dict[AuditSpec, Recorder] = {}


def recorder_for(spec: AuditSpec) -> Recorder:
    """This process's recorder for `spec` (a replay worker opens one, once)."""
    found = _RECORDERS.get(spec)
    if found is None:
        found = _RECORDERS[spec] = open_recorder(spec, purge=False, buffered=True)
    return found


def close_recorders() -> None:
    while _RECORDERS:
        _, recorder = _RECORDERS.popitem()
        recorder.close()
