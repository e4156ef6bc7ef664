"""The field reader's fast path against hl7apy, value by value.

FieldReader takes a field from the bytes where hl7apy would give it back
unchanged and asks hl7apy (behind a cache) for everything else. hl7apy does
rewrite some values (a year 0999 becomes 999), so this test holds the two
together: for every field value of the corpus, the samples and the cornerstone
cases, and for generated values across every hl7apy version and several MSH-2
encodings, wherever the fast path gives an answer it must be hl7apy's answer,
and hl7apy must not have raised. Any difference fails.

The fast lane compares a few thousand generated values; the slow run compares
more than 50,000.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from builders import build
from hl7apy import SUPPORTED_LIBRARIES
from hl7apy.exceptions import HL7apyException
from paths import corpus_files, sample_files
from test_rule_cases import CASES

from b12comment.core.facts import (
    FieldReader,
    _cached_hl7apy,
    fast_components,
    field_shape,
    hl7apy_components,
)
from b12comment.core.segments import Malformed, read_header, repetitions, segment_fields, split_segments
from b12comment.wire.split import split_messages

# The fields the product reads (facts.py), and the versions hl7apy knows.
READ_FIELDS = ("PID_7", "OBR_7", "SPM_17", "MSH_7", "OBX_2", "OBX_5", "OBX_6", "OBX_7", "OBX_8", "OBX_11", "OBX_14")
VERSIONS = sorted(SUPPORTED_LIBRARIES)
# MSH-1 + MSH-2: the standard ones, with truncation, fewer characters, odd ones.
ENCODINGS = ("|^~\\&", "|^~\\&#", "|^~\\", "|^~", "#$%*@", "|@!/+", "!^~\\&")

Value = tuple[str, str, FieldReader]  # (text of one repetition, field name, reader)


def _reader(version: str, encoding: str = "|^~\\&") -> FieldReader:
    fs = encoding[0]
    msh = fs.join(["MSH", encoding[1:], "A", "B", "C", "D", "20240101", "", "ORU^R01", "1", "P", version])
    return FieldReader(read_header(msh.encode("latin-1") + b"\r"), "latin-1")


def _differences(values: Iterator[Value]) -> tuple[int, list[str]]:
    """(how many values took the fast path, a line per difference)."""
    taken, wrong = 0, []
    for text, name, reader in values:
        enc = reader.encoding_chars
        fast = fast_components(text, field_shape(name, reader.version), enc)
        if fast is None:
            continue
        taken += 1
        try:
            slow: object = hl7apy_components(text, name, reader.version, enc)
        except HL7apyException as exc:
            slow = f"hl7apy raised {exc}"
        if fast != slow:
            wrong.append(
                f"{reader.version} {enc['FIELD']}{enc['COMPONENT']} {name} {text!r}: fast {fast} hl7apy {slow}"
            )
    return taken, wrong


def message_values(message: bytes, every_field: bool = True) -> Iterator[Value]:
    """Every repetition of every field of the message, under its own name
    (PV1_3, OBX_5, ...), read with the message's version and delimiters."""
    try:
        header = read_header(message)
    except Malformed:
        return
    if not header.delimiters.valid:
        return
    reader = FieldReader(header, "latin-1")
    for seg in split_segments(message, header.start):
        seg_name = seg.name.decode("latin-1")
        for n, raw in enumerate(segment_fields(message, seg, header.delimiters)):
            name = f"{seg_name}_{n}"
            if n == 0 or (seg_name == "MSH" and n <= 2) or (not every_field and name not in READ_FIELDS):
                continue
            for rep in repetitions(raw, header.delimiters):
                if rep:
                    yield rep.decode("latin-1"), name, reader


def _messages_of_files() -> list[bytes]:
    out = []
    for path in corpus_files() + sample_files():
        out += [p.data for p in split_messages(path.read_bytes()) if p.kind == "message"]
    return out


@pytest.mark.slow
def test_every_field_of_the_corpus_and_samples():
    messages = _messages_of_files()
    seen: set[tuple[str, str, str, str]] = set()

    def unique() -> Iterator[Value]:
        for m in messages:
            for text, name, reader in message_values(m):
                key = (text, name, reader.version, reader.encoding_chars["COMPONENT"])
                if key not in seen:
                    seen.add(key)
                    yield text, name, reader

    taken, wrong = _differences(unique())
    assert not wrong, "\n".join(wrong[:20])
    # The test would pass trivially if the fast path answered nothing.
    assert taken >= len(seen) // 2, (taken, len(seen))


