"""Build the ACK for a received message, and read the ACK a downstream sends.

The ACK speaks the sender's dialect: its field separator and encoding
characters (MSH-1/MSH-2 copied as they are), its version (MSH-12) and
processing ID (MSH-11), with sending and receiving application/facility
swapped. MSA-2 echoes the received MSH-10 byte for byte. An AE or AR carries
an ERR segment: ERR-3 the HL7 error code (table 0357), ERR-4 severity `E`,
ERR-8 a message for the sender's operator, escaped with the sender's own
delimiters. Versions before 2.5 have neither ERR-3 nor ERR-8, so there the
code goes in ERR-1 and the text in MSA-3. Bytes without a readable MSH get
the default delimiters `|^~\\&`. Segments end with `\\r`, as MLLP expects.

`build_ack` and `read_ack` are pure; `ack_id()` and `now_dtm()` give the
ACK's own MSH-10 and MSH-7 (a process-wide counter and the clock), for
every answering shell (the listener and the HTTP endpoint) alike.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from b12comment.core.escapes import unescape
from b12comment.core.segments import (
    DATA_TYPE_ERROR,
    DEFAULT_DELIMITERS,
    SEGMENT_SEQUENCE_ERROR,
    Delimiters,
    Header,
    Malformed,
    component,
    escape,
    field_of,
    read_header,
    segment_fields,
    split_segments,
)

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"

# HL7 table 0357, message error condition codes. serve answers 100 (no MSH
# where a message starts, a batch in one frame), 102 (MSH-1/MSH-2 unusable,
# UTF-16 bytes) and 207 (too large, the journal cannot be written); it never
# refuses a message for its type, version or an empty field (results always
# flow: such a message is passed on unchanged), so 101, 200 and 203 are here
# for completeness of the table's reading (read_ack names them).
REQUIRED_FIELD_MISSING = "101"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_VERSION_ID = "203"
APPLICATION_INTERNAL_ERROR = "207"
TABLE_0357 = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}
DEFAULT_VERSION = b"2.5.1"


@dataclass(frozen=True)
class AckError:
    """Why a message was not accepted: an HL7 table 0357 code and a text."""

    code: str
    text: str


def build_ack(
    received: bytes,
    code: str,
    control_id: str,
    timestamp: str,
    error: AckError | None = None,
    header: Header | None = None,
) -> bytes:
    """The ACK message (without MLLP framing) answering `received`.

    `control_id` is the ACK's own MSH-10 and `timestamp` its MSH-7 (HL7 DTM);
    both come from the caller so that this function stays pure. `header` is
    `read_header(received)` when the caller has it already.
    """
    if header is None:
        try:
            header = read_header(received)
        except Malformed:
            header = None
    if header is not None:
        d = header.delimiters
        encoding_chars = header.field(2)
        f = header.field
        sender, receiver = (f(3), f(4)), (f(5), f(6))
        version_field = f(12)
        version = _version_tuple(header.version)
        trigger = header.trigger_event.encode("latin-1")
        processing_id, received_id, charset = f(11), f(10), f(18)
    else:
        d = DEFAULT_DELIMITERS
        encoding_chars = b"^~\\&"
        sender = receiver = (b"", b"")
        version_field, version, trigger = DEFAULT_VERSION, _version_tuple("2.5.1"), b""
        processing_id, received_id, charset = b"", b"", b""

    msh = [
        b"MSH",
        encoding_chars,
        receiver[0],
        receiver[1],
        sender[0],
        sender[1],
        timestamp.encode("ascii"),
        b"",
        _message_type(trigger, version, d),
        control_id.encode("ascii"),
        processing_id or b"P",
        version_field or DEFAULT_VERSION,
    ]
    if charset:
        msh += [b""] * 5 + [charset]
    msa = [b"MSA", code.encode("ascii"), received_id]
    segments = [msh, msa]
    if error is not None:
        description = TABLE_0357.get(error.code, "")
        text = escape_text(error.text, d)
        if version >= (2, 5):
            coded = d.component.join([error.code.encode("ascii"), escape_text(description, d), b"HL70357"])
            segments.append([b"ERR", b"", b"", coded, b"E", b"", b"", b"", text])
        else:
            coded = (d.subcomponent or b"&").join([error.code.encode("ascii"), escape_text(description, d), b"HL70357"])
            segments.append([b"ERR", d.component * 3 + coded])
            msa.append(text)
    return b"".join(d.field.join(seg) + b"\r" for seg in segments)


# Enhanced acknowledgement (HL7 2.x, MSH-15 accept acknowledgement type,
# table 0155): the receiver answers the commit with CA/CE/CR, and only when
# MSH-15 asks: AL always, NE never, ER on an error or rejection, SU on success.
COMMIT = {ACCEPT: "CA", ERROR: "CE", REJECT: "CR"}
ACCEPT_ACK_TYPES = ("AL", "NE", "ER", "SU")


def enhanced_mode(header: Header) -> str | None:
    """MSH-15 (AL, NE, ER, SU; AL when only MSH-16 is given) when the sender
    asked for enhanced acknowledgement, None for original mode (both empty)."""
    msh15 = header.field(15).decode("latin-1").strip().upper()
    msh16 = header.field(16).decode("latin-1").strip().upper()
    if not msh15 and not msh16:
        return None
    return msh15 if msh15 in ACCEPT_ACK_TYPES else "AL"


def commit_ack_wanted(mode: str, code: str) -> bool:
    """Whether MSH-15 `mode` asks for a commit ACK answering with `code` (AA/AE/AR)."""
    return mode == "AL" or (mode == "ER" and code != ACCEPT) or (mode == "SU" and code == ACCEPT)


def accept_ack(header: Header, control_id: str, timestamp: str) -> bytes:
    """build_ack(received, ACCEPT, control_id, timestamp, header=header), from
    a template per sender dialect: what stays the same between one sender's
    messages (delimiters, applications, version, processing ID, trigger,
    character set) is joined once; only the timestamp, the ACK's control ID
    and MSA-2 are filled in per message (a test holds it equal to build_ack)."""
    f = header.field
    head, middle, tail = _accept_template(
        header.delimiters, (f(2), f(3), f(4), f(5), f(6), f(11), f(12), f(18)), header.version, header.trigger_event
    )
    return b"".join((head, timestamp.encode("ascii"), middle, control_id.encode("ascii"), tail, f(10), b"\r"))


@lru_cache(maxsize=256)
def _accept_template(
    d: Delimiters, fields: tuple[bytes, ...], version: str, trigger_event: str
) -> tuple[bytes, bytes, bytes]:
    """(up to MSH-7, MSH-8 to MSH-10, after MSH-10 to MSA-2) of an AA."""
    encoding_chars, sending_app, sending_fac, receiving_app, receiving_fac, processing_id, version_field, charset = (
        fields
    )
    fs = d.field
    message_type = _message_type(trigger_event.encode("latin-1"), _version_tuple(version), d)
    head = fs.join([b"MSH", encoding_chars, receiving_app, receiving_fac, sending_app, sending_fac, b""])
    middle = fs.join([b"", b"", message_type, b""])
    rest = [processing_id or b"P", version_field or DEFAULT_VERSION]
    if charset:
        rest += [b""] * 5 + [charset]
    tail = fs.join([b"", *rest]) + b"\r" + fs.join([b"MSA", ACCEPT.encode("ascii"), b""])
    return head, middle, tail


def _message_type(trigger: bytes, version: tuple[int, ...], d: Delimiters) -> bytes:
    if not trigger:
        return b"ACK"
    parts = [b"ACK", trigger]
    if version >= (2, 3, 1):  # MSH-9.3, the message structure, exists from 2.3.1
        parts.append(b"ACK")
    return d.component.join(parts)


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version)
    return tuple(int(n) for n in numbers) if numbers else (2, 5, 1)


def escape_text(text: str, d: Delimiters) -> bytes:
    """Text as printable ASCII with every delimiter escaped (or, with no
    escape character, replaced by a space)."""
    return escape(re.sub(r"[^\x20-\x7e]", "?", text).encode("ascii"), d)


def read_ack(payload: bytes) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control ID, HL7 error code from ERR) of an ACK;
    raises Malformed. Free text is left out: it may name a patient."""
    header = read_header(payload)
    d = header.delimiters
    code = acked = error = ""
    found = False
    for seg in split_segments(payload, header.start):
        fields = segment_fields(payload, seg, d)
        if seg.name == b"MSA" and not found:
            found = True
            code = field_of(fields, 1).decode("latin-1").strip().upper()
            acked = field_of(fields, 2).decode("latin-1").strip()
        elif seg.name == b"ERR" and not error:
            raw = component(field_of(fields, 3), d, 1) or component(field_of(fields, 1), d, 4)
            error = re.sub(r"[^A-Za-z0-9]", "", raw.decode("latin-1"))[:10]
    if not found:
        raise Malformed("the answer has no MSA segment")
    return code, acked, error


