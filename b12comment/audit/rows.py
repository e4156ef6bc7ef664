"""One audit row per decision on a B12 result of a patient under 18.

A row says what the rule decided and why, and on what: the rule version, a
digest of the configuration, the age band, the value in pmol/L, the limit
and where it came from, the reasons, the control IDs of the messages whose
results kept the comment away, and the collection time. The patient and the
requisition are keyed hashes (HMAC-SHA256, the context store's scheme, with
the audit's own key): never an identifier, a name or a birth date.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date

from b12comment.context.store import keyed_hash
from b12comment.core.dates import parse_ts
from b12comment.core.decision import Decision, ResultDecision
from b12comment.core.rows import OBX, extract
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import read_header

SERVE, HTTP, REPLAY, SHADOW = "serve", "http", "replay", "shadow"
SOURCES = (SERVE, HTTP, REPLAY, SHADOW)


@dataclass(frozen=True)
class AuditRow:
    decided_at: float  # seconds since the epoch (UTC)
    source: str  # SOURCES
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4
    rule_version: str
    config_digest: str
    obx_index: int  # the B12 OBX's place among the message's OBX (1-based)
    age_band: str  # "0 y", "1-11 y", "12-17 y" with the default bands
    value_pmol_l: float | None
    comparator: str  # ">" for a censored ">1476"
    limit_pmol_l: float | None
    limit_source: str  # "range" (OBX-7), "age_band", "" (none used)
    commented: bool  # for a shadow row: would have been commented
    reasons: tuple[str, ...]  # why not commented
    vetoed_by: tuple[str, ...]  # control IDs of other messages whose results kept the comment away
    collected: str  # the B12's collection time as the message gives it (HL7 time stamp)
    collected_day: str  # ISO date of the collection, "" when the time is not known to the day
    patients: tuple[str, ...]  # keyed hashes (hex) of each PID-3 identifier with its assigning authority
    requisition: str  # keyed hash (hex) of the requisition, "" for none
    # the results that kept the comment away: (where: message, requisition or
    # look-back; its message's control ID from the context; OBX number; code;
    # coding system; verdict). Never a value or a free text.
    blocked_by: tuple[tuple[str, str, int, str, str, str], ...] = ()

    def blockers(self) -> list[dict]:
        keys = ("source", "control_id", "obx", "code", "system", "verdict")
        return [dict(zip(keys, b, strict=True)) for b in self.blocked_by]

    def as_dict(self) -> dict:
        from datetime import datetime

        return {
            "decided_at": datetime.fromtimestamp(self.decided_at, UTC).isoformat(timespec="seconds"),
            "source": self.source,
            "control_id": self.control_id,
            "sending_facility": self.sending_facility,
            "rule_version": self.rule_version,
            "config_digest": self.config_digest,
            "obx_index": self.obx_index,
            "age_band": self.age_band,
            "value_pmol_l": self.value_pmol_l,
            "comparator": self.comparator,
            "limit_pmol_l": self.limit_pmol_l,
            "limit_source": self.limit_source,
            "commented": self.commented,
            "reasons": list(self.reasons),
            "vetoed_by": list(self.vetoed_by),
            "collected": self.collected,
            "collected_day": self.collected_day,
            "patients": list(self.patients),
            "requisition": self.requisition,
            "blocked_by": self.blockers(),
        }


def config_digest(rule: RuleConfig, context_mode: str, lookback_days: float) -> str:
    """Names the configuration a decision was made under: the same rule,
    context mode and look-back give the same digest."""
    text = repr((rule, context_mode, float(lookback_days)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def age_band(age: int | None, rule: RuleConfig) -> str:
    if age is None:
        return ""
    lower = 0
    for band in rule.age_bands:
        if age < band.below_years:
            return f"{lower}-{band.below_years - 1} y" if band.below_years - 1 > lower else f"{lower} y"
        lower = band.below_years
    return "adult"


def collected_day(ts: str) -> str:
    """The ISO day of an HL7 time stamp, "" unless it names one day."""
    found = parse_ts(ts) if ts else None
    if found is None or found.first != found.last:
        return ""
    return found.first.isoformat()


def day(text: str) -> date:
    return date.fromisoformat(text)


def rows_for(
    message: bytes,
    decision: Decision,
    rule: RuleConfig,
    *,
    source: str,
    key: bytes,
    digest: str,
    now: float,
) -> list[AuditRow]:
    """The audit rows of one decided message: one per B12 result of a patient
    certainly under 18 (none for any other message). A comment the shell took
    away after the rule gave it (`context_unavailable`) is recorded as not
    commented, with the message's reasons."""
    paediatric = [rd for rd in decision.results if rd.paediatric]
    if not paediatric:
        return []
    try:
        header = read_header(message)
        facility = header.first_component(4) or header.first_component(4, 2)
    except Exception:
        facility = ""
    ex = extract(message, rule, skip_adults=False)
    obx_rows = [r for r in ex.rows if r.kind == OBX] if ex is not None and not ex.not_read else []
    out = []
    for rd in paediatric:
        row = obx_rows[rd.obx_index - 1] if 0 < rd.obx_index <= len(obx_rows) else None
        patients = tuple(sorted({keyed_hash(key, k).hex() for k in row.patient_keys})) if row else ()
        requisition = keyed_hash(key, row.requisition_key).hex() if row else ""
        collected = row.collected if row else ""
        commented, reasons = _outcome(rd, decision)
        out.append(
            AuditRow(
                decided_at=now,
                source=source,
                control_id=decision.control_id,
                sending_facility=facility,
                rule_version=decision.rule_version,
                config_digest=digest,
                obx_index=rd.obx_index,
                age_band=age_band(rd.age_years, rule),
                value_pmol_l=rd.value_pmol_l,
                comparator=rd.comparator,
                limit_pmol_l=rd.limit_pmol_l,
                limit_source=rd.limit_source or "",
                commented=commented,
                reasons=reasons,
                vetoed_by=rd.vetoed_by or (decision.vetoed_by if not commented else ()),
                collected=collected,
                collected_day=collected_day(collected),
                patients=patients,
                requisition=requisition,
                blocked_by=tuple((b.source, b.control_id, b.obx, b.code, b.system, b.verdict) for b in rd.blockers),
            )
        )
    return out


def _outcome(rd: ResultDecision, decision: Decision) -> tuple[bool, tuple[str, ...]]:
    if rd.commented and not decision.commented:  # taken away after the rule (the context could not confirm it)
        return False, decision.reasons
    return rd.commented, rd.reasons
