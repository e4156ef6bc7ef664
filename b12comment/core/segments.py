"""The shape of one HL7 v2 message, read from its raw bytes.

Encoding characters from MSH-1/MSH-2, the segment terminator the sender used,
segment boundaries as byte offsets, and the few MSH fields every part of the
product needs (type, control ID, version, character set). Nothing here decodes
the whole message or changes a byte of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from b12comment.core.frozen import once

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_LEADING_SPACE = b" \t\r\n\x00\xef\xbb\xbf"


# HL7 table 0357 (message error condition codes) of what makes bytes unreadable.
SEGMENT_SEQUENCE_ERROR = "100"  # no MSH where the message must start
DATA_TYPE_ERROR = "102"  # MSH-1/MSH-2 unusable, or bytes in a character set HL7 v2 cannot be read in


class Malformed(Exception):
    """The bytes are not an HL7 v2 message that can be read; says why in
    plain text, with the HL7 table 0357 code of the condition."""

    def __init__(self, text: str, code: str = SEGMENT_SEQUENCE_ERROR):
        super().__init__(text)
        self.code = code


def shown(data: bytes, limit: int = 20) -> str:
    """Bytes as a person reads them: printable ASCII as it is, anything else
    as <XX> (hex), at most `limit` bytes, in double quotes; never a Python repr."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else f"<{b:02X}>" for b in data[:limit])
    return f'"{text}"' + (f" (and {len(data) - limit} bytes more)" if len(data) > limit else "")


def _utf16(message: bytes) -> str | None:
    """'UTF-16LE' or 'UTF-16BE' when the bytes are UTF-16 (a byte order mark, or MSH two bytes a letter)."""
    if message[:2] == b"\xff\xfe" or message[:6] == "MSH".encode("utf-16-le"):
        return "UTF-16LE"
    if message[:2] == b"\xfe\xff" or message[:6] == "MSH".encode("utf-16-be"):
        return "UTF-16BE"
    return None


@dataclass(frozen=True)
class Delimiters:
    field: bytes
    component: bytes
    repetition: bytes
    escape: bytes | None
    subcomponent: bytes | None  # None where MSH-2 has fewer than four characters
    truncation: bytes | None

    @once
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

    @once
    def message_code(self) -> str:
        return self.first_component(9, 1)

    @once
    def trigger_event(self) -> str:
        return self.first_component(9, 2)

    @once
    def message_type(self) -> str:
        code, trigger = self.message_code, self.trigger_event
        return f"{code}^{trigger}" if trigger else code

    @once
    def control_id(self) -> str:
        return self.field(10).decode("latin-1").strip()

    @once
    def version(self) -> str:
        return self.first_component(12, 1)

    @once
    def charset(self) -> str:
        raw = self.field(18)
        return first_repetition(raw, self.delimiters).decode("latin-1").strip()


def delimiters_of(fs: bytes, enc: bytes) -> Delimiters:
    """The Delimiters of MSH-1 `fs` and MSH-2 `enc` (2 to 5 bytes), one object
    per pair: a feed sends the same few, and `valid` is then worked out once."""
    return _delimiters(fs, enc)


@lru_cache(maxsize=64)
def _delimiters(fs: bytes, enc: bytes) -> Delimiters:
    return make_delimiters(fs, enc)


def make_delimiters(fs: bytes, enc: bytes) -> Delimiters:
    def at(i: int) -> bytes | None:
        return enc[i : i + 1] if len(enc) > i else None

    return Delimiters(
        field=fs,
        component=enc[0:1],  # two characters at least (checked by read_header)
        repetition=enc[1:2],
        escape=at(2),
        subcomponent=at(3),
        truncation=at(4),
    )


def read_header(message: bytes) -> Header:
    """Read MSH from the start of a message. Raises Malformed if there is none."""
    start = 0
    while start < len(message) and message[start] in _LEADING_SPACE:
        start += 1
    if message[start : start + 3] != b"MSH":
        wide = _utf16(message)
        if wide is not None:
            raise Malformed(
                f"the message is in {wide} (two bytes a character): HL7 v2 needs a character set "
                "that writes MSH as three bytes (ASCII, ISO-8859-1, UTF-8); send it in one of those",
                DATA_TYPE_ERROR,
            )
        first = message[start : start + 3]
        # Only a segment name is shown: the bytes after it may be patient data, and the reason is logged.
        seen = f" (it starts with {first.decode()})" if re.fullmatch(rb"[A-Z][A-Z0-9]{2}", first) else ""
        raise Malformed(f"message does not start with an MSH segment{seen}")
    if len(message) < start + 8:
        raise Malformed("MSH segment is too short to hold its encoding characters", DATA_TYPE_ERROR)
    fs = message[start + 3 : start + 4]
    if fs.isalnum() or fs in b"\r\n \t":
        raise Malformed(f"MSH-1 field separator {shown(fs)} is not usable", DATA_TYPE_ERROR)
    m = _LINE_BREAK.search(message, start)
    if m is None:
        msh_end, terminator = len(message), b"\r"
    else:
        msh_end, terminator = m.start(), m.group()
    parts = message[start:msh_end].split(fs)
    enc = parts[1] if len(parts) > 1 else b""
    if not 2 <= len(enc) <= 5:
        raise Malformed(f"MSH-2 encoding characters {shown(enc)} must be 2 to 5 characters", DATA_TYPE_ERROR)

    delims = delimiters_of(fs, enc)
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