@pytest.mark.slow
def test_read_fields_of_the_corpus_mostly_skip_hl7apy():
    """The fields the product reads take the fast path for at least 90% of
    the corpus's values (the point of it)."""
    values = [v for m in _messages_of_files() for v in message_values(m, every_field=False)]
    taken, wrong = _differences(iter(values))
    assert not wrong, "\n".join(wrong[:20])
    assert taken >= 0.9 * len(values), (taken, len(values))


@pytest.mark.slow
def test_every_field_of_the_cornerstone_cases():
    values = [v for _, kw, _, _, _ in CASES for v in message_values(build(**kw))]
    taken, wrong = _differences(iter(values))
    assert not wrong, "\n".join(wrong[:20])
    assert taken > len(values) // 2


# Atoms generated values are made of: dates of every length, years below
# 1000, impossible dates, fractions and offsets, flags, units, ranges,
# comparators, spaces, non-ASCII letters, empty and blank pieces.
ATOMS = (
    "2024", "202401", "20240110", "2024011008", "202401100830", "20240110083000", "20240110083000.1234",
    "20240110083000+0100", "20240110-0500", "0999", "09990101", "0001", "1", "12", "123", "12345", "10000101",
    "19000229", "20240230", "20241310", "99991231235959", "2024011008300", "F", "C", "P", "H", "N", "L", "HH",
    "NM", "SN", "ST", "TX", "CWE", "pmol/L", "pg/mL", "10*9/L", "200-900", "<600", ">5", ">", "<=", "1476",
    "1,476", "15.0", "-3", "+4", " F", "F ", " ", "  ", "", "x", "abc def", "Sørensen", "Ærø", "0", "00",
    "UCUM", "LN", "14685-2", "Cobalamin (Vitamin B12)", "\u00e6\u00f8\u00e5",
)  # fmt: skip


def generated(count: int, seed: int) -> Iterator[Value]:
    """`count` values: per value a random version, MSH-2 encoding and read
    field, made of 1 to 23 atoms joined by the component separator, sometimes
    with a subcomponent, escape or truncation character in them."""
    rng = random.Random(seed)
    readers = {(v, e): _reader(v, e) for v in VERSIONS + ["2.9"] for e in ENCODINGS}
    keys = sorted(readers)
    for _ in range(count):
        reader = readers[rng.choice(keys)]
        enc = reader.encoding_chars
        name = rng.choice(READ_FIELDS)
        parts = [rng.choice(ATOMS) for _ in range(rng.choice((1, 1, 1, 1, 2, 2, 3, 6, 10, 23)))]
        text = enc["COMPONENT"].join(parts)
        roll = rng.random()
        if roll < 0.04:
            text += enc["SUBCOMPONENT"] + rng.choice(ATOMS)
        elif roll < 0.06:
            text = f"{enc['ESCAPE']}T{enc['ESCAPE']}" + text
        elif roll < 0.07 and "TRUNCATION" in enc:
            text += enc["TRUNCATION"]
        yield text, name, reader


@pytest.mark.slow
def test_generated_values_fast_lane():
    taken, wrong = _differences(generated(10_000, seed=13))
    assert not wrong, "\n".join(wrong[:20])
    assert taken >= 3_000


@pytest.mark.slow
def test_generated_values_50000():
    taken, wrong = _differences(generated(150_000, seed=2026))
    assert not wrong, "\n".join(wrong[:20])
    assert taken >= 50_000, taken


def test_reader_equals_hl7apy_field_by_field():
    """FieldReader.components (fast path, else cached hl7apy) is hl7apy's
    answer repetition by repetition, for the corpus's read fields."""
    for m in _messages_of_files()[:20]:
        header = read_header(m)
        if not header.delimiters.valid:  # process() says malformed before reading any field
            continue
        reader = FieldReader(header, "latin-1")
        for seg in split_segments(m, header.start):
            for n, raw in enumerate(segment_fields(m, seg, header.delimiters)):
                name = f"{seg.name.decode('latin-1')}_{n}"
                if name not in READ_FIELDS:
                    continue
                expected = [
                    hl7apy_components(rep.decode("latin-1"), name, reader.version, reader.encoding_chars) if rep else []
                    for rep in repetitions(raw, header.delimiters)
                ]
                assert reader.components(raw, name) == expected, (name, raw)


