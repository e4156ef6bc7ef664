"""Cut a stream of bytes (a file of one or many messages) into pieces.

A piece is either a message (from a line starting with MSH to the line before
the next MSH, batch line or end) or other bytes (anything before the first
MSH, batch header/trailer lines FHS/BHS/BTS/FTS). Joining the pieces gives
back the input exactly. Reads in chunks: memory holds one message at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

CHUNK = 1 << 20
_BREAK = re.compile(rb"\r\n|\r|\n")
_BATCH = (b"FHS", b"BHS", b"BTS", b"FTS")
_LEAD = b"\xef\xbb\xbf \t\x00"


@dataclass(frozen=True)
class Piece:
    kind: str  # "message" or "other"
    data: bytes


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines with their terminators (\\r, \\n or \\r\\n), across chunk edges."""
    pending = b""
    for chunk in chunks:
        if not chunk:
            continue
        buf = pending + chunk
        pos = 0
        for m in _BREAK.finditer(buf):
            if m.end() == len(buf) and m.group() == b"\r":
                break  # a \r at the edge may be the first half of \r\n
            yield buf[pos:m.end()]
            pos = m.end()
        pending = buf[pos:]
    if pending:
        yield pending


def iter_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = f.read(size)
        if not chunk:
            return
        yield chunk


def _starts(line: bytes, names: tuple[bytes, ...]) -> bool:
    return line.lstrip(_LEAD)[:3] in names


def iter_pieces(chunks: Iterable[bytes]) -> Iterator[Piece]:
    message: list[bytes] = []
    other: list[bytes] = []
    for line in iter_lines(chunks):
        if _starts(line, (b"MSH",)) or _starts(line, _BATCH):
            if message:
                yield Piece("message", b"".join(message))
                message = []
            if other:
                yield Piece("other", b"".join(other))
                other = []
            if _starts(line, _BATCH):
                yield Piece("other", line)
            else:
                message.append(line)
        elif message:
            message.append(line)
        else:
            other.append(line)
    if message:
        yield Piece("message", b"".join(message))
    if other:
        yield Piece("other", b"".join(other))


def split_messages(data: bytes) -> list[Piece]:
    return list(iter_pieces([data]))
