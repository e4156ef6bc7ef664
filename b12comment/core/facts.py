"""The facts the rule needs, read from a message's bytes.

Segments are found by byte offset (framing). The total-B12 OBX results are
identified by exact code match on OBX-3 components. Their fields, and PID-7,
OBR-7, SPM-17 and MSH-7, are read with hl7apy field by field (no whole-message
parse). Every other OBX is read cheaply from the bytes: flags, range, value,
status. Nothing here decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hl7apy import SUPPORTED_LIBRARIES
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_field

from b12comment.core.charset import decode
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import (
    Delimiters,
    Header,
    Segment,
    component,
    field_of,
    repetitions,
    segment_fields,
    split_segments,
)

FALLBACK_VERSION = "2.5.1"
# More total-B12 results than this in one message is not a lab report of one
# sample: no comment, and nothing of them is read with hl7apy (a 1 MiB message
# of B12 OBX segments would otherwise take seconds).
MAX_B12_RESULTS = 10


@dataclass(frozen=True)
class Observation:
    """One OBX: its position, OBR group and the fields the rule reads."""

    position: int  # 1-based among the message's OBX segments
    segment_index: int  # index into Facts.segments
    group: int  # OBR group (0 = before any OBR)
    value_type: str
    value: tuple[str, ...]  # components of OBX-5, first repetition
    units: str
    range_text: str
    flags: tuple[str, ...]  # OBX-8, one per repetition (first component)
    status: str
    observed_at: str  # OBX-14
    codes: tuple[str, ...] = ()  # OBX-3 identifiers: primary, alternate, second alternate


@dataclass(frozen=True)
class B12Result:
    observation: Observation
    code: str
    last_segment: int  # index of the OBX or of the last NTE under it
    nte_texts: tuple[bytes, ...]  # raw NTE-3 of the NTEs already under it
    nte_set_ids: tuple[str, ...]
    fields: tuple[bytes, ...] = ()  # the OBX's raw fields
    detailed: bool = False  # observation read with hl7apy (read_detail)


@dataclass(frozen=True)
class Facts:
    header: Header
    segments: tuple[Segment, ...]
    codec: str
    hl7_version: str  # the version hl7apy reads with
    notes: tuple[str, ...]
    patient_count: int
    birth: str  # PID-7 (first component)
    message_time: str  # MSH-7
    order_times: dict[int, str]  # OBR group -> OBR-7
    specimen_times: dict[int, str]  # OBR group -> SPM-17 (start)
    observations: tuple[Observation, ...]
    b12: tuple[B12Result, ...]
    order_statuses: dict[int, str] = field(default_factory=dict)  # OBR group -> OBR-25 ("" = not stated)


def _position(name: str | None) -> int | None:
    """1-based component position from an hl7apy child name (CE_3 -> 3, DTM -> 1)."""
    if not name:
        return None
    suffix = name.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else (1 if "_" not in name else None)


class FieldReader:
    """Reads single fields with hl7apy, with the message's own delimiters."""

    def __init__(self, header: Header, codec: str):
        d = header.delimiters
        self.delims = d
        self.codec = codec
        version = header.version
        self.notes: tuple[str, ...] = ()
        if version not in SUPPORTED_LIBRARIES:
            self.notes = (f"version {version or '(empty)'} read as {FALLBACK_VERSION}",)
            version = FALLBACK_VERSION
        self.version = version
        spare = iter(c for c in (b"\\", b"&", b"\x1a", b"\x1f", b"\x1e") if c not in d.special())
        escape = d.escape or next(spare)
        subcomponent = d.subcomponent or next(spare)
        self.encoding_chars = {
            "GROUP": "\r",
            "SEGMENT": "\r",
            "FIELD": d.field.decode("latin-1"),
            "COMPONENT": d.component.decode("latin-1"),
            "SUBCOMPONENT": subcomponent.decode("latin-1"),
            "REPETITION": d.repetition.decode("latin-1"),
            "ESCAPE": escape.decode("latin-1"),
        }
        if d.truncation:
            self.encoding_chars["TRUNCATION"] = d.truncation.decode("latin-1")

    def components(self, raw: bytes, name: str) -> list[list[str]]:
        """Field `name` (e.g. "OBX_5"): per repetition, its components (1-based
        positions kept; empty ones are "")."""
        result: list[list[str]] = []
        for rep in repetitions(raw, self.delims):
            if not rep:
                result.append([])
                continue
            text = decode(rep, self.codec)
            field = parse_field(
                text,
                name=name,
                version=self.version,
                encoding_chars=self.encoding_chars,
                validation_level=VALIDATION_LEVEL.TOLERANT,
            )
            comps: dict[int, str] = {}
            children = list(field.children)
            positions = [_position(child.name) for child in children]
            named = [p for p in positions if p is not None]
            if len(named) != len(positions):
                # More components than the data type has: hl7apy leaves the extra
                # ones unnamed. Its children are the non-empty components in order.
                raw_comps = text.split(self.encoding_chars["COMPONENT"])
                named = [i + 1 for i, c in enumerate(raw_comps) if c]
                if len(named) != len(children):
                    raise HL7apyException(f"cannot place the components of {name}")
            for position, child in zip(named, children, strict=False):
                comps[position] = child.to_er7(encoding_chars=self.encoding_chars)
            size = max(comps, default=0)
            result.append([comps.get(i, "") for i in range(1, size + 1)])
        return result

    def first(self, raw: bytes, name: str, k: int = 1) -> str:
        reps = self.components(raw, name)
        comps = reps[0] if reps else []
        value = comps[k - 1] if k <= len(comps) else ""
        return value.split(self.encoding_chars["SUBCOMPONENT"], 1)[0].strip()