def ack_text(payload: bytes) -> str:
    """The text of an ACK's first ERR (ERR-8, else the text of ERR-3 or
    ERR-1's fourth component), else MSA-3, unescaped, for a person at a
    terminal (`send`); "" when it has none or cannot be read. Never logged:
    a receiver's text may name a patient."""
    try:
        header = read_header(payload)
    except Malformed:
        return ""
    d = header.delimiters
    msa_text = ""
    for seg in split_segments(payload, header.start):
        fields = segment_fields(payload, seg, d)
        if seg.name == b"MSA" and not msa_text:
            msa_text = _plain(field_of(fields, 3), d)
        elif seg.name == b"ERR":
            text = _plain(field_of(fields, 8), d) or _plain(component(field_of(fields, 3), d, 2), d)
            if not text and d.subcomponent:  # before 2.5: ERR-1 code^^^id&text&table
                parts = component(field_of(fields, 1), d, 4).split(d.subcomponent)
                text = _plain(parts[1], d) if len(parts) > 1 else ""
            if text:
                return text
    return msa_text


def _plain(raw: bytes, d: Delimiters) -> str:
    return unescape(raw, d).decode("utf-8", errors="replace").strip()


_ACK_PREFIX = uuid.uuid4().hex[:8]
_ack_serial = itertools.count(1)


def ack_id() -> str:
    """The ACK's own MSH-10: unique per process start and answer (20 characters)."""
    return f"{_ACK_PREFIX}{next(_ack_serial):012d}"


_dtm_cache: tuple[int, str] = (0, "")


def now_dtm() -> str:
    """The local time as HL7 DTM, to the second (formatted once a second)."""
    global _dtm_cache
    second = int(time.time())
    if _dtm_cache[0] != second:
        _dtm_cache = (second, datetime.fromtimestamp(second).astimezone().strftime("%Y%m%d%H%M%S%z"))
    return _dtm_cache[1]
