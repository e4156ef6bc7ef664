"""Replay's inputs: files, plain or gzip, HL7 text or MLLP-framed captures,
cut into pieces.

A piece runs from a line that starts with MSH, FHS, BHS, BTS or FTS to the
next such line (or the end). One that starts with MSH is a message; the
others (a batch header or trailer line and whatever follows it, and anything
before the first such line) are other bytes, copied as they are. Joining the
pieces gives back the (decompressed) file exactly, so a writer that copies
the "other" pieces and processes the "message" pieces keeps the file's layout
byte for byte. Reads in chunks: memory holds one message at a time.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

CHUNK = 1 << 20


class Piece(NamedTuple):
    """A tuple: one is made per message of every file read."""

    kind: str  # "message" or "other"
    data: bytes


def iter_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = f.read(size)
        if not chunk:
            return
        yield chunk


# A line that starts a piece: MSH (a message) or a batch line (other bytes),
# after optional BOM bytes, spaces, tabs or NULs. A boundary is found by
# byte searches (memchr speed: a regex scan costs several times more per
# byte): "MSH", "HS" (FHS, BHS) and "TS" (BTS, FTS), each confirmed by the
# name and by a line break before its prefix.
_FIRST = re.compile(rb"[\xef\xbb\xbf \t\x00]*(MSH|FHS|BHS|BTS|FTS)")
_NAMES = frozenset((b"MSH", b"FHS", b"BHS", b"BTS", b"FTS"))
_PREFIX = frozenset(b"\xef\xbb\xbf \t\x00")
_SEARCHES = ((b"MSH", 0), (b"HS", 1), (b"TS", 1))  # (bytes searched, offset of the name before them)
_LOOKAHEAD = 8  # bytes a boundary needs past a line break to be recognised


def _boundaries(buf: bytes) -> list[tuple[int, bool]]:
    """(offset, is MSH) of every line in buf, after its first byte, that
    starts a piece, in order."""
    found = []
    for needle, back in _SEARCHES:
        i = buf.find(needle, back)
        while i != -1:
            name_at = i - back
            name = buf[name_at : name_at + 3]
            if name in _NAMES:
                j = name_at - 1
                while j >= 0 and buf[j] in _PREFIX:
                    j -= 1
                if j >= 0 and (buf[j] == 13 or buf[j] == 10):  # \r or \n
                    found.append((j + 1, name == b"MSH"))
            i = buf.find(needle, i + 1)
    found.sort()
    return found


def _units(buf: bytes, final: bool) -> tuple[list[tuple[int, int, bool]], int]:
    """(start, end, is_message) of the complete units in buf, and where the
    incomplete rest starts. A unit runs from one boundary to the next."""
    first = _FIRST.match(buf)
    starts = [(0, first is not None and first.group(1) == b"MSH")]
    starts += _boundaries(buf)
    units = [(begin, nxt, is_msg) for (begin, is_msg), (nxt, _) in zip(starts, starts[1:], strict=False)]
    last_begin, last_is_msg = starts[-1]
    if final:
        if last_begin < len(buf):
            units.append((last_begin, len(buf), last_is_msg))
        return units, len(buf)
    return units, last_begin


def iter_pieces(chunks: Iterable[bytes]) -> Iterator[Piece]:
    pending = b""
    for chunk in chunks:
        if not chunk:
            continue
        buf = pending + chunk
        # keep a tail back: a boundary may straddle the chunk edge
        cut = max(len(buf) - _LOOKAHEAD, 0)
        units, rest = _units(buf[:cut], final=False) if cut else ([], 0)
        for begin, end, is_msg in units:
            yield Piece("message" if is_msg else "other", buf[begin:end])
        pending = buf[rest:]
    units, _ = _units(pending, final=True)
    for begin, end, is_msg in units:
        yield Piece("message" if is_msg else "other", pending[begin:end])


def split_messages(data: bytes) -> list[Piece]:
    return list(iter_pieces([data]))


START, END = b"\x0b", b"\x1c\x0d"
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_input(path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_output(path, compressed: bool) -> tuple[BinaryIO, BinaryIO]:
    """(the stream to write, the file under it): close both, the first first."""
    f = open(path, "wb")  # noqa: SIM115 - the caller closes both handles
    if compressed:  # no name, no time in the header: the same input gives the same bytes
        return gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0), f  # type: ignore[return-value]
    return f, f


def iter_mllp_pieces(chunks: Iterable[bytes]) -> Iterator[Piece]:
    """Frames 0x0B payload 0x1C 0x0D: the payload is a message, the rest other bytes.

    An unterminated last frame is kept as other bytes (it never reached the
    receiver whole, so it is not processed)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while True:
            start = buf.find(START)
            if start < 0:
                if buf:
                    yield Piece("other", buf)
                buf = b""
                break
            end = buf.find(END, start + 1)
            if end < 0:
                if start:
                    yield Piece("other", buf[:start])
                    buf = buf[start:]
                break
            if start:
                yield Piece("other", buf[:start])
            yield Piece("other", START)
            yield Piece("message", buf[start + 1 : end])
            yield Piece("other", END)
            buf = buf[end + 2 :]
    if buf:
        yield Piece("other", buf)


def read_pieces(f: BinaryIO) -> Iterator[Piece]:
    """Pieces of an opened input, by what its first bytes show it to be."""
    chunks = iter_chunks(f)
    first = b""
    for chunk in chunks:
        first = chunk
        if chunk:
            break
    if not first:
        return iter(())
    everything = _prepend(first, chunks)
    if first.lstrip(b" \t\r\n")[:1] == START:
        return iter_mllp_pieces(everything)
    return iter_pieces(everything)


def _prepend(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
