"""The comment as NTE segment bytes, and its insertion into the original bytes.

The text is escaped with the message's own delimiters (HL7 FT: \\F\\ \\S\\ \\T\\
\\R\\ \\E\\, \\P\\ for a truncation character, \\.br\\ for a line break), encoded in
the message's character set, and inserted right after the B12 OBX and the
NTEs already under it, with the terminator that segment uses. No other byte
moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from b12comment.core import charset
from b12comment.core.segments import Delimiters, Segment, escape


@lru_cache(maxsize=64)
def comment_field(text: str, delims: Delimiters, codec: str) -> bytes:
    """NTE-3 bytes for `text`: encoded, then escaped byte-wise."""
    raw = charset.encode(text.replace("\r\n", "\n").replace("\r", "\n"), codec)
    return escape(raw, delims)


def next_set_id(existing: tuple[str, ...]) -> int:
    numbers = [int(s) for s in existing if s.isdigit()]
    return max([len(existing), *numbers]) + 1


def entered_by_field(entered_by: str, delims: Delimiters, codec: str) -> bytes:
    """NTE-5 bytes: the configured XCN, its components (`^` in the
    configuration) joined with the message's own component separator."""
    if not entered_by:
        return b""
    return delims.component.join(comment_field(c, delims, codec) for c in entered_by.split("^"))


def nte_segment(
    set_id: int, source: str, text_field: bytes, comment_type: str, delims: Delimiters, entered_by: bytes = b""
) -> bytes:
    fs = delims.field
    seg = b"NTE" + fs + str(set_id).encode() + fs + source.encode("ascii") + fs + text_field
    if comment_type or entered_by:
        seg += fs + comment_type.encode("ascii")
    if entered_by:
        seg += fs + entered_by
    return seg


@dataclass(frozen=True)
class Insertion:
    offset: int
    data: bytes


def insertion_after(message: bytes, seg: Segment, segment_bytes: bytes, default_terminator: bytes) -> Insertion:
    """Insert a segment after `seg`, using the terminator `seg` itself ends with."""
    if seg.next > seg.end:
        return Insertion(seg.next, segment_bytes + message[seg.end : seg.next])
    # The last segment has no terminator: keep it that way for the new last one.
    return Insertion(seg.end, default_terminator + segment_bytes)


def apply(message: bytes, insertions: list[Insertion]) -> bytes:
    """The message with the insertions, built in one allocation: the parts
    between them are views of the message, not copies (a large message is
    held once more, not three times)."""
    if not insertions:
        return message
    view = memoryview(message)
    parts: list[bytes | memoryview] = []
    pos = 0
    for ins in sorted(insertions, key=lambda i: i.offset):
        parts += (view[pos : ins.offset], ins.data)
        pos = ins.offset
    parts.append(view[pos:])
    return b"".join(parts)
