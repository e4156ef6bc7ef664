"""process(message bytes, rule, context) -> (output bytes, Decision): the one function
that serve, replay and preview all call.

Pure and total: no I/O, no clock, no globals, never raises. The output is the
input itself, or the input with NTE segments inserted; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hl7apy.exceptions import HL7apyException

from b12comment.core import charset
from b12comment.core.context import Context, veto
from b12comment.core.decision import (
    INTERNAL_ERROR,
    MALFORMED,
    MULTIPLE_PATIENTS,
    NO_B12,
    TOO_MANY_B12,
    TOO_MANY_SEGMENTS,
    UNSUPPORTED_CHARSET,
    Decision,
    ResultDecision,
)
from b12comment.core.facts import MAX_B12_RESULTS, MAX_SEGMENTS, Facts, read_detail, read_facts
from b12comment.core.rule import collection_time, decide_result, is_paediatric, order_notes, patient_ages, with_veto
from b12comment.core.rule_config import RuleConfig
from b12comment.core.screen import Refused, has_b12_code, header_fields, result_header, segments_over_limit
from b12comment.core.segments import Header, read_header
from b12comment.core.splice import (
    Insertion,
    apply,
    comment_field,
    entered_by_field,
    insertion_after,
    next_set_id,
    nte_segment,
)


@dataclass(frozen=True)
class Reading:
    """A message decided on its own, before the look-back's veto: its
    Decision, and for each B12 result its collection time (the veto's
    reference) and, if it keeps the comment, its NTE. `finish` completes it."""

    message: bytes
    decision: Decision
    collected: tuple[str, ...] = ()  # per result in decision.results ("" where no veto applies)
    insertions: tuple[Insertion | None, ...] = ()  # per result: its NTE, if it gets the comment


def process(
    message: bytes,
    rule: RuleConfig,
    context: Context | None = None,
    *,
    precheck: bool = True,
    text_codec: str | None = None,
) -> tuple[bytes, Decision]:
    """Decide about one message and return its (possibly commented) bytes.

    `context`: the patient's other results and what is known of the
    requisition (core/context.py), gathered by the shell; None decides on
    the message alone. A context can only take a comment away, never add one.
    `precheck=False` skips the cheap byte search for B12 codes; the result is
    the same (a test holds the two paths together), only slower.
    `text_codec` (a Python codec name, ASCII-compatible) is the character set
    the message is known to be in from outside it, such as HTTP's `charset`
    parameter: it overrides MSH-18 for reading and for the comment's bytes.
    """
    return finish(read(message, rule, precheck=precheck, text_codec=text_codec), rule, context)


def read(message: bytes, rule: RuleConfig, *, precheck: bool = True, text_codec: str | None = None) -> Reading:
    """The message decided on its own (the first step of process). Total."""
    try:
        reading = _reading(bytes(message), rule, precheck, text_codec)
        if reading.decision.rule_version != rule.rule_version:
            reading = replace(reading, decision=replace(reading.decision, rule_version=rule.rule_version))
        return reading
    except Exception as exc:  # the comment is advice: never hold a result back
        return Reading(message, failed(message, exc))


def failed(message: bytes, exc: BaseException) -> Decision:
    """The Decision when deciding itself failed: no comment (internal_error)."""
    return Decision(
        False, (INTERNAL_ERROR,), control_id=_control_id(message), detail=f"{type(exc).__name__}: {exc}"[:300]
    )


def finish(reading: Reading, rule: RuleConfig, context: Context | None = None) -> tuple[bytes, Decision]:
    """The output bytes and the Decision of a read message, with the veto of
    `context` (the patient's other results) on each result that was decided
    on its merits. Total."""
    try:
        decision = reading.decision
        results = decision.results
        if context is not None and results:
            results = tuple(
                with_veto(rd, *veto(context, collected, rule)) if rd.paediatric else rd
                for rd, collected in zip(results, reading.collected, strict=True)
            )
            decision = replace(
                decision,
                commented=any(rd.commented for rd in results),
                reasons=tuple(dict.fromkeys(r for rd in results if not rd.commented for r in rd.reasons)),
                results=results,
                vetoed_by=tuple(dict.fromkeys(c for rd in results for c in rd.vetoed_by)),
            )
        insertions = [i for rd, i in zip(results, reading.insertions, strict=False) if rd.commented and i is not None]
        return apply(reading.message, insertions), decision
    except Exception as exc:  # the comment is advice: never hold a result back
        return reading.message, failed(reading.message, exc)


def _control_id(message: bytes) -> str:
    try:
        return read_header(message).control_id
    except Exception:
        return ""


def _reading(message: bytes, rule: RuleConfig, precheck: bool, text_codec: str | None) -> Reading:
    try:
        header, facts, codec = _read(message, rule, precheck, text_codec)
    except Refused as done:
        return Reading(message, done.decision)
    results, collected, insertions = _decide_results(message, header, facts, codec, rule)
    reasons = tuple(dict.fromkeys(r for rd in results if not rd.commented for r in rd.reasons))
    decision = Decision(
        any(rd.commented for rd in results),
        reasons,
        results=tuple(results),
        notes=facts.notes + order_notes(facts),
        **header_fields(header),
    )
    return Reading(message, decision, tuple(collected), tuple(insertions))


def _read(message: bytes, rule: RuleConfig, precheck: bool, text_codec: str | None) -> tuple[Header, Facts, str]:
    """Header, facts and codec of a message whose B12 results can be decided;
    raises Refused with the message-level Decision otherwise."""
    header = result_header(message, rule)
    base = header_fields(header)
    if precheck and not has_b12_code(message, rule):
        raise Refused(Decision(False, (NO_B12,), **base))
    segments = segments_over_limit(message)
    if segments is not None:
        detail = f"{segments} segments (more than {MAX_SEGMENTS})"
        raise Refused(Decision(False, (TOO_MANY_SEGMENTS,), detail=detail, **base))
    codec = text_codec or charset.codec_for(header.charset)
    try:
        facts = read_facts(message, header, codec or "latin-1", rule)
    except HL7apyException as exc:
        raise Refused(Decision(False, (MALFORMED,), detail=f"unreadable field: {exc}"[:300], **base)) from None
    notes = facts.notes
    if not facts.b12:  # the same Decision the pre-check gives
        raise Refused(Decision(False, (NO_B12,), **base))
    notes = notes + order_notes(facts)
    if len(facts.b12) > MAX_B12_RESULTS:
        detail = f"{len(facts.b12)} total-B12 results"
        raise Refused(Decision(False, (TOO_MANY_B12,), notes=notes, detail=detail, **base))
    if facts.patient_count > 1:
        raise Refused(Decision(False, (MULTIPLE_PATIENTS,), notes=notes, **base))
    if codec is None or not _delimiters_safe(header, codec):
        detail = f"MSH-18 {header.charset!r}"
        raise Refused(Decision(False, (UNSUPPORTED_CHARSET,), notes=notes, detail=detail, **base))
    return header, facts, codec


def _decide_results(
    message: bytes, header: Header, facts: Facts, codec: str, rule: RuleConfig
) -> tuple[list[ResultDecision], list[str], list[Insertion | None]]:
    """The decision for each B12 result on the message alone, its collection
    time (for a result the context's veto applies to) and its NTE (if commented)."""
    d = header.delimiters
    known = frozenset(comment_field(t, d, codec) for t in rule.all_comment_texts())
    marker = comment_field(rule.comment_marker, d, codec) if rule.comment_marker.strip() else b""
    text = comment_field(rule.comment_text(), d, codec)
    entered_by = entered_by_field(rule.nte_entered_by, d, codec)
    results: list[ResultDecision] = []
    collected: list[str] = []
    insertions: list[Insertion | None] = []
    for result in facts.b12:
        ages = patient_ages(facts, result.observation, rule)
        age = ages[0] if ages else None
        if is_paediatric(age, rule):
            result = read_detail(facts, result)
        rd = decide_result(facts, result, rule, known, age, marker, ages or ())
        results.append(rd)
        collected.append(collection_time(facts, result.observation, rule) if rd.paediatric else "")
        nte = None
        if rd.commented:
            set_id = next_set_id(result.nte_set_ids)
            segment = nte_segment(set_id, rule.nte_source, text, rule.nte_comment_type, d, entered_by)
            nte = insertion_after(message, facts.segments[result.last_segment], segment, header.terminator)
        insertions.append(nte)
    return results, collected, insertions


def _delimiters_safe(header: Header, codec: str) -> bool:
    """A multi-byte codec must not meet non-ASCII delimiter bytes."""
    if codec in ("latin-1", "ascii") or codec.startswith("iso8859"):
        return True
    return all(c < b"\x80" for c in header.delimiters.special())
