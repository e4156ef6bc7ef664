"""serve's processing stage: journaled messages through the deciding chain
(core/chain.py), with the store of the patient's other results, in journal order.

Rows are taken from the journal in batches; a batch is processed in one hop
to the worker thread (bounded by `batch_s` of work) and recorded in one
journal transaction. Once the queue is drained, a new message is processed
at once (and goes downstream at once) while traffic is light: only after a
batch of LINGER_FROM messages or more does the next batch start `linger_s`
after a new message arrives, so that at a high rate a batch holds many
messages (up to `linger_s`, 50 ms, more on the way downstream, instead of
thread hops and commits per message competing with the listener for the
two cores).

The context store is used on the worker thread only. For each message its
rows are kept in the store (keyed hashes), and a message that would get a
comment is finished with what the store knows of its requisition and
patient (`core.chain.decide`). The store's rows are committed before
the journal records the batch as processed. If the store fails, a message
that would get a comment gets none (`context_unavailable`): without the
context the rule is not sure. The message itself always goes on.

One "decision" log record per message; `comment_contradicted` when a message
contradicts an earlier comment of its patient (control IDs only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from b12comment.aio import wait_event
from b12comment.audit.recorder import Recorder
from b12comment.config import ContextConfig
from b12comment.context import ContextStore, open_store
from b12comment.core.chain import Outcome, decide
from b12comment.core.keys import keys
from b12comment.core.rows import extract
from b12comment.serve.metrics import Metrics
from b12comment.storage.model import JournalError, JournalFault, Processed, Row, batch_full
from b12comment.storage.writer import JournalThread

LINGER_S = 0.05  # how long a new message may wait for others to join its processing batch
LINGER_FROM = 8  # a batch this large says traffic is heavy: the next one lingers
PURGE_EVERY_S = 3600.0


def unavailable(log, stage: str, exc: JournalError) -> None:
    """Log a failed journal call; a fault was already told once, by the service."""
    if not isinstance(exc, JournalFault):
        log.error("journal_unavailable", stage=stage, error=str(exc))


@dataclass
class Held:
    """A message held back, waiting for the rest of its requisition."""

    row: Row
    until: float  # when the hold ends (time.time())
    since: float
    keys: frozenset[bytes]  # keyed hashes of its patients and requisitions


class ContextStage:
    """The context store as the processing stage uses it (worker thread only)."""

    def __init__(self, store: ContextStore | None, settings: ContextConfig):
        self.store, self.settings = store, settings
        self._purged = 0.0

    @property
    def mode(self) -> str:
        return self.settings.mode if self.store is not None else "message"

    def hold_keys(self, raw: bytes, rule) -> frozenset[bytes]:
        """The keyed patient and requisition hashes a held message waits on."""
        if self.store is None:
            return frozenset()
        try:
            found = keys(raw, rule)
            return frozenset(self.store.key_hashes(found)) if found is not None else frozenset()
        except Exception:
            return frozenset()

    def record(self, journal_id: int, raw: bytes, rule) -> None:
        """Keep a message's rows before it is decided (a held message is decided with them)."""
        if self.store is None:
            return
        with contextlib.suppress(Exception):  # decide() reports a failing store
            ex = extract(raw, rule, self.settings.lookback_days)
            if ex is not None:
                self.store.add(journal_id, ex)

    def commit(self) -> str | None:
        """Commit the batch's rows (and purge once an hour); an error's text, or None."""
        if self.store is None:
            return None
        try:
            self.store.commit()
            now = time.time()
            if now - self._purged >= PURGE_EVERY_S:
                self._purged = now
                self.store.purge(self.settings.lookback_days, now)
            return None
        except Exception as exc:
            return str(exc)

    def close(self) -> None:
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()


def open_context(settings: ContextConfig) -> ContextStage:
    """The stage's store (none in mode "message"); raises ContextError."""
    if settings.mode == "message":
        return ContextStage(None, settings)
    store = open_store(settings.store, settings.key_file)
    store.checkpoint_in_background()  # a message's commit never waits for the WAL's checkpoint
    return ContextStage(store, settings)


def tell_earlier_derivation(stage: ContextStage, log) -> None:
    """One line at start while the store holds rows of an earlier key
    derivation (a store an earlier version wrote): how many, and until when
    they are read by their number within the patient (when they leave the
    look-back window). Counts and times only."""
    if stage.store is None or not stage.store.has_earlier:
        return
    count, until = stage.store.earlier_derivation(stage.settings.lookback_days)
    if count and until is not None:
        log.warning(
            "context_earlier_key_derivation",
            rows=count,
            until=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
            lookback_days=stage.settings.lookback_days,
            note="rows an earlier version kept: each is found by its requisition's number within its patient "
            "until it leaves the look-back window (no rebuild needed)",
        )


