"""Property tests (hypothesis) of process():

(a) for any bytes, process never raises and returns (bytes, Decision);
(b) for mutated real and built messages and for random builder parameters,
    the output is the input, or the input with comment NTE segments inserted
    and nothing else changed; processing the output again returns it
    unchanged (already_commented, or the same non-commented decision);
(c) the cheap pre-check and the full path agree on output and decision.

The checker that finds inserted segments is independent of b12comment: it
reads the delimiters and MSH-18 itself, escapes the comment text itself and
splits segments itself.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest
from builders import B12_CODE, Obx, b12, build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b12comment.core.decision import Decision
from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig()
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages"
CORPUS_FILES = sorted(CORPUS.glob("*")) if CORPUS.is_dir() else []
SETTINGS = dict(
    deadline=None,
    max_examples=int(os.environ.get("B12_PROPERTY_EXAMPLES", "300")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------
# The independent checker

_BREAK = re.compile(rb"\r\n|\r|\n")
_LEADING = b" \t\r\n\x00\xef\xbb\xbf"
_CHARSETS = {
    "": "ascii",
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 15)},
}
_TRANSLIT = {"æ": "ae", "ø": "oe", "å": "aa", "Æ": "Ae", "Ø": "Oe", "Å": "Aa"}


def _msh(message: bytes):
    """(field separator, encoding characters, MSH-18 first repetition) or None."""
    i = 0
    while i < len(message) and message[i] in _LEADING:
        i += 1
    if message[i : i + 3] != b"MSH" or len(message) < i + 5:
        return None
    fs = message[i + 3 : i + 4]
    m = _BREAK.search(message, i)
    line = message[i : m.start() if m else len(message)]
    parts = line.split(fs)
    enc = parts[1] if len(parts) > 1 else b""
    msh18 = parts[17] if len(parts) > 17 else b""
    if len(enc) > 1:
        msh18 = msh18.split(enc[1:2], 1)[0]
    return fs, enc, msh18.decode("latin-1").strip().upper()


def _encode(text: str, codec: str) -> bytes:
    out = b""
    for ch in text:
        try:
            out += ch.encode(codec)
        except UnicodeEncodeError:
            alt = _TRANSLIT.get(ch) or unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode() or "?"
            out += alt.encode(codec, "replace")
    return out


def escaped_comment(message: bytes, text: str = RULE.comment_text()) -> bytes | None:
    """NTE-3 of the comment as this message must carry it (HL7 FT escaping)."""
    head = _msh(message)
    if head is None:
        return None
    fs, enc, msh18 = head
    codec = _CHARSETS.get(msh18)
    if codec is None:
        return None
    raw = _encode(text, codec)
    names = [enc[i : i + 1] for i in range(len(enc))]
    comp, rep, esc, sub, trunc = (names + [None] * 5)[:5]
    sub = sub or b"&"
    table = {fs: b"F", comp: b"S", rep: b"R", esc: b"E", sub: b"T", trunc: b"P"}
    out = b""
    for b in raw:
        ch = bytes([b])
        if esc is None:
            out += b" " if ch in (fs, comp, rep, sub, b"\n") else ch
        elif ch == b"\n":
            out += esc + b".br" + esc
        elif ch in table and ch is not None:
            out += esc + table[ch] + esc
        else:
            out += ch
    return out


def strip_comment_segments(message: bytes, needle: bytes) -> tuple[bytes, int]:
    """Remove every segment starting with NTE that contains `needle`, with
    its terminator (or, for a last segment without one, the terminator
    before it). Returns (the rest, number removed)."""
    spans, pos = [], 0
    for m in _BREAK.finditer(message):
        spans.append((pos, m.start(), m.end()))
        pos = m.end()
    if pos < len(message):
        spans.append((pos, len(message), len(message)))
    out, cut, removed = bytearray(), 0, 0
    for start, end, nxt in spans:
        seg = message[start:end]
        if seg.startswith(b"NTE") and needle in seg:
            removed += 1
            if nxt > end:
                out += message[cut:start]
            else:  # last segment without terminator: drop the break before it
                brk = re.search(rb"(?:\r\n|\r|\n)\Z", message[:start])
                out += message[cut : start - (len(brk.group()) if brk else 0)]
            cut = nxt
    out += message[cut:]
    return bytes(out), removed


def check(message: bytes, rule: RuleConfig = RULE) -> tuple[bytes, Decision]:
    """Every property of one message; returns process()'s answer."""
    out, decision = process(message, rule)
    assert isinstance(out, bytes) and isinstance(decision, Decision)
    assert decision.commented is bool(decision.commented)
    assert isinstance(decision.reasons, tuple)
    if out == message:
        assert not decision.commented
    else:
        assert decision.commented
        needle = escaped_comment(message, rule.comment_text())
        assert needle, "commented a message whose charset the checker does not know"
        stripped_out, n_out = strip_comment_segments(out, needle)
        stripped_in, n_in = strip_comment_segments(message, needle)
        assert stripped_out == stripped_in, "output differs from input by more than the comment"
        assert n_out - n_in == sum(r.commented for r in decision.results) >= 1
    # idempotent
    again, second = process(out, rule)
    assert again == out
    if decision.commented:
        assert not second.commented and "already_commented" in second.reasons
    else:
        assert second.commented is False and second.reasons == decision.reasons
    # pre-check agrees with the full path
    full_out, full = process(message, rule, precheck=False)
    assert full_out == out
    assert (full.commented, full.reasons) == (decision.commented, decision.reasons)
    return out, decision


