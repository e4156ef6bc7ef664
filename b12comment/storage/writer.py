"""The journal's writer: drives a synchronous journal (any backend of
`JournalStore`) for asyncio code, with group commit of intake (see
`JournalThread`).

Intake has its two methods (`record`, `keep_invalid`, committed in groups);
every other operation is one typed call, `call(lambda j: j.operation(...))`,
so mypy checks each against the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from b12comment.storage import open_journal
from b12comment.storage.interface import JournalStore
from b12comment.storage.model import (
    Arrival,
    InvalidFrame,
    JournalCorrupt,
    JournalError,
    JournalFault,
    NewMessage,
    NotLeader,
    Receipt,
    Row,
)

T = TypeVar("T")


VOID_REASON = (
    "void: answered AE (its commit took longer than commit_timeout_s) and committed after the answer; "
    "never delivered (the sender sends it again)"
)


class JournalThread:
    """The journal for asyncio code: every call runs on one writer thread, so
    the event loop never waits on the disk or on SQLite's lock.

    Intake (`record`, `keep_invalid`) is what a sender waits for, so it goes
    first: when the thread is free, it takes every frame waiting (from every
    connection, up to `max_batch`) and commits them in one transaction and
    one fsync (group commit); each caller gets its result only after that
    commit. Frames that arrive during a commit make the next batch. Every
    other call (the processing stage's, the forwarder's) runs one at a time,
    in the order made: when no intake waits, and else one between two intake
    commits, so that while senders keep intake busy, processing and delivery
    still go on (a strict priority stopped delivery for as long as intake
    flowed).

    The event loop keeps answering while a commit is slow (another process
    holds the write lock, the disk stalls): the listener bounds its wait for
    a commit and answers AE past it (see listener.py), and `available()`
    answers within `health_timeout_s`.

    With `apart` (the default, for a SQLite journal), the writes (`write`:
    the stages' bookkeeping, pruning) still run on that thread, one between
    two intake commits, but every other call (`call`, `rows`: the stages'
    reads of messages, the queue's counts) runs on a second thread with its
    own connection, so an intake commit never waits behind a read, nor a
    read behind an fsync. Only one connection writes: two would meet in
    SQLite's busy handler, which sleeps longer and longer between its tries
    while intake commits one batch after another. A message whose sender
    was answered AE while its commit was under way is then never handed to
    those stages, although their connection may read it between the commit
    and its voiding: `rows()` waits until the commit's batch is settled and
    leaves out the messages voided in it, and after a fault it leaves out
    every message committed after the last settled batch.

    The journal is opened lazily and opened again after a failed open, so a
    disk that goes away for a while (full, locked by another process) costs
    AE answers until it comes back, not a restart.

    A fault is different (`JournalFault`: the file was deleted or replaced
    while open, or SQLite found it damaged): from then on every intake fails
    with it at once (answered AE), `available()` is false, and `on_fault` is
    called once. A deleted file is still open here, so the processing stage
    and the forwarder go on emptying it downstream; a damaged one serves
    nothing more.
    """

    def __init__(
        self,
        location: str | Path,
        max_batch: int = 256,
        on_fault: Callable[[JournalFault], None] | None = None,
        opener: Callable[[str | Path], JournalStore] = open_journal,
        holds: Callable[[], bool] | None = None,
        apart: bool = True,
    ):
        self.location = location
        self.apart = apart
        self._opener = opener
        self._holds = holds  # the leader's lease, checked after each intake commit (before any AA)
        self.max_batch = max_batch
        self.on_fault = on_fault
        self.fault: JournalFault | None = None
        self._journal: JournalStore | None = None
        # One lock guards the queues below; each thread waits on its own
        # condition of it, so that a message wakes the intake thread only.
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # the intake thread waits on it
        self._calls_cv = threading.Condition(lock)  # (apart) the calls' thread
        self._settled_cv = threading.Condition(lock)  # rows() (see _handed_on)
        self._intake: deque[tuple[asyncio.Future, Arrival]] = deque()
        self._committing: set[asyncio.Future] = set()  # intake in the commit under way
        self._void: set[asyncio.Future] = set()  # ... whose sender was answered AE meanwhile
        self._calls: deque[tuple[asyncio.Future, Callable[[JournalStore], Any] | None]] = deque()
        self._writes: deque[tuple[asyncio.Future, Callable[[JournalStore], Any] | None]] = deque()  # (apart)
        self._thread: threading.Thread | None = None
        self._calls_thread: threading.Thread | None = None
        self._calls_journal: JournalStore | None = None  # (apart) the calls' own connection
        self._closed = False
        # What `rows()` may hand on (see the class): the highest message id of
        # the batches settled so far, whether a batch is being committed (and
        # since when, for `available()`), and the ids voided as answered AE.
        self._settled_upto = 0
        self._settling_since: float | None = None
        self._frozen_above: int | None = None  # after a fault: nothing above this id is handed on
        self._voided: set[int] = set()
        self._fault_lock = threading.Lock()

    # -- intake: handed in now, the future is done once committed

    def record(
        self,
        raw: bytes,
        *,
        control_id: str,
        message_type: str,
        peer: str = "",
        conn_seq: int = 0,
        retransmit_window_s: float = 0.0,
    ) -> asyncio.Future[Receipt]:
        """Journal a message (group commit); the future has its `Receipt`."""
        return self._arrive(NewMessage(raw, control_id, message_type, peer, conn_seq, retransmit_window_s))

    def abandon(self, future: asyncio.Future) -> bool:
        """The sender of a message handed to `record` was answered AE (its
        commit took too long): it must never be delivered. True when it will
        not be: not committed yet (then never), or in the commit under way
        (voided right after it, before the journal does anything else). False
        when it is committed already: its receipt is on its way, answer by it."""
        with self._cv:
            for i, (queued, _) in enumerate(self._intake):
                if queued is future:
                    del self._intake[i]
                    future.cancel()
                    return True
            if future in self._committing:
                self._void.add(future)
                return True
        return future.cancelled()

    def keep_invalid(
        self,
        raw: bytes,
        reason: str,
        *,
        peer: str = "",
        conn_seq: int = 0,
        control_id: str = "",
        message_type: str = "",
    ) -> asyncio.Future[int]:
        """Keep a frame answered AR (group commit); the future has its row id."""
        return self._arrive(InvalidFrame(raw, reason, peer, conn_seq, control_id, message_type))

    # -- everything else, one at a time on the journal thread

    def call(self, fn: Callable[[JournalStore], T]) -> asyncio.Future[T]:
        """Run fn(journal) on the journal thread, after the calls made before
        it; the future (returned at once) has its result or its exception.
        Every operation of the journal goes through here, typed by mypy:
        `await thread.call(lambda j: j.deliverable(100))`."""
        return self._submit(fn)

    def write(self, fn: Callable[[JournalStore], T]) -> asyncio.Future[T]:
        """A call that writes (the processing stage's and the forwarder's
        bookkeeping, pruning). Apart, it runs on the intake thread, between
        two intake commits, so that only that connection writes: the calls'
        connection, which reads, never waits in SQLite's busy handler (which
        sleeps longer and longer while intake commits one after another)."""
        return self._enqueue(self._writes if self.apart else self._calls, fn, self._cv)

    def rows(self, fn: Callable[[JournalStore], list[Row]]) -> asyncio.Future[list[Row]]:
        """A call that reads messages for the processing stage or the
        forwarder: the rows fn returns, in their order, without any whose
        sender was answered AE (see the class)."""
        return self._submit(lambda j: self._handed_on(fn(j)))

    def _handed_on(self, rows: list[Row]) -> list[Row]:
        """(On the calls' thread.) Rows read while a batch was being settled
        wait for it; then the voided ones, and after a fault every one above
        the last settled batch, are left out."""
        if not rows:
            return rows
        with self._cv:
            while self._settling_since is not None and self._frozen_above is None and rows[-1].id > self._settled_upto:
                self._settled_cv.wait()
            frozen, voided = self._frozen_above, self._voided
            if frozen is None and not voided:
                return rows
            return [r for r in rows if r.id not in voided and (frozen is None or r.id <= frozen)]

    async def depth(self) -> int:
        """How many messages wait (the metrics' and the health check's callback)."""
        return await self.call(lambda j: j.depth())

    async def open_checked(self) -> str:
        """Open the journal and check its integrity; returns its journal id.
        Raises JournalError (JournalCorrupt when damaged)."""

        def check(j: JournalStore) -> str:
            problems = j.integrity_problems()
            if problems:
                raise JournalCorrupt(f"journal {j.location} is damaged: {'; '.join(problems)}")
            return j.journal_id

        return await self.call(check)

    async def available(self, health_timeout_s: float = 2.0) -> bool:
        """The journal answers (within the timeout) and has no fault: an
        intake commit under way ends within the timeout (it hangs when the
        disk stalls or another process holds the write lock), and a read
        answers within it."""
        if self.fault is not None:
            return False
        since = self._settling_since
        if since is not None:
            deadline = time.monotonic() + health_timeout_s
            while self._settling_since == since:  # the same commit, still under way
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(asyncio.shield(self.depth()), health_timeout_s)
            return True
        except (JournalError, TimeoutError):
            return False

    async def close(self) -> None:
        """Finish what is queued, close the file, end the threads."""
        await self._submit(None)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            self._calls_cv.notify_all()
            threads = [t for t in (self._thread, self._calls_thread) if t is not None]
        for thread in threads:
            await asyncio.to_thread(thread.join)

    # -- the event loop side

    def _arrive(self, arrival: Arrival) -> asyncio.Future:
        return self._enqueue(self._intake, arrival, self._cv)

    def _submit(self, fn: Callable[[JournalStore], Any] | None) -> asyncio.Future:
        """Queue fn(journal) for the calls' thread, or the only one (None: close the journal)."""
        return self._enqueue(self._calls, fn, self._calls_cv if self.apart else self._cv)

    def _enqueue(self, queue: deque, item: Any, waker: threading.Condition) -> asyncio.Future:
        """Queue (future, item) for the thread that waits on `waker`; the
        future, returned at once, has its result once the thread is done."""
        future = asyncio.get_running_loop().create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the journal is closed")
            queue.append((future, item))
            self._start_threads()
            waker.notify()
        return future

    def _start_threads(self) -> None:  # with self._cv held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()
            if self.apart:
                self._calls_thread = threading.Thread(target=self._run_calls, name="journal-calls", daemon=True)
                self._calls_thread.start()

    def _take_intake(self) -> list[tuple[asyncio.Future, Arrival]]:
        with self._cv:
            return [self._intake.popleft() for _ in range(min(len(self._intake), self.max_batch))]

    # -- the journal thread (intake, and every call unless apart)

    def _run(self) -> None:
        call_turn = False  # after an intake commit, one waiting call goes before the next
        calls = self._writes if self.apart else self._calls  # what this thread runs beside intake
        try:
            while True:
                with self._cv:
                    while not (self._intake or calls or self._closed):
                        self._cv.wait()
                    if not (self._intake or calls):
                        return
                    call = calls.popleft() if calls and (call_turn or not self._intake) else None
                call_turn = self._step(call, call_turn)
                call = None  # (its arguments may be a large message)
        finally:
            if self.apart and self._journal is not None:
                with contextlib.suppress(Exception):
                    self._journal.close()
                self._journal = None

    def _step(self, call, call_turn: bool) -> bool:
        """One call, or one batch of intake; returns the next call_turn. (A
        method of its own, so that nothing it handled, such as a large
        message, stays referenced in _run while the thread waits.)"""
        done: list = []
        if call is not None:
            future, fn = call
            done = [self._run_call(future, fn, here=True)]
            call_turn = False
        else:
            batch = self._take_intake()
            if batch:
                done = self._run_intake(batch)
                call_turn = True
        if done:
            self._settle(done, self._holds)
        return call_turn

    # -- the calls' thread (apart)

    def _run_calls(self) -> None:
        while True:
            with self._cv:
                while not (self._calls or self._closed):
                    self._calls_cv.wait()
                if not self._calls:
                    return
                call = self._calls.popleft()
            future, fn = call
            self._settle([self._run_call(future, fn, here=False)])
            del call  # (its arguments may be a large message)

    def _run_intake(self, batch: list[tuple[asyncio.Future, Arrival]]) -> list:
        """Commit intake together; (future, value, ok) each."""
        with self._cv:
            self._committing = {future for future, _ in batch}
            self._settling_since = time.monotonic()
        results: list = []
        try:
            if self.fault is not None:
                raise self.fault
            results = self._open().intake([arrival for _, arrival in batch])
            self._void_late(batch, results)
            if self._holds is not None and not self._holds():
                # Committed, but the lease ran out meanwhile: no AA from here.
                # The sender sends again to the instance that leads now, which
                # finds it as a retransmission (and delivers it once).
                raise NotLeader("this instance no longer holds the journal's lease: answered AE")
        except Exception as exc:
            self._faulted(exc)
            return [(future, exc, False) for future, _ in batch]
        finally:
            with self._cv:
                self._committing, self._void = set(), set()
                ids = [r.id if isinstance(r, Receipt) else r for r in results if isinstance(r, Receipt | int)]
                self._settled_upto = max([self._settled_upto, *ids])
                if self.fault is not None and self._frozen_above is None:
                    # What this batch committed into a journal at fault is never handed on.
                    self._frozen_above = self._settled_upto
                self._settling_since = None
                self._settled_cv.notify_all()
        return [(future, r, not isinstance(r, JournalError)) for (future, _), r in zip(batch, results, strict=True)]

    def _void_late(self, batch: list[tuple[asyncio.Future, Arrival]], results: list) -> None:
        """Committed messages whose senders were answered AE during the commit:
        void, in the next transaction, before any other call can read them."""
        with self._cv:
            late, self._committing = self._void, set()
        ids = [
            r.id
            for (future, _), r in zip(batch, results, strict=True)
            if future in late and isinstance(r, Receipt) and not r.duplicate
        ]
        with self._cv:
            self._voided.update(ids)  # never handed on, even before the void below is committed
        if ids:
            try:
                self._open().void_many(ids, VOID_REASON)
            except Exception as exc:  # the other messages of the batch are committed: their answers stand
                self._faulted(exc)

    def _run_call(self, future: asyncio.Future, fn: Callable[[JournalStore], Any] | None, here: bool) -> tuple:
        """`here`: on the intake thread, with its connection (else the calls')."""
        if fn is None:
            if self.apart:
                if self._calls_journal is not None:
                    self._calls_journal.close()
                    self._calls_journal = None
            elif self._journal is not None:
                self._journal.close()
                self._journal = None
            return (future, None, True)
        try:
            if isinstance(self.fault, JournalCorrupt):
                raise self.fault
            return (future, fn(self._open() if here else self._open_calls()), True)
        except Exception as exc:
            self._faulted(exc)
            return (future, exc, False)

    def _faulted(self, exc: Exception) -> None:
        """The first fault sticks (a damaged file outranks a deleted one) and is told once."""
        if not isinstance(exc, JournalFault) or exc is self.fault:
            return
        with self._fault_lock:  # (both threads may find one)
            if self.fault is not None and not (
                isinstance(exc, JournalCorrupt) and not isinstance(self.fault, JournalCorrupt)
            ):
                return
            self.fault = exc
        if self.on_fault is not None:
            self.on_fault(exc)

    def _open(self) -> JournalStore:
        if self._journal is None:
            self._journal = self._opener(self.location)
        return self._journal

    def _open_calls(self) -> JournalStore:
        if self._calls_journal is None:
            self._calls_journal = self._opener(self.location)
        return self._calls_journal

    @staticmethod
    def _settle(done: list, holds: Callable[[], bool] | None = None) -> None:
        """Hand results back to their event loops: one wake-up per loop."""
        by_loop: dict = {}
        for entry in done:
            by_loop.setdefault(entry[0].get_loop(), []).append(entry)
        for loop, entries in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, entries, holds)


def _resolve(entries: list, holds: Callable[[], bool] | None) -> None:
    for future, value, ok in entries:
        if future.cancelled():
            continue
        if ok and holds is not None and isinstance(value, Receipt) and not holds():
            # The lease ran out between the commit and this turn of the event
            # loop (the process was stopped, say): no AA from here either.
            future.set_exception(NotLeader("this instance no longer holds the journal's lease: answered AE"))
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