class Processor:
    """Runs process() on every journaled message, in id order (see the module)."""

    def __init__(
        self,
        journal: JournalThread,
        rule,
        metrics: Metrics,
        log,
        wake: asyncio.Event,
        processed: asyncio.Event,
        context: ContextStage | None = None,
        poll_s: float = 1.0,
        batch: int = 200,
        batch_s: float = 0.05,
        linger_s: float = LINGER_S,
        audit: Recorder | None = None,
    ):
        self.journal, self.rule, self.metrics, self.log = journal, rule, metrics, log
        self.audit = audit  # [audit] enabled: the decisions on children's B12 results are recorded
        self._audit_purged = 0.0
        self.wake, self.processed, self.poll_s = wake, processed, poll_s
        self.batch, self.batch_s, self.linger_s = batch, batch_s, linger_s
        self.context = context or ContextStage(None, ContextConfig(mode="message"))
        self.hold_s = self.context.settings.hold_s if self.context.store is not None else 0.0
        self.held: dict[int, Held] = {}  # journal id -> the message held (worker thread only)
        self.longest_hold_s = 0.0
        self._reload_holds = False

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process")
        try:
            if self.hold_s:
                await self._restore_holds(loop, stop)
            while not stop.is_set():
                self.wake.clear()
                if self._reload_holds:
                    self._reload_holds = False
                    await self._restore_holds(loop, stop)
                if self.held and not await self._release_due(loop):
                    await wait_event(stop, self.poll_s)
                    continue
                try:
                    rows = await self.journal.rows(lambda j: j.unprocessed(self.batch))
                except JournalError as exc:
                    unavailable(self.log, "processing", exc)
                    await wait_event(stop, self.poll_s)
                    continue
                drained = not batch_full(rows, self.batch)  # (a large message makes a batch of its own)
                busy = len(rows) >= LINGER_FROM
                await self._process_all(loop, rows, stop)
                del rows  # a large message is not held while waiting for the next
                if drained:
                    await wait_event(self.wake, self._next_wait())
                    if busy:  # heavy traffic: let the next batch gather
                        await wait_event(stop, self.linger_s)
        finally:
            self._executor.shutdown(wait=False)

    async def _process_all(self, loop, rows: list[Row], stop: asyncio.Event) -> None:
        """Process and record rows, a batch at a time (see _process_rows)."""
        while rows and not stop.is_set():
            done, holds, consumed, store_error = await loop.run_in_executor(self._executor, self._process_rows, rows)
            if store_error:
                self.log.error("context_unavailable", stage="processing", error=store_error)
            if self.context.store is not None:
                self.metrics.set("b12comment_context_store_up", 0 if store_error else 1)
            if not await self._record(done, holds):
                await wait_event(stop, self.poll_s)
                return
            rows = rows[consumed:]

    async def _record(self, done: list, holds: list[tuple[int, float]]) -> bool:
        """Journal the holds, then what was decided (a released message with
        the newer one that released it); False if the journal failed."""
        try:
            if holds:
                await self.journal.write(lambda j: j.hold_many(holds))
            if done:
                results = [
                    Processed(r.id, None if out is r.raw else out, f["commented"], f["reasons"])
                    for r, out, f, _, _ in done
                ]
                await self.journal.write(lambda j: j.mark_processed_many(results))
        except JournalError as exc:
            unavailable(self.log, "processing", exc)
            self._reload_holds = True  # what the journal holds is the truth: read it again
            return False
        for row, until in ((self.held[i].row, u) for i, u in holds if i in self.held):
            self.log.info(
                "held", journal_id=row.id, control_id=row.control_id, until=round(until, 3), hold_s=self.hold_s
            )
        for entry in done:
            self._report(*entry)
        if self.audit is not None and done:
            error = await asyncio.get_running_loop().run_in_executor(self._executor, self._audit, done)
            if error:
                self.log.error("audit_unavailable", stage="processing", error=error)
        self.metrics.set("b12comment_held_messages", len(self.held))
        self.metrics.set("b12comment_longest_hold_seconds", round(self.longest_hold_s, 3))
        if done:
            self.processed.set()
        return True

    async def _restore_holds(self, loop, stop: asyncio.Event) -> None:
        """After a restart: the messages still held in the journal wait on."""
        while not stop.is_set():
            try:
                held = await self.journal.call(lambda j: j.held())
                break
            except JournalError as exc:
                unavailable(self.log, "processing", exc)
                await wait_event(stop, self.poll_s)
        else:
            return
        await loop.run_in_executor(self._executor, self._restore, held)
        self.metrics.set("b12comment_held_messages", len(self.held))
        if held:
            self.log.info("holds_restored", held=len(held))

    def _restore(self, held: list) -> None:
        """(On the worker thread.) The journal's holds become the ones waited on;
        a hold the journal did not take is dropped: its message is processed again."""
        self.held.clear()
        for row, until in held:
            self.held[row.id] = Held(row, until, row.received_at, self.context.hold_keys(row.raw, self.rule))

    async def _release_due(self, loop) -> bool:
        """Decide again the messages whose hold has ended; False if the journal failed."""
        now = time.time()
        due = sorted(i for i, h in self.held.items() if h.until <= now)
        if not due:
            return True
        done = await loop.run_in_executor(self._executor, self._release, due, "hold_ended")
        return await self._record(done, [])

    def _next_wait(self) -> float:
        if not self.held:
            return self.poll_s
        return max(0.0, min(self.poll_s, min(h.until for h in self.held.values()) - time.time()))

    def _release(self, ids: list[int], why: str) -> list:
        """(On the worker thread.) Held messages decided again with what is known now."""
        done = []
        for i in ids:
            held = self.held.pop(i)
            started = time.perf_counter()
            out, fields, outcome = self._decide(held.row)
            self.longest_hold_s = max(self.longest_hold_s, time.time() - held.since)
            fields = {**fields, "held_s": round(time.time() - held.since, 3), "released_by": why}
            if not fields["commented"] and self.context.store is not None:
                with contextlib.suppress(Exception):
                    self.context.store.forget_comment(held.row.id)
            done.append((held.row, out, fields, time.perf_counter() - started, outcome))
        return done

    def _decide(self, row: Row) -> tuple[bytes, dict, Outcome]:
        cx = self.context
        outcome = decide(cx.store, row.id, row.raw, self.rule, cx.mode, cx.settings.lookback_days)
        return outcome.output, outcome.decision.log_fields(), outcome

    def _audit(self, done: list) -> str | None:
        """(On the worker thread.) The decisions just journaled into the audit
        (a held message once, when released); purged once an hour. An error's
        text, or None: the audit never holds a result back."""
        assert self.audit is not None
        try:
            for row, _out, _fields, _elapsed, outcome in done:
                if outcome is not None:
                    self.audit.record(row.raw, outcome.decision)
            self.audit.flush()
            now = time.time()
            if now - self._audit_purged >= PURGE_EVERY_S:
                self._audit_purged = now
                self.audit.store.purge(self.audit.retention_days, now)
            return None
        except Exception as exc:
            return str(exc)

    def _report(self, row, _out, fields: dict, elapsed: float, outcome: Outcome | None) -> None:
        self.metrics.observe("b12comment_processing_seconds", elapsed)
        if fields["commented"]:
            self.metrics.inc("b12comment_commented_total")
        self.metrics.inc("b12comment_decisions_total", decision="commented" if fields["commented"] else "unchanged")
        if not fields["commented"]:
            for reason in fields.get("reasons", ()):
                self.metrics.inc("b12comment_decision_reasons_total", reason=reason)
        fields = {"control_id": row.control_id, "message_type": row.message_type, **fields}
        self.log.info("decision", journal_id=row.id, peer=row.peer, processing_ms=round(elapsed * 1000, 3), **fields)
        if outcome is not None:
            for comment_id in outcome.contradicts:
                self.metrics.inc("b12comment_comments_contradicted_total")
                self.log.warning(
                    "comment_contradicted",
                    comment_control_id=comment_id,
                    control_id=row.control_id,
                    why=outcome.why,
                    action="review the earlier comment (b12comment queue review)",
                )

    def _process_rows(self, rows) -> tuple[list, list[tuple[int, float]], int, str | None]:
        """(On the worker thread.) The first rows, at least one, until `batch_s`
        of work is done: (done, holds, rows consumed, the store's commit error).
        `done` holds (row, output, log fields, seconds, outcome) in the order to
        record them: a held message of the same patient or requisition comes
        just before the newer message that released it. With `hold_s`, a
        message that would get the comment is held instead (`holds`)."""
        done: list = []
        holds: list[tuple[int, float]] = []
        clock = time.perf_counter
        first = clock()
        consumed = 0
        for row in rows:
            consumed += 1
            if self.held:
                waiting_on = self.context.hold_keys(row.raw, self.rule)
                released = sorted(i for i, h in self.held.items() if h.keys & waiting_on)
                if released:
                    self.context.record(row.id, row.raw, self.rule)  # decided with the newer results
                    done += self._release(released, "newer_message")
            started = clock()
            out, fields, outcome = self._decide(row)
            finished = clock()
            if self.hold_s and fields["commented"]:
                until = time.time() + self.hold_s
                self.held[row.id] = Held(row, until, time.time(), self.context.hold_keys(row.raw, self.rule))
                holds.append((row.id, until))
            else:
                done.append((row, out, fields, finished - started, outcome))
            if finished - first >= self.batch_s:
                break
        return done, holds, consumed, self.context.commit()
