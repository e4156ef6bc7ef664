"""Input files for replay: plain or gzip, HL7 text or MLLP-framed captures.

Every reader yields Pieces (stream.py) whose data joined give back the
(decompressed) file exactly, so a writer that copies the "other" pieces and
processes the "message" pieces keeps the file's layout byte for byte.
"""
from __future__ import annotations

import gzip
from typing import BinaryIO, Iterable, Iterator

from .stream import Piece, iter_chunks, iter_pieces

START, END = b"\x0b", b"\x1c\x0d"
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_input(path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_output(path, compressed: bool) -> BinaryIO:
    f = open(path, "wb")
    if compressed:  # no name, no time in the header: the same input gives the same bytes
        return gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0), f
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
            yield Piece("message", buf[start + 1:end])
            yield Piece("other", END)
            buf = buf[end + 2:]
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
