"""HL7 v2 escape sequences in a field's text, decoded before it is read.

A value, a unit or a range that holds a delimiter character must escape it
(`10\\S\\9/l` for `10^9/l`), with the message's own escape character:
`\\F\\` field separator, `\\S\\` component, `\\T\\` subcomponent, `\\R\\`
repetition, `\\E\\` the escape character itself, and `\\Xhh..\\` bytes in
hexadecimal (in the message's character set). Other sequences (highlighting,
`\\.br\\`, character-set switches) are left as written: text we cannot read
stays doubt. Works on the raw bytes of one component, before decoding.
"""

from __future__ import annotations

import re

from b12comment.core.segments import Delimiters

_HEX = re.compile(rb"(?:[0-9A-Fa-f]{2})+")


def unescape(raw: bytes, d: Delimiters) -> bytes:
    """`raw` with the delimiter and hexadecimal escapes replaced by what they
    stand for. Unchanged when the message has no escape character."""
    esc = d.escape
    if not esc or esc not in raw:
        return raw
    plain = {b"F": d.field, b"S": d.component, b"T": d.subcomponent, b"R": d.repetition, b"E": esc}
    out = bytearray()
    i = 0
    while True:
        start = raw.find(esc, i)
        if start == -1:
            out += raw[i:]
            return bytes(out)
        end = raw.find(esc, start + 1)
        if end == -1:
            out += raw[i:]
            return bytes(out)
        body = raw[start + 1 : end]
        out += raw[i:start]
        stands_for = plain.get(body, b"")
        if stands_for:
            out += stands_for
        elif body[:1] == b"X" and _HEX.fullmatch(body[1:]):
            out += bytes.fromhex(body[1:].decode("ascii"))
        else:  # not one this reader knows: kept as written
            out += raw[start : end + 1]
        i = end + 1
