"""Unit tests of b12comment.framing (MSH, delimiters, segment offsets),
b12comment.splice (NTE bytes, escaping, insertion) and b12comment.charset."""

from __future__ import annotations

import pytest

from b12comment.core import charset
from b12comment.core.segments import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Malformed,
    Segment,
    component,
    read_header,
    repetitions,
    segment_fields,
    split_segments,
)
from b12comment.core.splice import Insertion, apply, comment_field, insertion_after, next_set_id, nte_segment

MSH = b"MSH|^~\\&|LAB|HOSP|MW|HOSP|20240110120000||ORU^R01^ORU_R01|C42|P|2.5.1|||||DK|8859/1"

# ---------------------------------------------------------------------------
# read_header


def test_read_header_standard():
    h = read_header(MSH + b"\rPID|1\r")
    assert h.delimiters == DEFAULT_DELIMITERS
    assert h.delimiters.valid
    assert h.terminator == b"\r"
    assert h.start == 0
    assert h.field(1) == b"|" and h.field(2) == b"^~\\&" and h.field(3) == b"LAB"
    assert h.message_code == "ORU" and h.trigger_event == "R01"
    assert h.message_type == "ORU^R01"
    assert h.control_id == "C42"
    assert h.version == "2.5.1"
    assert h.charset == "8859/1"
    assert h.field(99) == b""


@pytest.mark.parametrize("term", [b"\r", b"\n", b"\r\n"])
def test_read_header_terminator(term):
    h = read_header(MSH + term + b"PID|1" + term)
    assert h.terminator == term
    assert h.charset == "8859/1"  # MSH-18 does not take the terminator


def test_read_header_single_line_defaults_to_cr():
    h = read_header(MSH)
    assert h.terminator == b"\r"
    assert h.charset == "8859/1"


def test_read_header_odd_delimiters():
    h = read_header(b"MSH!@*%$#!A!B!C!D!20240101!!ORU@R01!X1!P!2.7\rPID!1")
    assert h.delimiters == Delimiters(b"!", b"@", b"*", b"%", b"$", b"#")
    assert h.delimiters.valid
    assert h.message_type == "ORU^R01"
    assert h.control_id == "X1" and h.version == "2.7"


def test_read_header_two_encoding_chars():
    h = read_header(b"MSH|^~|A|B|C|D|20240101||ORU^R01|X1|P|2.3\r")
    assert h.delimiters == Delimiters(b"|", b"^", b"~", None, None, None)
    assert h.delimiters.valid


def test_read_header_three_encoding_chars_has_no_subcomponent():
    """`^~&`: the third character is the escape; there is no subcomponent separator."""
    h = read_header(b"MSH|^~&|A|B|C|D|20240101||ORU^R01|X1|P|2.3\r")
    assert h.delimiters == Delimiters(b"|", b"^", b"~", b"&", None, None)
    assert h.delimiters.valid
    assert h.message_type == "ORU^R01"


def test_read_header_truncation_char():
    h = read_header(b"MSH|^~\\&#|A|B|C|D|20240101||ORU^R01|X1|P|2.7\r")
    assert h.delimiters.truncation == b"#"
    assert h.delimiters.special() == (b"|", b"^", b"~", b"\\", b"&", b"#")


@pytest.mark.parametrize("prefix", [b"\r\n", b"  ", b"\n\n\t", b"\xef\xbb\xbf", b"\x00"])
def test_read_header_leading_whitespace(prefix):
    h = read_header(prefix + MSH + b"\r")
    assert h.start == len(prefix)
    assert h.control_id == "C42"


def test_read_header_repeated_charset_takes_first():
    h = read_header(MSH.replace(b"8859/1", b"UNICODE UTF-8~8859/1") + b"\r")
    assert h.charset == "UNICODE UTF-8"


def test_read_header_message_type_without_trigger():
    h = read_header(b"MSH|^~\\&|A|B|C|D|20240101||ACK|X1|P|2.3\r")
    assert h.message_type == "ACK" and h.trigger_event == ""


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"   ",
        b"PID|1||x\rMSH|^~\\&|A\r",  # MSH not first
        b"msh|^~\\&|A|B\r",  # lower case
        b"MSH|^~",  # too short for MSH-2
        b"MSH|^\\",
        b"MSH|^|A|B|C|D\r",  # MSH-2 one character
        b"MSH||A|B|C|D\r",  # MSH-2 empty
        b"MSH|^~\\&#$|A|B\r",  # MSH-2 six characters
        b"MSHA^~\\&|A|B\r",  # alphanumeric field separator
        b"MSH ^~\\& A B\r",  # space as field separator
        b"MSH\r^~\\&|A|B\r",
        b"\x0bMSH|^~\\&|A|B\r\x1c\r",  # MLLP framing is not the message
    ],
)
def test_read_header_malformed(message):
    with pytest.raises(Malformed):
        read_header(message)


