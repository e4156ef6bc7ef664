"""The one deciding chain: process -> context veto -> guard.

Every entry point (serve's processing stage, the HTTP endpoint, preview,
replay, `context rebuild`) decides a message with `decide`, as structlog
runs every event through one chain of processors:

1. **process**: the message on its own (engine.read): the rule's decision
   and, for a comment, where its NTE goes.
2. **context veto**: with a store of the patient's other results (the
   `Store` the shell passes in; the core calls it, it never opens one),
   the message's rows are kept, and a message that would get a comment is
   finished with what the store knows of its requisition and patient
   (engine.finish: the message is read once). A comment the store cannot
   confirm (its rows unreadable, the store failing) is taken away
   (`context_unavailable`). With `watch`, the comment is remembered and the
   earlier comments this message contradicts are found (context.contradiction).
3. **guard**: whatever happened above, a message without a comment goes on
   as its original bytes, and nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from b12comment.core.context import Context, contradiction
from b12comment.core.decision import CONTEXT_UNAVAILABLE, Decision
from b12comment.core.engine import Reading, failed, finish, read
from b12comment.core.rows import Extract, extract
from b12comment.core.rule_config import RuleConfig

UNREAD_FOR_STORE = "context: the message's results could not be read for the store"
NO_PATIENT_KEY = "context: PID-3 names no patient identifier, so the patient's other results cannot be looked up"


class Store(Protocol):
    """The store of the patient's other results, as the chain uses it (the
    shell's context store). `arrival` is a message's place in the store's
    order: later rows supersede earlier ones."""

    def add(self, arrival: int, extract: Extract) -> None: ...

    def context(self, arrival: int, extract: Extract, mode: str, lookback_days: float) -> Context: ...

    def add_comment(self, arrival: int, extract: Extract) -> None: ...

    def contradicted(self, arrival: int, extract: Extract, why: str) -> list[str]: ...


@dataclass(frozen=True)
class Outcome:
    output: bytes
    decision: Decision
    contradicts: tuple[str, ...] = ()  # control IDs of earlier comments this message contradicts
    why: str = ""  # context.NEW_ABNORMAL, CORRECTED_B12 or RESULTS_NOT_READ
    store_error: Exception | None = None  # the store failed (the decision says what that cost)


def without_context(message: bytes, decision: Decision, detail: str) -> Outcome:
    """A comment the context could not confirm: none, the message unchanged
    (`context_unavailable`, with what went wrong in `detail`)."""
    return Outcome(message, replace(decision, commented=False, reasons=(CONTEXT_UNAVAILABLE,), detail=detail))


def decide(
    store: Store | None,
    arrival: int,
    message: bytes,
    rule: RuleConfig,
    mode: str = "message",
    lookback_days: float = 30.0,
    *,
    record: bool = True,
    watch: bool = True,
    text_codec: str | None = None,
) -> Outcome:
    """The chain (see the module). `mode` "message" (or no `store`): the
    message alone; "requisition" or "patient": what the store knows of its
    requisitions, and of its patients. `record`: keep the message's rows;
    `watch`: the review alert. `text_codec`: the message's character set
    known from outside it (HTTP). Total: never raises."""
    try:
        reading = read(message, rule, text_codec=text_codec)
        if store is None or mode == "message" or not (record or watch or reading.decision.commented):
            outcome = Outcome(*finish(reading, rule))
        else:
            try:
                outcome = _veto(store, arrival, reading, rule, mode, lookback_days, record, watch)
            except Exception as exc:  # the store failed: no comment without it
                outcome = _store_failed(reading, rule, exc)
    except Exception as exc:  # the comment is advice: never hold a result back
        outcome = Outcome(message, failed(message, exc))
    return guard(message, outcome)


def guard(message: bytes, outcome: Outcome) -> Outcome:
    """A message without a comment goes on as it came (the last step)."""
    if not outcome.decision.commented and outcome.output is not message and outcome.output != message:
        return replace(outcome, output=message)
    return outcome


def _veto(
    store: Store,
    arrival: int,
    reading: Reading,
    rule: RuleConfig,
    mode: str,
    lookback_days: float,
    record: bool,
    watch: bool,
) -> Outcome:
    message, alone = reading.message, reading.decision
    rows = extract(message, rule, lookback_days)
    if rows is None:
        if alone.commented:  # (extract reads what process reads: it never should) no rows, no look-up
            return without_context(message, alone, UNREAD_FOR_STORE)
        return Outcome(*finish(reading, rule))
    if record:
        store.add(arrival, rows)
    if alone.commented and rows.not_read:  # (process read it, the store's reading failed: in doubt)
        return without_context(message, alone, UNREAD_FOR_STORE)
    if alone.commented and mode == "patient" and not any(r.patient_keys for r in rows.rows):
        return without_context(message, alone, NO_PATIENT_KEY)  # the look-back cannot be asked
    if alone.commented:
        out, decision = finish(reading, rule, store.context(arrival, rows, mode, lookback_days))
        if decision.commented and watch:
            store.add_comment(arrival, rows)
    else:
        out, decision = finish(reading, rule)
    contradicts: tuple[str, ...] = ()
    why = contradiction(rows, rule) if watch else ""
    if why:
        contradicts = tuple(store.contradicted(arrival, rows, why))
    return Outcome(out, decision, contradicts, why if contradicts else "")


def _store_failed(reading: Reading, rule: RuleConfig, exc: Exception) -> Outcome:
    """The store failed part-way: the message alone decides, and a comment
    it would get is taken away."""
    detail = f"context store: {type(exc).__name__}"
    if reading.decision.commented:
        return replace(without_context(reading.message, reading.decision, detail), store_error=exc)
    out, decision = finish(reading, rule)
    return Outcome(out, replace(decision, detail=detail), store_error=exc)
