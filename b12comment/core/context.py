"""The patient's other results, as plain data: what the rule knows beyond
the message in hand.

"B12 is the only abnormal finding" is a fact about the patient, not about
one message: a requisition is often released in parts (the blood count
before the B12), and the patient may have had an abnormal result days
before. The shells keep a store of minimal rows per result (keyed hashes of
patient and requisition, never identifiers in clear); before a message is
decided they look the patient and the requisition up and pass what they
found in as a `Context`. The core never reads a store.

Two pure functions live here:

- `extract(message, rule)`: the rows a store keeps for one message. Its
  patient and requisition keys are the raw identifiers: the shell turns them
  into keyed hashes (the key is a secret it reads from a file) before
  anything is stored.
- `veto(context, collected, rule)`: the context's reasons against a comment
  and the control IDs of the messages that gave them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from b12comment.core.dates import DayRange, age_at, parse_ts
from b12comment.core.decision import OTHER_ABNORMAL_RECENT, REQUISITION_PENDING
from b12comment.core.facts import MAX_SEGMENTS, _cheap_observation, match_b12
from b12comment.core.rule import ABNORMAL, NORMAL, UNKNOWN, judge_value
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import (
    DEFAULT_DELIMITERS,
    Malformed,
    component,
    field_of,
    read_header,
    segment_count,
    segment_fields,
    split_segments,
)

# A row is one OBX (kind "obx") or one OBR (kind "order": the order's status).
OBX, ORDER = "obx", "order"
# Verdicts of a later result that contradict an earlier comment (the review alert).
ABNORMAL_VERDICTS = (ABNORMAL,)
# The analyte of the one row per requisition kept for a message whose results
# were not read (more than MAX_SEGMENTS segments): a result that cannot be
# judged, so that no comment of the same patient or requisition relies on
# the results it holds.
NOT_READ = "(results not read: too many segments, or they could not be read)"
# The analyte of the one row per order (or per patient without an order) kept
# for a patient certainly an adult by the PID's own birth date: their results
# are not read (they can never get the comment themselves), but the
# identifiers are kept, as a result that cannot be judged, at an unknown time.
# A child's B12 under the same identifier (a birth date that disagrees, a
# message filed under the wrong patient) is then in doubt: no comment.
ADULT = "(results not read: an adult by this message's birth date)"


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
    verdict: str  # NORMAL, ABNORMAL or UNKNOWN as judge_value() gives it ("" for an order)
    status: str  # OBX-11 ("" for an order)
    order_status: str  # OBR-25 of its order
    collected: str  # OBX-14, else OBR-7, else SPM-17 (HL7 time stamp text)


@dataclass(frozen=True)
class Extract:
    control_id: str
    rows: tuple[ExtractedRow, ...]
    not_read: bool = False  # too many segments, or reading failed: `rows` are one NOT_READ row per requisition


@dataclass(frozen=True)
class PriorResult:
    """A row of the store, as the shell hands it to the core."""

    seq: int  # arrival order: later rows supersede earlier ones of the same key
    control_id: str
    requisition: str  # opaque (a keyed hash): only compared for equality; "" = none
    same_requisition: bool  # the requisition is one of the message's own
    kind: str
    analyte: str
    is_b12: bool
    verdict: str
    status: str
    order_status: str
    collected: str


@dataclass(frozen=True)
class Context:
    """What is known beyond the message: its own rows (seq == `seq`) may be
    among `results`; they are judged in the message itself, not here."""

    seq: int = 0
    results: tuple[PriorResult, ...] = ()
    lookback_days: float = 30.0


def extract(
    message: bytes, rule: RuleConfig, lookback_days: float = 30.0, *, skip_adults: bool = True
) -> Extract | None:
    """The store's rows for one result message; None for what is not one
    (unreadable, or a message type the rule does not look at). A patient who
    was certainly an adult `lookback_days` before the message's collection
    can never get the comment, so their results are not read: one ADULT row
    per order (per patient without one) instead, a result that cannot be
    judged under the same keys, at an unknown time; judged per PID
    (`skip_adults=False`: the rows of every result, for tests that compare).
    A message of more than MAX_SEGMENTS segments is not read: its rows are
    one result that cannot be judged per requisition (`not_read`), which
    vetoes a comment of its patient and requisitions, never makes one. So is
    a result message whose reading fails part-way (a result we cannot read
    is doubt). Total: never raises."""
    try:
        return _extract(message, rule, lookback_days, skip_adults)
    except Exception:
        try:
            return _not_read(message, read_header(message).control_id, rule)
        except Exception:
            return None


def _adult_from(message: bytes, header, lookback_days: float):
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


def _is_adult(birth_field: bytes, earliest, rule: RuleConfig) -> bool:
    """PID-7 says 18 or older on `earliest`; any doubt says no."""
    if earliest is None:
        return False
    birth = parse_ts(birth_field.decode("latin-1").strip())
    age = age_at(birth, DayRange(earliest, earliest)) if birth is not None else None
    return age is not None and age.youngest >= rule.adult_age_years


def _segment_at(message: bytes, start: int) -> bytes:
    ends = [e for e in (message.find(b"\r", start), message.find(b"\n", start)) if e != -1]
    return message[start : min(ends) if ends else len(message)]


def _extract(message: bytes, rule: RuleConfig, lookback_days: float, skip_adults: bool) -> Extract | None:
    try:
        header = read_header(message)
    except Malformed:
        return None
    if not header.delimiters.valid:
        return None
    if f"{header.message_code.upper()}^{header.trigger_event.upper()}" not in rule.message_types:
        return None
    d = header.delimiters
    if segment_count(message) > MAX_SEGMENTS:
        return _not_read(message, header.control_id, rule)
    may_hold_b12 = any(cm.code.encode("ascii") in message for cm in rule.codes)  # as the engine's pre-check
    codec = "latin-1"  # identifiers are hashed as bytes; codes and statuses are ASCII
    rows: list[ExtractedRow] = []
    patient_keys: tuple[bytes, ...] = ()
    orc4 = b""
    requisition = b""
    order_status = order_time = specimen_time = ""
    obx_index = 0

    def text(raw: bytes) -> str:
        return raw.decode(codec).strip()

    # A patient certainly an adult by this PID's birth date: their results are
    # not read; each of their orders (or, with none, the patient) is one ADULT
    # row instead. Judged per PID, at the message's collection less the look-back.
    earliest = _adult_from(message, header, lookback_days) if skip_adults else None
    adult = adult_without_row = False
    for seg in split_segments(message, header.start):
        name = seg.name
        if name not in (b"PID", b"ORC", b"OBR", b"SPM", b"OBX") or (adult and name in (b"SPM", b"OBX")):
            continue
        fields = segment_fields(message, seg, d)
        if name == b"PID":
            if adult_without_row:
                rows.append(_unknown_row(len(rows) + 1, patient_keys, b""))
            patient_keys = _patient_keys(fields, d)
            adult = _is_adult(component(field_of(fields, 7), d, 1), earliest, rule)
            adult_without_row = adult
            orc4 = b""
        elif name == b"ORC":
            orc4 = _first_rep(field_of(fields, 4), d).strip()
        elif name == b"OBR":
            requisition = _requisition(orc4, fields, d)
            order_status = text(component(field_of(fields, 25), d, 1)).upper()
            order_time = text(component(field_of(fields, 7), d, 1))
            specimen_time = ""
            if adult:
                rows.append(_unknown_row(len(rows) + 1, patient_keys, requisition))
                adult_without_row = False
                continue
            rows.append(
                ExtractedRow(
                    row_index=len(rows) + 1,
                    patient_keys=patient_keys,
                    requisition_key=requisition,
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
            obs = _cheap_observation(fields, header, codec, obx_index, 0, 0)
            b12_code = match_b12(field_of(fields, 3), d, rule) if may_hold_b12 else None
            rows.append(
                ExtractedRow(
                    row_index=len(rows) + 1,
                    patient_keys=patient_keys,
                    requisition_key=requisition,
                    kind=OBX,
                    analyte=b12_code or text(component(field_of(fields, 3), d, 1)),
                    is_b12=b12_code is not None,
                    verdict=judge_value(obs, rule),
                    status=obs.status,
                    order_status=order_status,
                    collected=obs.observed_at or order_time or specimen_time,
                )
            )
    if adult_without_row:  # the last patient had no order: one row for them
        rows.append(_unknown_row(len(rows) + 1, patient_keys, b""))
    return Extract(header.control_id, tuple(rows))


def _unknown_row(
    row_index: int, patient_keys: tuple[bytes, ...], requisition: bytes, analyte: str = ADULT
) -> ExtractedRow:
    """A result that cannot be judged (`analyte` ADULT or NOT_READ), collected
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
        _unknown_row(i, patients, requisition, NOT_READ)
        for i, requisition in enumerate(sorted(found.requisitions) or [b""], start=1)
    )
    return Extract(control_id, rows, not_read=True)