@pytest.mark.parametrize(
    "msh",
    [
        b"MSH|^^\\&|A",  # component == repetition
        b"MSH|^~\\^|A",  # subcomponent == component
        b"MSH|^~\\\\|A",  # escape == subcomponent
        b"MSH|^~\\&&|A",  # truncation == subcomponent
        b"MSH|A~\\&|A",  # alphanumeric delimiter
        b"MSH|^~1&|A",
    ],
)
def test_duplicate_or_bad_encoding_chars_invalid(msh):
    assert read_header(msh + b"\r").delimiters.valid is False


# ---------------------------------------------------------------------------
# split_segments, fields


def test_split_segments_offsets_mixed_terminators():
    msg = b"MSH|a\rPID|b\nOBR|c\r\nOBX|d\r\r\nNTE|e"
    segs = split_segments(msg)
    assert [s.name for s in segs] == [b"MSH", b"PID", b"OBR", b"OBX", b"NTE"]
    assert segs == [
        Segment(b"MSH", 0, 5, 6),
        Segment(b"PID", 6, 11, 12),
        Segment(b"OBR", 12, 17, 19),
        Segment(b"OBX", 19, 24, 25),  # "\r" then an empty line "\r\n"
        Segment(b"NTE", 27, 32, 32),  # no final terminator: next == end
    ]
    for s in segs:
        assert msg[s.start : s.end].count(b"\r") == 0 and msg[s.start : s.end].count(b"\n") == 0


def test_split_segments_from_start_and_trailing_terminators():
    msg = b"\r\n  MSH|a\n\nPID|b\n\n"
    segs = split_segments(msg, start=4)
    assert segs == [Segment(b"MSH", 4, 9, 10), Segment(b"PID", 11, 16, 17)]


def test_split_segments_lfcr_is_two_breaks():
    segs = split_segments(b"MSH|a\n\rPID|b")
    assert [(s.start, s.end, s.next) for s in segs] == [(0, 5, 6), (7, 12, 12)]


def test_segment_fields_msh_numbering():
    msg = b"MSH|^~\\&|A|B\rOBX|1|NM|x^y\r"
    segs = split_segments(msg)
    f = segment_fields(msg, segs[0], DEFAULT_DELIMITERS)
    assert f[1] == b"|" and f[2] == b"^~\\&" and f[3] == b"A"
    f = segment_fields(msg, segs[1], DEFAULT_DELIMITERS)
    assert f[0] == b"OBX" and f[3] == b"x^y"


def test_component_and_repetitions():
    d = DEFAULT_DELIMITERS
    assert component(b"a&x^b^c~d^e", d, 1) == b"a"
    assert component(b"a&x^b^c~d^e", d, 2) == b"b"
    assert component(b"a^b", d, 5) == b""
    assert repetitions(b"H~N", d) == [b"H", b"N"]
    no_rep = Delimiters(b"|", b"^", b"", None, b"&", None)
    assert repetitions(b"H~N", no_rep) == [b"H~N"]


# ---------------------------------------------------------------------------
# comment_field

D27 = Delimiters(b"|", b"^", b"~", b"\\", b"&", b"#")


def test_comment_field_escapes_every_delimiter_v27():
    text = "a|b^c&d~e\\f#g\nh"
    assert comment_field(text, D27, "ascii") == b"a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\P\\g\\.br\\h"


def test_comment_field_hash_kept_without_truncation_char():
    assert comment_field("a#b|c", DEFAULT_DELIMITERS, "ascii") == b"a#b\\F\\c"


@pytest.mark.parametrize("text", ["a\r\nb", "a\rb", "a\nb"])
def test_comment_field_line_breaks_once(text):
    assert comment_field(text, DEFAULT_DELIMITERS, "ascii") == b"a\\.br\\b"


def test_comment_field_two_line_breaks():
    assert comment_field("a\n\nb", DEFAULT_DELIMITERS, "ascii") == b"a\\.br\\\\.br\\b"


def test_comment_field_odd_delimiters_use_message_escape():
    d = Delimiters(b"!", b"@", b"*", b"%", b"$", None)
    assert comment_field("a!b@c*d%e$f|g^h\ni", d, "ascii") == b"a%F%b%S%c%R%d%E%e%T%f|g^h%.br%i"


def test_comment_field_without_escape_char_replaces_specials():
    d = Delimiters(b"|", b"^", b"~", None, b"&", None)
    out = comment_field("a|b^c~d&e\\f\ng", d, "ascii")
    assert out == b"a b c d e\\f g"
    assert not any(s in out for s in (b"|", b"^", b"~", b"&", b"\n", b"\r"))


