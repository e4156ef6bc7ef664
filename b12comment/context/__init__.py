"""The context shell: the store of the patient's other results, and the one
way every entry point decides a message with it (`decide`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from b12comment.core.decision import CONTEXT_UNAVAILABLE, Decision
from b12comment.core.engine import process
from b12comment.core.rows import ADULT, OBX, Extract, extract
from b12comment.core.rule_config import RuleConfig
from b12comment.core.verdict import ABNORMAL

from .store import ContextError, ContextStore, load_key

__all__ = ["ContextError", "ContextStore", "Outcome", "decide", "load_key", "open_store", "without_context"]

NEW_ABNORMAL, CORRECTED_B12 = "abnormal_result", "corrected_b12"
NOT_READ = "results_not_read"  # a later message whose results were not read (too large, an adult's birth date)


@dataclass(frozen=True)
class Outcome:
    output: bytes
    decision: Decision
    contradicts: tuple[str, ...] = ()  # control IDs of earlier comments this message contradicts
    why: str = ""  # NEW_ABNORMAL, CORRECTED_B12 or NOT_READ


UNREAD_FOR_STORE = "context: the message's results could not be read for the store"


def without_context(message: bytes, decision: Decision, detail: str) -> Outcome:
    """A comment the context could not confirm: none, the message unchanged
    (`context_unavailable`, with what went wrong in `detail`)."""
    return Outcome(message, replace(decision, commented=False, reasons=(CONTEXT_UNAVAILABLE,), detail=detail))


def open_store(path: str, key_file: str) -> ContextStore:
    return ContextStore(path, load_key(key_file))


def decide(
    store: ContextStore | None,
    seq: int,
    message: bytes,
    rule: RuleConfig,
    mode: str,
    lookback_days: float,
    *,
    record: bool = True,
    watch: bool = True,
    text_codec: str | None = None,
) -> Outcome:
    """process() with the context: the message's rows are kept (`record`),
    then, if the message alone would get a comment, it is decided again with
    what the store knows of its requisition and patient (a context can only
    take a comment away, so the look-up is needed only then). With `watch`,
    a comment is remembered, and earlier comments of the patient that this
    message contradicts are found (serve's review alert).
    `seq` orders the messages: later rows supersede earlier ones.
    `text_codec`: the message's character set known from outside it (HTTP)."""
    out, decision = process(message, rule, text_codec=text_codec)
    if store is None or mode == "message" or not (record or watch or decision.commented):
        return Outcome(out, decision)  # (replay's second pass: nothing to keep, nothing to look up)
    ex = extract(message, rule, lookback_days)
    if ex is None:
        if decision.commented:  # (extract reads what process() reads: it never should) no rows, no look-up
            return without_context(message, decision, UNREAD_FOR_STORE)
        return Outcome(out, decision)
    if record:
        store.add(seq, ex)
    if decision.commented and ex.not_read:  # (process() read it, the store's reading failed: in doubt)
        return without_context(message, decision, UNREAD_FOR_STORE)
    if decision.commented:
        out = message  # (the first output is not held while the second is made)
        out, decision = process(message, rule, store.context(seq, ex, mode, lookback_days), text_codec=text_codec)
        if decision.commented and watch:
            store.add_comment(seq, ex)
    contradicts: tuple[str, ...] = ()
    why = ""
    if watch:
        why = _contradiction(ex, rule)
        if why:
            contradicts = tuple(store.contradicted(seq, ex, why))
    return Outcome(out, decision, contradicts, why if contradicts else "")


def _contradiction(ex: Extract, rule: RuleConfig) -> str:
    """Why this message would contradict an earlier comment of its patient."""
    if ex.not_read or any(r.analyte == ADULT for r in ex.rows):  # results not read: they could hold anything
        return NOT_READ
    rows = [r for r in ex.rows if r.kind == OBX and r.status not in rule.ignored_statuses]
    if any(r.is_b12 and r.status == "C" for r in rows):
        return CORRECTED_B12
    if any(not r.is_b12 and r.verdict == ABNORMAL for r in rows):
        return NEW_ABNORMAL
    return ""
