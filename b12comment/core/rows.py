"""The rows the context store keeps for one result message: `extract`.

A row per result (OBX) and per order (OBR): its patient and requisition keys
(raw identifiers, from keys.KeyReader: the shell hashes them before anything
is stored), its analyte, its verdict (verdict.judge_value), its statuses and
its collection time. Pure: bytes and the rule in, rows out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

from b12comment.core.dates import DayRange, age_at, parse_ts
from b12comment.core.facts import cheap_observation, code_search, match_b12
from b12comment.core.frozen import quick_init
from b12comment.core.keys import OBR, ORC, PID, KeyReader, keys
from b12comment.core.rule_config import RuleConfig
from b12comment.core.screen import Refused, has_b12_code, result_header, segments_over_limit
from b12comment.core.segments import Header, component, field_of, read_header, segment_fields, split_segments
from b12comment.core.verdict import UNKNOWN, b12_verdict, judge_value

# A row is one OBX (kind "obx") or one OBR (kind "order": the order's status).
OBX, ORDER = "obx", "order"
# The analyte of the one row per requisition kept for a message whose results
# were not read (more than MAX_SEGMENTS segments, or reading failed): a
# result that cannot be judged, so that no comment of the same patient or
# requisition relies on the results it holds.
NOT_READ_ROW = "(results not read: too many segments, or they could not be read)"
# The analyte of the one row per order (or per patient without an order) kept
# for a patient certainly an adult by the PID's own birth date: their results
# are not read (they can never get the comment themselves), but the
# identifiers are kept, as a result that cannot be judged, at an unknown time.
# A child's B12 under the same identifier (a birth date that disagrees, a
# message filed under the wrong patient) is then in doubt: no comment.
ADULT_ROW = "(results not read: an adult by this message's birth date)"


@quick_init
@dataclass(frozen=True)
class ExtractedRow:
    """One result of a message as the store keeps it, before the shell hashes
    `patient_keys` and `requisition_key` (raw identifiers: never stored)."""

    row_index: int  # 1-based among the message's rows
    patient_keys: tuple[bytes, ...]  # each PID-3 identifier with its assigning authority
    requisition_key: bytes  # ORC-4, else OBR-2, else OBR-3 (prefixed with which)
    kind: str  # OBX or ORDER
    analyte: str  # OBX-3 identifier (the B12 code that matched), or OBR-4 for an order
    is_b12: bool
    verdict: str  # NORMAL, ABNORMAL or UNKNOWN as judge_value() gives it; a B12 may be LOW ("" for an order)
    status: str  # OBX-11 ("" for an order)
    order_status: str  # OBR-25 of its order
    collected: str  # OBX-14, else OBR-7, else SPM-17 (HL7 time stamp text)
    # What names it where it keeps a comment away (never a value)
    obx: int = 0  # its OBX number in the message (0: an order, or a row of results not read)
    system: str = ""  # OBX-3 coding system
    display: str = ""  # OBX-3 text
    value_type: str = ""  # OBX-2


@dataclass(frozen=True)
class Extract:
    control_id: str
    rows: tuple[ExtractedRow, ...]
    not_read: bool = False  # too many segments, or reading failed: `rows` are one NOT_READ_ROW row per requisition


def extract(
    message: bytes, rule: RuleConfig, lookback_days: float = 30.0, *, skip_adults: bool = True
) -> Extract | None:
    """The store's rows for one result message; None for what is not one
    (unreadable, or a message type the rule does not look at). A patient who
    was certainly an adult `lookback_days` before the message's collection
    can never get the comment, so their results are not read: one ADULT_ROW row
    per order (per patient without one) instead, a result that cannot be
    judged under the same keys, at an unknown time; judged per PID
    (`skip_adults=False`: the rows of every result, for tests that compare).
    A message of more than MAX_SEGMENTS segments is not read: its rows are
    one result that cannot be judged per requisition (`not_read`), which
    vetoes a comment of its patient and requisitions, never makes one. So is
    a result message whose reading fails part-way (a result we cannot read
    is doubt). Total: never raises."""
    try:
        header = result_header(message, rule)
    except Refused:
        return None
    except Exception:
        return None
    try:
        if segments_over_limit(message) is not None:
            return _not_read(message, header.control_id, rule)
        return _rows(message, header, rule, lookback_days, skip_adults)
    except Exception:
        try:
            return _not_read(message, read_header(message).control_id, rule)
        except Exception:
            return None


def _adult_from(message: bytes, header: Header, lookback_days: float) -> date | None:
    """The day from which a birth date makes a patient certainly an adult for
    this message: the collection (the first OBR-7, else MSH-7) less the
    look-back; None when the message gives no time (then nobody is)."""
    d, start = header.delimiters, header.start
    reference = None
    for sep in (b"\r", b"\n"):
        i = message.find(sep + b"OBR" + d.field, start)
        if i != -1:
            fields = _segment_at(message, i + 1).split(d.field)
            reference = parse_ts(component(field_of(fields, 7), d, 1).decode("latin-1").strip())
            break
    if reference is None:
        reference = parse_ts(component(header.field(7), d, 1).decode("latin-1").strip())
    if reference is None:
        return None
    return reference.first - timedelta(days=math.ceil(lookback_days))


def _is_adult(birth_field: bytes, earliest: date | None, rule: RuleConfig) -> bool:
    """PID-7 says 18 or older on `earliest`; any doubt says no."""
    if earliest is None:
        return False
    birth = parse_ts(birth_field.decode("latin-1").strip())
    age = age_at(birth, DayRange(earliest, earliest)) if birth is not None else None
    return age is not None and age.youngest >= rule.adult_age_years


def _segment_at(message: bytes, start: int) -> bytes:
    ends = [e for e in (message.find(b"\r", start), message.find(b"\n", start)) if e != -1]
    return message[start : min(ends) if ends else len(message)]


def _rows(message: bytes, header: Header, rule: RuleConfig, lookback_days: float, skip_adults: bool) -> Extract:
    d = header.delimiters
    may_hold_b12 = has_b12_code(message, rule)
    may_hold_code = code_search(rule)
    codec = "latin-1"  # identifiers are hashed as bytes; codes and statuses are ASCII
    rows: list[ExtractedRow] = []
    key = KeyReader(d)
    order_status = order_time = specimen_time = ""
    obx_index = 0

    def text(raw: bytes) -> str:
        return raw.decode(codec).strip()

    # A patient certainly an adult by this PID's birth date: their results are
    # not read; each of their orders (or, with none, the patient) is one ADULT_ROW
    # row instead. Judged per PID, at the message's collection less the look-back.
    earliest = _adult_from(message, header, lookback_days) if skip_adults else None
    adult = adult_without_row = False
    for seg in split_segments(message, header.start):
        name = seg.name
        if name not in (b"PID", b"ORC", b"OBR", b"SPM", b"OBX") or (adult and name in (b"SPM", b"OBX")):
            continue
        fields = segment_fields(message, seg, d)
        if name == PID:
            if adult_without_row:
                rows.append(_unknown_row(len(rows) + 1, key.patient, b""))
            key.read(name, fields)
            adult = _is_adult(component(field_of(fields, 7), d, 1), earliest, rule)
            adult_without_row = adult
        elif name == ORC:
            key.read(name, fields)
        elif name == OBR:
            key.read(name, fields)
            order_status = text(component(field_of(fields, 25), d, 1)).upper()
            order_time = text(component(field_of(fields, 7), d, 1))
            specimen_time = ""
            if adult:
                rows.append(_unknown_row(len(rows) + 1, key.patient, key.requisition))
                adult_without_row = False
                continue
            rows.append(
                ExtractedRow(
                    row_index=len(rows) + 1,
                    patient_keys=key.patient,
                    requisition_key=key.requisition,
                    kind=ORDER,
                    analyte=text(component(field_of(fields, 4), d, 1)),
                    is_b12=False,
                    verdict="",
                    status="",
                    order_status=order_status,
                    collected=order_time,
                )
            )
        elif name == b"SPM":
            specimen_time = specimen_time or text(component(field_of(fields, 17), d, 1))
        else:  # OBX
            obx_index += 1
            obs = cheap_observation(fields, header, codec, obx_index, 0, 0)
            raw_code = field_of(fields, 3)
            b12_code = match_b12(raw_code, d, rule) if may_hold_b12 and may_hold_code(raw_code) else None
            rows.append(
                ExtractedRow(
                    row_index=len(rows) + 1,
                    patient_keys=key.patient,
                    requisition_key=key.requisition,
                    kind=OBX,
                    analyte=b12_code or text(component(field_of(fields, 3), d, 1)),
                    is_b12=b12_code is not None,
                    verdict=b12_verdict(obs, rule) if b12_code is not None else judge_value(obs, rule),
                    status=obs.status,
                    order_status=order_status,
                    collected=obs.observed_at or order_time or specimen_time,
                    obx=obx_index,
                    system=obs.code_system,
                    display=obs.code_text,
                    value_type=obs.value_type,
                )
            )
    if adult_without_row:  # the last patient had no order: one row for them
        rows.append(_unknown_row(len(rows) + 1, key.patient, b""))
    return Extract(header.control_id, tuple(rows))


def _unknown_row(
    row_index: int, patient_keys: tuple[bytes, ...], requisition: bytes, analyte: str = ADULT_ROW
) -> ExtractedRow:
    """A result that cannot be judged (`analyte` ADULT_ROW or NOT_READ_ROW), collected
    at an unknown time, so within any look-back (an identity in doubt has no
    time; the store's purge still ends it after `lookback_days`), and so every
    such row of a requisition is the same: which one `latest` keeps changes
    nothing."""
    return ExtractedRow(
        row_index=row_index,
        patient_keys=patient_keys,
        requisition_key=requisition,
        kind=OBX,
        analyte=analyte,
        is_b12=False,
        verdict=UNKNOWN,
        status="",
        order_status="",
        collected="",
    )


def _not_read(message: bytes, control_id: str, rule: RuleConfig) -> Extract | None:
    """The rows of a message too large to read: for each of its requisitions
    (found by `keys`, a byte search) one result that cannot be judged, of
    every patient in it, collected at an unknown time (so within any
    look-back)."""
    found = keys(message, rule)
    if found is None:
        return None
    patients = tuple(sorted(found.patients))
    rows = tuple(
        _unknown_row(i, patients, requisition, NOT_READ_ROW)
        for i, requisition in enumerate(sorted(found.requisitions) or [b""], start=1)
    )
    return Extract(control_id, rows, not_read=True)