# ---------------------------------------------------------------------------
# Checker self-tests (the checker must be able to fail)


def test_checker_detects_extra_change():
    message = build()
    out, _ = process(message, RULE)
    needle = escaped_comment(message)
    assert needle and needle in out
    stripped, n = strip_comment_segments(out, needle)
    assert stripped == message and n == 1
    tampered = out.replace(b"1500", b"1501")
    assert strip_comment_segments(tampered, needle)[0] != message


def test_checker_no_final_terminator_and_crlf():
    for kw in (dict(final_term=False), dict(term=b"\r\n", final_term=False), dict(term=b"\n")):
        message = build(**kw)
        out, decision = process(message, RULE)
        assert decision.commented
        assert strip_comment_segments(out, escaped_comment(message)) == (message, 1)


def test_checker_escapes_like_ft():
    message = build(version="2.7", enc="^~\\&#")
    assert escaped_comment(message, "a|b#c\nd") == b"a\\F\\b\\P\\c\\.br\\d"
    assert escaped_comment(build(charset="8859/1"), "ø") == b"\xf8"
    assert escaped_comment(build(charset=""), "ø") == b"oe"


# ---------------------------------------------------------------------------
# Base messages


def _base_messages() -> list[bytes]:
    low = Obx(code="718-7^Hgb^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")
    return [
        build(),
        build(term=b"\n"),
        build(term=b"\r\n", final_term=False),
        build(final_term=False),
        build(fs="!", enc="@*%$"),
        build(version="2.7", enc="^~\\&#"),
        build(version="2.3", vtype="SN", value=">^1476"),
        build(charset="UNICODE UTF-8", patient_name="Ærø^Søren"),
        build(charset="8859/1", patient_name="Ærø^Søren"),
        build(ntes=("note 1", "note 2"), others=(Obx(), b12("2000", "pg/mL", code="2132-9^B12^LN"))),
        build(birth="19800101"),
        build(others=(low,)),
        build(group2=(Obx(), low)),
        build(birth="20231201", vtype="ST", value="1476,0", code="VB12^B12^L^14685-2^Cobalamin^LN"),
        build(with_b12=False, others=(Obx(),)),
        build(enc="^~"),
        build(zseg="ZLB|1|\\F\\x|~|"),
    ]


BASES = _base_messages()


def test_base_messages_cover_commented_and_not():
    results = [process(m, RULE)[1].commented for m in BASES]
    assert sum(results) >= 8 and not all(results)


# ---------------------------------------------------------------------------
# (a) arbitrary bytes


