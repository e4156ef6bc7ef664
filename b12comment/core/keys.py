"""The patient and requisition keys of a message: the one reader of PID-3,
ORC-4 and OBR-2/OBR-3.

A patient key is each PID-3 identifier with its assigning authority; a
requisition key is the patient's first identifier with ORC-4 (the last
ORC's, within the patient), else OBR-2, else OBR-3, prefixed with which:
the whole first repetition, so a namespace given with the number counts. Keys are raw identifiers: the shells turn
them into keyed hashes before anything is kept.

`KeyReader` is fed the PID, ORC and OBR segments of a message in order and
knows, at each point, the current patient and requisition: the store's rows
(rows.py) feed it from their own walk over the segments, `keys()` and
`possible_keys()` from a byte search for those three segments alone (a
segment's name is its first three bytes, in both).
"""

from __future__ import annotations

from dataclasses import dataclass

from b12comment.core.rule_config import RuleConfig
from b12comment.core.screen import Refused, result_header
from b12comment.core.segments import Delimiters, Header, Malformed, component, field_of, read_header

PID, ORC, OBR = b"PID", b"ORC", b"OBR"
KEY_SEGMENTS = (PID, ORC, OBR)


# The version of the requisition key's derivation, which a context store
# records (for itself and for each row): 1 was the number alone (prefixed
# with which), 2 is the patient's first identifier with it. A row of 1 is
# found by its number within the message's patients (earlier_requisition).
KEY_DERIVATION = 2
_NUMBERS = (b"\x01ORC-4\x00", b"\x01OBR-2\x00", b"\x01OBR-3\x00")


def requisition_key(patient: tuple[bytes, ...], number: bytes) -> bytes:
    """The requisition key of `number` (ORC-4, else OBR-2, else OBR-3,
    prefixed with which) under the patient with identifiers `patient`."""
    if not number:
        return b""
    return patient[0] + b"\x01" + number if patient else number


def earlier_requisition(key: bytes) -> bytes:
    """The key derivation 1 gave the requisition `key` names: its number
    alone (the same key where no patient was given)."""
    at = [i for i in (key.find(n) for n in _NUMBERS) if i != -1]
    return key[min(at) + 1 :] if at else key


@dataclass(frozen=True)
class Keys:
    """The identifiers a message's rows are found by (raw: the shell hashes them)."""

    patients: frozenset[bytes]
    requisitions: frozenset[bytes]


class KeyReader:
    """The keys in force at each point of a message: `patient` (the last
    PID's identifiers) and `requisition` (the last OBR's requisition)."""

    __slots__ = ("d", "orc4", "patient", "requisition")

    def __init__(self, d: Delimiters):
        self.d = d
        self.patient: tuple[bytes, ...] = ()
        self.requisition = b""
        self.orc4 = b""

    def read(self, name: bytes, fields: list[bytes]) -> None:
        """Take in one PID, ORC or OBR segment's fields (others are ignored)."""
        d = self.d
        if name == PID:
            self.patient = patient_keys(fields, d)
            self.orc4 = b""
        elif name == ORC:
            self.orc4 = _first_rep(field_of(fields, 4), d).strip()
        elif name == OBR:
            number = _requisition(self.orc4, fields, d)
            # A requisition is its patient's: placer numbers are unique only
            # within the placer's system, so the same number under two
            # patients is two requisitions (keyed on the first PID-3 identifier).
            self.requisition = requisition_key(self.patient, number)


