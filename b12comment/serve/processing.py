"""serve's processing stage: journaled messages through process(), with the
patient's context, in journal order.

Rows are taken from the journal in batches; a batch is processed in one hop
to the worker thread (bounded by `batch_s` of work) and recorded in one
journal transaction. Once the queue is drained, the next batch starts
`linger_s` after a new message arrives, so that at a high rate a batch holds
many messages (up to `linger_s`, 50 ms, more on the way downstream, instead
of thread hops and commits per message competing with the listener for the
two cores).

The context store is used on the worker thread only. For each message its
rows are kept in the store (keyed hashes), and a message that would get a
comment is decided again with what the store knows of its requisition and
patient (`b12comment.context.decide`). The store's rows are committed before
the journal records the batch as processed. If the store fails, a message
that would get a comment gets none (`context_unavailable`): without the
context the rule is not sure. The message itself always goes on.

One "decision" log record per message; `comment_contradicted` when a message
contradicts an earlier comment of its patient (control IDs only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

from b12comment.config import ContextConfig
from b12comment.context import ContextStore, Outcome, decide, open_store
from b12comment.core.decision import CONTEXT_UNAVAILABLE, INTERNAL_ERROR
from b12comment.core.engine import process
from b12comment.serve.aio import wait_event
from b12comment.serve.journal import JournalError, JournalFault, Processed
from b12comment.serve.journal_writer import JournalThread
from b12comment.serve.metrics import Metrics

LINGER_S = 0.05  # how long a new message may wait for others to join its processing batch
PURGE_EVERY_S = 3600.0


def unavailable(log, stage: str, exc: JournalError) -> None:
    """Log a failed journal call; a fault was already told once, by the service."""
    if not isinstance(exc, JournalFault):
        log.error("journal_unavailable", stage=stage, error=str(exc))


class ContextStage:
    """The context store as the processing stage uses it (worker thread only)."""

    def __init__(self, store: ContextStore | None, settings: ContextConfig):
        self.store, self.settings = store, settings
        self._purged = 0.0

    @property
    def mode(self) -> str:
        return self.settings.mode if self.store is not None else "message"

    def decide(self, seq: int, raw: bytes, rule, text_codec: str | None = None) -> Outcome:
        if self.store is None:
            out, decision = process(raw, rule, text_codec=text_codec)
            return Outcome(out, decision)
        try:
            return decide(
                self.store, seq, raw, rule, self.settings.mode, self.settings.lookback_days, text_codec=text_codec
            )
        except Exception as exc:  # ContextError, or anything else the store does: no comment without it
            out, decision = process(raw, rule, text_codec=text_codec)
            if decision.commented:
                decision = dataclasses.replace(decision, commented=False, reasons=(CONTEXT_UNAVAILABLE,))
                out = raw
            return Outcome(out, dataclasses.replace(decision, detail=f"context store: {type(exc).__name__}"))

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
    return ContextStage(open_store(settings.store, settings.key_file), settings)


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
    ):
        self.journal, self.rule, self.metrics, self.log = journal, rule, metrics, log
        self.wake, self.processed, self.poll_s = wake, processed, poll_s
        self.batch, self.batch_s, self.linger_s = batch, batch_s, linger_s
        self.context = context or ContextStage(None, ContextConfig(mode="message"))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process")
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    rows = await self.journal.unprocessed(self.batch)
                except JournalError as exc:
                    unavailable(self.log, "processing", exc)
                    await wait_event(stop, self.poll_s)
                    continue
                drained = len(rows) < self.batch
                while rows and not stop.is_set():
                    done, store_error = await loop.run_in_executor(self._executor, self._process_rows, rows)
                    if store_error:
                        self.log.error("context_unavailable", stage="processing", error=store_error)
                    rows = rows[len(done) :]
                    try:
                        results = [Processed(r.id, out, f["commented"], f["reasons"]) for r, out, f, _, _ in done]
                        await self.journal.mark_processed_many(results)
                    except JournalError as exc:
                        unavailable(self.log, "processing", exc)
                        await wait_event(stop, self.poll_s)
                        break
                    for entry in done:
                        self._report(*entry)
                    self.processed.set()
                if drained:
                    await wait_event(self.wake, self.poll_s)
                    await wait_event(stop, self.linger_s)
        finally:
            self._executor.shutdown(wait=False)

    def _report(self, row, _out, fields: dict, elapsed: float, outcome: Outcome | None) -> None:
        self.metrics.observe("b12comment_processing_seconds", elapsed)
        if fields["commented"]:
            self.metrics.inc("b12comment_commented_total")
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

    def _process_rows(self, rows) -> tuple[list, str | None]:
        """(row, output, log fields, seconds, outcome) for the first rows, at
        least one, until `batch_s` of work is done; then the store's commit."""
        done = []
        clock = time.perf_counter
        first = clock()
        for row in rows:
            started = clock()
            out, fields, outcome = self._safe_process(row)
            finished = clock()
            done.append((row, out, fields, finished - started, outcome))
            if finished - first >= self.batch_s:
                break
        return done, self.context.commit()

    def _safe_process(self, row) -> tuple[bytes, dict, Outcome | None]:
        """process(), with the promise kept even if the core broke its own: on
        any failure, and whenever there is no comment, the original bytes go on."""
        raw = row.raw
        try:
            outcome = self.context.decide(row.id, raw, self.rule)
            out, fields = outcome.output, outcome.decision.log_fields()
            if not outcome.decision.commented and out != raw:
                out = raw
            return out, fields, outcome
        except Exception as exc:
            return raw, {"commented": False, "reasons": [INTERNAL_ERROR], "error": type(exc).__name__}, None