@settings(**SETTINGS)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: b"MSH|^~\\&|" + b),
        st.lists(
            st.sampled_from(
                [
                    b"MSH|^~\\&|",
                    b"|",
                    b"^",
                    b"~",
                    b"\\",
                    b"&",
                    b"#",
                    b"\r",
                    b"\n",
                    b"ORU^R01",
                    b"PID",
                    b"OBX",
                    b"OBR",
                    b"NTE",
                    b"14685-2",
                    b"LN",
                    b"2016",
                    b"1500",
                    b"pmol/L",
                    b"F",
                    b"H",
                    b"\xf8",
                    b"2.7",
                ]
            ),
            max_size=60,
        ).map(b"".join),
    )
)
def test_any_bytes_never_raise(data):
    out, decision = process(data, RULE)
    assert isinstance(out, bytes) and isinstance(decision, Decision)
    assert isinstance(decision.reasons, tuple) and all(isinstance(r, str) for r in decision.reasons)
    if out != data:
        assert decision.commented
    else:
        assert not decision.commented
        assert decision.reasons, "a message returned unchanged must say why"


@settings(**SETTINGS)
@given(st.binary(max_size=200))
def test_any_bytes_with_commentable_prefix(tail):
    """A commentable message followed by junk: whatever happens, only the comment is added."""
    check(build(final_term=False) + tail)


# ---------------------------------------------------------------------------
# (b) mutated messages

TOKENS = [
    b"",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"|",
    b"#",
    b"\r",
    b"\n",
    b"\r\n",
    b"H",
    b"N",
    b"L",
    b"P",
    b"F",
    b"C",
    b"D",
    b">",
    b"<",
    b">^1476",
    b"1476",
    b"1,476",
    b"1476,0",
    b"<1476",
    b"pg/mL",
    b"pmol/L",
    b"nmol/L",
    b"14685-2",
    b"14685-2^B12^LN",
    b"VB12^x^L^14685-2^y^LN",
    b"LN",
    b"NTE|1|L|x",
    b"OBX|9|NM|14685-2^B12^LN||1500|pmol/L|||||F",
    b"PID|2",
    b"OBR|9||||||2024",
    b"2016",
    b"20160315",
    b"\xf8",
    b"\xc3\xb8",
    b"\xff",
    b"\x00",
    b"\\X00\\",
    b"\\.br\\",
    b"2.7",
    b"2.9",
    b"UNICODE UTF-8",
    b"8859/1",
    b"200-600",
    b"<600",
    b"SN",
    b"ST",
    b"NM",
    b"A~H",
    b" ",
    b"NTE",
    b"MSH|^~\\&|",
]

FIELD_EDITS = [  # (segment, field, value): turn real messages into paediatric B12 ones
    (b"OBX", 3, b"14685-2^Cobalamin^LN"),
    (b"OBX", 3, b"NPU01700^B12^NPU"),
    (b"OBX", 3, b"X^B12^L^14685-2^B12^LN"),
    (b"OBX", 2, b"NM"),
    (b"OBX", 2, b"SN"),
    (b"OBX", 5, b"1500"),
    (b"OBX", 5, b">^1476"),
    (b"OBX", 6, b"pmol/L"),
    (b"OBX", 6, b"pg/mL"),
    (b"OBX", 7, b""),
    (b"OBX", 7, b"200-600"),
    (b"OBX", 8, b""),
    (b"OBX", 8, b"H"),
    (b"OBX", 8, b"N"),
    (b"OBX", 11, b"F"),
    (b"OBX", 11, b"P"),
    (b"OBX", 14, b"20240110"),
    (b"PID", 7, b"20160315"),
    (b"PID", 7, b"2016"),
    (b"PID", 7, b"20060110"),
    (b"OBR", 7, b"20240110083000"),
    (b"OBR", 7, b""),
    (b"MSH", 12, b"2.7"),
    (b"MSH", 12, b"2.9"),
    (b"MSH", 18, b""),
    (b"MSH", 18, b"UNICODE UTF-8"),
]


def _edit_field(message: bytes, seg_name: bytes, n: int, value: bytes, which: int) -> bytes:
    head = _msh(message)
    if head is None:
        return message
    fs = head[0]
    spans, pos = [], 0
    for m in _BREAK.finditer(message):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(message)))
    hits = [(s, e) for s, e in spans if message[s:e].startswith(seg_name)]
    if not hits:
        return message
    s, e = hits[which % len(hits)]
    fields = message[s:e].split(fs)
    idx = n - 1 if seg_name == b"MSH" else n
    if idx < 1:
        return message
    fields += [b""] * (idx + 1 - len(fields))
    fields[idx] = value
    return message[:s] + fs.join(fields) + message[e:]


