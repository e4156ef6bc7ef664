"""What the rule decided about one message, and why. Holds no patient data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from b12comment.core.frozen import quick_init

RULE_VERSION = "b12-paed-2"

# Message-level reasons
MALFORMED = "malformed"
NOT_ORU = "not_oru"
NO_B12 = "no_b12"
MULTIPLE_PATIENTS = "multiple_patients"
TOO_MANY_B12 = "too_many_b12"
TOO_MANY_SEGMENTS = "too_many_segments"
UNSUPPORTED_CHARSET = "unsupported_charset"
INTERNAL_ERROR = "internal_error"
# Result-level reasons (one B12 OBX)
ALREADY_COMMENTED = "already_commented"
STATUS_NOT_FINAL = "status_not_final"
AGE_UNKNOWN = "age_unknown"
ADULT = "adult"
UNKNOWN_UNIT = "unknown_unit"
UNREADABLE_VALUE = "unreadable_value"
NOT_ELEVATED = "not_elevated"
OTHER_ABNORMAL = "other_abnormal"
CONTEXT_PENDING = "context_pending"
ORDER_NOT_FINAL = "order_not_final"
RANGE_UNREADABLE = "range_unreadable"
CONTEXT_UNREADABLE = "context_unreadable"
# Reasons from the context (the patient's other messages)
OTHER_ABNORMAL_RECENT = "other_abnormal_recent"
CONTEXT_UNREADABLE_RECENT = "context_unreadable_recent"
CONTEXT_PENDING_RECENT = "context_pending_recent"
REQUISITION_PENDING = "requisition_pending"
CONTEXT_UNAVAILABLE = "context_unavailable"

REASONS = {
    MALFORMED: "the message could not be read as HL7 v2 (no MSH, bad encoding characters, unreadable B12 fields)",
    NOT_ORU: "the message is not a configured result message type (ORU^R01)",
    NO_B12: "no OBX carries a configured total-B12 code",
    MULTIPLE_PATIENTS: "the message holds more than one PID; results cannot be tied to one patient",
    TOO_MANY_B12: "more than 10 total-B12 results in one message: not one sample's report",
    TOO_MANY_SEGMENTS: (
        "more than 10,000 segments in one message: too many to read every other result within bounded time "
        "and memory, so none is read (the message goes on unchanged)"
    ),
    UNSUPPORTED_CHARSET: "MSH-18 names a character set the comment cannot be written in safely",
    INTERNAL_ERROR: "interpretation failed unexpectedly; the message is forwarded unchanged",
    ALREADY_COMMENTED: (
        "the B12 OBX already carries the comment (an NTE with the marker, or exactly a comment text of any "
        "rule version): idempotent re-processing"
    ),
    STATUS_NOT_FINAL: "the B12 result status (OBX-11) is not final (F) or corrected (C)",
    AGE_UNKNOWN: (
        "age at collection is not known for sure (no or partial birth date, no collection time, birth after collection)"
    ),
    ADULT: "the patient was 18 or older at collection (or could have been)",
    UNKNOWN_UNIT: "the B12 unit (OBX-6) is missing or not a configured unit",
    UNREADABLE_VALUE: (
        "the B12 value (OBX-5) is not a number that can be compared (or its unit inside OBX-5 "
        "is not a known one or disagrees with OBX-6)"
    ),
    NOT_ELEVATED: "the B12 value is not elevated by the lab's flag, the OBX-7 range or the age-band limit",
    OTHER_ABNORMAL: "another result in the message is abnormal (flagged or outside its range)",
    CONTEXT_PENDING: (
        "another result in the message is still pending or preliminary, or another order is not finished "
        "(OBR-25 not final, or an order with no results yet)"
    ),
    ORDER_NOT_FINAL: (
        "the B12's own order is not final: its OBR-25 states a status other than final (F) or corrected (C)"
    ),
    RANGE_UNREADABLE: (
        "the B12 reference range (OBX-7) is present but cannot be read (or is in another unit): "
        "the age-band limit is only for a result with no range"
    ),
    CONTEXT_UNREADABLE: (
        "another result cannot be judged: its range or value cannot be read, or it is an unflagged text "
        "result without a range that is not a configured normal text"
    ),
    OTHER_ABNORMAL_RECENT: (
        "another result of the same patient (same requisition, or collected within the look-back) "
        "in an earlier or later message is abnormal"
    ),
    CONTEXT_UNREADABLE_RECENT: (
        "another result of the same patient (same requisition, or collected within the look-back) "
        "in an earlier or later message cannot be judged (or was not read: an adult's birth date under "
        "the same identifier, a message too large)"
    ),
    CONTEXT_PENDING_RECENT: (
        "another result of the same patient collected within the look-back, in an earlier or later "
        "message of another requisition, is still pending or preliminary"
    ),
    CONTEXT_UNAVAILABLE: (
        "the context store could not be read or written, or the message names no patient (PID-3) to look up: "
        "without it the rule is not sure"
    ),
    REQUISITION_PENDING: "an order of the same requisition seen so far is not final or has a pending result",
}


# A blocker's verdict: why that result kept the comment away.
BLOCK_ABNORMAL, BLOCK_UNKNOWN, BLOCK_PENDING = "abnormal", "cannot be judged", "pending"
# Where a blocker was found: the message itself, the same requisition, the look-back.
IN_MESSAGE, IN_REQUISITION, IN_LOOKBACK = "message", "requisition", "look-back"


@quick_init
@dataclass(frozen=True)
class Blocker:
    """One result that kept the comment away. Never a patient field and
    never a free-text value: `value` only where it is coded or a short
    number or word (for the replay report's calibration table); from the
    look-back, the store keeps no value at all."""

    source: str  # IN_MESSAGE, IN_REQUISITION or IN_LOOKBACK
    obx: int  # OBX number in its message (1-based; 0: an order or a row without one)
    code: str  # OBX-3 identifier (primary, else alternate)
    system: str  # its coding system
    display: str  # its text
    value_type: str  # OBX-2
    verdict: str  # BLOCK_ABNORMAL, BLOCK_UNKNOWN or BLOCK_PENDING
    value: str = ""
    collected: str = ""  # from the look-back: its collection time
    control_id: str = ""  # from the look-back: its message's MSH-10


@quick_init
@dataclass(frozen=True)
class ResultDecision:
    """The decision for one total-B12 OBX."""

    obx_index: int  # 1-based position among the message's OBX segments
    code: str  # the configured code that matched
    commented: bool
    reasons: tuple[str, ...]
    age_years: int | None = None  # completed years at collection (youngest possible)
    value_pmol_l: float | None = None
    comparator: str = ""  # ">" for a censored ">1476", etc.
    limit_pmol_l: float | None = None
    limit_source: str | None = None  # where limit_pmol_l came from: "range" (OBX-7) or "age_band"
    decided_by: str | None = None  # what decided elevated: "flag", "range" or "age_band"
    elevated: bool | None = None  # None: could not be told
    paediatric: bool = False  # certainly under 18 at collection
    vetoed_by: tuple[str, ...] = ()  # control IDs of other messages whose results vetoed the comment
    # OBX numbers of the message's other results judged normal only because the
    # lab left a number unflagged and unranged (unflagged_unranged = "normal")
    unflagged_unranged: tuple[int, ...] = ()
    blockers: tuple[Blocker, ...] = ()  # the results that kept the comment away


@quick_init
@dataclass(frozen=True)
class Decision:
    commented: bool
    reasons: tuple[str, ...]
    control_id: str = ""
    message_type: str = ""
    version: str = ""
    results: tuple[ResultDecision, ...] = ()
    notes: tuple[str, ...] = ()
    detail: str = ""
    rule_version: str = RULE_VERSION
    vetoed_by: tuple[str, ...] = ()  # control IDs of other messages that vetoed (never patient data)

    @property
    def primary_reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["notes"] = list(self.notes)
        d["results"] = [
            dict(
                r,
                reasons=list(r["reasons"]),
                vetoed_by=list(r["vetoed_by"]),
                unflagged_unranged=list(r["unflagged_unranged"]),
                blockers=[dict(b) for b in r["blockers"]],
            )
            for r in d["results"]
        ]
        d["vetoed_by"] = list(self.vetoed_by)
        return d

    def log_fields(self) -> dict:
        """The decision record for a log line: no patient data."""
        fields = {
            "control_id": self.control_id,
            "message_type": self.message_type,
            "commented": self.commented,
            "reasons": list(self.reasons),
            "rule_version": self.rule_version,
        }
        if self.vetoed_by:
            fields["vetoed_by"] = list(self.vetoed_by)
        return fields
