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
import contextlib
import os
import random
import re
import ssl
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from b12comment.aio import describe_error, wait_event
from b12comment.config import DownstreamConfig
from b12comment.files import fsync_dir
from b12comment.storage.model import JournalError, JournalFault, Row, batch_full
from b12comment.storage.writer import JournalThread
from b12comment.wire import mllp
from b12comment.wire.tls import client_context
from b12comment.wire.waiter import AckWaiter, Unreadable


@dataclass(frozen=True)
class Delivered:
    detail: str = ""


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Retry:
    reason: str
    counts: bool = True  # does this failure count against max_attempts?


Outcome = Delivered | Rejected | Retry
T = TypeVar("T")


def backoff_delay(failures: int, initial: float, maximum: float, rand=random.random) -> float:
    """Seconds to wait after `failures` failures in a row (1, 2, ...): doubling
    from `initial`, capped at `maximum`, jittered down to half (never below initial)."""
    ceiling = min(maximum, initial * 2 ** min(max(failures - 1, 0), 32))
    floor = min(ceiling, max(initial, ceiling / 2))
    return floor + (ceiling - floor) * rand()


def safe_name(control_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", control_id)[:64].strip(".")
    return name or "no-control-id"


class DirTransport:
    """Folder drop: write a temporary name, fsync, rename, fsync the folder,
    so a reader never sees half a file. Same name on a resend: idempotent."""

    # fsyncs of one batch run this many at a time: the filesystem commits the
    # ones that wait together in one journal transaction (group commit), where
    # one after another each waits for a commit of its own.
    FSYNC_THREADS = 8

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fsyncs: ThreadPoolExecutor | None = None

    def _fsync_all(self, fds: list[int]) -> tuple[int, OSError | None]:
        """fsync every fd; (how many from the first are durable, the first error)."""
        if len(fds) == 1:
            try:
                os.fsync(fds[0])
            except OSError as exc:
                return 0, exc
            return 1, None
        if self._fsyncs is None:
            self._fsyncs = ThreadPoolExecutor(self.FSYNC_THREADS, thread_name_prefix="b12-fsync")
        futures = [self._fsyncs.submit(os.fsync, fd) for fd in fds]
        synced, error = 0, None
        for future in futures:  # wait for all of them: their fds are closed next
            failed = future.exception()
            if failed is not None and error is None:
                error = failed if isinstance(failed, OSError) else OSError(str(failed))
            if error is None:
                synced += 1
        return synced, error

    def path_for(self, row: Row) -> Path:
        return self.folder / f"{row.id:012d}_{safe_name(row.control_id)}.hl7"

    async def deliver(self, row: Row) -> Outcome:
        return (await self.deliver_many([row]))[0]

    async def deliver_many(self, rows: list[Row]) -> list[Outcome]:
        """Deliver rows in order: `Delivered` for each row up to the first
        failure, then that failure (nothing after it is attempted)."""
        done, error = await asyncio.to_thread(self._write_many, rows)
        outcomes: list[Outcome] = [Delivered(self.path_for(row).name) for row in rows[:done]]
        if error is not None:
            outcomes.append(Retry(f"cannot write to {self.folder}: {error.strerror or error}", counts=False))
        return outcomes

    def _write_many(self, rows: list[Row]) -> tuple[int, OSError | None]:
        """(rows whose files are durably in place, the error that stopped it).

        Every file is written, then every file fsynced (several at once, so
        the filesystem commits them together), then renamed into place in
        journal order, then the folder fsynced once: the same guarantees as
        one file at a time, with less work in the filesystem."""
        error: OSError | None = None
        opened: list[tuple[int, Path, Path]] = []  # (fd, temporary name, final name)
        written = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                final = self.path_for(row)
                tmp = final.with_name(f".{final.name}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                opened.append((fd, tmp, final))
                data = memoryview(row.processed if row.processed is not None else row.raw)
                while data:
                    data = data[os.write(fd, data) :]
                written += 1
        except OSError as exc:
            error = exc
        try:
            synced, fsync_error = self._fsync_all([fd for fd, _, _ in opened[:written]])
            error = error or fsync_error
        finally:
            for fd, _, _ in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
        done = 0
        try:
            for _, tmp, final in opened[:synced]:
                os.replace(tmp, final)
                done += 1
        except OSError as exc:
            error = exc
        if done:
            try:
                fsync_dir(self.folder)
            except OSError as exc:  # the renames may not last: write them all again
                return 0, exc
        return done, error

    async def close(self) -> None:
        if self._fsyncs is not None:
            self._fsyncs.shutdown(wait=True)
            self._fsyncs = None


class MllpTransport:
    """One MLLP connection downstream, opened when needed and dropped after
    any failure (a late ACK on an old connection cannot be mistaken)."""

    WRITE_BYTES = 256 * 1024  # a larger message is written in pieces of this size

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        max_ack_bytes: int = 1024 * 1024,
    ):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.ssl_context = ssl_context
        self.max_ack_bytes = max_ack_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiter = AckWaiter(max_ack_bytes)  # MSA-2 matching and the answer's meaning

    async def deliver(self, row: Row) -> Outcome:
        payload = row.processed if row.processed is not None else row.raw
        try:
            frame = mllp.pieces(payload, self.WRITE_BYTES)
        except ValueError as exc:
            return Rejected(f"cannot be sent over MLLP: {exc}")
        for first_try in (True, False):
            # Many receivers close the connection after each ACK. A connection
            # kept from the last message that the downstream has closed is
            # not this message's failure: open a new one at once.
            reused = self._writer is not None
            if reused and self._reader is not None and self._reader.at_eof():
                await self.close()
                reused = False
            if self._writer is None:
                try:
                    await self._connect()
                except (TimeoutError, OSError, ssl.SSLError) as exc:
                    await self.close()
                    return Retry(f"cannot connect to {self.host}:{self.port}: {describe_error(exc)}", counts=False)
            writer = self._writer
            assert writer is not None  # connected above
            self._waiter.expect(row.control_id)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._write(writer, frame)
                async with asyncio.timeout(self.timeout_s):
                    return await self._await_ack()
            except TimeoutError:
                await self.close()
                if self._waiter.others:
                    return Retry(
                        f"no ACK for {row.control_id!r} within {self.timeout_s:g} s; ACKs for another control ID "
                        f"arrived: {', '.join(repr(c) for c in self._waiter.others[:3])}"
                    )
                return Retry(self._waiter.no_answer(f"no ACK within {self.timeout_s:g} s"))
            except ssl.SSLError as exc:  # a TLS set-up problem, not this message's fault
                await self.close()
                return Retry(f"TLS failure: {describe_error(exc)}", counts=False)
            except (OSError, EOFError) as exc:
                await self.close()
                if first_try and reused and not self._waiter.heard:
                    continue  # the kept connection was already closed by the downstream
                return Retry(f"connection lost: {describe_error(exc)}")
        raise AssertionError("unreachable")  # the loop returns on its second pass

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, pieces: list[bytes | memoryview]) -> None:
        """Write a frame's pieces, each once the one before has (mostly) gone:
        the transport's buffer holds about one piece, never a whole large message."""
        for piece in pieces:
            writer.write(piece)
            if writer.transport.get_write_buffer_size():  # not all sent at once
                await writer.drain()

    async def _connect(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context, server_hostname=self.host if self.ssl_context else None
            )
        self._waiter.reset()

    async def _await_ack(self) -> Outcome:
        reader = self._reader
        assert reader is not None  # connected before a message is sent
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError(self._waiter.no_answer("downstream closed the connection before answering"))
            reply = self._waiter.feed(data)
            if reply is None:
                continue  # nothing yet, or an answer to something else: keep waiting for ours
            if isinstance(reply, Unreadable):
                return Retry(reply.why)
            if reply.accepted:
                return Delivered(reply.code)
            if reply.rejected:
                return Rejected(f"downstream rejected it ({reply.detail})")
            return Retry(f"downstream answered {reply.detail}")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()


