"""Numbers in lab results: OBX-5 values (NM, SN, text), OBX-7 ranges, units.

Everything here is strict on purpose: a value that could be read two ways
(`1,476` is 1.476 in Danish and 1476 in English) is not read at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"[+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+)"
_TEXT_VALUE = re.compile(rf"^\s*(>=|<=|<>|=>|=<|>|<|=|≥|≤)?\s*({_NUMBER})\s*$")
_RANGE_BOTH = re.compile(rf"^\s*({_NUMBER})\s*(?:-|–|—|to)\s*({_NUMBER})\s*$")
_RANGE_UPPER = re.compile(rf"^\s*(<=|<|≤|=<)\s*({_NUMBER})\s*$")
_RANGE_LOWER = re.compile(rf"^\s*(>=|>|≥|=>)\s*({_NUMBER})\s*$")
_AMBIGUOUS = re.compile(r"^[+-]?\d{1,3},\d{3}$")
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
    if not re.fullmatch(_NUMBER, text):
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


def parse_range(text: str) -> Range | None:
    """Read an OBX-7 reference range: `200-600`, `200 - 900`, `<600`, `>5`."""
    text = text.strip()
    if not text:
        return None
    m = _RANGE_BOTH.match(text)
    if m:
        low, high = parse_number(m.group(1)), parse_number(m.group(2))
        if low is None or high is None or low > high:
            return None
        return Range(low, high)
    m = _RANGE_UPPER.match(text)
    if m:
        high = parse_number(m.group(2))
        return None if high is None else Range(None, high, upper_exclusive=m.group(1) == "<")
    m = _RANGE_LOWER.match(text)
    if m:
        low = parse_number(m.group(2))
        return None if low is None else Range(low, None, lower_exclusive=m.group(1) == ">")
    return None


def outside(q: Quantity, r: Range) -> bool:
    """True only when the value is certainly outside the range."""
    high = r.upper is not None and (q.at_least(r.upper) if r.upper_exclusive else q.above(r.upper))
    low = r.lower is not None and (q.at_most(r.lower) if r.lower_exclusive else q.below(r.lower))
    return high or low
