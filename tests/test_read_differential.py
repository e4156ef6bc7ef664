"""The core's quick paths against its full ones, value by value.

- `cheap_observation` reads an OBX whose fields hold no repetition,
  subcomponent or escape character with `plain_observation`, every other
  with `observation_in_full`: wherever the first applies, the two must give
  the same Observation (every OBX of the corpus, the samples and the rule's
  cases, under each MSH-2 encoding, and generated OBX lines).
- `read_range` remembers its readings: it must give what `read_text_range`
  gives, for every OBX-7 of the corpus and generated ranges, on the first
  call and on later ones.
- replay's first pass finds the PID, ORC and OBR segments of a message
  without line feeds by splitting it at its carriage returns: the same as a
  search per name and line break; read_header shares one
  Delimiters per MSH-1/MSH-2: the same as made afresh.
- `quick_init` makes frozen dataclasses the same as their own `__init__`
  (same fields, defaults, errors; still frozen, equal, hashed).

Any difference fails.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from builders import build
from paths import corpus_files, sample_files
from test_rule_cases import CASES

from b12comment.core import decision, facts, rows
from b12comment.core.facts import cheap_observation, observation_in_full, plain_observation
from b12comment.core.frozen import quick_init
from b12comment.core.keys import _key_segments, key_segments_by_find
from b12comment.core.segments import (
    Malformed,
    delimiters_of,
    make_delimiters,
    read_header,
    segment_fields,
    split_segments,
)
from b12comment.core.values import RANGE_CACHE_TEXT, read_range, read_text_range
from b12comment.wire.split import split_messages

ENCODINGS = ("|^~\\&", "|^~\\&#", "|^~\\", "|^~", "#$%*@", "|@!/+", "!^~\\&")
CODECS = ("latin-1", "ascii", "utf-8", "cp1252")


def _messages() -> list[bytes]:
    found = []
    for path in [*corpus_files(), *sample_files()]:
        found.extend(p.data for p in split_messages(path.read_bytes()) if p.kind == "message")
    found.extend(build(**kw) for _, kw, _, _, _ in CASES)
    return found


def _obx_fields(message: bytes):
    try:
        header = read_header(message)
    except Malformed:
        return
    if not header.delimiters.valid:
        return
    for seg in split_segments(message, header.start):
        if seg.name == b"OBX":
            yield header, segment_fields(message, seg, header.delimiters)


def _same_way(header, fields: list[bytes], codec: str) -> tuple[bool, str]:
    """(the quick path applied, a difference or "")."""
    full = observation_in_full(fields, header, codec, 3, 7, 2)
    through = cheap_observation(fields, header, codec, 3, 7, 2)
    if through != full:
        return False, f"cheap_observation {through} != in full {full}"
    d = header.delimiters
    joined = b"".join(fields[2:15])
    plain = (
        bool(d.component)
        and d.repetition not in joined
        and not (d.subcomponent and d.subcomponent in joined)
        and not (d.escape and d.escape in joined)
    )
    if plain:
        quick = plain_observation(fields, d.component, codec, 3, 7, 2)
        if quick != full or vars(quick) != vars(full):
            return True, f"{fields!r} {codec}: plain {quick} != in full {full}"
    return plain, ""


def test_plain_observation_is_the_full_reading_for_every_obx_of_the_corpus_and_samples():
    messages = _messages()
    assert len(messages) > 100
    taken, wrong, total = 0, [], 0
    for message in messages:
        for header, fields in _obx_fields(message):
            for codec in CODECS:
                total += 1
                plain, diff = _same_way(header, fields, codec)
                taken += plain
                if diff:
                    wrong.append(diff)
    assert not wrong, "\n".join(wrong[:20])
    assert taken > total // 3, (taken, total)  # the quick path is exercised, not skipped


def _random_component(rng: random.Random, specials: str) -> str:
    alphabet = "0123456789.,-<>= abcNHLAFPCRIX%/*µæøåÆØÅ" + specials
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))


def _random_obx(rng: random.Random, encoding: str) -> bytes:
    fs, cs = encoding[0], encoding[1]
    rest = encoding[2:]
    specials = rest if rng.random() < 0.4 else ""
    fields = ["OBX", str(rng.randint(1, 9))]
    for n in range(2, rng.randint(3, 17)):
        comps = [_random_component(rng, specials) for _ in range(rng.choice((1, 1, 2, 3, 4, 6, 13)))]
        fields.append(cs.join(comps) if n != 1 else "1")
    return fs.join(fields).encode("utf-8" if rng.random() < 0.2 else "latin-1", errors="replace")


def _generated(encoding: str, count: int) -> None:
    rng = random.Random(f"obx {encoding} {count}")
    msh = encoding[0].join(["MSH", encoding[1:], "A", "B", "C", "D", "20240101", "", "ORU^R01", "1", "P", "2.5"])
    taken, wrong = 0, []
    for _ in range(count):
        message = msh.encode("latin-1") + b"\r" + _random_obx(rng, encoding) + b"\r"
        for header, fields in _obx_fields(message):
            for codec in CODECS:
                plain, diff = _same_way(header, fields, codec)
                taken += plain
                if diff:
                    wrong.append(diff)
    assert not wrong, "\n".join(wrong[:20])
    assert taken > count // 6  # the quick path is exercised


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_plain_observation_is_the_full_reading_for_generated_obx(encoding):
    _generated(encoding, 600)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_plain_observation_is_the_full_reading_for_many_generated_obx(encoding):
    _generated(encoding, 20_000)


def _corpus_ranges() -> set[str]:
    found = set()
    for message in _messages():
        for header, fields in _obx_fields(message):
            found.add(observation_in_full(fields, header, "latin-1", 1, 1, 1).range_text)
    return found


GENERATED_RANGES = [
    "200-600",
    "200 - 900",
    "3,5–5,0",
    "<600",
    ">=5",
    "10..45",
    "10 til 45",
    "[10;45]",
    "(10-45)",
    "Ref.: 10-45",
    "10-45 U/L",
    "1,5-7,5 x10E9/l",
    ">^11.0",
    "^10^-^45",
    "Negative",
    "see note",
    "",
    "   ",
    "1,476-2,000",
    "x" * (RANGE_CACHE_TEXT + 1),
    "1-" + "9" * RANGE_CACHE_TEXT,
]


def test_read_range_remembers_what_read_text_range_reads():
    rng = random.Random("ranges")
    texts = sorted(_corpus_ranges()) + GENERATED_RANGES
    alphabet = "0123456789.,-–<>=≤≥^ ;[]()tilRef:U/Lx"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    for _ in range(2):  # the first reading, then the remembered one
        wrong = [
            f"{t!r}: {read_range(t)} != {read_text_range(t)}" for t in texts if read_range(t) != read_text_range(t)
        ]
        assert not wrong, "\n".join(wrong[:20])


QUICK = [facts.Observation, facts.B12Result, decision.Blocker, decision.ResultDecision, decision.Decision]
QUICK.append(rows.ExtractedRow)


def _twin(cls):
    """The same fields as a plain frozen dataclass (its own __init__)."""
    spec = [
        (f.name, f.type, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (f.name, f.type)
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(f"{cls.__name__}Twin", spec, frozen=True)


def _sample(rng: random.Random, f: dataclasses.Field):
    return rng.choice([0, 1, "", "x", (), ("a",), None, True, 2.5])


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_makes_what_the_dataclass_makes(cls):
    twin = _twin(cls)
    rng = random.Random(cls.__name__)
    fields = dataclasses.fields(cls)
    required = [f for f in fields if f.default is dataclasses.MISSING]
    for _ in range(200):
        given = {f.name: _sample(rng, f) for f in fields if f in required or rng.random() < 0.5}
        ours, theirs = cls(**given), twin(**given)
        assert vars(ours) == vars(theirs)
        positional = [given.get(f.name, f.default) for f in fields]
        assert vars(cls(*positional)) == vars(theirs)
        k = rng.randint(0, len(fields))
        assert vars(cls(*positional[:k], **{f.name: positional[i] for i, f in enumerate(fields) if i >= k})) == vars(
            theirs
        )
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__setattr__(fields[0].name, 1)
    assert ours == cls(**vars(ours)) and hash(ours) == hash(cls(**vars(ours)))
    assert dataclasses.replace(ours, **{fields[0].name: 5}) == cls(**{**vars(ours), fields[0].name: 5})
    assert repr(ours) == repr(cls(**vars(ours)))
    # The same errors as the dataclass's own __init__
    if required:
        with pytest.raises(TypeError):
            cls(**{f.name: 1 for f in required[1:]})
    with pytest.raises(TypeError):
        cls(*[1] * (len(fields) + 1))
    with pytest.raises(TypeError):
        cls(**{f.name: 1 for f in required}, not_a_field=1)
    with pytest.raises(TypeError):
        cls(1, **{fields[0].name: 1}, **{f.name: 1 for f in required[1:]})


def test_quick_init_refuses_what_it_cannot_make_the_same_way():
    @dataclasses.dataclass(frozen=True)
    class WithFactory:
        a: list = dataclasses.field(default_factory=list)

    @dataclasses.dataclass
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True)
    class WithPostInit:
        a: int

        def __post_init__(self):
            pass

    for cls in (WithFactory, NotFrozen, WithPostInit):
        with pytest.raises(TypeError):
            quick_init(cls)


def _random_message(rng: random.Random) -> bytes:
    """Segments of PID, ORC, OBR and others, with CR, LF or CRLF between
    them, names that only start like a key segment, and stray line breaks."""
    names = [b"PID", b"ORC", b"OBR", b"OBX", b"NTE", b"PIDX", b"XPID", b"OB", b"", b"ORCA"]
    body = [b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5"]
    for _ in range(rng.randint(0, 12)):
        fields = [rng.choice(names)] + [bytes(rng.choice(b"ab1|^~ ") for _ in range(rng.randint(0, 5)))]
        body.append(b"|".join(fields))
    breaks = (b"\r", b"\n", b"\r\n", b"\r\r", b"\n\r") if rng.random() < 0.5 else (b"\r", b"\r\r")
    seps = [rng.choice(breaks) for _ in body]
    return b"".join(seg + sep for seg, sep in zip(body, seps, strict=True))[: rng.randint(40, 400)]


def test_key_segments_by_one_search_are_those_found_by_name():
    rng = random.Random("key segments")
    messages = _messages() + [_random_message(rng) for _ in range(3000)]
    checked = 0
    for message in messages:
        try:
            header = read_header(message)
        except Malformed:
            continue
        checked += 1
        assert _key_segments(message, header) == key_segments_by_find(message, header), message
    assert checked > 2000


def test_shared_delimiters_are_those_of_their_bytes():
    for message in _messages():
        try:
            header = read_header(message)
        except Malformed:
            continue
        enc = header.fields[2] if len(header.fields) > 2 else b""
        fresh = make_delimiters(header.delimiters.field, enc)
        assert header.delimiters == fresh
        assert header.delimiters.valid == fresh.valid
    for encoding in ENCODINGS:
        raw = encoding.encode()
        assert delimiters_of(raw[:1], raw[1:]) == make_delimiters(raw[:1], raw[1:])
        assert delimiters_of(raw[:1], raw[1:]).valid == make_delimiters(raw[:1], raw[1:]).valid


def test_once_is_cached_property_without_the_lock():
    from functools import cached_property

    from b12comment.core.frozen import once

    calls = []

    @dataclasses.dataclass(frozen=True)
    class Both:
        n: int

        @once
        def ours(self) -> int:
            calls.append("ours")
            return self.n * 2

        @cached_property
        def theirs(self) -> int:
            calls.append("theirs")
            return self.n * 2

    b = Both(4)
    assert (b.ours, b.ours, b.theirs, b.theirs) == (8, 8, 8, 8)
    assert calls == ["ours", "theirs"]  # each worked out once, then kept
    assert vars(b) == {"n": 4, "ours": 8, "theirs": 8}
    assert b == Both(4) and hash(b) == hash(Both(4))  # kept values are no fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.n = 5  # type: ignore[misc]
    assert isinstance(Both.ours, once)
    header = read_header(b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5\r")
    assert (header.message_type, header.control_id, header.version) == ("ORU^R01", "X1", "2.5")
