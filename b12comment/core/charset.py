"""Character sets named in MSH-18, and text made safe for them.

Only character sets in which ASCII bytes mean ASCII are supported: the
message's delimiters and our segment must stay single bytes. With MSH-18
empty, HL7's default is ASCII (7-bit), so the comment is written in ASCII:
Danish letters are transliterated (æ→ae, ø→oe, å→aa), other accented letters
lose their accents, and anything left becomes '?'. The same happens for any
character a declared set cannot hold, so the bytes are always valid.
"""

from __future__ import annotations

import unicodedata

# MSH-18 value (upper case) -> Python codec
_CODECS = {
    "": "ascii",
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
}

_TRANSLITERATE = {
    "æ": "ae",
    "ø": "oe",
    "å": "aa",
    "Æ": "Ae",
    "Ø": "Oe",
    "Å": "Aa",
    "ß": "ss",
    "–": "-",
    "—": "-",
    "’": "'",
    "‘": "'",
    "“": '"',
    "”": '"',
}


def codec_for(msh18: str) -> str | None:
    """The codec for an MSH-18 value, or None when it is not supported."""
    return _CODECS.get(msh18.strip().upper())


def decode(raw: bytes, codec: str) -> str:
    """Decode for reading fields; never fails."""
    return raw.decode(codec if codec != "ascii" else "latin-1", errors="replace")


def encode(text: str, codec: str) -> bytes:
    """Encode text; characters the codec cannot hold are transliterated."""
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode(codec)
            continue
        except UnicodeEncodeError:
            pass
        alt = _TRANSLITERATE.get(ch)
        if alt is None:
            alt = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii") or "?"
        out += alt.encode(codec, errors="replace")
    return bytes(out)
