"""The patient's other results, as plain data: what the rule knows beyond
the message in hand, and the veto they give.

"B12 is the only abnormal finding" is a fact about the patient, not about
one message: a requisition is often released in parts (the blood count
before the B12), and the patient may have had an abnormal result days
before. The shells keep a store of minimal rows per result (rows.py makes
them; keyed hashes of patient and requisition, never identifiers in clear);
before a message is decided they look the patient and the requisition up
and pass what they found in as a `Context`. The core never reads a store.

`veto(context, collected, rule)`: the context's reasons against a comment
and the control IDs of the messages that gave them.
"""

from __future__ import annotations

from dataclasses import dataclass

from b12comment.core.dates import parse_ts
from b12comment.core.decision import (
    BLOCK_ABNORMAL,
    BLOCK_PENDING,
    BLOCK_UNKNOWN,
    CONTEXT_PENDING_RECENT,
    CONTEXT_UNREADABLE_RECENT,
    IN_LOOKBACK,
    IN_REQUISITION,
    OTHER_ABNORMAL_RECENT,
    REQUISITION_PENDING,
    Blocker,
)
from b12comment.core.rows import ADULT_ROW, OBX, ORDER, Extract
from b12comment.core.rule_config import RuleConfig
from b12comment.core.verdict import ABNORMAL, LOW, NORMAL, UNKNOWN


@dataclass(frozen=True)
class PriorResult:
    """A row of the store, as the shell hands it to the core."""

    arrival: int  # the message's place in the store's order: later rows supersede earlier ones of the same key
    control_id: str
    requisition: str  # opaque (a keyed hash): only compared for equality; "" = none
    same_requisition: bool  # the requisition is one of the message's own
    kind: str
    analyte: str
    is_b12: bool
    verdict: str
    status: str
    order_status: str
    collected: str
    # What names it where it keeps a comment away (never a value)
    obx: int = 0  # its OBX number in its message (0: an order)
    system: str = ""
    display: str = ""
    value_type: str = ""


@dataclass(frozen=True)
class Context:
    """What is known beyond the message: its own rows (arrival == `arrival`) may be
    among `results`; they are judged in the message itself, not here."""

    arrival: int = 0
    results: tuple[PriorResult, ...] = ()
    lookback_days: float = 30.0


def latest(results: tuple[PriorResult, ...]) -> list[PriorResult]:
    """The newest row of each (requisition, kind, analyte): a final result
    supersedes its preliminary one, a correction the result it corrects.
    Rows of a message without a requisition number supersede nothing."""
    newest: dict[tuple[str, str, str], PriorResult] = {}
    for r in results:
        key = (r.requisition or f"arrival:{r.arrival}", r.kind, r.analyte)  # no requisition: each message its own
        if key not in newest or r.arrival >= newest[key].arrival:
            newest[key] = r
    return sorted(newest.values(), key=lambda r: r.arrival)


def _within(collected: str, b12_collected: str, days: float) -> bool:
    """Collected within `days` of the B12 (either side). An unknown time
    counts as within: doubt never makes a comment."""
    a, b = parse_ts(collected) if collected else None, parse_ts(b12_collected) if b12_collected else None
    if a is None or b is None:
        return True
    gap = max((a.first - b.last).days, (b.first - a.last).days, 0)
    return gap <= days


def veto(context: Context, b12_collected: str, rule: RuleConfig) -> tuple[list[str], list[str], tuple[Blocker, ...]]:
    """(reasons, control IDs of the messages that gave them, the results that
    gave them) against a comment on a B12 collected at `b12_collected`.

    Of the same requisition, or of the same patient collected within the
    look-back, another result (not a B12, unless a low one; not a line of a
    value type that is no finding):
    - `requisition_pending`: an order of the same requisition is not final
      (OBR-25), or one of its results is still pending (OBX-11);
    - `other_abnormal_recent`: another result is abnormal;
    - `context_unreadable_recent`: another result cannot be judged (or was
      not read: an adult's birth date, a message too large);
    - `context_pending_recent`: another result, of another requisition, is
      still pending.
    """
    reasons: dict[str, None] = {}
    vetoes: dict[str, None] = {}
    blockers: list[Blocker] = []
    for r in latest(context.results):
        if r.arrival == context.arrival:
            continue  # the message itself: the rule judges it from its own bytes
        found = verdict = None
        pending = r.status in rule.pending_statuses
        if r.kind == ORDER:
            if r.same_requisition and _order_not_final(r.order_status, rule):
                found, verdict = REQUISITION_PENDING, BLOCK_PENDING
        elif r.status in rule.ignored_statuses or (r.value_type in rule.no_finding_types and r.verdict == NORMAL):
            continue  # no finding (judge_value judges a flagged or ranged one: it is a result then)
        elif r.is_b12 and r.verdict not in (LOW, UNKNOWN):
            continue  # a repeat B12 vetoes only when it was low (a deficiency) or cannot be judged
        elif r.same_requisition and pending:
            found, verdict = REQUISITION_PENDING, BLOCK_PENDING
        elif (r.same_requisition or _within(r.collected, b12_collected, context.lookback_days)) and (
            r.verdict != NORMAL or pending
        ):
            if r.verdict in (ABNORMAL, LOW):
                found, verdict = OTHER_ABNORMAL_RECENT, BLOCK_ABNORMAL
            elif pending:
                found, verdict = CONTEXT_PENDING_RECENT, BLOCK_PENDING
            else:
                found, verdict = CONTEXT_UNREADABLE_RECENT, BLOCK_UNKNOWN
        if found is not None and verdict is not None:
            reasons[found] = None
            vetoes[r.control_id] = None
            blockers.append(
                Blocker(
                    source=IN_REQUISITION if r.same_requisition else IN_LOOKBACK,
                    obx=r.obx,
                    code=r.analyte,
                    system=r.system,
                    display=r.display,
                    value_type=r.value_type,
                    verdict=verdict,
                    collected=r.collected,
                    control_id=r.control_id,
                )
            )
    return list(reasons), list(vetoes), tuple(blockers)


def _order_not_final(status: str, rule: RuleConfig) -> bool:
    """An order status (OBR-25) stated and neither final nor cancelled: the
    same test the rule applies to the orders of the message itself. Empty is
    "not stated": the order's results (OBX-11) decide."""
    return bool(status) and status not in rule.final_order_statuses and status not in rule.cancelled_order_statuses


# Why a later message contradicts an earlier comment of its patient (the review alert).
NEW_ABNORMAL, CORRECTED_B12, RESULTS_NOT_READ = "abnormal_result", "corrected_b12", "results_not_read"


def contradiction(rows: Extract, rule: RuleConfig) -> str:
    """Why a message with these rows would contradict an earlier comment of
    its patient: its results were not read (too large, an adult's birth
    date: they could hold anything), a corrected B12, or another abnormal
    result; "" if it does not."""
    if rows.not_read or any(r.analyte == ADULT_ROW for r in rows.rows):
        return RESULTS_NOT_READ
    found = [r for r in rows.rows if r.kind == OBX and r.status not in rule.ignored_statuses]
    if any(r.is_b12 and r.status == "C" for r in found):
        return CORRECTED_B12
    if any((not r.is_b12 and r.verdict == ABNORMAL) or (r.is_b12 and r.verdict == LOW) for r in found):
        return NEW_ABNORMAL
    return ""