def requisition_aliases(requisition: bytes, patients: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A requisition key as it would be under each of its patient's PID-3
    identifiers: the same patient's requisition is found whichever of its
    identifiers a message sends first (the key itself comes first)."""
    _, sep, number = requisition.partition(b"\x01")
    if not sep:
        return (requisition,)
    return tuple(dict.fromkeys((requisition, *(p + b"\x01" + number for p in patients))))


def patient_keys(fields: list[bytes], d: Delimiters) -> tuple[bytes, ...]:
    """Each PID-3 identifier with its assigning authority."""
    found = []
    for rep in field_of(fields, 3).split(d.repetition) if d.repetition else [field_of(fields, 3)]:
        ident = component(rep, d, 1).strip()
        if ident:
            found.append(ident + b"\x00" + _whole_component(rep, d, 4).strip())
    return tuple(dict.fromkeys(found))


def _requisition(orc4: bytes, fields: list[bytes], d: Delimiters) -> bytes:
    """ORC-4 (the last ORC's, within the patient), else OBR-2, else OBR-3."""
    if orc4:
        return b"ORC-4\x00" + orc4
    placer = _first_rep(field_of(fields, 2), d).strip()
    if placer:
        return b"OBR-2\x00" + placer
    filler = _first_rep(field_of(fields, 3), d).strip()
    if filler:
        return b"OBR-3\x00" + filler
    return b""


def _first_rep(raw: bytes, d: Delimiters) -> bytes:
    return raw.split(d.repetition, 1)[0] if d.repetition else raw


def _whole_component(raw: bytes, d: Delimiters, k: int) -> bytes:
    """Component k of the first repetition with all its subcomponents."""
    parts = _first_rep(raw, d).split(d.component) if d.component else [raw]
    return parts[k - 1] if k <= len(parts) else b""


def _key_segments(message: bytes, header: Header) -> list[tuple[bytes, list[bytes]]]:
    """(name, fields) of every PID, ORC and OBR segment, in order (the
    results between them are never split into fields). A message without a
    line feed is split at its carriage returns, once; any other is searched
    per name and line break (key_segments_by_find; a differential test holds
    the two equal)."""
    if b"\n" in message:
        return key_segments_by_find(message, header)
    fs = header.delimiters.field
    found = []
    for line in message[header.start :].split(b"\r")[1:]:  # (the first is MSH's)
        name = line[:3]
        if name in KEY_SEGMENTS:
            found.append((name, line.split(fs)))
    return found


def key_segments_by_find(message: bytes, header: Header) -> list[tuple[bytes, list[bytes]]]:
    """_key_segments with a search per segment name and line break."""
    starts = []
    for name in KEY_SEGMENTS:
        for sep in (b"\r", b"\n"):
            pattern = sep + name
            i = message.find(pattern, header.start)
            while i != -1:
                starts.append(i + 1)
                i = message.find(pattern, i + 1)
    starts.sort()
    fs = header.delimiters.field
    found = []
    for start in starts:
        cr, lf = message.find(b"\r", start), message.find(b"\n", start)
        end = min(e for e in (cr, lf, len(message)) if e != -1)
        found.append((message[start : start + 3], message[start:end].split(fs)))
    return found


def read_keys(message: bytes, header: Header) -> Keys:
    """Every patient key and every order's requisition key of the message."""
    reader = KeyReader(header.delimiters)
    patients: dict[bytes, None] = {}
    requisitions: dict[bytes, None] = {}
    for name, fields in _key_segments(message, header):
        reader.read(name, fields)
        if name == PID:
            patients.update(dict.fromkeys(reader.patient))
        elif name == OBR and reader.requisition:
            requisitions[reader.requisition] = None
    return Keys(frozenset(patients), frozenset(requisitions))


def keys(message: bytes, rule: RuleConfig) -> Keys | None:
    """The patient and requisition keys the store's rows of the message are
    kept under (every PID's, so a superset where a PID has no order), found
    without reading its results: what a held message waits on and what a
    message too large to read is kept as. None for a message the rule does
    not read (as rows.extract gives None). Total: never raises."""
    try:
        return read_keys(message, result_header(message, rule))
    except Refused:
        return None
    except Exception:
        return None


def possible_keys(message: bytes) -> tuple[bytes, ...] | None:
    """Every raw key the store's rows of the message could be kept under,
    under any rule (no message type is checked, so it can be more, never
    fewer): replay's first pass. () for a message that cannot be read; None
    if the keys could not be found (the caller must then assume any)."""
    try:
        try:
            header = read_header(message)
        except Malformed:
            return ()
        if not header.delimiters.valid:
            return ()
        found = read_keys(message, header)
        return (*found.patients, *found.requisitions)
    except Exception:
        return None
