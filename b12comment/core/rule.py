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

from b12comment.core.dates import Age, age_at, parse_ts
from b12comment.core.decision import (
    ADULT,
    AGE_UNKNOWN,
    ALREADY_COMMENTED,
    CONTEXT_PENDING,
    INTERNAL_ERROR,
    NOT_ELEVATED,
    OTHER_ABNORMAL,
    STATUS_NOT_FINAL,
    UNKNOWN_UNIT,
    UNREADABLE_VALUE,
    ResultDecision,
)
from b12comment.core.facts import B12Result, Facts, Observation
from b12comment.core.rule_config import RuleConfig
from b12comment.core.values import Quantity, outside, parse_quantity, parse_range, possible_quantities


def collection_time(facts: Facts, obs: Observation, rule: RuleConfig) -> str:
    """OBX-14, else OBR-7 of its order, else SPM-17, else (if allowed) MSH-7."""
    for candidate in (
        obs.observed_at,
        facts.order_times.get(obs.group, ""),
        facts.specimen_times.get(obs.group, ""),
        facts.message_time,
    ):
        if candidate:
            return candidate
    return ""


def patient_age(facts: Facts, obs: Observation, rule: RuleConfig) -> Age | None:
    birth = parse_ts(facts.birth) if facts.birth else None
    collected_text = collection_time(facts, obs, rule)
    collected = parse_ts(collected_text) if collected_text else None
    if birth is None or collected is None:
        return None
    return age_at(birth, collected)


def band_limit(age: Age, rule: RuleConfig) -> float:
    """The fallback limit for the youngest age a patient under 18 could be (the
    highest limit, so a doubt about the band never makes a normal value elevated)."""
    return next(b.upper_limit_pmol_l for b in rule.age_bands if age.youngest < b.below_years)


def is_abnormal(obs: Observation, rule: RuleConfig) -> bool:
    if any(flag.upper() not in rule.normal_flags for flag in obs.flags):
        return True
    rng = parse_range(obs.range_text)
    if rng is None:
        return False
    # an ambiguous `15,000` is abnormal if any reading of it is outside
    return any(outside(q, rng) for q in possible_quantities(obs.value_type, list(obs.value)))


# How the rule judges one other (non-B12) result's value: the verdict the
# message context, the patient context and the context store all share.
NORMAL, ABNORMAL, UNKNOWN = "normal", "abnormal", "unknown"


def judge_value(obs: Observation, rule: RuleConfig) -> str:
    """NORMAL, ABNORMAL or UNKNOWN (a result that cannot be read counts as doubt)."""
    return ABNORMAL if is_abnormal(obs, rule) else NORMAL


def context_reasons(facts: Facts, rule: RuleConfig) -> list[str]:
    """Reasons found in the other results of the message (not other B12 results)."""
    b12_positions = {r.observation.position for r in facts.b12}
    reasons = []
    abnormal = pending = False
    for obs in facts.observations:
        if obs.position in b12_positions or obs.status in rule.ignored_statuses:
            continue
        if obs.status in rule.pending_statuses:
            pending = True
        if judge_value(obs, rule) == ABNORMAL:
            abnormal = True
    if abnormal:
        reasons.append(OTHER_ABNORMAL)
    if pending:
        reasons.append(CONTEXT_PENDING)
    return reasons


def elevation(
    q: Quantity, obs: Observation, factor: float, age: Age, rule: RuleConfig
) -> tuple[bool, float | None, str]:
    """(elevated?, limit in pmol/L, where the limit came from) for a patient
    under 18: the lab's flag, else its OBX-7 range, else the age band."""
    flags = {f.upper() for f in obs.flags}
    rng = parse_range(obs.range_text)
    range_upper = rng.upper * factor if rng is not None and rng.upper is not None else None
    if flags & set(rule.elevated_flags):
        return q.comparator not in ("<", "<="), range_upper, "flag"
    if flags & (set(rule.normal_flags) | set(rule.low_flags)):
        return False, range_upper, "flag"
    if range_upper is not None:
        return q.scaled(factor).above(range_upper), range_upper, "range"
    limit = band_limit(age, rule)
    return q.scaled(factor).above(limit), limit, "age_band"


def is_paediatric(age: Age | None, rule: RuleConfig) -> bool:
    return age is not None and age.oldest < rule.adult_age_years


def decide_result(
    facts: Facts, result: B12Result, rule: RuleConfig, known_comments: frozenset[bytes], age: Age | None
) -> ResultDecision:
    """`age` is patient_age() for this result; a result of a patient not
    certainly under 18 is decided on that alone (its other fields are not
    read); a paediatric one must have been read in full (facts.read_detail)."""
    obs = result.observation
    if any(text in known_comments for text in result.nte_texts):
        return ResultDecision(obs.position, result.code, False, (ALREADY_COMMENTED,))
    if age is None or not is_paediatric(age, rule):
        return ResultDecision(
            obs.position,
            result.code,
            False,
            (AGE_UNKNOWN,) if age is None else (ADULT,),
            age_years=age.youngest if age is not None else None,
        )
    if not result.detailed:  # the engine reads every paediatric result in full first
        return ResultDecision(obs.position, result.code, False, (INTERNAL_ERROR,), age_years=age.youngest)
    reasons: list[str] = []
    if obs.status not in rule.final_statuses:
        reasons.append(STATUS_NOT_FINAL)
    factor = rule.unit_factor(obs.units) if obs.units else None
    q = parse_quantity(obs.value_type, list(obs.value))
    value_pmol = limit = source = elevated = None
    comparator = ""
    if factor is None:
        reasons.append(UNKNOWN_UNIT)
    if q is None:
        reasons.append(UNREADABLE_VALUE)
    if factor is not None and q is not None:
        value_pmol = round(q.number * factor, 1)
        comparator = q.comparator
        elevated, limit, source = elevation(q, obs, factor, age, rule)
        if not elevated:
            reasons.append(NOT_ELEVATED)
        if limit is not None:
            limit = round(limit, 1)
    reasons.extend(context_reasons(facts, rule))
    return ResultDecision(
        obx_index=obs.position,
        code=result.code,
        commented=not reasons,
        reasons=tuple(dict.fromkeys(reasons)),
        age_years=age.youngest,
        value_pmol_l=value_pmol,
        comparator=comparator,
        limit_pmol_l=limit,
        limit_source=source,
        elevated=elevated,
        paediatric=True,
    )
