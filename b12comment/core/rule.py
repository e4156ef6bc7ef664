"""The clinical rule: does a total-B12 result get the comment?

Comment only when sure (shared/clinical-facts.md):
  - the result is final or corrected;
  - the patient was certainly under 18 at collection;
  - the unit is known and the value a readable quantity;
  - the value is elevated: by the lab's OBX-8 flag, else above the OBX-7
    upper limit, else above the configured age-band limit;
  - nothing else in the message is abnormal or still pending.
Every failed condition is recorded as a reason code. Pure: facts in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import tzinfo

from b12comment.core.dates import Age, age_at_moment, offset_zone, parse_moment, site_zone
from b12comment.core.decision import (
    ADULT,
    AGE_UNKNOWN,
    ALREADY_COMMENTED,
    BLOCK_ABNORMAL,
    BLOCK_PENDING,
    BLOCK_UNKNOWN,
    CONTEXT_PENDING,
    CONTEXT_UNREADABLE,
    IN_MESSAGE,
    INTERNAL_ERROR,
    NOT_ELEVATED,
    ORDER_NOT_FINAL,
    OTHER_ABNORMAL,
    RANGE_UNREADABLE,
    STATUS_NOT_FINAL,
    UNKNOWN_UNIT,
    UNREADABLE_VALUE,
    Blocker,
    ResultDecision,
)
from b12comment.core.facts import B12Result, Facts, Observation
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import component, field_of, segment_fields
from b12comment.core.values import (
    Quantity,
    Range,
    parse_quantity,
    parse_quantity_with_unit,
    read_range,
    same_unit,
)
from b12comment.core.verdict import (
    ABNORMAL,
    CODED_TYPES,
    LOW,
    NORMAL,
    UNKNOWN,
    b12_verdict,
    is_no_finding,
    judge_value,
    relies_on_silence,
)


def collection_times(facts: Facts, obs: Observation, rule: RuleConfig) -> list[str]:
    """Each of OBX-14, OBR-7 of its order and SPM-17 that is stated, in that
    order; none of them: MSH-7 (if allowed)."""
    found = [
        t for t in (obs.observed_at, facts.order_times.get(obs.group, ""), facts.specimen_times.get(obs.group, "")) if t
    ]
    if not found and facts.message_time:
        found = [facts.message_time]
    return found


def collection_time(facts: Facts, obs: Observation, rule: RuleConfig) -> str:
    """OBX-14, else OBR-7 of its order, else SPM-17, else (if allowed) MSH-7."""
    times = collection_times(facts, obs, rule)
    return times[0] if times else ""


def sender_zones(facts: Facts, rule: RuleConfig) -> tuple[tzinfo, ...]:
    """Every zone the sender's local time could be in: MSH-7's offset and the
    site's zone (`timezone`) both where both are known (a message time's fixed
    offset may be on the other side of a summer-time change than the
    collection, or a system clock's zone rather than the patient's calendar);
    else the one known; neither: () (every zone in use, see dates.parse_moment)."""
    own = offset_zone(facts.header.first_component(7))
    site = site_zone(rule.timezone)
    return tuple(z for z in (own, site) if z is not None)


def patient_ages(facts: Facts, obs: Observation, rule: RuleConfig) -> tuple[Age, ...] | None:
    """The patient's age at each stated collection time (the first is the
    one the rule uses), each time in the sender's local time; None when the
    age is not known for sure: no birth date or no collection time, the
    first time unreadable, a birth that could be after any of them (on the
    same day: by the time of day), or times that put the patient on two sides
    of the adult age. A time with an offset spans every date it has in the
    zones the sender's could be (sender_zones), so a doubt about the zone is
    a doubt about the age where it matters. A later time that cannot be read
    gives no age."""
    zones = sender_zones(facts, rule)
    # a birth date is a local calendar date: one with an offset is taken as
    # written and in the sender's zones
    birth = parse_moment(facts.birth, zones, written=True) if facts.birth else None
    times = collection_times(facts, obs, rule)
    if birth is None or not times:
        return None
    ages = []
    for i, text in enumerate(times):
        collected = parse_moment(text, zones)
        if collected is None:
            if i == 0:
                return None
            continue
        age = age_at_moment(birth, collected)
        if age is None:
            return None
        ages.append(age)
    if len({is_paediatric(a, rule) for a in ages}) > 1:
        return None
    return tuple(ages)


def band_limit(age: Age, rule: RuleConfig) -> float:
    """The fallback limit for the youngest age a patient under 18 could be (the
    highest limit, so a doubt about the band never makes a normal value elevated)."""
    return next(b.upper_limit_pmol_l for b in rule.age_bands if age.youngest < b.below_years)


def _blocking(facts: Facts, rule: RuleConfig, own: int = 0) -> list[tuple[Observation, str, bool]]:
    """The other results of the message that keep the comment away from the
    B12 at OBX `own`: (observation, verdict, pending). Another B12 keeps it
    away only when it is low (a deficiency is another finding, as an earlier
    low B12 is) or cannot be judged (it could be low); a repeat elevated one
    does not. A pending result is pending,
    whatever its value says so far (its verdict then ABNORMAL or NORMAL)."""
    b12_positions = {r.observation.obx_index for r in facts.b12}
    found = []
    for obs in facts.observations:
        if obs.obx_index == own or obs.status in rule.ignored_statuses or is_no_finding(obs, rule):
            continue
        if obs.obx_index in b12_positions:
            b12 = b12_verdict(obs, rule)
            if b12 in (LOW, UNKNOWN):  # a deficiency, or one that cannot be told from one
                found.append((obs, ABNORMAL if b12 == LOW else UNKNOWN, obs.status in rule.pending_statuses))
            continue
        verdict = judge_value(obs, rule)
        pending = obs.status in rule.pending_statuses
        if pending:
            verdict = ABNORMAL if verdict == ABNORMAL else NORMAL
        if pending or verdict != NORMAL:
            found.append((obs, verdict, pending))
    return found


def message_reasons(facts: Facts, rule: RuleConfig, own: int = 0) -> list[str]:
    """Reasons found in the other results of the message (another B12 only
    when low) against a comment on the B12 at OBX `own`."""
    return _reasons_of(_blocking(facts, rule, own))


def _reasons_of(blocking: list[tuple[Observation, str, bool]]) -> list[str]:
    found = set()
    for _, verdict, pending in blocking:
        if pending:
            found.add(CONTEXT_PENDING)
        if verdict == ABNORMAL:
            found.add(OTHER_ABNORMAL)
        elif verdict == UNKNOWN:
            found.add(CONTEXT_UNREADABLE)
    return [r for r in (OTHER_ABNORMAL, CONTEXT_UNREADABLE, CONTEXT_PENDING) if r in found]


SHORT_VALUE = 24  # characters: a value this short (and not free text) is shown where it blocked
FREE_TEXT_TYPES = ("FT", "TX", "ED")


def shown_value(obs: Observation, rule: RuleConfig) -> str:
    """The value of a blocking result as a site may see it in a report: a
    coded value (identifier^text), a number, or a short word; never free text
    (FT, TX, an embedded report) and never a person, an address or a date."""
    if obs.value_type in FREE_TEXT_TYPES or obs.value_type in rule.no_finding_types:
        return ""  # by its type: a flagged name or date is still a name or a date
    if obs.value_type in CODED_TYPES:
        value = "^".join(obs.value[:2]).strip("^")
    elif obs.value_type == "SN":
        value = "".join(obs.value)
    else:
        value = obs.value[0] if len([c for c in obs.value if c]) == 1 else ""
    return value if len(value) <= SHORT_VALUE else ""


def message_blockers(facts: Facts, rule: RuleConfig, own: int = 0) -> tuple[Blocker, ...]:
    """The other results of the message that keep the comment away from the
    B12 at OBX `own`, named."""
    return _blockers_of(_blocking(facts, rule, own), rule)


def _blockers_of(blocking: list[tuple[Observation, str, bool]], rule: RuleConfig) -> tuple[Blocker, ...]:
    return tuple(
        Blocker(
            source=IN_MESSAGE,
            obx=obs.obx_index,
            code=obs.codes[0] if obs.codes else "",
            system=obs.code_system,
            display=obs.code_text,
            value_type=obs.value_type,
            verdict=BLOCK_ABNORMAL if verdict == ABNORMAL else BLOCK_PENDING if pending else BLOCK_UNKNOWN,
            value=shown_value(obs, rule),
        )
        for obs, verdict, pending in blocking
    )


def order_reasons(facts: Facts, obs: Observation, rule: RuleConfig) -> list[str]:
    """What the orders (OBR-25) say. The B12's own order must be final or
    corrected if stated; every other order final, corrected or cancelled, and
    one with no results yet is pending unless final or cancelled. An empty
    OBR-25 is "not stated": the OBX-11 statuses of its results decide."""
    return _order_reasons(facts, obs, rule, pending_orders(facts, obs, rule))


def _order_reasons(facts: Facts, obs: Observation, rule: RuleConfig, pending: list[int]) -> list[str]:
    reasons = []
    own = facts.order_statuses.get(obs.group, "")
    if own and own not in rule.final_order_statuses:
        reasons.append(ORDER_NOT_FINAL)
    if pending:
        reasons.append(CONTEXT_PENDING)
    return reasons


def pending_orders(facts: Facts, obs: Observation, rule: RuleConfig) -> list[int]:
    """The other orders (OBR groups) of the message not finished: a stated
    OBR-25 neither final nor cancelled, or no results yet and not final."""
    with_results = {o.group for o in facts.observations}
    return [
        group
        for group, status in facts.order_statuses.items()
        if group != obs.group
        and status not in rule.final_order_statuses
        and status not in rule.cancelled_order_statuses
        and (status or group not in with_results)
    ]


def order_blockers(facts: Facts, groups: list[int]) -> tuple[Blocker, ...]:
    """The orders of `groups` named: OBR-4's code, system and text (value type "OBR")."""
    d = facts.header.delimiters
    obrs = [seg for seg in facts.segments if seg.name == b"OBR"]
    found = []
    for group in groups:
        if not 1 <= group <= len(obrs):
            continue
        service = field_of(segment_fields(facts.message, obrs[group - 1], d), 4)
        code, text, system = (component(service, d, k).decode("latin-1").strip() for k in (1, 2, 3))
        found.append(
            Blocker(
                source=IN_MESSAGE,
                obx=0,
                code=code,
                system=system,
                display=text,
                value_type="OBR",
                verdict=BLOCK_PENDING,
            )
        )
    return tuple(found)


