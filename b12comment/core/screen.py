"""Which messages the rule reads at all: the steps before any field is read.

One place for the header, the message type, the cheap byte search for a B12
code and the segment limit, so that the engine and the store's rows (rows.py)
take the same messages, for the same reasons. Pure: bytes and the rule in.
"""

from __future__ import annotations

from typing import Any

from b12comment.core.decision import MALFORMED, NOT_ORU, Decision
from b12comment.core.facts import MAX_SEGMENTS
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import Header, Malformed, read_header, segment_count


class Refused(Exception):
    """A message the rule does not read, with its message-level Decision."""

    def __init__(self, decision: Decision):
        super().__init__(decision.reasons)
        self.decision = decision


def header_fields(header: Header) -> dict[str, Any]:
    """What every message-level Decision says of the message's header."""
    return dict(control_id=header.control_id, message_type=header.message_type, version=header.version)


def result_header(message: bytes, rule: RuleConfig) -> Header:
    """The header of a message of a type the rule reads (ORU^R01 by default);
    raises Refused (`malformed`, `not_oru`) for anything else."""
    try:
        header = read_header(message)
    except Malformed as exc:
        raise Refused(Decision(False, (MALFORMED,), detail=str(exc))) from None
    if not header.delimiters.valid:
        detail = "MSH-2 encoding characters repeat or clash with the field separator"
        raise Refused(Decision(False, (MALFORMED,), detail=detail, **header_fields(header)))
    if f"{header.message_code.upper()}^{header.trigger_event.upper()}" not in rule.message_types:
        raise Refused(Decision(False, (NOT_ORU,), **header_fields(header)))
    return header


def has_b12_code(message: bytes, rule: RuleConfig) -> bool:
    """Cheap pre-check: could any configured code stand in this message?"""
    for code in rule.code_bytes:  # noqa: SIM110 (a loop: any() over a generator costs a frame per message)
        if code in message:
            return True
    return False


def segments_over_limit(message: bytes) -> int | None:
    """The message's segment count when it is over MAX_SEGMENTS (it is then
    not read at all), else None."""
    segments = segment_count(message)
    return segments if segments > MAX_SEGMENTS else None
