"""Numbers in lab results: OBX-5 values (NM, SN, text), OBX-7 ranges, units.

Everything here is strict on purpose: a value that could be read two ways
(`1,476` is 1.476 in Danish and 1476 in English) is not read at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_NUMBER = r"[+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+)"
_TEXT_VALUE = re.compile(rf"^\s*(>=|<=|<>|=>|=<|>|<|=|≥|≤)?\s*({_NUMBER})\s*$")
_AMBIGUOUS = re.compile(r"^[+-]?\d{1,3},\d{3}$")
_PLAIN_NUMBER = re.compile(_NUMBER)
_COMPARATORS = {
    "": "",
    "=": "",
    ">": ">",
    "<": "<",
    ">=": ">=",
    "<=": "<=",
    "=>": ">=",
    "=<": "<=",
    "≥": ">=",
    "≤": "<=",
}


@dataclass(frozen=True)
class Quantity:
    number: float
    comparator: str = ""  # "", ">", ">=", "<", "<="

    def scaled(self, factor: float) -> Quantity:
        return Quantity(self.number * factor, self.comparator)

    def above(self, limit: float) -> bool:
        """True only when the true value is certainly above `limit`."""
        if self.comparator in ("<", "<="):
            return False
        if self.comparator == ">":
            return self.number >= limit
        return self.number > limit

    def at_least(self, limit: float) -> bool:
        """True only when the true value is certainly limit or more."""
        return self.comparator not in ("<", "<=") and self.number >= limit

    def at_most(self, limit: float) -> bool:
        """True only when the true value is certainly limit or less."""
        return self.comparator not in (">", ">=") and self.number <= limit

    def below(self, limit: float) -> bool:
        """True only when the true value is certainly below `limit`."""
        if self.comparator in (">", ">="):
            return False
        if self.comparator == "<":
            return self.number <= limit
        return self.number < limit


def parse_number(text: str) -> float | None:
    text = text.strip()
    if not text or _AMBIGUOUS.match(text):
        return None
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", "."))


def parse_quantity(value_type: str, components: list[str]) -> Quantity | None:
    """Read OBX-5 (first repetition, as components). None if not a plain quantity."""
    comps = [c.strip() for c in components] or [""]
    if value_type == "SN":
        comparator, num = comps[0], comps[1] if len(comps) > 1 else ""
        rest = [c for c in comps[2:] if c]
        if rest or comparator not in _COMPARATORS:
            return None  # a range (1^-^5) or ratio (1^:^2) is not one quantity
        number = parse_number(num)
        return None if number is None else Quantity(number, _COMPARATORS[comparator])
    if len(comps) > 1 and any(comps[1:]):
        return None
    m = _TEXT_VALUE.match(comps[0])
    if not m or m.group(1) == "<>":
        return None
    number = parse_number(m.group(2))
    if number is None:
        return None
    return Quantity(number, _COMPARATORS[m.group(1) or ""])


def possible_quantities(value_type: str, components: list[str]) -> list[Quantity]:
    """Every quantity OBX-5 could mean: one, or two for an ambiguous `15,000`
    (15.0 with a decimal comma, 15000 with a thousands separator)."""
    q = parse_quantity(value_type, components)
    if q is not None:
        return [q]
    text = (
        components[1] if value_type == "SN" and len(components) > 1 else components[0] if components else ""
    ).strip()
    m = re.match(r"^(>=|<=|>|<)?\s*([+-]?\d{1,3}),(\d{3})$", text)
    if not m or (value_type == "SN" and any(c.strip() for c in components[2:])):
        return []
    comparator = _COMPARATORS[m.group(1) or ""]
    if value_type == "SN":
        comparator = _COMPARATORS.get(components[0].strip(), "")
    whole, part = m.group(2), m.group(3)
    return [Quantity(float(f"{whole}.{part}"), comparator), Quantity(float(whole + part), comparator)]


@dataclass(frozen=True)
class Range:
    lower: float | None
    upper: float | None
    lower_exclusive: bool = False  # `>5`: 5 itself is outside
    upper_exclusive: bool = False  # `<10`: 10 itself is outside
    unit: str = ""  # a unit written after the numbers (`10-45 U/L`), as written


@dataclass(frozen=True)
class TextReference:
    """A reference written in words (`Negative`, `Not detected`): no numbers."""

    text: str


@dataclass(frozen=True)
class Unreadable:
    """OBX-7 is present but not a range this grammar knows. Never "no range"."""

    text: str


RangeReading = Range | TextReference | Unreadable | None

_SPACES = re.compile(r"[\s\u00a0\u2007\u2009\u202f]+")
_SIGNED = r"[-+−]?(?:\d+(?:[.,]\d+)?|[.,]\d+)"
_UNIT = (
    r"(?:[x×]\s?)?(?:10\s?[*^eE]\s?[+-]?\d+\s?|10[⁰¹²³⁴⁵⁶⁷⁸⁹]+\s?)?"
    r"[A-Za-zµμ%/°][A-Za-z0-9µμ%/.*·²³⁰¹⁴⁵⁶⁷⁸⁹\-]*"
)
_TAIL = rf"(?:\s*(?P<unit>{_UNIT}))?"
_JOINER = r"(?:\s*(?:-|–|—|−|‐|‑|\.{2,3}|;|_)\s*|\s+(?:to|til|bis)\s+)"
_BOTH = re.compile(rf"^(?P<low>{_SIGNED}){_JOINER}(?P<high>{_SIGNED}){_TAIL}$", re.IGNORECASE)
_UPPER_WORDS = {"up to": "<=", "op til": "<=", "under": "<", "below": "<", "less than": "<", "mindre end": "<"}
_LOWER_WORDS = {"over": ">", "above": ">", "more than": ">", "greater than": ">", "større end": ">"}
_ONE_SIDED = re.compile(
    r"^(?P<cmp><=|=<|≤|⩽|<|>=|=>|≥|⩾|>|"
    + "|".join(map(re.escape, sorted({**_UPPER_WORDS, **_LOWER_WORDS}, key=len, reverse=True)))
    + rf")\s*(?P<num>{_SIGNED}){_TAIL}$",
    re.IGNORECASE,
)
_RANGE_COMPARATORS = {
    "<": "<",
    "<=": "<=",
    "=<": "<=",
    "≤": "<=",
    "⩽": "<=",
    ">": ">",
    ">=": ">=",
    "=>": ">=",
    "≥": ">=",
    "⩾": ">=",
    **_UPPER_WORDS,
    **_LOWER_WORDS,
}
_PREFIX = re.compile(
    r"^(?:ref(?:erence)?\.?\s*(?:range|interval|int\.?|område|omr\.?)?|referenceinterval|referenceområde"
    r"|normal(?:\s*(?:range|område|interval))?|normalområde)\s*[:.]?\s*(?=[\d<>≤≥⩽⩾+\-−.,\[(])",
    re.IGNORECASE,
)
_BRACKETS = re.compile(rf"^(?:\[(?P<sq>[^\[\]()]*)\]|\((?P<par>[^\[\]()]*)\)){_TAIL}$")


def _range_number(text: str) -> float | None:
    return parse_number(text.replace("−", "-"))


def _core_range(text: str, unit: str = "") -> Range | None:
    """The numeric forms: `10-45`, `10..45`, `10 to 45`, `<600`, `>=5`, each
    with an optional unit after it."""
    m = _BOTH.match(text)
    if m:
        low, high = _range_number(m.group("low")), _range_number(m.group("high"))
        found_unit = m.group("unit") or ""
        if low is None or high is None or low > high or (unit and found_unit):
            return None
        return Range(low, high, unit=unit or found_unit)
    m = _ONE_SIDED.match(text)
    if m:
        number = _range_number(m.group("num"))
        found_unit = m.group("unit") or ""
        if number is None or (unit and found_unit):
            return None
        # casefold: the pattern matches without regard to case as Unicode
        # does (`leſs than`, a long s), which lower() does not undo.
        cmp = _RANGE_COMPARATORS.get(m.group("cmp").casefold())
        if cmp is None:
            return None
        if cmp.startswith("<"):
            return Range(None, number, upper_exclusive=cmp == "<", unit=unit or found_unit)
        return Range(number, None, lower_exclusive=cmp == ">", unit=unit or found_unit)
    return None


def _sn_range(text: str) -> Range | None:
    """An SN-shaped OBX-7 (components joined by `^`): `>^11.0`, `^10^-^45`."""
    comps = [c.strip() for c in text.split("^")]
    if len(comps) == 2 and comps[0] in ("<", "<=", ">", ">="):
        return _core_range(comps[0] + comps[1])
    if len(comps) == 4 and comps[0] == "" and comps[2] == "-":
        return _core_range(f"{comps[1]}-{comps[3]}")
    return None


def read_range(text: str) -> RangeReading:
    """`read_text_range` of `text`, remembered: a lab sends the same few
    ranges on every message, and the readings are immutable. The differential
    test holds the two equal."""
    return _remembered_range(text)


def read_text_range(text: str) -> RangeReading:
    """Read an OBX-7 reference range, as labs write it: `200-600`, `200 - 900`,
    `3,5–5,0`, `<600`, `>=5`, `10..45`, `10 til 45`, `[10;45]`, `(10-45)`,
    `Ref.: 10-45`, `10-45 U/L`, `1,5-7,5 x10E9/l`, an SN-shaped `>^11.0`.

    None: no range at all (empty). Range: the bounds (and a unit written after
    them). TextReference: words without a number (`Negative`). Unreadable:
    anything else; present but not understood, which is never "no range"."""
    original = text.strip()
    t = _SPACES.sub(" ", original).strip()
    if not t:
        return None
    if "^" in t:  # SN-shaped; else a decoded escape (`10^9/l`) read as text
        sn = _sn_range(t)
        if sn is not None:
            return sn
    t = _PREFIX.sub("", t, count=1)
    m = _BRACKETS.match(t)
    if m:
        inner = (m.group("sq") if m.group("sq") is not None else m.group("par")).strip()
        rng = _core_range(inner, m.group("unit") or "")
    else:
        rng = _core_range(t)
    if rng is not None:
        return rng
    if not any(ch.isdigit() for ch in t):
        return TextReference(original)
    return Unreadable(original)


# The readings of recent OBX-7 texts (a text of more than RANGE_CACHE_TEXT
# characters is read each time: a cache of them would hold free text).
RANGE_CACHE_TEXT = 64
_cached_range = lru_cache(maxsize=2048)(read_text_range)


def _remembered_range(text: str) -> RangeReading:
    return _cached_range(text) if len(text) <= RANGE_CACHE_TEXT else read_text_range(text)


_UNIT_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def unit_key(unit: str) -> str:
    """A unit as compared: case, spaces and the common spellings of the same
    unit (`10*9/L`, `x10E9/l`, `×10⁹/L`; `µ`, `μ`, `u`, `mcg`) ignored."""
    u = re.sub("10([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10*" + m.group(1), _SPACES.sub("", unit))
    u = u.translate(_UNIT_SUPERSCRIPTS).lower()
    u = u.replace("μ", "u").replace("µ", "u").replace("mcg", "ug")
    return re.sub(r"^[x×]?10[*^e]", "10*", u)


def same_unit(a: str, b: str) -> bool:
    return unit_key(a) == unit_key(b)


_VALUE_WITH_UNIT = re.compile(rf"^\s*(>=|<=|=>|=<|>|<|=|≥|≤)?\s*({_NUMBER})\s*({_UNIT})\s*$")


def parse_quantity_with_unit(value_type: str, components: list[str]) -> tuple[Quantity, str] | None:
    """A value with its unit inside OBX-5 (`1350 pmol/L`, `>1476 pmol/L`, `85 U/L`):
    the quantity and the unit as written. None for anything else (SN included)."""
    comps = [c.strip() for c in components] or [""]
    if value_type == "SN" or (len(comps) > 1 and any(comps[1:])):
        return None
    m = _VALUE_WITH_UNIT.match(comps[0])
    if not m:
        return None
    number = parse_number(m.group(2))
    if number is None:
        return None
    return Quantity(number, _COMPARATORS[m.group(1) or ""]), m.group(3)


def outside(q: Quantity, r: Range) -> bool:
    """True only when the value is certainly outside the range."""
    high = r.upper is not None and (q.at_least(r.upper) if r.upper_exclusive else q.above(r.upper))
    low = r.lower is not None and (q.at_most(r.lower) if r.lower_exclusive else q.below(r.lower))
    return high or low