def _patient_keys(fields: list[bytes], d) -> tuple[bytes, ...]:
    """Each PID-3 identifier with its assigning authority."""
    keys = []
    for rep in field_of(fields, 3).split(d.repetition) if d.repetition else [field_of(fields, 3)]:
        ident = component(rep, d, 1).strip()
        if ident:
            keys.append(ident + b"\x00" + _whole_component(rep, d, 4).strip())
    return tuple(dict.fromkeys(keys))


def _requisition(orc4: bytes, fields: list[bytes], d) -> bytes:
    """ORC-4 (the last ORC's, within the patient), else OBR-2, else OBR-3."""
    placer = _first_rep(field_of(fields, 2), d).strip()
    filler = _first_rep(field_of(fields, 3), d).strip()
    if orc4:
        return b"ORC-4\x00" + orc4
    if placer:
        return b"OBR-2\x00" + placer
    if filler:
        return b"OBR-3\x00" + filler
    return b""


@dataclass(frozen=True)
class Keys:
    """The identifiers a message's rows are found by (raw: the shell hashes them)."""

    patients: frozenset[bytes]
    requisitions: frozenset[bytes]


_KEY_SEGMENTS = (b"PID", b"ORC", b"OBR")


def keys(message: bytes, rule: RuleConfig) -> Keys | None:
    """The same patient and requisition keys `extract` gives the message's
    rows, found without reading its results (a byte search for PID, ORC and
    OBR): what replay's first pass needs to know which messages to keep.
    None where `extract` gives None. Total: never raises."""
    try:
        header = read_header(message)
        if not header.delimiters.valid:
            return None
        if f"{header.message_code.upper()}^{header.trigger_event.upper()}" not in rule.message_types:
            return None
        d = header.delimiters
        starts = []
        for name in _KEY_SEGMENTS:
            for sep in (b"\r", b"\n"):
                pattern = sep + name  # a segment's name is its first three bytes, as for extract
                i = message.find(pattern, header.start)
                while i != -1:
                    starts.append(i + 1)
                    i = message.find(pattern, i + 1)
        starts.sort()
        patients: set[bytes] = set()
        requisitions: set[bytes] = set()
        orc4 = b""
        for start in starts:
            ends = [e for e in (message.find(b"\r", start), message.find(b"\n", start)) if e != -1]
            fields = message[start : min(ends) if ends else len(message)].split(d.field)
            name = fields[0][:3]
            if name == b"PID":
                patients.update(_patient_keys(fields, d))
                orc4 = b""
            elif name == b"ORC":
                orc4 = _first_rep(field_of(fields, 4), d).strip()
            else:
                requisition = _requisition(orc4, fields, d)
                if requisition:
                    requisitions.add(requisition)
        return Keys(frozenset(patients), frozenset(requisitions))
    except Exception:
        return None


