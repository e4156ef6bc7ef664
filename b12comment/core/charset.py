"""Character sets named in MSH-18, and text made safe for them.

Only character sets in which ASCII bytes mean ASCII are supported: the
message's delimiters and our segment must stay single bytes. With MSH-18
empty, HL7's default is ASCII (7-bit), so the comment is written in ASCII:
Danish letters are transliterated (æ→ae, ø→oe, å→aa), other accented letters
lose their accents, and anything left becomes '?'. The same happens for any
character a declared set cannot hold, so the bytes are always valid.
"""

from __future__ import annotations

import codecs
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


# Character sets an HTTP `charset` parameter may name (normalised by Python's
# codec registry): the ones in which ASCII bytes mean ASCII.
_HTTP_CODECS = {"ascii", "latin-1", "iso8859-1", "utf-8", "cp1252"} | {f"iso8859-{n}" for n in range(2, 17)}
_HTTP_LABELS = {"ascii": "US-ASCII", "latin-1": "ISO-8859-1", "utf-8": "UTF-8", "cp1252": "windows-1252"}


def http_codec(label: str) -> str | None:
    """The codec for an HTTP/IANA charset label (`UTF-8`, `ISO-8859-1`,
    `windows-1252`, ...), or None when it is unknown or not ASCII-compatible."""
    try:
        name = codecs.lookup(label.strip().strip('"')).name
    except (LookupError, ValueError):
        return None
    return name if name in _HTTP_CODECS else None


def http_label(codec: str) -> str:
    """The IANA charset label for one of our codecs (`iso8859-15` -> `ISO-8859-15`)."""
    name = codecs.lookup(codec).name
    if name.startswith("iso8859-"):
        return "ISO-8859-" + name.split("-", 1)[1]
    return _HTTP_LABELS.get(name, name)