PAEDIATRIC_B12 = [
    (2, b"NM"),
    (3, b"14685-2^Cobalamin^LN"),
    (5, b"1500"),
    (6, b"pmol/L"),
    (7, b""),
    (8, b""),
    (11, b"F"),
    (14, b"20240110"),
]


def _count(message: bytes, seg_name: bytes) -> int:
    return sum(1 for line in _BREAK.split(message) if line.startswith(seg_name))


def paediatric(message: bytes, which: int, isolate: bool) -> bytes:
    """Make OBX number `which` a final, elevated total-B12 result of a child
    born 2016 (and, with `isolate`, every other OBX final and unflagged)."""
    if isolate:
        for k in range(_count(message, b"OBX")):
            message = _edit_field(message, b"OBX", 8, b"", k)
            message = _edit_field(message, b"OBX", 11, b"F", k)
    for field, value in PAEDIATRIC_B12:
        message = _edit_field(message, b"OBX", field, value, which)
    return _edit_field(message, b"PID", 7, b"20160315", 0)


@st.composite
def mutated(draw, bases):
    message = draw(st.sampled_from(bases))
    if draw(st.booleans()):
        message = paediatric(message, draw(st.integers(0, 20)), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "field", "field", "byte"]))
        n = len(message)
        i = draw(st.integers(0, n))
        if op == "replace":
            k = draw(st.integers(0, 8))
            message = message[:i] + draw(st.sampled_from(TOKENS)) + message[i + k :]
        elif op == "insert":
            message = message[:i] + draw(st.sampled_from(TOKENS)) + message[i:]
        elif op == "delete":
            message = message[:i] + message[i + draw(st.integers(1, 6)) :]
        elif op == "byte":
            message = message[:i] + draw(st.binary(min_size=1, max_size=3)) + message[i + 1 :]
        else:
            seg, field, value = draw(st.sampled_from(FIELD_EDITS))
            message = _edit_field(message, seg, field, value, draw(st.integers(0, 20)))
    return message


@settings(**SETTINGS)
@given(mutated(BASES))
def test_mutated_built_messages(message):
    check(message)


@pytest.mark.slow
@pytest.mark.skipif(not CORPUS_FILES, reason=f"corpus not present at {CORPUS}")
@settings(**SETTINGS)
@given(st.data())
def test_mutated_corpus_messages(data):
    bases = [p.read_bytes() for p in CORPUS_FILES]
    check(data.draw(mutated(bases)))


@pytest.mark.skipif(not CORPUS_FILES, reason=f"corpus not present at {CORPUS}")
def test_corpus_messages_unchanged_and_precheck_agrees():
    for path in CORPUS_FILES:
        message = path.read_bytes()
        out, decision = check(message)
        assert out == message, path.name
        assert not decision.commented


# ---------------------------------------------------------------------------
# (b) random builder parameters

BIRTHS = ["20160315", "2016", "201603", "20231201", "20060111", "20060110", "2006", "19700101", "", "20250101", "x"]
OTHERS = [
    Obx(),
    Obx(flags="N"),
    Obx(flags="H"),
    Obx(flags="L"),
    Obx(value="150"),
    Obx(status="P"),
    Obx(status="D", flags="H"),
    Obx(vtype="ST", value="positive", range="", units=""),
    b12("2000", "pg/mL", code="2132-9^B12^LN"),
    b12("900", code="NPU01700^B12^IUPP", status="P"),
]


def _often(default, options):
    """Mostly the commentable default, sometimes one of the options."""
    return st.sampled_from([default] * 3 + list(options))


