"""Counting what a replay saw: bounded in memory, mergeable, no patient data.

A Tally is built per file (in a worker), merged in input order, and turned
into the report. Its attribute names are the report's keys: `to_json`,
`from_json` (the resume file) and `merge` all follow one table, the fields
below, each with how it merges. Paediatric B12 values are kept as a histogram
per age band, never as a list, so memory does not grow with the archive.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from b12comment.core.decision import (
    CONTEXT_PENDING,
    CONTEXT_PENDING_RECENT,
    CONTEXT_UNREADABLE,
    CONTEXT_UNREADABLE_RECENT,
    MALFORMED,
    OTHER_ABNORMAL,
    OTHER_ABNORMAL_RECENT,
    REQUISITION_PENDING,
    Decision,
)
from b12comment.core.rule_config import RuleConfig

BIN_PMOL_L = 100  # histogram bin width
TOP_BIN_PMOL_L = 3000  # values at or above go in the last bin
CONTEXT_REASONS = (OTHER_ABNORMAL_RECENT, CONTEXT_UNREADABLE_RECENT, CONTEXT_PENDING_RECENT, REQUISITION_PENDING)
MAX_LISTED = 1000  # positions and differences listed in full; all are counted

# How each field merges (and is written to and read from JSON)
SUM, COUNTS, HISTOGRAM, CAPPED, ALL, BLOCKING = "sum", "counts", "histogram", "capped", "all", "blocking"
# The reasons a comment is kept away by other results (the calibration table counts those)
BLOCKING_REASONS = frozenset(
    {
        OTHER_ABNORMAL,
        CONTEXT_UNREADABLE,
        CONTEXT_PENDING,
        OTHER_ABNORMAL_RECENT,
        CONTEXT_UNREADABLE_RECENT,
        CONTEXT_PENDING_RECENT,
        REQUISITION_PENDING,
    }
)
MAX_VALUES = 10  # distinct values kept per blocking code; the rest counted as OTHER_VALUES
OTHER_VALUES = "(other values)"


def _sum() -> Any:
    return field(default=0, metadata={"merge": SUM})


def _counts() -> Any:
    return field(default_factory=Counter, metadata={"merge": COUNTS})


def _list(kind: str) -> Any:
    return field(default_factory=list, metadata={"merge": kind})


def band_name(age: int, rule: RuleConfig) -> str:
    lower = 0
    for band in rule.age_bands:
        if age < band.below_years:
            return f"{lower}-{band.below_years - 1} y" if band.below_years - 1 > lower else f"{lower} y"
        lower = band.below_years
    return "adult"


@dataclass
class Tally:
    files: int = _sum()
    messages: int = _sum()  # messages read and written (a file that failed counts none)
    by_message_type: Counter = _counts()
    by_version: Counter = _counts()
    commented: int = _sum()  # messages that got the comment
    not_commented_by_reason: Counter = _counts()  # messages, by their first reason
    b12_results: int = _sum()  # total-B12 OBX results, any age
    paediatric_b12_results: int = _sum()
    paediatric_b12_elevated: int = _sum()
    paediatric_b12_commented: int = _sum()
    # commented results that relied on unflagged_unranged = "normal": another
    # result of the message was a number with neither flag nor range
    paediatric_b12_commented_unflagged_unranged: int = _sum()
    paediatric_b12_not_commented_by_reason: Counter = _counts()  # results, every reason
    paediatric_b12_histogram_pmol_l: dict = field(default_factory=dict, metadata={"merge": HISTOGRAM})
    context_vetoes_by_reason: Counter = _counts()  # messages the patient's other results took the comment from
    # The calibration table: per blocking code (system, code, value type, verdict), how many
    # elevated paediatric B12 results it kept the comment from, its text, and its values
    # (coded or short only; never free text, never a patient field)
    blocking_codes: dict = field(default_factory=dict, metadata={"merge": BLOCKING})
    malformed: int = _sum()
    malformed_positions: list = _list(CAPPED)
    batch_count_mismatches: list = _list(ALL)
    files_without_hl7: list = _list(ALL)
    errors: list = _list(ALL)
    # comments that a later message of the same patient contradicts (the review
    # alert: a corrected B12, a new abnormal result, results not read), listed
    comments_contradicted: int = _sum()
    contradicted_comments: list = _list(CAPPED)
    rule_differences: int = _sum()
    rule_difference_list: list = _list(CAPPED)

    def add(self, d: Decision, rel: str, position: int, rule: RuleConfig) -> None:
        self.messages += 1
        self.by_message_type[d.message_type or "(none)"] += 1
        self.by_version[d.version or "(none)"] += 1
        if d.commented:
            self.commented += 1
        elif d.primary_reason:
            self.not_commented_by_reason[d.primary_reason] += 1
        for reason in d.reasons:
            if reason in CONTEXT_REASONS:
                self.context_vetoes_by_reason[reason] += 1
        if MALFORMED in d.reasons:
            self.malformed += 1
            if len(self.malformed_positions) < MAX_LISTED:
                self.malformed_positions.append({"file": rel, "message": position, "detail": d.detail})
        for r in d.results:
            self.b12_results += 1
            if not r.paediatric:
                continue
            self.paediatric_b12_results += 1
            self.paediatric_b12_elevated += bool(r.elevated)
            self.paediatric_b12_commented += r.commented
            self.paediatric_b12_commented_unflagged_unranged += r.commented and bool(r.unflagged_unranged)
            for reason in r.reasons:
                self.paediatric_b12_not_commented_by_reason[reason] += 1
            if r.elevated and not r.commented and r.reasons and set(r.reasons) <= BLOCKING_REASONS:
                self._add_blockers(r.blockers)
            if r.value_pmol_l is not None and r.age_years is not None:
                band = self.paediatric_b12_histogram_pmol_l.setdefault(band_name(r.age_years, rule), {})
                lower = min(int(r.value_pmol_l // BIN_PMOL_L) * BIN_PMOL_L, TOP_BIN_PMOL_L)
                band[lower] = band.get(lower, 0) + 1

    def _add_blockers(self, blockers) -> None:
        seen: set[str] = set()
        for b in blockers:
            key = "|".join((b.system, b.code, b.value_type, b.verdict))
            row = self.blocking_codes.setdefault(
                key,
                {
                    "system": b.system,
                    "code": b.code,
                    "display": b.display,
                    "value_type": b.value_type,
                    "verdict": b.verdict,
                    "blocked": 0,
                    "values": {},
                },
            )
            row["display"] = row["display"] or b.display
            if key not in seen:  # one B12 result counts once per code
                seen.add(key)
                row["blocked"] += 1
            if b.value:
                _count_value(row["values"], b.value, 1)

    def add_contradiction(self, rel: str, position: int, control_id: str, later: str, why: str) -> None:
        self.comments_contradicted += 1
        if len(self.contradicted_comments) < MAX_LISTED:
            self.contradicted_comments.append(
                {"file": rel, "message": position, "control_id": control_id, "contradicted_by": later, "why": why}
            )

    def add_difference(self, rel: str, position: int, new: Decision, old: Decision) -> None:
        self.rule_differences += 1
        if len(self.rule_difference_list) < MAX_LISTED:
            self.rule_difference_list.append(
                {
                    "file": rel,
                    "message": position,
                    "control_id": new.control_id,
                    "new": {"commented": new.commented, "reasons": list(new.reasons)},
                    "old": {"commented": old.commented, "reasons": list(old.reasons)},
                }
            )

    def merge(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            mine, theirs, kind = getattr(self, f.name), getattr(other, f.name), f.metadata["merge"]
            if kind == SUM:
                setattr(self, f.name, mine + theirs)
            elif kind == COUNTS:
                mine.update(theirs)
            elif kind == HISTOGRAM:
                for band, bins in theirs.items():
                    into = mine.setdefault(band, {})
                    for lower, count in bins.items():
                        into[lower] = into.get(lower, 0) + count
            elif kind == BLOCKING:
                for key, row in theirs.items():
                    into = mine.setdefault(key, dict(row, blocked=0, values={}))
                    into["display"] = into["display"] or row["display"]
                    into["blocked"] += row["blocked"]
                    for value, count in row["values"].items():
                        _count_value(into["values"], value, count)
            elif kind == CAPPED:
                mine.extend(theirs[: max(MAX_LISTED - len(mine), 0)])
            else:
                mine.extend(theirs)

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.metadata["merge"]
            if kind == COUNTS:
                value = dict(sorted(value.items()))
            elif kind == HISTOGRAM:
                value = {band: {str(k): v for k, v in sorted(bins.items())} for band, bins in sorted(value.items())}
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:  # a resume file of an earlier version: the field starts empty
                continue
            value, kind = data[f.name], f.metadata["merge"]
            if kind == COUNTS:
                value = Counter(value)
            elif kind == HISTOGRAM:
                value = {band: {int(k): v for k, v in bins.items()} for band, bins in value.items()}
            values[f.name] = value
        return cls(**values)


def _count_value(values: dict, value: str, count: int) -> None:
    """Count a value of a blocking code: at most MAX_VALUES distinct ones."""
    if value in values or len(values) < MAX_VALUES:
        values[value] = values.get(value, 0) + count
    else:
        values[OTHER_VALUES] = values.get(OTHER_VALUES, 0) + count


MIN_SHOWN = 5  # a value seen fewer times is counted, not shown (as aggregates suppress cells under 5)
RARE_VALUES = f"(values seen fewer than {MIN_SHOWN} times)"


def calibration(blocking_codes: dict, rule: RuleConfig) -> dict:
    """The report's "what kept comments away": the blocking codes, most
    comments blocked first, with their values seen at least MIN_SHOWN times
    (a rarer value may be someone's name or number: only counted), and two
    blocks to paste into [rule]. They hold the site's own `ignored_codes`
    and `normal_texts` (or the defaults), then, commented out, every code
    and value that could not be judged: pasted as they are they change
    nothing; a clinical biochemist uncomments what is truly no finding
    (ignored_codes) or a normal answer (normal_texts). A code whose result
    can be abnormal without a flag must never be listed."""
    rows = sorted(blocking_codes.values(), key=lambda r: (-r["blocked"], r["system"], r["code"], r["verdict"]))
    table = []
    for row in rows:
        values: dict[str, int] = {}
        rare = 0
        for value, count in sorted(row["values"].items(), key=_by_count):
            if count >= MIN_SHOWN and value != OTHER_VALUES:
                values[value] = count
            else:
                rare += count
        if rare:
            values[RARE_VALUES] = rare
        table.append(dict(row, values=values))
    doubts = [r for r in table if r["verdict"] == "cannot be judged"]
    codes = [(f"{json.dumps(c)},", "") for c in rule.ignored_codes]
    known_codes = set(rule.ignored_codes)
    for r in doubts:
        if r["code"] and r["code"] not in known_codes:
            known_codes.add(r["code"])
            kept = f"kept {r['blocked']} comment{'' if r['blocked'] == 1 else 's'} away"
            shown = "; ".join(f"{v} ({n})" for v, n in r["values"].items())
            note = f"{r['display'] or '(no text)'} ({r['value_type'] or '-'}, {r['system'] or '-'}): {kept}"
            codes.append((f"# {json.dumps(r['code'])},", note + (f"; values {shown}" if shown else "")))
    texts = [(f"{json.dumps(t, ensure_ascii=False)},", "") for t in rule.normal_texts]
    known = {t.casefold() for t in rule.normal_texts}
    for r in doubts:
        for value, count in r["values"].items():
            word = value.split("^", 1)[0] if value != RARE_VALUES else ""
            if word and word.casefold() not in known:
                known.add(word.casefold())
                note = f"{value} of {r['code']} {r['display']} ({r['value_type']}): {count} times"
                texts.append((f"# {json.dumps(word, ensure_ascii=False)},", note))
    return {
        "rows": table,
        "ignored_codes": _toml_block("ignored_codes", codes),
        "normal_texts": _toml_block("normal_texts", texts),
    }


def _toml_block(key: str, entries: list[tuple[str, str]]) -> str:
    """`key = [` one entry a line (a suggestion commented out, with its note) `]`."""
    lines = [f"{key} = ["]
    for entry, note in entries:
        lines.append(f"    {entry}" + (f"  # {_one_line(note)}" if note else ""))
    lines.append("]")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]