_DEFAULT_MSH = b"MSH|^~\\&"  # the usual encoding characters (a fifth, truncation, changes no key)
_PID, _ORC, _OBR = range(3)
_KEY_SEGMENTS_BY_NAME = {b"PID": _PID, b"ORC": _ORC, b"OBR": _OBR}


def possible_keys(message: bytes) -> tuple[bytes, ...] | None:
    """Every raw key `extract` could give the message's rows (its ADULT rows
    included), under any rule: each PID-3 identifier with its assigning
    authority and each order's requisition (no message type is checked, so
    it can be more, never fewer). Read from the PID, ORC and OBR lines alone
    (a line's name is its first three bytes, as for `extract`), quickest
    where the message has the usual encoding characters and only CR line
    ends. () for a message `extract` cannot read; None if the keys could not
    be found (the caller must then assume any)."""
    try:
        if message.startswith(_DEFAULT_MSH) and b"\n" not in message:
            return _keys_by_lines(message)
        return _keys_by_segments(message)
    except Exception:
        return None


def _keys_by_lines(message: bytes) -> tuple[bytes, ...]:
    """possible_keys of a message with CR line ends and |^~\\& (the same as
    _keys_by_segments gives it: a test holds them equal)."""
    found: dict[bytes, None] = {}
    orc4 = b""
    kind_of = _KEY_SEGMENTS_BY_NAME.get
    for line in message.split(b"\r"):
        kind = kind_of(line[:3])
        if kind is None:
            continue
        if kind == _PID:
            fields = line.split(b"|", 4)
            pid3 = fields[3] if len(fields) > 3 else b""
            if b"~" in pid3 or b"&" in pid3:
                found.update(dict.fromkeys(_patient_keys(fields, DEFAULT_DELIMITERS)))
            else:
                parts = pid3.split(b"^", 4)
                ident = parts[0].strip()
                if ident:
                    found[ident + b"\x00" + (parts[3].strip() if len(parts) > 3 else b"")] = None
            orc4 = b""
        elif kind == _ORC:
            fields = line.split(b"|", 5)
            orc4 = fields[4].split(b"~", 1)[0].strip() if len(fields) > 4 else b""
        elif orc4:
            found[b"ORC-4\x00" + orc4] = None
        else:
            requisition = _requisition(b"", line.split(b"|", 4), DEFAULT_DELIMITERS)
            if requisition:
                found[requisition] = None
    return tuple(found)