def test_values_hl7apy_rewrites_are_read_by_hl7apy():
    reader = _reader("2.5.1")
    assert fast_components("09990101", field_shape("PID_7", "2.5.1"), reader.encoding_chars) is None
    assert reader.first(b"09990101", "PID_7") == "9990101"  # hl7apy's answer, as before
    assert reader.first(b"20160315", "PID_7") == "20160315"


def test_hl7apy_answers_are_cached_and_errors_are_not():
    reader = _reader("2.5.1")
    raw = b"09980101^0997"  # a year hl7apy rewrites: read with hl7apy
    before = _cached_hl7apy.cache_info()
    first = reader.components(raw, "OBX_14")
    second = reader.components(raw, "OBX_14")
    after = _cached_hl7apy.cache_info()
    assert first == second == [hl7apy_components("09980101^0997", "OBX_14", "2.5.1", reader.encoding_chars)]
    assert after.hits == before.hits + 1
    assert after.misses == before.misses + 1

    broken = b"a^ ^b"  # hl7apy cannot place these components
    for _ in range(2):
        with pytest.raises(HL7apyException, match="cannot place"):
            reader.components(broken, "OBX_14")
    # Both calls asked hl7apy: an error is not kept.
    assert _cached_hl7apy.cache_info().misses == after.misses + 2


def _reference_observation(fields: list[bytes], header, codec: str):
    """The cheap OBX read as first written, with segments.component(); the
    value, unit and range with their HL7 escapes decoded."""
    from b12comment.core.charset import decode
    from b12comment.core.escapes import unescape
    from b12comment.core.segments import component, field_of

    d = header.delimiters

    def text(raw: bytes) -> str:
        return decode(raw, codec).strip()

    def plain(raw: bytes) -> str:
        return text(unescape(raw, d))

    first_rep = field_of(fields, 5).split(d.repetition, 1)[0]
    range_reps = [
        "^".join(plain(c) for c in rep.split(d.component)).rstrip("^")
        for rep in field_of(fields, 7).split(d.repetition)
    ]
    flags = tuple(text(component(rep, d, 1)) for rep in repetitions(field_of(fields, 8), d))
    return (
        text(component(field_of(fields, 2), d, 1)).upper(),
        tuple(plain(c) for c in first_rep.split(d.component)),
        plain(component(field_of(fields, 6), d, 1)) or plain(component(field_of(fields, 6), d, 2)),
        "~".join(range_reps).rstrip("~"),  # OBX-7: every repetition (two ranges are not the first one)
        tuple(f for f in flags if f),
        text(component(field_of(fields, 11), d, 1)).upper(),
        text(component(field_of(fields, 14), d, 1)),
        tuple(
            text(component(field_of(fields, 3), d, k)) for k in (1, 4, 10) if text(component(field_of(fields, 3), d, k))
        ),
    )


def testcheap_observation_reads_as_the_reference():
    from b12comment.core.facts import cheap_observation

    messages = _messages_of_files() + [build(**kw) for _, kw, _, _, _ in CASES]
    checked = 0
    for m in messages:
        try:
            header = read_header(m)
        except Malformed:
            continue
        for codec in ("latin-1", "ascii", "utf-8"):
            for seg in split_segments(m, header.start):
                if seg.name != b"OBX":
                    continue
                fields = segment_fields(m, seg, header.delimiters)
                o = cheap_observation(fields, header, codec, 1, 0, 0)
                got = (o.value_type, o.value, o.units, o.range_text, o.flags, o.status, o.observed_at, o.codes)
                assert got == _reference_observation(fields, header, codec), (m[:60], seg)
                checked += 1
    assert checked > 1000


def test_obx3_codes_reads_as_component_does():
    from b12comment.core.facts import obx3_codes
    from b12comment.core.segments import component

    def reference(raw, d):
        pairs = []
        for ident, system in ((1, 3), (4, 6), (10, 12)):
            code = component(raw, d, ident).decode("latin-1").strip()
            if code:
                pairs.append((code, component(raw, d, system).decode("latin-1").strip()))
        return pairs

    checked = 0
    for m in _messages_of_files() + [build(**kw) for _, kw, _, _, _ in CASES]:
        try:
            header = read_header(m)
        except Malformed:
            continue
        for seg in split_segments(m, header.start):
            if seg.name == b"OBX":
                raw = segment_fields(m, seg, header.delimiters)[3:4] or [b""]
                for value in (raw[0], raw[0] + b"~x^y", b" a & b ^^ c ^ d^e^f^g^h^i^j^k^l", b""):
                    assert obx3_codes(value, header.delimiters) == reference(value, header.delimiters)
                    checked += 1
    assert checked > 1000
