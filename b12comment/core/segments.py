"""The shape of one HL7 v2 message, read from its raw bytes.

Encoding characters from MSH-1/MSH-2, the segment terminator the sender used,
segment boundaries as byte offsets, and the few MSH fields every part of the
product needs (type, control ID, version, character set). Nothing here decodes
the whole message or changes a byte of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_LEADING_SPACE = b" \t\r\n\x00\xef\xbb\xbf"


class Malformed(Exception):
    """The bytes are not an HL7 v2 message that can be read; says why."""


@dataclass(frozen=True)
class Delimiters:
    field: bytes
    component: bytes
    repetition: bytes
    escape: bytes | None
    subcomponent: bytes | None  # None where MSH-2 has fewer than four characters
    truncation: bytes | None

    @cached_property
    def valid(self) -> bool:
        chars = [self.field, self.component, self.repetition, self.escape, self.subcomponent, self.truncation]
        present = [c for c in chars if c]
        return len(set(present)) == len(present) and not any(c in b"\r\n" or c.isalnum() for c in present)

    def special(self) -> tuple[bytes, ...]:
        return tuple(
            c
            for c in (self.field, self.component, self.repetition, self.escape, self.subcomponent, self.truncation)
            if c
        )


DEFAULT_DELIMITERS = Delimiters(b"|", b"^", b"~", b"\\", b"&", None)


class Segment(NamedTuple):
    """One segment's place in the message (a tuple: one is made per segment
    of every message, and a tuple is made fastest)."""

    name: bytes  # segment ID, e.g. b"OBX"
    start: int  # offset of the first byte
    end: int  # offset just past the content (before the terminator)
    next: int  # offset just past the terminator (== end when there is none)


@dataclass(frozen=True)
class Header:
    """What MSH says, read from bytes without hl7apy."""

    delimiters: Delimiters
    terminator: bytes
    fields: tuple[bytes, ...]  # fields[n] is MSH-n for n >= 1 (fields[0] is b"MSH")
    start: int  # offset of "MSH"

    def field(self, n: int) -> bytes:
        return self.fields[n] if n < len(self.fields) else b""

    def first_component(self, n: int, k: int = 1) -> str:
        return component(self.field(n), self.delimiters, k).decode("latin-1").strip()

    @cached_property
    def message_code(self) -> str:
        return self.first_component(9, 1)

    @cached_property
    def trigger_event(self) -> str:
        return self.first_component(9, 2)

    @cached_property
    def message_type(self) -> str:
        code, trigger = self.message_code, self.trigger_event
        return f"{code}^{trigger}" if trigger else code

    @cached_property
    def control_id(self) -> str:
        return self.field(10).decode("latin-1").strip()

    @cached_property
    def version(self) -> str:
        return self.first_component(12, 1)

    @cached_property
    def charset(self) -> str:
        raw = self.field(18)
        return first_repetition(raw, self.delimiters).decode("latin-1").strip()


def read_header(message: bytes) -> Header:
    """Read MSH from the start of a message. Raises Malformed if there is none."""
    start = 0
    while start < len(message) and message[start] in _LEADING_SPACE:
        start += 1
    if message[start : start + 3] != b"MSH":
        raise Malformed("message does not start with an MSH segment")
    if len(message) < start + 8:
        raise Malformed("MSH segment is too short to hold its encoding characters")
    fs = message[start + 3 : start + 4]
    if fs.isalnum() or fs in b"\r\n \t":
        raise Malformed(f"MSH-1 field separator {fs!r} is not usable")
    m = _LINE_BREAK.search(message, start)
    if m is None:
        msh_end, terminator = len(message), b"\r"
    else:
        msh_end, terminator = m.start(), m.group()
    parts = message[start:msh_end].split(fs)
    enc = parts[1] if len(parts) > 1 else b""
    if not 2 <= len(enc) <= 5:
        raise Malformed(f"MSH-2 encoding characters {enc!r} must be 2 to 5 characters")

    def at(i: int) -> bytes | None:
        return enc[i : i + 1] if len(enc) > i else None

    delims = Delimiters(
        field=fs,
        component=enc[0:1],  # two characters at least (checked above)
        repetition=enc[1:2],
        escape=at(2),
        subcomponent=at(3),
        truncation=at(4),
    )
    # MSH-1 is the separator itself: fields[n] == MSH-n.
    fields = (b"MSH", fs) + tuple(parts[1:])
    return Header(delims, terminator, fields, start)


def split_segments(message: bytes, start: int = 0) -> list[Segment]:
    """Every segment with its byte offsets; empty lines are not segments."""
    segments = []
    pos = start
    n = len(message)
    for m in _LINE_BREAK.finditer(message, start):
        if m.start() > pos:
            segments.append(_segment(message, pos, m.start(), m.end()))
        pos = m.end()
    if pos < n:
        segments.append(_segment(message, pos, n, n))
    return segments


def segment_count(message: bytes) -> int:
    """How many segment terminators (CR, LF or CRLF) the message holds: the
    segments, give or take the last one and empty lines. Counted without
    splitting, so a huge message costs no list of its segments."""
    return message.count(b"\r") + message.count(b"\n") - message.count(b"\r\n")


def _segment(message: bytes, start: int, end: int, nxt: int) -> Segment:
    return Segment(message[start : start + 3], start, end, nxt)


def segment_fields(message: bytes, seg: Segment, delims: Delimiters) -> list[bytes]:
    """fields[n] is field n of the segment (fields[0] is its name)."""
    parts = message[seg.start : seg.end].split(delims.field)
    if seg.name == b"MSH":
        return [b"MSH", delims.field] + parts[1:]
    return parts


def first_repetition(raw: bytes, delims: Delimiters) -> bytes:
    if delims.repetition:
        return raw.split(delims.repetition, 1)[0]
    return raw


def repetitions(raw: bytes, delims: Delimiters) -> list[bytes]:
    return raw.split(delims.repetition) if delims.repetition else [raw]


def component(raw: bytes, delims: Delimiters, k: int) -> bytes:
    """Component k (1-based) of the first repetition, first subcomponent."""
    rep = first_repetition(raw, delims)
    parts = rep.split(delims.component) if delims.component else [rep]
    value = parts[k - 1] if k <= len(parts) else b""
    return value.split(delims.subcomponent, 1)[0] if delims.subcomponent else value


def field_of(fields: list[bytes], n: int) -> bytes:
    return fields[n] if n < len(fields) else b""


def escape(raw: bytes, delims: Delimiters) -> bytes:
    """Bytes of a text field with the message's own delimiters escaped (HL7:
    \\E\\ \\F\\ \\S\\ \\T\\ \\R\\, \\P\\ for a truncation character, \\.br\\ for a
    line break). With no escape character, each delimiter and line break
    becomes a space. The one HL7 escaper: the comment and ACK texts use it."""
    esc = delims.escape
    if esc is None:
        for special in delims.special():
            raw = raw.replace(special, b" ")
        return raw.replace(b"\n", b" ")
    codes = {esc: b"E", delims.field: b"F", delims.component: b"S", delims.repetition: b"R"}
    if delims.subcomponent:
        codes[delims.subcomponent] = b"T"
    if delims.truncation:
        codes[delims.truncation] = b"P"
    codes[b"\n"] = b".br"
    out = bytearray()
    for byte in raw:
        ch = bytes((byte,))
        code = codes.get(ch)
        out += ch if code is None else esc + code + esc
    return bytes(out)