@st.composite
def params(draw):
    return dict(
        birth=draw(_often("20160315", BIRTHS)),
        collected=draw(st.sampled_from(["20240110083000", "20240110", "2024", ""])),
        obx14=draw(st.sampled_from(["", "20240110", "20240111"])),
        vtype=draw(_often("NM", ["NM", "SN", "ST", "TX"])),
        value=draw(
            _often(
                "1500",
                ["1500", "1300", "700", ">1476", "<1476", "1476,0", "1,476", ">^1476", "<^2000", "^1350", "abc", ""],
            )
        ),
        units=draw(_often("pmol/L", ["pmol/L", "pg/mL", "ng/L", "nmol/L", "", "PMOL/L"])),
        range=draw(_often("", ["", "200-600", "<600", "200 - 900", "200-2000", "x"])),
        flags=draw(_often("", ["", "H", "N", "L", "HH", "A", "A~H", "<"])),
        status=draw(_often("F", ["F", "C", "P", "D", ""])),
        code=draw(
            _often(
                B12_CODE,
                [
                    B12_CODE,
                    "2132-9^B12^LN",
                    "NPU01700^B12^IUPP",
                    "VB12^B12^L^14685-2^Cobalamin^LN",
                    "72160-5^Holo^LN",
                    "B1222^fish^L",
                ],
            )
        ),
        ntes=draw(st.sampled_from([(), ("old",), (("1", "a"), ("5", "b"))])),
        others=tuple(draw(st.lists(_often(Obx(), OTHERS), max_size=3))),
        group2=tuple(draw(st.lists(_often(Obx(), OTHERS), max_size=2))),
        version=draw(st.sampled_from(["2.3", "2.5.1", "2.7", "2.9", ""])),
        enc=draw(st.sampled_from(["^~\\&", "^~\\&#", "^~"])),
        charset=draw(st.sampled_from(["", "8859/1", "UNICODE UTF-8"])),
        patient_name=draw(st.sampled_from(["Testesen^Barn", "Ærø^Søren"])),
        term=draw(st.sampled_from([b"\r", b"\n", b"\r\n"])),
        final_term=draw(st.booleans()),
        extra_pid=draw(st.booleans() if draw(st.integers(0, 9)) == 0 else st.just(False)),
    )


NOT_B12 = ("72160-5^Holo^LN", "B1222^fish^L")


def _message_must_not_comment(p: dict) -> list[str]:
    """Safety conditions from clinical-facts.md that forbid any comment."""
    why = []
    if any(
        o.code.split("^")[0] not in ("14685-2", "2132-9", "NPU01700")
        and o.status not in ("D", "W")
        and ((o.flags and o.flags != "N") or o.value == "150" or o.status == "P")
        for o in p["others"] + p["group2"]
    ):
        why.append("another result abnormal or pending")
    if p["birth"] in ("20060110", "2006", "19700101", "", "20250101", "x"):
        why.append("not certainly under 18")
    if p["extra_pid"]:
        why.append("two patients")
    return why


def _primary_must_not_comment(p: dict) -> list[str]:
    """Conditions that forbid the comment on the first (primary) B12 OBX."""
    why = []
    collected = p["obx14"] or p["collected"]
    if collected == "" or p["birth"] == "20060111" and collected in ("2024", "20240111"):
        why.append("not certainly under 18 at this collection")
    if "<" in p["value"].replace("<>", "") or p["value"] in ("", "abc", "1,476"):
        why.append("censored below or unreadable")
    if p["status"] not in ("F", "C"):
        why.append("not final")
    if p["units"].lower() not in ("pmol/l", "pg/ml", "ng/l"):
        why.append("unit unknown")
    if p["flags"] in ("N", "L", "<"):
        why.append("lab says not high")
    return why


@pytest.mark.slow
@settings(**SETTINGS)
@given(params())
def test_random_builder_messages(p):
    message = build(**p)
    out, decision = check(message)
    if decision.commented:
        assert not _message_must_not_comment(p), _message_must_not_comment(p)
        primary = decision.results[0]
        if primary.commented and p["code"] not in NOT_B12:
            assert not _primary_must_not_comment(p), _primary_must_not_comment(p)
            assert primary.age_years is not None and primary.age_years < 18


# ---------------------------------------------------------------------------
# (c) pre-check and full path, on fixed messages


@pytest.mark.parametrize("message", BASES, ids=[f"base{i}" for i in range(len(BASES))])
def test_precheck_agrees_on_base_messages(message):
    a = process(message, RULE, precheck=True)
    b = process(message, RULE, precheck=False)
    assert a[0] == b[0]
    assert (a[1].commented, a[1].reasons, a[1].results) == (b[1].commented, b[1].reasons, b[1].results)


def test_precheck_agrees_when_pid7_has_extra_components():
    """Was a disagreement: no_b12 from the pre-check, internal_error from the
    full path (hl7apy children without a name)."""
    message = build(with_b12=False, others=(Obx(),), birth="20160315^a^b^c^d^e")
    a = process(message, RULE, precheck=True)
    b = process(message, RULE, precheck=False)
    assert a[0] == b[0] == message
    assert a[1].reasons == b[1].reasons
