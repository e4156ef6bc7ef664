"""Deliver journaled messages downstream, in journal order, one at a time.

The head of the queue is the oldest row not yet forwarded or dead. The
forwarder waits until it is processed, sends its processed bytes (never
re-serialised), and acts on the outcome:

- `Delivered` (AA/CA, or the file renamed into place): forwarded.
- `Rejected` (AR/CR): dead-lettered with the reason; the queue moves on.
- `Retry` (AE/CE, no ACK in time, connection dropped after sending): counted
  as a failed attempt; after `max_attempts` it is dead-lettered. Failures that
  say nothing about the message (downstream refused the connection, TLS
  failure, folder not writable) are retried without counting, so a downstream
  outage never turns the whole queue into dead letters; the journal still
  notes them as the row's last error. Every retry waits an exponential
  backoff with jitter between `retry_initial_s` and `retry_max_s`.

Delivery is at least once: a crash between the downstream's ACK and the
journal update sends those messages again after restart (over MLLP at most
RECORD_EVERY, whose AAs are recorded together; for a folder drop, the batch
written since the last journal update: files of the same names, written
again). The journal updates here are commits without an fsync
of their own (see storage/sqlite/file.py), so a power cut may also resend the last few.

The folder drop takes the head of the queue in batches: every file is
written and fsynced, then the folder is fsynced once and the batch marked
forwarded in one journal transaction. An MLLP downstream gets one message
at a time (each waits for its ACK), each marked forwarded as it is answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from b12comment.aio import wait_event
from b12comment.config import DownstreamConfig
from b12comment.delivery.transports import Delivered, Rejected, Retry
from b12comment.storage.model import JournalError, JournalFault, Row, batch_full
from b12comment.storage.writer import JournalThread

T = TypeVar("T")


def backoff_delay(failures: int, initial: float, maximum: float, rand=random.random) -> float:
    """Seconds to wait after `failures` failures in a row (1, 2, ...): doubling
    from `initial`, capped at `maximum`, jittered down to half (never below initial)."""
    ceiling = min(maximum, initial * 2 ** min(max(failures - 1, 0), 32))
    floor = min(ceiling, max(initial, ceiling / 2))
    return floor + (ceiling - floor) * rand()


class NoMetrics:
    """For a forwarder whose counts nobody reads (replay --forward)."""

    def inc(self, name: str, value: float = 1, **labels) -> None:
        pass

    def set(self, name: str, value: float, **labels) -> None:
        pass


# A delivery over MLLP is recorded in the journal with the next ones: one
# journal call for up to RECORD_EVERY messages or RECORD_WITHIN_S seconds of
# them. A crash can make at most that many be sent again (delivery is at
# least once); a call per message held delivery to the rate of intake
# commits while senders kept the journal busy.
RECORD_EVERY = 10
RECORD_WITHIN_S = 0.05


class Forwarder:
    """The one task that empties the queue downstream."""

    def __init__(
        self,
        journal: JournalThread,
        transport,
        ds: DownstreamConfig,
        metrics,
        log,
        wake: asyncio.Event,
        poll_s: float = 1.0,
        batch: int = 100,
        on_settled: Callable[[list[int]], None] = lambda ids: None,
    ):
        self.on_settled = on_settled  # told the ids delivered or dead-lettered, once recorded
        self.journal, self.transport, self.ds = journal, transport, ds
        self.metrics, self.log, self.wake, self.poll_s = metrics, log, wake, poll_s
        self.batch = batch
        self._failures = 0
        self._current: asyncio.Future | None = None  # the delivery in flight
        self._watcher: asyncio.Future | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    rows = await self.journal.rows(lambda j: j.deliverable(self.batch))
                    if not rows:
                        await wait_event(self.wake, self.poll_s)
                        continue
                    drained = not batch_full(rows, self.batch)  # (a large message makes a batch of its own)
                    delivered = await self._deliver(rows, stop)
                    del rows  # not held while waiting
                    if delivered and drained:
                        await wait_event(self.wake, self.poll_s)  # drained: wait for the next batch
                except JournalError as exc:
                    if not isinstance(exc, JournalFault):  # a fault is told once, by the service
                        self.log.error("journal_unavailable", stage="forwarder", error=str(exc))
                    await wait_event(stop, self.ds.retry_initial_s)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
            await self.transport.close()

    async def _until_stopped(self, delivery: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
        """Run a delivery, abandoned at once when serve stops (None then): the
        message stays in the journal and is sent again after the restart.
        (One watcher per run cancels the delivery in flight when `stop` is
        set: no task per message to wait for `stop`.)"""
        if stop.is_set():
            delivery.close()
            return None
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._cancel_on_stop(stop))
        task = self._current = asyncio.ensure_future(delivery)
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not (task.cancelled() and stop.is_set()) or (me is not None and me.cancelling()):
                raise  # not the stop's doing: the forwarder itself is cancelled
        finally:
            self._current = None
        await self.transport.close()
        return None

    async def _cancel_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._current is not None:
            self._current.cancel()

    async def _write_down(self, what: str, rows: list[Row], write, stop: asyncio.Event) -> bool:
        """Record the outcome of a delivery that happened: `write()` is retried,
        with backoff, until the journal takes it, and the message is not sent
        again meanwhile (a journal that cannot record an AA must not turn into
        a resend a second). False when serve stopped first: then the message
        is sent once more after the restart."""
        failures = 0
        while True:
            try:
                await write()
                if failures:
                    self.log.info("delivery_recorded", what=what, journal_ids=[r.id for r in rows], tries=failures + 1)
                return True
            except JournalError as exc:
                failures += 1
                delay = backoff_delay(failures, self.ds.retry_initial_s, self.ds.retry_max_s)
                if failures == 1 and not isinstance(exc, JournalFault):
                    self.log.error(
                        "delivery_not_recorded",
                        what=what,
                        journal_ids=[r.id for r in rows][:10],
                        error=str(exc),
                        consequence="nothing more is sent until the journal records it",
                    )
                await wait_event(stop, delay)
                if stop.is_set():
                    return False

    async def _deliver(self, rows: list[Row], stop: asyncio.Event) -> bool:
        """Deliver the head of the queue, in order, until the first failure;
        True when every row was delivered."""
        deliver_many = getattr(self.transport, "deliver_many", None)
        if deliver_many is not None:
            outcomes = await deliver_many(rows)
            delivered = [(row, o) for row, o in zip(rows, outcomes, strict=False) if isinstance(o, Delivered)]
            if delivered and not await self._forwarded(delivered, stop):
                return False
            if len(delivered) < len(outcomes):
                await self._handle(rows[len(delivered)], outcomes[len(delivered)], stop)
            return len(delivered) == len(rows)
        # One message at a time, each waiting for its AA; the AAs are written
        # down a group at a time (RECORD_EVERY messages or RECORD_WITHIN_S),
        # and always before a failure is handled or the batch ends.
        group: list[tuple[Row, Delivered]] = []
        since = 0.0
        for row in rows:
            outcome = await self._until_stopped(self.transport.deliver(row), stop)
            if isinstance(outcome, Delivered):
                if not group:
                    since = time.monotonic()
                group.append((row, outcome))
                if len(group) < RECORD_EVERY and time.monotonic() - since < RECORD_WITHIN_S:
                    continue
            if group:
                if not await self._forwarded(group, stop):
                    return False
                group = []
            if outcome is None:
                return False
            if not isinstance(outcome, Delivered):
                await self._handle(row, outcome, stop)
                return False
        return not group or await self._forwarded(group, stop)

    async def _forwarded(self, delivered: list[tuple[Row, Delivered]], stop: asyncio.Event) -> bool:
        started = time.monotonic()
        rows = [row for row, _ in delivered]
        if not await self._write_down(
            "forwarded", rows, lambda: self.journal.write(lambda j: j.mark_forwarded_many([r.id for r in rows])), stop
        ):
            return False
        self.on_settled([r.id for r in rows])
        self._failures = 0
        self.metrics.set("b12comment_downstream_up", 1)
        self.metrics.set("b12comment_last_delivery_timestamp_seconds", time.time())
        journal_ms = round((time.monotonic() - started) * 1000, 2)
        for row, outcome in delivered:
            self.metrics.inc("b12comment_forwarded_total")
            self.log.debug(
                "forwarded",
                journal_id=row.id,
                control_id=row.control_id,
                message_type=row.message_type,
                attempts=row.attempts + 1,
                answer=outcome.detail,
                journal_ms=journal_ms,
            )
        return True

    async def _handle(self, row: Row, outcome: Rejected | Retry, stop: asyncio.Event) -> None:
        """A delivery that failed (deliveries are recorded by `_forwarded`):
        dead-lettered when rejected or out of attempts, else retried after a backoff."""
        fields = dict(journal_id=row.id, control_id=row.control_id, message_type=row.message_type)
        if isinstance(outcome, Rejected):
            await self._dead(row, outcome.reason, fields, stop, tried=True)
            return
        self.metrics.set("b12comment_downstream_up", 0)
        self._failures += 1
        attempts = await self.journal.write(lambda j: j.mark_attempt_failed(row.id, outcome.reason, outcome.counts))
        if outcome.counts and attempts >= self.ds.max_attempts:
            await self._dead(row, f"gave up after {attempts} attempts: {outcome.reason}", fields, stop)
            return
        delay = backoff_delay(self._failures, self.ds.retry_initial_s, self.ds.retry_max_s)
        self.metrics.inc("b12comment_retries_total")
        self.log.warning(
            "delivery_failed", **fields, attempts=attempts, error=outcome.reason, retry_in_s=round(delay, 3)
        )
        await wait_event(stop, delay)

    async def _dead(self, row: Row, reason: str, fields: dict, stop: asyncio.Event, tried: bool = False) -> None:
        """`tried`: the attempt that killed it is not counted yet (a rejection): count it."""

        def dead(j) -> None:
            if tried:
                j.mark_attempt_failed(row.id, reason, True)
            j.mark_dead(row.id, reason)

        if not await self._write_down("dead", [row], lambda: self.journal.write(dead), stop):
            return
        self.on_settled([row.id])
        self._failures = 0
        self.metrics.inc("b12comment_dead_lettered_total")
        self.log.error("dead_lettered", **fields, reason=reason)