def obx3_codes(raw: bytes, delims: Delimiters) -> list[tuple[str, str]]:
    """(identifier, coding system) pairs of OBX-3: primary, alternate, second alternate."""
    pairs = []
    for ident, system in ((1, 3), (4, 6), (10, 12)):
        code = component(raw, delims, ident).decode("latin-1").strip()
        if code:
            pairs.append((code, component(raw, delims, system).decode("latin-1").strip()))
    return pairs


def match_b12(raw_obx3: bytes, delims: Delimiters, rule: RuleConfig) -> str | None:
    for code, system in obx3_codes(raw_obx3, delims):
        for cm in rule.codes:
            if cm.matches(code, system):
                return code
    return None


def _text(raw: bytes, codec: str) -> str:
    return decode(raw, codec).strip()


def _range_text(raw: bytes, delims: Delimiters, codec: str) -> str:
    """OBX-7 as written, first repetition, with its components (a range sent
    SN-shaped, `>^11.0`) joined by `^`: present-but-odd is never read as empty."""
    first = raw.split(delims.repetition, 1)[0] if delims.repetition else raw
    comps = [_text(c, codec) for c in first.split(delims.component)]
    while comps and not comps[-1]:
        comps.pop()
    return "^".join(comps)


def _cheap_observation(
    fields: list[bytes], header: Header, codec: str, position: int, index: int, group: int
) -> Observation:
    d = header.delimiters
    value_raw = field_of(fields, 5)
    first_rep = value_raw.split(d.repetition, 1)[0] if d.repetition else value_raw
    value = tuple(_text(c, codec) for c in first_rep.split(d.component))
    flags = tuple(_text(component(rep, d, 1), codec) for rep in repetitions(field_of(fields, 8), d))
    return Observation(
        position=position,
        segment_index=index,
        group=group,
        value_type=_text(component(field_of(fields, 2), d, 1), codec).upper(),
        value=value,
        units=_text(component(field_of(fields, 6), d, 1), codec) or _text(component(field_of(fields, 6), d, 2), codec),
        range_text=_range_text(field_of(fields, 7), d, codec),
        flags=tuple(f for f in flags if f),
        status=_text(component(field_of(fields, 11), d, 1), codec).upper(),
        observed_at=_text(component(field_of(fields, 14), d, 1), codec),
        codes=tuple(code for code, _ in obx3_codes(field_of(fields, 3), d)),
    )


def _hl7apy_observation(fields: list[bytes], reader: FieldReader, position: int, index: int, group: int) -> Observation:
    value_reps = reader.components(field_of(fields, 5), "OBX_5")
    value = tuple(c.strip() for c in value_reps[0]) if value_reps else ()
    flag_reps = reader.components(field_of(fields, 8), "OBX_8")
    flags = tuple(r[0].strip() for r in flag_reps if r and r[0].strip())
    unit_reps = reader.components(field_of(fields, 6), "OBX_6")
    unit_comps = [
        c.split(reader.encoding_chars["SUBCOMPONENT"], 1)[0].strip() for c in (unit_reps[0] if unit_reps else [])
    ]
    units = next((c for c in unit_comps[:2] if c), "")
    return Observation(
        position=position,
        segment_index=index,
        group=group,
        value_type=reader.first(field_of(fields, 2), "OBX_2").upper(),
        value=value,
        units=units,
        range_text=_range_text(field_of(fields, 7), reader.delims, reader.codec),
        flags=flags,
        status=reader.first(field_of(fields, 11), "OBX_11").upper(),
        observed_at=reader.first(field_of(fields, 14), "OBX_14"),
    )


