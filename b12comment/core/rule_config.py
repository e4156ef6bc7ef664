"""The rule's settings as plain frozen data: the codes, age bands, units,
statuses, flags and comment texts. Loading them from TOML is config.py's job;
the core only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from b12comment.core.decision import RULE_VERSION
from b12comment.core.frozen import once


@dataclass(frozen=True)
class CodeMatch:
    """One OBX-3 code that identifies a total-B12 result."""

    code: str
    systems: tuple[str, ...]  # coding systems accepted with it; "" = empty, "*" = any

    def matches(self, code: str, system: str) -> bool:
        return code == self.code and ("*" in self.systems or system in self.systems)


@dataclass(frozen=True)
class AgeBand:
    below_years: int
    upper_limit_pmol_l: float


DEFAULT_CODES = (
    CodeMatch("14685-2", ("LN",)),
    CodeMatch("2132-9", ("LN",)),
    CodeMatch("NPU01700", ("IUPP", "NPU", "")),
)

DEFAULT_AGE_BANDS = (
    AgeBand(1, 1400.0),
    AgeBand(12, 1200.0),
    AgeBand(18, 800.0),
)

# Conversion factors to pmol/L, keyed by unit as written (compared
# case-insensitively, spaces ignored). 1 pg/mL = 1 ng/L = 0.7378 pmol/L.
DEFAULT_UNITS = (
    ("pmol/L", 1.0),
    ("pg/mL", 0.7378),
    ("ng/L", 0.7378),
)

# Answers that are a normal result (compared ignoring case, spacing and a
# final full stop; for a coded value its identifier or its text). Sources in
# config.toml: LOINC answer codes LA6577-6 Negative and LA11883-8 Not
# detected; the other answers by their text.
DEFAULT_NORMAL_TEXTS = (
    "Normal",
    "Negative",
    "LA6577-6",
    "Not detected",
    "LA11883-8",
    "No growth",
    "Nonreactive",
    "Non-reactive",
    "None seen",
    "Specimen acceptable",
    "Negativ",
    "Ikke påvist",
    "Ingen vækst",
)
# OBX-2 value types that are no finding (HL7 v2 data types): dates and times,
# people, addresses and telephone numbers. Never a doubt, never a veto.
DEFAULT_NO_FINDING_TYPES = ("DT", "DTM", "TS", "TM", "XCN", "XPN", "XAD", "XTN", "TN")
# Value types that are always a result to judge: never listed as no finding.
RESULT_TYPES = ("NM", "SN", "ST", "TX", "FT", "CWE", "CE", "CNE", "CF", "")
# An unflagged number without a range: "normal" (the lab flags what it finds
# abnormal) or "doubt" (for a lab whose system does not flag).
UNFLAGGED_UNRANGED = ("normal", "doubt")

# The comment texts. `{rule_version}` stands for RuleConfig.rule_version. Each
# ends with a provenance marker: NTE-2 and NTE-4 are dropped by the usual
# conversions (HL7 v2 to FHIR, the MedCom report GPs receive), so only the
# text itself can say that the comment is automatic and which rule wrote it.
TEXT_DA = (
    "Isoleret forhøjet B12 hos børn og unge under 18 år har ingen klinisk betydning: "
    "når B12 (uanset hvor højt) er det eneste abnorme biokemiske fund, skal det ikke "
    "give anledning til bekymring eller yderligere undersøgelser, heller ikke kontrol af B12. "
    "(Automatisk kommentar, b12comment regel {rule_version})"
)
TEXT_EN = (
    "Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    "significance: when B12 (however high) is the only abnormal biochemical finding, it "
    "needs no concern and no further investigation, not even a repeat B12 measurement. "
    "(Automatic comment, b12comment rule {rule_version})"
)
# The texts of rule b12-paed-1 (without a marker): a message commented by it
# must not get a second comment.
EARLIER_TEXTS = (
    "Isoleret forhøjet B12 hos børn og unge under 18 år har ingen klinisk betydning: "
    "når B12 (uanset hvor højt) er det eneste abnorme biokemiske fund, skal det ikke "
    "give anledning til bekymring eller yderligere undersøgelser, heller ikke kontrol af B12.",
    "Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    "significance: when B12 (however high) is the only abnormal biochemical finding, it "
    "needs no concern and no further investigation, not even a repeat B12 measurement.",
)
COMMENT_MARKER = "b12comment"


@dataclass(frozen=True)
class RuleConfig:
    codes: tuple[CodeMatch, ...] = DEFAULT_CODES
    age_bands: tuple[AgeBand, ...] = DEFAULT_AGE_BANDS
    units: tuple[tuple[str, float], ...] = DEFAULT_UNITS
    message_types: tuple[str, ...] = ("ORU^R01",)
    final_statuses: tuple[str, ...] = ("F", "C")
    # OBR-25 order statuses (HL7 table 0123): final ones, and cancelled ones
    # (X: cannot be done) that do not hold back the comment for another order.
    final_order_statuses: tuple[str, ...] = ("F", "C")
    cancelled_order_statuses: tuple[str, ...] = ("X",)
    pending_statuses: tuple[str, ...] = ("P", "I", "R", "S")
    ignored_statuses: tuple[str, ...] = ("D", "W", "X")
    normal_flags: tuple[str, ...] = ("N",)
    elevated_flags: tuple[str, ...] = ("H", "HH", ">")
    low_flags: tuple[str, ...] = ("L", "LL", "<")
    use_message_time: bool = False
    # The site's IANA time zone (`Europe/Copenhagen`): a time stamp with an
    # offset is taken in it, and in MSH-7's offset if given, before its date
    # is used. "" = none: MSH-7's offset alone; without one, any zone in use.
    timezone: str = ""
    # Other results: unflagged text values that count as normal (compared
    # ignoring case, spacing and a final full stop), and OBX-3 codes of
    # administrative results that are never a doubt (a flag still counts).
    normal_texts: tuple[str, ...] = DEFAULT_NORMAL_TEXTS
    ignored_codes: tuple[str, ...] = ()
    no_finding_types: tuple[str, ...] = DEFAULT_NO_FINDING_TYPES
    unflagged_unranged: str = "normal"
    # Comment
    rule_version: str = RULE_VERSION
    language: str = "da"
    text_da: str = TEXT_DA
    text_en: str = TEXT_EN
    nte_source: str = "L"
    nte_comment_type: str = "RE"
    nte_entered_by: str = ""  # NTE-5 (XCN, components joined by ^); "" = left out
    # "Already commented": an NTE under the B12 OBX that holds the marker, or
    # that is exactly one of the comment texts (now or earlier).
    comment_marker: str = COMMENT_MARKER
    earlier_texts: tuple[str, ...] = EARLIER_TEXTS

    @once
    def code_bytes(self) -> tuple[bytes, ...]:
        """Each configured code as ASCII bytes (the engine's byte pre-check)."""
        return tuple(cm.code.encode("ascii") for cm in self.codes)

    @property
    def adult_age_years(self) -> int:
        return max(b.below_years for b in self.age_bands)

    def comment_text(self) -> str:
        return self._filled(self.text_da if self.language == "da" else self.text_en)

    def all_comment_texts(self) -> tuple[str, ...]:
        """Every text a comment of this product may carry: today's in both
        languages, and the site's earlier texts."""
        return (self._filled(self.text_da), self._filled(self.text_en), *self.earlier_texts)

    def _filled(self, text: str) -> str:
        return text.replace("{rule_version}", self.rule_version)

    def unit_factor(self, unit: str) -> float | None:
        key = _norm_unit(unit)
        for name, factor in self.units:
            if _norm_unit(name) == key:
                return factor
        return None


def _norm_unit(unit: str) -> str:
    return unit.replace(" ", "").lower()