def order_notes(facts: Facts) -> tuple[str, ...]:
    """A note when the feed leaves OBR-25 empty, so a site can see it."""
    empty = sum(1 for status in facts.order_statuses.values() if not status)
    if not empty:
        return ()
    return (f"OBR-25 (order status) empty in {empty} of {len(facts.order_statuses)} orders: OBX-11 statuses decide",)


@dataclass(frozen=True)
class Elevation:
    """Whether a B12 value is elevated, and on what grounds."""

    elevated: bool | None  # None: cannot be told (OBX-7 present but unreadable)
    limit: float | None  # the upper limit shown, in pmol/L
    limit_source: str | None  # where that number came from: "range" or "age_band"
    decided_by: str | None  # "flag", "range" or "age_band"


def elevation(q: Quantity, obs: Observation, unit: str, factor: float, age: Age, rule: RuleConfig) -> Elevation:
    """For a patient under 18: the lab's flag, else its OBX-7 range, else (only
    when there is no range at all) the age band. A range that is present but
    unreadable, in words, or in another unit than the value is not a missing
    range: the lab's interval may make the value normal."""
    flags = {f.upper() for f in obs.flags}
    reading = read_range(obs.range_text)
    usable = isinstance(reading, Range) and (not reading.unit or same_unit(reading.unit, unit))
    upper = reading.upper * factor if isinstance(reading, Range) and usable and reading.upper is not None else None
    source = "range" if upper is not None else None
    if flags & set(rule.elevated_flags) and flags & (set(rule.normal_flags) | set(rule.low_flags)):
        return Elevation(False, upper, source, "flag")  # flags that contradict: not certainly elevated
    if flags & set(rule.elevated_flags):
        return Elevation(q.comparator not in ("<", "<="), upper, source, "flag")
    if flags & (set(rule.normal_flags) | set(rule.low_flags)):
        return Elevation(False, upper, source, "flag")
    if reading is None:
        limit = band_limit(age, rule)
        return Elevation(q.scaled(factor).above(limit), limit, "age_band", "age_band")
    if not usable:
        return Elevation(None, None, None, None)
    if upper is None:  # `>200`: the lab's interval has no upper limit to be above
        return Elevation(False, None, None, "range")
    return Elevation(q.scaled(factor).above(upper), upper, "range", "range")


