"""The facts the rule needs, read from a message's bytes.

Segments are found by byte offset (framing). The total-B12 OBX results are
identified by exact code match on OBX-3 components. Their fields, and PID-7,
OBR-7, SPM-17 and MSH-7, are read field by field (no whole-message parse) with
hl7apy's meaning: from the bytes where hl7apy would give the value back
unchanged, else with hl7apy behind a cache (tests/test_field_differential.py
holds the two equal). Every other OBX is read cheaply from the bytes (flags,
range, value, status), and only for a message that needs them. Nothing here
decides anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from functools import lru_cache
from typing import NamedTuple

from hl7apy import SUPPORTED_LIBRARIES
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Field, is_base_datatype
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_field

from b12comment.core.charset import decode
from b12comment.core.escapes import unescape
from b12comment.core.frozen import once, quick_init
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
# A message with more segments than this is not read at all (no comment,
# too_many_segments; no row per result in the context store): reading every
# other result of a huge message would cost time and memory in proportion
# to it, tens of seconds and many times its size at 400,000 OBX. The largest
# message of the corpus has under 1,000 segments.
MAX_SEGMENTS = 10_000


@quick_init
@dataclass(frozen=True)
class Observation:
    """One OBX: its number (obx_index), OBR group and the fields the rule reads."""

    obx_index: int  # 1-based among the message's OBX segments
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
    code_system: str = ""  # OBX-3 coding system of the first identifier given
    code_text: str = ""  # OBX-3 text of the first identifier given
    repeated: bool = False  # OBX-5 holds more than one non-empty repetition (`value` is the first)


@quick_init
@dataclass(frozen=True)
class B12Result:
    observation: Observation
    code: str
    last_segment: int  # index of the OBX or of the last NTE under it
    nte_texts: tuple[bytes, ...]  # raw NTE-3 of the NTEs already under it
    nte_set_ids: tuple[str, ...]
    fields: tuple[bytes, ...] = ()  # the OBX's raw fields
    detailed: bool = False  # observation read with hl7apy (read_detail)


class ObxAt(NamedTuple):
    """Where one OBX stands: read into an Observation only when asked."""

    obx_index: int  # 1-based among the message's OBX segments
    segment_index: int
    group: int


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
    b12: tuple[B12Result, ...]
    order_statuses: dict[int, str] = dc_field(default_factory=dict)  # OBR group -> OBR-25 ("" = not stated)
    message: bytes = b""
    obx_at: tuple[ObxAt, ...] = ()  # every OBX, in order

    @once
    def observations(self) -> tuple[Observation, ...]:
        """Every OBX read cheaply from the bytes, once, and only for a message
        that needs them (the context of a paediatric B12 result)."""
        out = []
        for at in self.obx_at:
            fields = segment_fields(self.message, self.segments[at.segment_index], self.header.delimiters)
            out.append(cheap_observation(fields, self.header, self.codec, at.obx_index, at.segment_index, at.group))
        return tuple(out)


def _position(name: str | None) -> int | None:
    """1-based component position from an hl7apy child name (CE_3 -> 3, DTM -> 1)."""
    if not name:
        return None
    suffix = name.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else (1 if "_" not in name else None)


# hl7apy data types whose value comes back from to_er7() as it went in (no
# escape, component or subcomponent character in it), and those it reads as a
# date and writes again with strftime (which rewrites a year below 1000).
_TEXT_TYPES = frozenset({"ST", "ID", "IS", "TX", "FT"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
# A date hl7apy gives back unchanged: a four-digit year from 1000, then pairs
# of digits (month, day, hour, minute, second); no fraction, no offset.
_PLAIN_DATE = re.compile(r"[1-9]\d{3}(?:\d\d){0,5}")


@dataclass(frozen=True)
class FieldShape:
    """What hl7apy makes of a field: `kind` is "text" or "date" (a base type),
    "composite" (components of the kinds in `parts`), "varies" (OBX-5), or
    "other" (always read with hl7apy)."""

    kind: str
    parts: tuple[str, ...] = ()


def _kind_of(datatype: str | None) -> str:
    if datatype in _TEXT_TYPES:
        return "text"
    if datatype in _DATE_TYPES:
        return "date"
    return "other"


@lru_cache(maxsize=256)
def field_shape(name: str, version: str) -> FieldShape:
    """The shape of field `name` in `version`, from hl7apy's own reference."""
    try:
        field = Field(name, version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    except HL7apyException:
        return FieldShape("other")
    datatype = field.datatype
    if datatype == "varies":
        return FieldShape("varies")
    if datatype is None:
        return FieldShape("other")
    if is_base_datatype(datatype, version):
        kind = _kind_of(datatype)
        return FieldShape(kind if kind == "text" or datatype in ("DT", "DTM") else "other")
    structure = field.structure_by_name or {}
    parts = []
    for i in range(1, len(structure) + 1):
        ref = (structure.get(f"{datatype}_{i}") or {}).get("ref")
        parts.append(_kind_of(ref[2]) if ref else "other")
    return FieldShape("composite", tuple(parts)) if parts else FieldShape("other")


def fast_components(text: str, shape: FieldShape, enc: dict[str, str]) -> list[str] | None:
    """The components hl7apy would give for one repetition, read from the text
    alone; None where hl7apy could change or reject it (then hl7apy reads it).
    The field-level differential test holds this equal to hl7apy_components()."""
    if shape.kind == "other" or not text.strip():
        return None
    if enc["ESCAPE"] in text or enc["SUBCOMPONENT"] in text or enc.get("TRUNCATION", "\r") in text:
        return None
    comps = text.split(enc["COMPONENT"])
    if shape.kind == "text":
        return comps if len(comps) == 1 else None
    if shape.kind == "date":
        return comps if len(comps) == 1 and _PLAIN_DATE.fullmatch(text) else None
    if shape.kind == "varies":
        return None if any(c and not c.strip() for c in comps) else comps
    if len(comps) > len(shape.parts):
        return None
    last = 0
    for i, (c, part) in enumerate(zip(comps, shape.parts, strict=False)):
        if not c:
            continue
        if not c.strip() or part == "other" or (part == "date" and not _PLAIN_DATE.fullmatch(c)):
            return None
        last = i + 1
    return comps[:last]


def hl7apy_components(text: str, name: str, version: str, enc: dict[str, str]) -> list[str]:
    """One repetition of field `name`, read with hl7apy: its components
    (1-based positions kept; empty ones are ""). May raise HL7apyException."""
    field = parse_field(
        text,
        name=name,
        version=version,
        encoding_chars=enc,
        validation_level=VALIDATION_LEVEL.TOLERANT,
    )
    comps: dict[int, str] = {}
    children = list(field.children)
    positions = [_position(child.name) for child in children]
    named = [p for p in positions if p is not None]
    if len(named) != len(positions):
        # More components than the data type has: hl7apy leaves the extra
        # ones unnamed. Its children are the non-empty components in order.
        raw_comps = text.split(enc["COMPONENT"])
        named = [i + 1 for i, c in enumerate(raw_comps) if c]
        if len(named) != len(children):
            raise HL7apyException(f"cannot place the components of {name}")
    for position, child in zip(named, children, strict=False):
        comps[position] = child.to_er7(encoding_chars=enc)
    size = max(comps, default=0)
    return [comps.get(i, "") for i in range(1, size + 1)]


@lru_cache(maxsize=4096)
def _cached_hl7apy(
    raw: bytes, name: str, version: str, enc_items: tuple[tuple[str, str], ...], codec: str
) -> tuple[str, ...]:
    """hl7apy_components() of the raw repetition, remembered (an error is not:
    lru_cache keeps only what returns)."""
    return tuple(hl7apy_components(decode(raw, codec), name, version, dict(enc_items)))


class FieldReader:
    """Reads single fields with the message's own delimiters: from the bytes
    where hl7apy would give them back unchanged, else with hl7apy (cached)."""

    def __init__(self, header: Header, codec: str):
        self._setup(header.delimiters, header.version, codec)

    def _setup(self, d: Delimiters, version: str, codec: str) -> None:
        self.delims = d
        self.codec = codec
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
        self._enc_items = tuple(sorted(self.encoding_chars.items()))

    def components(self, raw: bytes, name: str) -> list[list[str]]:
        """Field `name` (e.g. "OBX_5"): per repetition, its components (1-based
        positions kept; empty ones are "")."""
        shape = field_shape(name, self.version)
        result: list[list[str]] = []
        for rep in repetitions(raw, self.delims):
            if not rep:
                result.append([])
                continue
            fast = fast_components(decode(rep, self.codec), shape, self.encoding_chars)
            if fast is None:
                fast = list(_cached_hl7apy(rep, name, self.version, self._enc_items, self.codec))
            result.append(fast)
        return result

    def first(self, raw: bytes, name: str, k: int = 1) -> str:
        reps = self.components(raw, name)
        comps = reps[0] if reps else []
        value = comps[k - 1] if k <= len(comps) else ""
        return value.split(self.encoding_chars["SUBCOMPONENT"], 1)[0].strip()


def reader_for(header: Header, codec: str) -> FieldReader:
    """The FieldReader for a header (made once per delimiters, version and
    codec: it depends on nothing else)."""
    return _reader(header.delimiters, header.version, codec)


@lru_cache(maxsize=64)
def _reader(delimiters: Delimiters, version: str, codec: str) -> FieldReader:
    reader = FieldReader.__new__(FieldReader)
    reader._setup(delimiters, version, codec)
    return reader


def obx3_codes(raw: bytes, delims: Delimiters) -> list[tuple[str, str]]:
    """(identifier, coding system) pairs of OBX-3: primary, alternate, second alternate."""
    rep = raw.split(delims.repetition, 1)[0] if delims.repetition else raw
    comps = rep.split(delims.component) if delims.component else [rep]
    ss = delims.subcomponent

    def at(k: int) -> str:  # component(raw, delims, k), decoded
        if k > len(comps):
            return ""
        value = comps[k - 1]
        if ss:
            value = value.split(ss, 1)[0]
        return value.decode("latin-1").strip()

    pairs = []
    for ident, system in ((1, 3), (4, 6), (10, 12)):
        code = at(ident)
        if code:
            pairs.append((code, at(system)))
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
    """OBX-7 as written, its components (a range sent SN-shaped, `>^11.0`)
    joined by `^` and repetitions (two ranges in one field) by `~`:
    present-but-odd is never read as empty, nor as its first part."""
    reps = []
    for rep in raw.split(delims.repetition) if delims.repetition else [raw]:
        comps = [_text(unescape(c, delims), codec) for c in rep.split(delims.component)]
        while comps and not comps[-1]:
            comps.pop()
        reps.append("^".join(comps))
    while reps and not reps[-1]:
        reps.pop()
    return "~".join(reps)


def cheap_observation(
    fields: list[bytes], header: Header, codec: str, obx_index: int, index: int, group: int
) -> Observation:
    """One OBX read from its bytes: by `plain_observation` when the fields it
    reads hold no repetition, subcomponent or escape character (one of each
    field, as written), else by `observation_in_full`. A differential test
    holds the two equal wherever the first applies."""
    d = header.delimiters
    if d.component:
        read = b"".join(fields[2:15])
        if (
            d.repetition not in read
            and not (d.subcomponent and d.subcomponent in read)
            and not (d.escape and d.escape in read)
        ):
            return plain_observation(fields, d.component, codec, obx_index, index, group)
    return observation_in_full(fields, header, codec, obx_index, index, group)


def plain_observation(
    fields: list[bytes], cs: bytes, codec: str, obx_index: int, index: int, group: int
) -> Observation:
    """cheap_observation of an OBX whose fields 2 to 14 hold no repetition,
    subcomponent or escape character (the caller checks): each field is its
    components, as written."""
    text = "latin-1" if codec == "ascii" else codec  # as charset.decode reads
    n = len(fields)

    def comps(k: int) -> list[bytes]:
        return fields[k].split(cs) if k < n else [b""]

    def read(raw: bytes) -> str:
        return raw.decode(text, errors="replace").strip() if raw else ""

    raw_value = fields[5] if n > 5 else b""
    value = tuple(c.decode(text, errors="replace").strip() for c in raw_value.split(cs))
    flag = read(comps(8)[0])
    units = comps(6)
    obx3 = comps(3)
    primary = 0 if read(obx3[0]) else 3  # the alternate identifier where the primary is empty
    codes = []
    for k in (0, 3, 9):  # obx3_codes' identifiers (latin-1, whatever the codec)
        code = obx3[k].decode("latin-1").strip() if k < len(obx3) else ""
        if code:
            codes.append(code)
    range_parts = [read(c) for c in comps(7)]
    while range_parts and not range_parts[-1]:
        range_parts.pop()
    return Observation(
        obx_index=obx_index,
        segment_index=index,
        group=group,
        value_type=read(comps(2)[0]).upper(),
        value=value,
        units=read(units[0]) or (read(units[1]) if len(units) > 1 else ""),
        range_text="^".join(range_parts),
        flags=(flag,) if flag else (),
        status=read(comps(11)[0]).upper(),
        observed_at=read(comps(14)[0]),
        codes=tuple(codes),
        code_system=read(obx3[primary + 2]) if len(obx3) > primary + 2 else "",
        code_text=read(obx3[primary + 1]) if len(obx3) > primary + 1 else "",
        repeated=False,
    )


def observation_in_full(
    fields: list[bytes], header: Header, codec: str, obx_index: int, index: int, group: int
) -> Observation:
    """cheap_observation of any OBX: repetitions, subcomponents and escapes read."""
    d = header.delimiters
    rs, cs, ss = d.repetition, d.component, d.subcomponent
    text = "latin-1" if codec == "ascii" else codec  # as charset.decode reads

    def first(n: int) -> list[bytes]:
        """Components of the first repetition of field n."""
        raw = fields[n] if n < len(fields) else b""
        if rs:
            raw = raw.split(rs, 1)[0]
        return raw.split(cs) if cs else [raw]

    def read(raw: bytes, escaped: bool = False) -> str:
        if ss:
            raw = raw.split(ss, 1)[0]
        if escaped:
            raw = unescape(raw, d)
        return raw.decode(text, errors="replace").strip() if raw else ""

    value = tuple(unescape(c, d).decode(text, errors="replace").strip() for c in first(5))
    raw_value = fields[5] if len(fields) > 5 else b""
    filled = [r for r in (raw_value.split(rs) if rs else [raw_value]) if r.strip(b" " + (cs or b"") + (ss or b""))]
    raw_flags = fields[8] if len(fields) > 8 else b""
    flags = []
    for rep in raw_flags.split(rs) if rs else [raw_flags]:
        flag = read(rep.split(cs, 1)[0] if cs else rep)
        if flag:
            flags.append(flag)
    units = first(6)
    obx3 = first(3)
    primary = 0 if read(obx3[0]) else 3  # the alternate identifier where the primary is empty
    code_text = read(obx3[primary + 1], True) if len(obx3) > primary + 1 else ""
    system = read(obx3[primary + 2]) if len(obx3) > primary + 2 else ""
    return Observation(
        obx_index=obx_index,
        segment_index=index,
        group=group,
        value_type=read(first(2)[0]).upper(),
        value=value,
        units=read(units[0], True) or (read(units[1], True) if len(units) > 1 else ""),
        range_text=_range_text(fields[7] if len(fields) > 7 else b"", d, codec),
        flags=tuple(flags),
        status=read(first(11)[0]).upper(),
        observed_at=read(first(14)[0]),
        codes=tuple(code for code, _ in obx3_codes(fields[3] if len(fields) > 3 else b"", d)),
        code_system=system,
        code_text=code_text,
        repeated=len(filled) > 1,
    )


def _unescaped(text: str, reader: FieldReader) -> str:
    """A component as hl7apy gives it back (escaped), with its escapes decoded."""
    if reader.encoding_chars["ESCAPE"] not in text:
        return text
    try:
        return decode(unescape(text.encode(reader.codec), reader.delims), reader.codec).strip()
    except (UnicodeError, LookupError):
        return text


def _hl7apy_observation(
    fields: list[bytes], reader: FieldReader, obx_index: int, index: int, group: int
) -> Observation:
    value_reps = reader.components(field_of(fields, 5), "OBX_5")
    value = tuple(c.strip() for c in value_reps[0]) if value_reps else ()
    flag_reps = reader.components(field_of(fields, 8), "OBX_8")
    flags = tuple(r[0].strip() for r in flag_reps if r and r[0].strip())
    unit_reps = reader.components(field_of(fields, 6), "OBX_6")
    unit_comps = [
        c.split(reader.encoding_chars["SUBCOMPONENT"], 1)[0].strip() for c in (unit_reps[0] if unit_reps else [])
    ]
    units = _unescaped(next((c for c in unit_comps[:2] if c), ""), reader)
    return Observation(
        obx_index=obx_index,
        segment_index=index,
        group=group,
        value_type=reader.first(field_of(fields, 2), "OBX_2").upper(),
        value=value,
        units=units,
        range_text=_range_text(field_of(fields, 7), reader.delims, reader.codec),
        flags=flags,
        status=reader.first(field_of(fields, 11), "OBX_11").upper(),
        observed_at=reader.first(field_of(fields, 14), "OBX_14"),
        repeated=sum(1 for rep in value_reps if any(c.strip() for c in rep)) > 1,
    )


def read_detail(facts: Facts, result: B12Result) -> B12Result:
    """The B12 OBX's fields the rule needs, read with hl7apy."""
    reader = reader_for(facts.header, facts.codec)
    obs = result.observation
    detailed = _hl7apy_observation(list(result.fields), reader, obs.obx_index, obs.segment_index, obs.group)
    return replace(result, observation=detailed, detailed=True)


def code_search(rule: RuleConfig) -> Callable[..., re.Match[bytes] | None]:
    """The `search` of a pattern of the rule's codes as bytes: where it finds
    none, no configured code stands in the bytes, so match_b12 finds none
    (its codes are the components of those bytes, compared whole)."""
    return _code_pattern(tuple(sorted({cm.code for cm in rule.codes}))).search


@lru_cache(maxsize=16)
def _code_pattern(codes: tuple[str, ...]) -> re.Pattern[bytes]:
    """Any of the configured codes, as bytes (the cheap test of an OBX line)."""
    return re.compile(b"|".join(re.escape(c.encode("latin-1")) for c in codes) or b"(?!)")


@dataclass
class _OpenBlock:
    """The B12 OBX whose NTE block is being read."""

    obs: Observation
    code: str
    fields: list[bytes]
    last: int
    texts: list[bytes] = dc_field(default_factory=list)
    ids: list[str] = dc_field(default_factory=list)

    def result(self) -> B12Result:
        return B12Result(self.obs, self.code, self.last, tuple(self.texts), tuple(self.ids), tuple(self.fields))


def read_facts(message: bytes, header: Header, codec: str, rule: RuleConfig) -> Facts:
    """Read everything the rule needs. May raise hl7apy errors on broken fields.

    Only the B12 OBX are read here (cheaply, from the bytes); the other OBX
    are found, not read (Facts.observations reads them when asked)."""
    d = header.delimiters
    segments = tuple(split_segments(message, header.start))
    reader = reader_for(header, codec)
    may_hold_code = code_search(rule)
    patient_count = 0
    raw_birth = b""
    raw_order_times: dict[int, bytes] = {}  # read only where a B12 needs them
    raw_specimen_times: dict[int, bytes] = {}
    order_statuses: dict[int, str] = {}  # OBR-25 of every order, read cheaply
    obx_at: list[ObxAt] = []
    b12: list[B12Result] = []
    group = 0
    block: _OpenBlock | None = None

    for index, seg in enumerate(segments):
        name = seg.name
        if name == b"NTE" and block is not None:
            fields = segment_fields(message, seg, d)
            block.last = index
            block.texts.append(field_of(fields, 3))
            block.ids.append(_text(field_of(fields, 1), codec))
            continue
        if block is not None:
            b12.append(block.result())
            block = None
        if name == b"OBX":
            obx_index = len(obx_at) + 1
            obx_at.append(ObxAt(obx_index, index, group))
            if may_hold_code(message, seg.start, seg.end) is None:  # no configured code stands in it
                continue
            fields = segment_fields(message, seg, d)
            code = match_b12(field_of(fields, 3), d, rule)
            if code is not None:
                # Read cheaply now; the collection time with the field reader
                # below, and the rest only if the age says so (read_detail).
                obs = cheap_observation(fields, header, codec, obx_index, index, group)
                block = _OpenBlock(obs, code, fields, index)
        elif name == b"PID":
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
    if block is not None:
        b12.append(block.result())
    birth = message_time = ""
    order_times: dict[int, str] = {}
    specimen_times: dict[int, str] = {}
    if b12 and len(b12) <= MAX_B12_RESULTS:  # else nothing more is read: no comment either way
        b12 = [
            replace(
                r, observation=replace(r.observation, observed_at=reader.first(field_of(list(r.fields), 14), "OBX_14"))
            )
            for r in b12
        ]
        groups = {r.observation.group for r in b12}
        birth = reader.first(raw_birth, "PID_7")
        message_time = reader.first(header.field(7), "MSH_7") if rule.use_message_time else ""
        order_times = {g: reader.first(raw, "OBR_7") for g, raw in raw_order_times.items() if g in groups}
        specimen_times = {g: reader.first(raw, "SPM_17") for g, raw in raw_specimen_times.items() if g in groups}
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
        b12=tuple(b12),
        order_statuses=order_statuses,
        message=message,
        obx_at=tuple(obx_at),
    )
