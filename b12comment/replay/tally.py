"""Counting what a replay saw: bounded in memory, mergeable, no patient data.

A Tally is built per file (in a worker), merged in input order, and turned
into the report. Paediatric B12 values are kept as a histogram per age band,
never as a list, so memory does not grow with the archive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from b12comment.core.decision import MALFORMED, Decision
from b12comment.core.rule_config import RuleConfig

BIN_PMOL_L = 100  # histogram bin width
TOP_BIN_PMOL_L = 3000  # values at or above go in the last bin
MAX_LISTED = 1000  # positions and differences listed in full; all are counted


def band_name(age: int, rule: RuleConfig) -> str:
    lower = 0
    for band in rule.age_bands:
        if age < band.below_years:
            return f"{lower}-{band.below_years - 1} y" if band.below_years - 1 > lower else f"{lower} y"
        lower = band.below_years
    return "adult"


@dataclass
class Tally:
    files: int = 0
    messages: int = 0
    commented_messages: int = 0
    by_type: Counter = field(default_factory=Counter)
    by_version: Counter = field(default_factory=Counter)
    not_commented: Counter = field(default_factory=Counter)
    b12_results: int = 0
    paediatric_b12: int = 0
    paediatric_elevated: int = 0
    paediatric_commented: int = 0
    paediatric_reasons: Counter = field(default_factory=Counter)
    histogram: dict = field(default_factory=dict)  # band -> {bin lower bound: count}
    malformed: int = 0
    malformed_positions: list = field(default_factory=list)
    batch_mismatches: list = field(default_factory=list)
    not_hl7: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    differences: int = 0
    difference_list: list = field(default_factory=list)

    def add(self, d: Decision, rel: str, position: int, rule: RuleConfig) -> None:
        self.messages += 1
        self.by_type[d.message_type or "(none)"] += 1
        self.by_version[d.version or "(none)"] += 1
        if d.commented:
            self.commented_messages += 1
        elif d.primary_reason:
            self.not_commented[d.primary_reason] += 1
        if MALFORMED in d.reasons:
            self.malformed += 1
            if len(self.malformed_positions) < MAX_LISTED:
                self.malformed_positions.append({"file": rel, "message": position, "detail": d.detail})
        for r in d.results:
            self.b12_results += 1
            if not r.paediatric:
                continue
            self.paediatric_b12 += 1
            self.paediatric_elevated += bool(r.elevated)
            self.paediatric_commented += r.commented
            for reason in r.reasons:
                self.paediatric_reasons[reason] += 1
            if r.value_pmol_l is not None and r.age_years is not None:
                band = self.histogram.setdefault(band_name(r.age_years, rule), {})
                lower = min(int(r.value_pmol_l // BIN_PMOL_L) * BIN_PMOL_L, TOP_BIN_PMOL_L)
                band[lower] = band.get(lower, 0) + 1

    def add_difference(self, rel: str, position: int, new: Decision, old: Decision) -> None:
        self.differences += 1
        if len(self.difference_list) < MAX_LISTED:
            self.difference_list.append(
                {
                    "file": rel,
                    "message": position,
                    "control_id": new.control_id,
                    "new": {"commented": new.commented, "reasons": list(new.reasons)},
                    "old": {"commented": old.commented, "reasons": list(old.reasons)},
                }
            )

    def merge(self, other: Tally) -> None:
        for name in (
            "files",
            "messages",
            "commented_messages",
            "b12_results",
            "paediatric_b12",
            "paediatric_elevated",
            "paediatric_commented",
            "malformed",
            "differences",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("by_type", "by_version", "not_commented", "paediatric_reasons"):
            getattr(self, name).update(getattr(other, name))
        for band, bins in other.histogram.items():
            mine = self.histogram.setdefault(band, {})
            for lower, count in bins.items():
                mine[lower] = mine.get(lower, 0) + count
        for name in ("malformed_positions", "difference_list"):
            room = MAX_LISTED - len(getattr(self, name))
            getattr(self, name).extend(getattr(other, name)[: max(room, 0)])
        for name in ("batch_mismatches", "not_hl7", "errors"):
            getattr(self, name).extend(getattr(other, name))

    def to_json(self) -> dict:
        return {
            "files": self.files,
            "messages": self.messages,
            "by_message_type": dict(sorted(self.by_type.items())),
            "by_version": dict(sorted(self.by_version.items())),
            "commented": self.commented_messages,
            "not_commented_by_reason": dict(sorted(self.not_commented.items())),
            "b12_results": self.b12_results,
            "paediatric_b12_results": self.paediatric_b12,
            "paediatric_b12_elevated": self.paediatric_elevated,
            "paediatric_b12_commented": self.paediatric_commented,
            "paediatric_b12_not_commented_by_reason": dict(sorted(self.paediatric_reasons.items())),
            "paediatric_b12_histogram_pmol_l": {
                band: {str(k): v for k, v in sorted(bins.items())} for band, bins in sorted(self.histogram.items())
            },
            "malformed": self.malformed,
            "malformed_positions": self.malformed_positions,
            "batch_count_mismatches": self.batch_mismatches,
            "files_without_hl7": self.not_hl7,
            "errors": self.errors,
            "rule_differences": self.differences,
            "rule_difference_list": self.difference_list,
        }

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        t = cls(
            files=data["files"],
            messages=data["messages"],
            commented_messages=data["commented"],
            by_type=Counter(data["by_message_type"]),
            by_version=Counter(data["by_version"]),
            not_commented=Counter(data["not_commented_by_reason"]),
            b12_results=data["b12_results"],
            paediatric_b12=data["paediatric_b12_results"],
            paediatric_elevated=data["paediatric_b12_elevated"],
            paediatric_commented=data["paediatric_b12_commented"],
            paediatric_reasons=Counter(data["paediatric_b12_not_commented_by_reason"]),
            histogram={
                band: {int(k): v for k, v in bins.items()}
                for band, bins in data["paediatric_b12_histogram_pmol_l"].items()
            },
            malformed=data["malformed"],
            malformed_positions=data["malformed_positions"],
            batch_mismatches=data["batch_count_mismatches"],
            not_hl7=data["files_without_hl7"],
            errors=data["errors"],
            differences=data["rule_differences"],
            difference_list=data["rule_difference_list"],
        )
        return t