def _keys_by_segments(message: bytes) -> tuple[bytes, ...]:
    try:
        header = read_header(message)
    except Malformed:
        return ()
    d = header.delimiters
    if not d.valid:
        return ()
    found: dict[bytes, None] = {}
    orc4 = b""
    for seg in split_segments(message, header.start):
        if seg.name == b"PID":
            found.update(dict.fromkeys(_patient_keys(segment_fields(message, seg, d), d)))
            orc4 = b""
        elif seg.name == b"ORC":
            orc4 = _first_rep(field_of(segment_fields(message, seg, d), 4), d).strip()
        elif seg.name == b"OBR":
            requisition = _requisition(orc4, segment_fields(message, seg, d), d)
            if requisition:
                found[requisition] = None
    return tuple(found)


def _first_rep(raw: bytes, d) -> bytes:
    return raw.split(d.repetition, 1)[0] if d.repetition else raw


def _whole_component(raw: bytes, d, k: int) -> bytes:
    """Component k of the first repetition with all its subcomponents."""
    parts = _first_rep(raw, d).split(d.component) if d.component else [raw]
    return parts[k - 1] if k <= len(parts) else b""


def latest(results: tuple[PriorResult, ...]) -> list[PriorResult]:
    """The newest row of each (requisition, kind, analyte): a final result
    supersedes its preliminary one, a correction the result it corrects.
    Rows of a message without a requisition number supersede nothing."""
    newest: dict[tuple[str, str, str], PriorResult] = {}
    for r in results:
        key = (r.requisition or f"seq:{r.seq}", r.kind, r.analyte)  # no requisition: each message its own
        if key not in newest or r.seq >= newest[key].seq:
            newest[key] = r
    return sorted(newest.values(), key=lambda r: r.seq)


def _within(collected: str, b12_collected: str, days: float) -> bool:
    """Collected within `days` of the B12 (either side). An unknown time
    counts as within: doubt never makes a comment."""
    a, b = parse_ts(collected) if collected else None, parse_ts(b12_collected) if b12_collected else None
    if a is None or b is None:
        return True
    gap = max((a.first - b.last).days, (b.first - a.last).days, 0)
    return gap <= days


def veto(context: Context, b12_collected: str, rule: RuleConfig) -> tuple[list[str], list[str]]:
    """(reasons, control IDs of the messages that gave them) against a comment
    on a B12 collected at `b12_collected`.

    - `requisition_pending`: an order of the same requisition is not final
      (OBR-25), or one of its results is still pending (OBX-11);
    - `other_abnormal_recent`: another result (not a B12) of the same
      requisition, or of the same patient collected within the look-back,
      is abnormal or cannot be judged (unknown, pending).
    """
    reasons: dict[str, None] = {}
    vetoes: dict[str, None] = {}
    for r in latest(context.results):
        if r.seq == context.seq:
            continue  # the message itself: the rule judges it from its own bytes
        found = None
        if r.kind == ORDER:
            if r.same_requisition and _order_not_final(r.order_status, rule):
                found = REQUISITION_PENDING
        elif r.is_b12 or r.status in rule.ignored_statuses:
            continue
        elif r.same_requisition and r.status in rule.pending_statuses:
            found = REQUISITION_PENDING
        elif (r.same_requisition or _within(r.collected, b12_collected, context.lookback_days)) and (
            r.verdict != NORMAL or r.status in rule.pending_statuses
        ):
            found = OTHER_ABNORMAL_RECENT
        if found is not None:
            reasons[found] = None
            vetoes[r.control_id] = None
    return list(reasons), list(vetoes)


def _order_not_final(status: str, rule: RuleConfig) -> bool:
    """An order status (OBR-25) stated and neither final nor cancelled: the
    same test the rule applies to the orders of the message itself. Empty is
    "not stated": the order's results (OBX-11) decide."""
    return bool(status) and status not in rule.final_order_statuses and status not in rule.cancelled_order_statuses