def read_detail(facts: Facts, result: B12Result) -> B12Result:
    """The B12 OBX's fields the rule needs, read with hl7apy."""
    reader = FieldReader(facts.header, facts.codec)
    obs = result.observation
    detailed = _hl7apy_observation(list(result.fields), reader, obs.position, obs.segment_index, obs.group)
    return replace(result, observation=detailed, detailed=True)


def read_facts(message: bytes, header: Header, codec: str, rule: RuleConfig) -> Facts:
    """Read everything the rule needs. May raise hl7apy errors on broken fields."""
    d = header.delimiters
    segments = tuple(split_segments(message, header.start))
    reader = FieldReader(header, codec)
    patient_count = 0
    raw_birth = b""
    raw_order_times: dict[int, bytes] = {}  # read with hl7apy only where a B12 needs them
    raw_specimen_times: dict[int, bytes] = {}
    order_statuses: dict[int, str] = {}  # OBR-25 of every order, read cheaply
    observations: list[Observation] = []
    b12: list[B12Result] = []
    group = 0
    open_b12: dict | None = None  # the B12 OBX whose NTE block is being read

    def close_block() -> None:
        nonlocal open_b12
        if open_b12 is not None:
            b12.append(
                B12Result(
                    open_b12["obs"],
                    open_b12["code"],
                    open_b12["last"],
                    tuple(open_b12["texts"]),
                    tuple(open_b12["ids"]),
                    tuple(open_b12["fields"]),
                )
            )
            open_b12 = None

    for index, seg in enumerate(segments):
        name = seg.name
        if name == b"NTE" and open_b12 is not None:
            fields = segment_fields(message, seg, d)
            open_b12["last"] = index
            open_b12["texts"].append(field_of(fields, 3))
            open_b12["ids"].append(_text(field_of(fields, 1), codec))
            continue
        close_block()
        if name == b"PID":
            patient_count += 1
            if patient_count == 1:
                raw_birth = field_of(segment_fields(message, seg, d), 7)
        elif name == b"OBR":
            group += 1
            obr = segment_fields(message, seg, d)
            raw_order_times[group] = field_of(obr, 7)
            order_statuses[group] = _text(component(field_of(obr, 25), d, 1), codec).upper()
        elif name == b"SPM" and group not in raw_specimen_times:
            raw_specimen_times[group] = field_of(segment_fields(message, seg, d), 17)
        elif name == b"OBX":
            fields = segment_fields(message, seg, d)
            position = len(observations) + 1
            code = match_b12(field_of(fields, 3), d, rule)
            if code is None:
                observations.append(_cheap_observation(fields, header, codec, position, index, group))
            else:
                # Read cheaply now; the collection time with hl7apy below, and the
                # rest only if the age says so (read_detail).
                obs = _cheap_observation(fields, header, codec, position, index, group)
                observations.append(obs)
                open_b12 = {"obs": obs, "code": code, "last": index, "texts": [], "ids": [], "fields": fields}
    close_block()
    if not b12 or len(b12) > MAX_B12_RESULTS:  # nothing more is read: no comment either way
        return Facts(
            header=header,
            segments=segments,
            codec=codec,
            hl7_version=reader.version,
            notes=reader.notes,
            patient_count=patient_count,
            birth="",
            message_time="",
            order_times={},
            specimen_times={},
            observations=tuple(observations),
            b12=tuple(b12),
            order_statuses=order_statuses,
        )
    b12 = [
        replace(r, observation=replace(r.observation, observed_at=reader.first(field_of(list(r.fields), 14), "OBX_14")))
        for r in b12
    ]
    birth = reader.first(raw_birth, "PID_7")
    b12_groups = {r.observation.group for r in b12}
    order_times = {g: reader.first(raw, "OBR_7") for g, raw in raw_order_times.items() if g in b12_groups}
    specimen_times = {g: reader.first(raw, "SPM_17") for g, raw in raw_specimen_times.items() if g in b12_groups}
    message_time = reader.first(header.field(7), "MSH_7") if rule.use_message_time else ""
    return Facts(
        header=header,
        segments=segments,
        codec=codec,
        hl7_version=reader.version,
        notes=reader.notes,
        patient_count=patient_count,
        birth=birth,
        message_time=message_time,
        order_times=order_times,
        specimen_times=specimen_times,
        observations=tuple(observations),
        b12=tuple(b12),
        order_statuses=order_statuses,
    )