def b12_quantity(obs: Observation, rule: RuleConfig) -> tuple[Quantity | None, str | None]:
    """The B12 value and the unit it is in. OBX-5 as a quantity, in OBX-6; or a
    value with its unit inside OBX-5 (`1350 pmol/L`), read only when that unit is
    a configured one and OBX-6 is empty or the same unit. (None, None): the value
    carries a unit that is unknown or disagrees with OBX-6 (unreadable_value).
    A value of more than one repetition is not read (which one would it be?)."""
    if obs.repeated:
        return None, obs.units
    q = parse_quantity(obs.value_type, list(obs.value))
    if q is not None:
        return q, obs.units
    with_unit = parse_quantity_with_unit(obs.value_type, list(obs.value))
    if with_unit is None:
        return None, obs.units
    q, unit = with_unit
    if obs.units:  # the same unit in both (known or not: unknown_unit says so), else doubt
        return (q, obs.units) if same_unit(unit, obs.units) else (None, None)
    return (q, unit) if rule.unit_factor(unit) is not None else (None, None)


def is_paediatric(age: Age | None, rule: RuleConfig) -> bool:
    return age is not None and age.oldest < rule.adult_age_years


def decide_result(
    facts: Facts,
    result: B12Result,
    rule: RuleConfig,
    known_comments: frozenset[bytes],
    age: Age | None,
    marker: bytes = b"",
    ages: tuple[Age, ...] = (),
) -> ResultDecision:
    """`age` is patient_age() for this result; a result of a patient not
    certainly under 18 is decided on that alone (its other fields are not
    read); a paediatric one must have been read in full (facts.read_detail).
    Decided on the message alone: the context's veto comes after (with_veto).
    An NTE under the result that is one of `known_comments` or holds `marker`
    (the comment's provenance marker, as NTE-3 bytes) is this product's comment,
    whatever rule version or text wrote it."""
    obs = result.observation
    if any(text in known_comments or (marker and marker in text) for text in result.nte_texts):
        return ResultDecision(obs.obx_index, result.code, False, (ALREADY_COMMENTED,))
    if age is None or not is_paediatric(age, rule):
        return ResultDecision(
            obs.obx_index,
            result.code,
            False,
            (AGE_UNKNOWN,) if age is None else (ADULT,),
            age_years=age.youngest if age is not None else None,
        )
    if not result.detailed:  # the engine reads every paediatric result in full first
        return ResultDecision(obs.obx_index, result.code, False, (INTERNAL_ERROR,), age_years=age.youngest)
    reasons: list[str] = []
    if obs.status not in rule.final_statuses:
        reasons.append(STATUS_NOT_FINAL)
    pending = pending_orders(facts, obs, rule)
    order = _order_reasons(facts, obs, rule, pending)
    reasons.extend(r for r in order if r == ORDER_NOT_FINAL)
    q, unit = b12_quantity(obs, rule)
    factor = rule.unit_factor(unit) if unit else None
    value_pmol = limit = source = decided_by = elevated = None
    comparator = ""
    if factor is None and unit is not None:
        reasons.append(UNKNOWN_UNIT)
    if q is None:
        reasons.append(UNREADABLE_VALUE)
    if factor is not None and q is not None and unit is not None:
        value_pmol = round(q.number * factor, 1)
        comparator = q.comparator
        found = elevation(q, obs, unit, factor, age, rule)
        elevated, source, decided_by = found.elevated, found.limit_source, found.decided_by
        if elevated is None:
            reasons.append(RANGE_UNREADABLE)
        elif not elevated:
            reasons.append(NOT_ELEVATED)
        if found.limit is not None:
            limit = round(found.limit, 1)
        if decided_by == "age_band" and len({q.scaled(factor).above(band_limit(a, rule)) for a in ages or (age,)}) > 1:
            reasons.append(AGE_UNKNOWN)  # the collection times fall in two age bands, and the band decides
    blocking = _blocking(facts, rule, obs.obx_index)  # judged once: the reasons and the blockers named
    reasons.extend(_reasons_of(blocking))
    b12_positions = {r.observation.obx_index for r in facts.b12}
    silent = tuple(
        o.obx_index
        for o in facts.observations
        if o.obx_index != obs.obx_index
        and o.obx_index not in b12_positions
        and o.status not in rule.ignored_statuses
        and relies_on_silence(o, rule)
    )
    reasons.extend(r for r in order if r != ORDER_NOT_FINAL)
    return ResultDecision(
        obx_index=obs.obx_index,
        code=result.code,
        commented=not reasons,
        reasons=tuple(dict.fromkeys(reasons)),
        age_years=age.youngest,
        value_pmol_l=value_pmol,
        comparator=comparator,
        limit_pmol_l=limit,
        limit_source=source,
        decided_by=decided_by,
        elevated=elevated,
        paediatric=True,
        unflagged_unranged=silent,
        blockers=_blockers_of(blocking, rule) + order_blockers(facts, pending),
    )


def with_veto(
    rd: ResultDecision, vetoes: list[str], vetoed_by: list[str], blockers: tuple[Blocker, ...] = ()
) -> ResultDecision:
    """A result decided on its merits (paediatric), with the reasons the
    patient's other results give against its comment (context.veto) and the
    results that gave them."""
    reasons = tuple(dict.fromkeys((*rd.reasons, *vetoes)))
    return replace(
        rd, commented=not reasons, reasons=reasons, vetoed_by=tuple(vetoed_by), blockers=rd.blockers + blockers
    )
