"""The verdict on one other (non-B12) result: normal, abnormal, or cannot be
judged. The one judgement the message's own results, the look-back's rows
and the review alert all share. Pure: an Observation and the rule in, a
verdict out.
"""

from __future__ import annotations

from b12comment.core.facts import Observation
from b12comment.core.rule_config import RuleConfig
from b12comment.core.values import (
    Quantity,
    Range,
    TextReference,
    outside,
    parse_quantity_with_unit,
    possible_quantities,
    read_range,
    same_unit,
)

NORMAL, ABNORMAL, UNKNOWN = "normal", "abnormal", "unknown"

CODED_TYPES = ("CWE", "CE", "CNE", "CF")
# Value types whose OBX-5 may hold a quantity (a date, a code or a name never does).
QUANTITY_TYPES = ("NM", "SN", "ST", "TX", "FT", "")


def _text_key(text: str) -> str:
    return " ".join(text.split()).rstrip(".").casefold()


def _value_texts(obs: Observation) -> list[str]:
    """The texts of a value compared with normal_texts and a text reference:
    the whole value, and for a coded value its identifier and text. None for
    a value of more than one repetition, or a text whose further components
    (an unescaped `^`) say more: "Negative" must be all it says."""
    if obs.repeated:
        return []
    if obs.value_type in CODED_TYPES:
        return [c for c in obs.value[:2] if c]
    if not obs.value or not obs.value[0] or any(obs.value[1:]):
        return []
    return [obs.value[0]]


def is_normal_text(obs: Observation, rule: RuleConfig) -> bool:
    normal = {_text_key(t) for t in rule.normal_texts}
    return any(_text_key(t) in normal for t in _value_texts(obs))


def is_ignored_code(obs: Observation, rule: RuleConfig) -> bool:
    return any(code in rule.ignored_codes for code in obs.codes)


def other_quantities(obs: Observation, rng: Range | None) -> list[Quantity]:
    """Every quantity another result's OBX-5 could mean, in the unit of its
    range: [] when the value cannot be read, or its unit (in OBX-5, OBX-6 or
    after the range) disagrees with another."""
    if obs.value_type not in QUANTITY_TYPES or obs.repeated:
        return []  # a second repetition could say anything: not the first alone
    if rng is not None and rng.unit and obs.units and not same_unit(rng.unit, obs.units):
        return []
    found = possible_quantities(obs.value_type, list(obs.value))
    if found:
        return found
    with_unit = parse_quantity_with_unit(obs.value_type, list(obs.value))
    if with_unit is None:
        return []
    q, unit = with_unit
    if any(other and not same_unit(unit, other) for other in (obs.units, rng.unit if rng else "")):
        return []
    return [q]


def is_no_finding(obs: Observation, rule: RuleConfig) -> bool:
    """A line that is no result to judge: a date, a time, a person, an address
    or a telephone number (its OBX-2 value type is one of no_finding_types),
    as long as the lab says nothing about it. A flag other than a normal one,
    a range or a unit makes it a result after all (a finding sent under the
    wrong value type): it is judged, and a flagged one vetoes whatever its type."""
    return (
        obs.value_type in rule.no_finding_types
        and not obs.range_text
        and not obs.units
        and all(f.upper() in rule.normal_flags for f in obs.flags)
    )


def relies_on_silence(obs: Observation, rule: RuleConfig) -> bool:
    """Judged normal only because the lab left a number unflagged and unranged
    (unflagged_unranged = "normal"): what a lab whose system does not flag
    must see."""
    return (
        rule.unflagged_unranged == "normal"
        and not obs.flags
        and not is_no_finding(obs, rule)
        and read_range(obs.range_text) is None
        and not is_normal_text(obs, rule)
        and not is_ignored_code(obs, rule)
        and bool(other_quantities(obs, None))
    )


def judge_value(obs: Observation, rule: RuleConfig) -> str:
    """NORMAL, ABNORMAL or UNKNOWN: what one other result says about the patient.

    ABNORMAL: a flag other than a normal flag, or a value outside its own
    readable OBX-7 range (under every reading of an ambiguous `15,000`).
    UNKNOWN (doubt): OBX-7 present but unreadable; a value that cannot be read
    as a quantity while a numeric range is given; a text result with neither
    flag nor range (or with a text reference it does not match), unless its
    text is a configured normal text. A normal flag (`N`) or a configured
    ignored code turns a doubt into NORMAL; neither hides an abnormal flag or
    a value outside its range.
    """
    if is_no_finding(obs, rule):
        return NORMAL
    flags = [f.upper() for f in obs.flags]
    if any(flag not in rule.normal_flags for flag in flags):
        return ABNORMAL
    reading = read_range(obs.range_text)
    if isinstance(reading, Range):
        quantities = other_quantities(obs, reading)
        if any(outside(q, reading) for q in quantities):
            return ABNORMAL
        if quantities:
            return NORMAL
    elif isinstance(reading, TextReference):
        # The value matches the lab's reference in words, or both are normal
        # answers ("Negative" against "Negativ"); a normal answer against a
        # reference that says otherwise ("Negative" for a rubella IgG whose
        # reference is "Positive") is doubt.
        reference = _text_key(reading.text)
        normal = {_text_key(t) for t in rule.normal_texts}
        if any(_text_key(t) == reference for t in _value_texts(obs)) or (
            reference in normal and is_normal_text(obs, rule)
        ):
            return NORMAL
    elif reading is None and is_normal_text(obs, rule):
        return NORMAL
    elif reading is None and rule.unflagged_unranged == "normal" and other_quantities(obs, None):
        return NORMAL  # a number the lab did not flag: the lab flags what it finds abnormal
    # In doubt: only the lab's normal flag or the site's list of codes lifts it.
    if flags or is_ignored_code(obs, rule):
        return NORMAL
    return UNKNOWN


# What an earlier B12 of the patient says, beside the verdicts above: a low
# B12 is an abnormal finding (a deficiency) that vetoes a comment; a repeat
# elevated one does not.
LOW = "low"


def b12_verdict(obs: Observation, rule: RuleConfig) -> str:
    """LOW for a B12 the lab flags low (`low_flags`) or whose value is below
    its own readable OBX-7 range; otherwise what judge_value says."""
    flags = {f.upper() for f in obs.flags}
    if flags & set(rule.low_flags):
        return LOW
    reading = read_range(obs.range_text)
    if isinstance(reading, Range) and (lower := reading.lower) is not None:
        quantities = other_quantities(obs, reading)
        if any(q.at_most(lower) if reading.lower_exclusive else q.below(lower) for q in quantities):
            return LOW
    return judge_value(obs, rule)