@pytest.mark.parametrize(
    "codec, expected",
    [
        ("latin-1", "forhøjet børn år".encode("latin-1")),
        ("utf-8", "forhøjet børn år".encode()),
        ("ascii", b"forhoejet boern aar"),
    ],
)
def test_comment_field_charsets(codec, expected):
    assert comment_field("forhøjet børn år", DEFAULT_DELIMITERS, codec) == expected


def test_comment_field_ascii_transliteration_all_danish_letters():
    assert comment_field("æøåÆØÅ é", DEFAULT_DELIMITERS, "ascii") == b"aeoeaaAeOeAa e"


def test_comment_field_character_outside_charset_gives_valid_bytes():
    out = comment_field("5 € ő ☃", DEFAULT_DELIMITERS, "latin-1")
    assert out == b"5 ? o ?"
    out = comment_field("ő ☃", DEFAULT_DELIMITERS, "ascii")
    assert out == b"o ?"
    out.decode("ascii")


def test_comment_field_utf8_never_splits_multibyte():
    out = comment_field("ø|ø", DEFAULT_DELIMITERS, "utf-8")
    assert out == "ø\\F\\ø".encode()
    out.decode("utf-8")


# ---------------------------------------------------------------------------
# next_set_id, nte_segment, insertion


@pytest.mark.parametrize(
    "existing, expected",
    [
        ((), 1),
        (("1",), 2),
        (("1", "2"), 3),
        (("1", "4"), 5),
        (("3",), 4),
        (("", ""), 3),
        (("x",), 2),
        (("2", "1"), 3),
    ],
)
def test_next_set_id(existing, expected):
    assert next_set_id(existing) == expected


def test_nte_segment_fields():
    assert nte_segment(3, "L", b"text", "RE", DEFAULT_DELIMITERS) == b"NTE|3|L|text|RE"
    assert nte_segment(1, "O", b"t", "", DEFAULT_DELIMITERS) == b"NTE|1|O|t"
    odd = Delimiters(b"!", b"@", b"*", b"%", b"$", None)
    assert nte_segment(2, "L", b"t", "RE", odd) == b"NTE!2!L!t!RE"


@pytest.mark.parametrize("term", [b"\r", b"\n", b"\r\n"])
def test_insertion_after_segment_with_terminator(term):
    msg = b"MSH|x" + term + b"OBX|1" + term + b"OBX|2" + term
    obx = split_segments(msg)[1]
    ins = insertion_after(msg, obx, b"NTE|1", b"\r")
    assert apply(msg, [ins]) == b"MSH|x" + term + b"OBX|1" + term + b"NTE|1" + term + b"OBX|2" + term


def test_insertion_after_uses_own_terminator_not_default():
    msg = b"MSH|x\rOBX|1\nOBX|2\r"
    obx = split_segments(msg)[1]
    assert apply(msg, [insertion_after(msg, obx, b"NTE|1", b"\r")]) == b"MSH|x\rOBX|1\nNTE|1\nOBX|2\r"


@pytest.mark.parametrize("term", [b"\r", b"\n", b"\r\n"])
def test_insertion_after_last_segment_without_final_terminator(term):
    msg = b"MSH|x" + term + b"OBX|1"
    obx = split_segments(msg)[-1]
    ins = insertion_after(msg, obx, b"NTE|1", term)
    assert ins.offset == len(msg)
    assert apply(msg, [ins]) == msg + term + b"NTE|1"


def test_apply_sorts_insertions_and_keeps_everything_else():
    msg = b"0123456789"
    out = apply(msg, [Insertion(7, b"B"), Insertion(2, b"A"), Insertion(10, b"C")])
    assert out == b"01A23456B789C"
    assert apply(msg, []) is msg


# ---------------------------------------------------------------------------
# charset


@pytest.mark.parametrize(
    "msh18, codec",
    [
        ("", "ascii"),
        ("ASCII", "ascii"),
        ("8859/1", "latin-1"),
        ("ISO IR100", "latin-1"),
        ("UNICODE UTF-8", "utf-8"),
        ("unicode utf-8", "utf-8"),
        (" UTF-8 ", "utf-8"),
        ("8859/15", "iso8859-15"),
        ("ISO IR87", None),
        ("UNICODE", None),
        ("UTF-16", None),
    ],
)
def test_codec_for(msh18, codec):
    assert charset.codec_for(msh18) == codec


def test_decode_never_fails():
    assert charset.decode(b"\xff\xfe", "utf-8") == "\ufffd\ufffd"
    assert charset.decode(b"\xf8", "ascii") == "ø"
