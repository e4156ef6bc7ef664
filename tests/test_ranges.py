"""OBX-7 reference ranges as laboratories write them, read by values.read_range.

Each row is a spelling seen in real feeds, laboratory handbooks or HL7 examples
(clinical-facts.md, "Ranges as labs write them"; the public corpus has `70_105`,
`<10 ug/dL`, `>^11.0`, `^^10.000000`, `0-1+`, `Not Detected`), with the bounds a
clinical biochemist reads in it, or UNREADABLE where a careful reader would not
guess. A range that is present but unreadable is never "no range".
"""

from __future__ import annotations

import pytest

from b12comment.core import values
from b12comment.core.values import (
    Quantity,
    Range,
    TextReference,
    Unreadable,
    parse_quantity_with_unit,
    read_range,
    same_unit,
)

UNREADABLE = "unreadable"


def both(low: float, high: float, unit: str = "") -> Range:
    return Range(low, high, unit=unit)


def below(high: float, inclusive: bool = False, unit: str = "") -> Range:
    return Range(None, high, upper_exclusive=not inclusive, unit=unit)


def above(low: float, inclusive: bool = False, unit: str = "") -> Range:
    return Range(low, None, lower_exclusive=not inclusive, unit=unit)


RANGES = [
    # plain
    ("200-600", both(200, 600)),
    ("200 - 900", both(200, 900)),
    ("  200-600  ", both(200, 600)),
    ("3.5-5.0", both(3.5, 5.0)),
    ("1.002-1.030", both(1.002, 1.030)),
    ("0-35", both(0, 35)),
    # dashes
    ("200–600", both(200, 600)),  # en dash
    ("200—600", both(200, 600)),  # em dash
    ("1.5 — 7.5", both(1.5, 7.5)),
    ("3,5–5,0", both(3.5, 5.0)),  # decimal commas and an en dash
    ("2.6−4.4", both(2.6, 4.4)),  # minus sign
    ("10\u00a0-\u00a045", both(10, 45)),  # non-breaking spaces
    # decimal commas
    ("3,5-5,0", both(3.5, 5.0)),
    ("0,27 - 4,20", both(0.27, 4.20)),
    # a unit after the numbers
    ("10-45 U/L", both(10, 45, "U/L")),
    ("3.5-5.0 mmol/L", both(3.5, 5.0, "mmol/L")),
    ("1,5-7,5 x10E9/l", both(1.5, 7.5, "x10E9/l")),
    ("4.5-11.0 10*9/L", both(4.5, 11.0, "10*9/L")),
    ("4,0-10,0 ×10⁹/L", both(4.0, 10.0, "×10⁹/L")),
    ("60-105 µmol/L", both(60, 105, "µmol/L")),
    ("< 5 mg/L", below(5, unit="mg/L")),
    ("<10 ug/dL", below(10, unit="ug/dL")),
    ("36-46 %", both(36, 46, "%")),
    # brackets and parentheses
    ("[10;45]", both(10, 45)),
    ("(10-45)", both(10, 45)),
    ("[10-45]", both(10, 45)),
    ("( 3,5 - 5,0 )", both(3.5, 5.0)),
    ("(10-45) U/L", both(10, 45, "U/L")),
    # other joiners
    ("10..45", both(10, 45)),
    ("10...45", both(10, 45)),
    ("10 til 45", both(10, 45)),
    ("10 to 45", both(10, 45)),
    ("200 to 600", both(200, 600)),
    ("70_105", both(70, 105)),  # public corpus
    # prefixes
    ("Ref: 10-45", both(10, 45)),
    ("Ref.: 10-45", both(10, 45)),
    ("Ref. 10-45", both(10, 45)),
    ("Reference range: 3.5-5.1 mmol/L", both(3.5, 5.1, "mmol/L")),
    ("Ref.interval: 250-900", both(250, 900)),
    ("Normal: 0-5", both(0, 5)),
    # negative bounds (base excess)
    ("-5-5", both(-5, 5)),
    ("-2.0 to +2.0", both(-2.0, 2.0)),
    ("-3 - 3", both(-3, 3)),
    # one-sided
    ("<600", below(600)),
    ("< 600", below(600)),
    ("<=600", below(600, inclusive=True)),
    ("≤600", below(600, inclusive=True)),
    ("=<600", below(600, inclusive=True)),
    ("up to 45", below(45, inclusive=True)),
    ("op til 45", below(45, inclusive=True)),
    ("under 8", below(8)),
    (">5", above(5)),
    (">=5", above(5, inclusive=True)),
    ("≥ 60", above(60, inclusive=True)),
    ("> 200 U/L", above(200, unit="U/L")),
    ("over 60", above(60)),
    # SN-shaped (components joined by ^)
    (">^11.0", above(11.0)),  # public corpus
    ("^10^-^45", both(10, 45)),
    # no range at all
    ("", None),
    ("   ", None),
    # words: a text reference, compared with a text value only
    ("Not Detected", TextReference("Not Detected")),  # public corpus
    ("Negativ", TextReference("Negativ")),
    ("see comment", TextReference("see comment")),
    # present but unreadable: never "no range"
    ("600-200", UNREADABLE),  # bounds reversed
    ("200-", UNREADABLE),
    ("-600", UNREADABLE),  # a negative number, or "up to 600"?
    ("600", UNREADABLE),  # one number: upper or lower?
    ("1,476-2,000", UNREADABLE),  # thousands separators or decimal commas?
    ("200~600", UNREADABLE),
    ("0-1+", UNREADABLE),  # public corpus
    ("^^10.000000", UNREADABLE),  # public corpus
    ("<9 mcg/dL:  Acceptable background lead exposure", UNREADABLE),  # public corpus
    ("High Viral Load > or = 850000iU/mL", UNREADABLE),  # public corpus
    ("M: 60-105; F: 45-90", UNREADABLE),  # sex-specific ranges in one field
    ("60-105 (M)", UNREADABLE),
    ("10 U/L - 45 U/L", UNREADABLE),
    ("[10-45)", UNREADABLE),  # interval notation: half-open, not guessed
    ("[10;45] U/L extra", UNREADABLE),
    ("2-5 or 8-10", UNREADABLE),
    ("<>5", UNREADABLE),
    ("1-2-3", UNREADABLE),
]


