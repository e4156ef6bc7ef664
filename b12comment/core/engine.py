"""process(message bytes, rule, context) -> (output bytes, Decision): the one function
that serve, replay and preview all call.

Pure and total: no I/O, no clock, no globals, never raises. The output is the
input itself, or the input with NTE segments inserted; nothing else changes.
"""

from __future__ import annotations

from dataclasses import replace

from hl7apy.exceptions import HL7apyException

from b12comment.core import charset
from b12comment.core.context import Context
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
from b12comment.core.rule import decide_result, is_paediatric, order_notes, patient_age
from b12comment.core.rule_config import RuleConfig
from b12comment.core.screen import Refused, has_b12_code, header_fields, result_header, segments_over_limit
from b12comment.core.segments import Header, read_header
from b12comment.core.splice import (
    apply,
    comment_field,
    entered_by_field,
    insertion_after,
    next_set_id,
    nte_segment,
)


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
    try:
        out, decision = _process(bytes(message), rule, context, precheck, text_codec)
        if decision.rule_version != rule.rule_version:
            decision = replace(decision, rule_version=rule.rule_version)
        return out, decision
    except Exception as exc:  # the comment is advice: never hold a result back
        return message, Decision(
            False, (INTERNAL_ERROR,), control_id=_control_id(message), detail=f"{type(exc).__name__}: {exc}"[:300]
        )


def _control_id(message: bytes) -> str:
    try:
        return read_header(message).control_id
    except Exception:
        return ""


def _process(
    message: bytes, rule: RuleConfig, context: Context | None, precheck: bool, text_codec: str | None
) -> tuple[bytes, Decision]:
    try:
        header, facts, codec = _read(message, rule, precheck, text_codec)
    except Refused as done:
        return message, done.decision
    results, insertions = _decide_results(message, header, facts, codec, rule, context)
    reasons = tuple(dict.fromkeys(r for rd in results if not rd.commented for r in rd.reasons))
    vetoed_by = tuple(dict.fromkeys(c for rd in results for c in rd.vetoed_by))
    decision = Decision(
        bool(insertions),
        reasons,
        results=tuple(results),
        notes=facts.notes + order_notes(facts),
        vetoed_by=vetoed_by,
        **header_fields(header),
    )
    return apply(message, insertions), decision


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
    message: bytes, header: Header, facts: Facts, codec: str, rule: RuleConfig, context: Context | None
) -> tuple[list[ResultDecision], list]:
    """The decision for each B12 result, and the NTE insertions of those commented."""
    d = header.delimiters
    known = frozenset(comment_field(t, d, codec) for t in rule.all_comment_texts())
    marker = comment_field(rule.comment_marker, d, codec) if rule.comment_marker.strip() else b""
    text = comment_field(rule.comment_text(), d, codec)
    entered_by = entered_by_field(rule.nte_entered_by, d, codec)
    results, insertions = [], []
    for result in facts.b12:
        age = patient_age(facts, result.observation, rule)
        if is_paediatric(age, rule):
            result = read_detail(facts, result)
        rd = decide_result(facts, result, rule, known, age, context, marker)
        results.append(rd)
        if rd.commented:
            set_id = next_set_id(result.nte_set_ids)
            nte = nte_segment(set_id, rule.nte_source, text, rule.nte_comment_type, d, entered_by)
            insertions.append(insertion_after(message, facts.segments[result.last_segment], nte, header.terminator))
    return results, insertions


def _delimiters_safe(header: Header, codec: str) -> bool:
    """A multi-byte codec must not meet non-ASCII delimiter bytes."""
    if codec in ("latin-1", "ascii") or codec.startswith("iso8859"):
        return True
    return all(c < b"\x80" for c in header.delimiters.special())