def transport_for(ds: DownstreamConfig):
    """The transport for `[downstream] url`; TLS files are loaded here (TlsError)."""
    if ds.url.startswith("dir:"):
        return DirTransport(ds.url[4:])
    scheme, rest = ds.url.split("://", 1)
    host, port = rest.rsplit(":", 1)
    ctx = client_context(ds.tls_ca, ds.tls_cert, ds.tls_key) if scheme == "mllps" else None
    return MllpTransport(host, int(port), ds.timeout_s, ctx)


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
    ):
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
                    rows = await self.journal.call(lambda j: j.deliverable(self.batch))
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
            "forwarded", rows, lambda: self.journal.call(lambda j: j.mark_forwarded_many([r.id for r in rows])), stop
        ):
            return False
        self._failures = 0
        self.metrics.set("b12comment_downstream_up", 1)
        self.metrics.set("b12comment_last_delivery_timestamp_seconds", time.time())
        journal_ms = round((time.monotonic() - started) * 1000, 2)
        for row, outcome in delivered:
            self.metrics.inc("b12comment_forwarded_total")
            self.log.info(
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
            await self._dead(row, outcome.reason, fields, stop)
            return
        self.metrics.set("b12comment_downstream_up", 0)
        self._failures += 1
        attempts = await self.journal.call(lambda j: j.mark_attempt_failed(row.id, outcome.reason, outcome.counts))
        if outcome.counts and attempts >= self.ds.max_attempts:
            await self._dead(row, f"gave up after {attempts} attempts: {outcome.reason}", fields, stop)
            return
        delay = backoff_delay(self._failures, self.ds.retry_initial_s, self.ds.retry_max_s)
        self.metrics.inc("b12comment_retries_total")
        self.log.warning(
            "delivery_failed", **fields, attempts=attempts, error=outcome.reason, retry_in_s=round(delay, 3)
        )
        await wait_event(stop, delay)

    async def _dead(self, row: Row, reason: str, fields: dict, stop: asyncio.Event) -> None:
        if not await self._write_down(
            "dead", [row], lambda: self.journal.call(lambda j: j.mark_dead(row.id, reason)), stop
        ):
            return
        self._failures = 0
        self.metrics.inc("b12comment_dead_lettered_total")
        self.log.error("dead_lettered", **fields, reason=reason)