def test_table_is_large_enough():
    assert len(RANGES) >= 40


@pytest.mark.parametrize("text, expected", RANGES, ids=[repr(t) for t, _ in RANGES])
def test_read_range(text, expected):
    got = read_range(text)
    if expected == UNREADABLE:
        assert isinstance(got, Unreadable), got
        assert got.text == text.strip()
    else:
        assert got == expected


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("10*9/L", "x10E9/l", True),
        ("10^9/L", "×10⁹/L", True),
        ("µmol/L", "umol/L", True),
        ("μmol/L", "µmol/L", True),  # Greek mu and micro sign
        ("mcg/dL", "ug/dL", True),
        ("U/L", "u/l", True),
        ("mmol/L", "µmol/L", False),
        ("mg/dL", "mmol/L", False),
        ("10*9/L", "10*12/L", False),
    ],
)
def test_same_unit(a, b, same):
    assert same_unit(a, b) is same


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1350 pmol/L", (Quantity(1350.0), "pmol/L")),
        (">1476 pmol/L", (Quantity(1476.0, ">"), "pmol/L")),
        ("85 U/L", (Quantity(85.0), "U/L")),
        ("1476,0 pmol/l", (Quantity(1476.0), "pmol/l")),
        ("1350", None),  # no unit: parse_quantity's job
        ("1,476 pmol/L", None),  # ambiguous number
        ("1350 pmol/L extra", None),
        ("pmol/L 1350", None),
    ],
)
def test_parse_quantity_with_unit(value, expected):
    assert parse_quantity_with_unit("ST", [value]) == expected


def _unicode_case_variants(word: str) -> list[str]:
    """The word with letters that a case-insensitive pattern matches as
    Unicode does: the long s (U+017F), the Kelvin sign (U+212A), the dotted
    and dotless i (U+0130, U+0131), and the word in capitals."""
    swaps = {"s": "\u017f", "k": "\u212a", "i": "\u0130"}
    out = [word.upper(), word.replace("i", "\u0131")]
    out += [word.replace(a, b) for a, b in swaps.items() if a in word]
    return [v for v in out if v != word]


@pytest.mark.parametrize("word", sorted({**values._UPPER_WORDS, **values._LOWER_WORDS}))
def test_a_comparator_word_in_any_unicode_case_never_raises(word):
    """A comparator word the pattern matches in another Unicode case is read
    as the word, or is unreadable (doubt); it never raises (which made the
    silence name no result)."""
    plain = read_range(f"{word} 5")
    assert isinstance(plain, Range)
    for variant in _unicode_case_variants(word):
        found = read_range(f"{variant} 5")
        assert found == plain or isinstance(found, Unreadable), (variant, found)
