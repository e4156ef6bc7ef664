"""The journal's writer: drives the synchronous `Journal` for asyncio code,
with group commit of intake (see `JournalThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from pathlib import Path

from b12comment.serve.journal import Journal, JournalError

INTAKE = frozenset({"record", "reject"})


class JournalThread:
    """The journal for asyncio code: intake on the event loop, the rest on a thread.

    Intake (`record`, `reject`) is what a sender waits for, so it takes the
    shortest path: the frames handed in during one turn of the event loop,
    from every connection, are committed together at the end of that turn,
    on the event loop itself, in one transaction and one fsync (group
    commit); each caller gets its result only after that commit. Frames that
    arrive meanwhile wait in the kernel and make the next batch. Handing each
    frame to a thread and back instead costs two thread wake-ups per message,
    which is most of a sequential sender's round trip on a busy machine.

    Every other call runs on the journal thread, one at a time, in the order
    made. A lock keeps the two apart: when the thread is in the middle of a
    call, intake is handed to the thread, which runs it before anything else.

    The journal is opened lazily and opened again after a failed open, so a
    service whose disk is unavailable at start keeps answering (AE) and
    recovers when the disk comes back.
    """

    def __init__(self, path: str | Path, max_batch: int = 256):
        self.path = Path(path)
        self.max_batch = max_batch
        self._journal: Journal | None = None
        self._lock = threading.Lock()  # held while the journal is in use
        self._cv = threading.Condition()  # guards the queues below
        self._intake: deque = deque()
        self._calls: deque = deque()
        self._flush_scheduled = False
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the event loop side

    def submit(self, method: str, *args, **kwargs) -> asyncio.Future:
        """Queue a call now; the future has its result once it is committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the journal is closed")
            if method in INTAKE:
                self._intake.append((future, method, args, kwargs))
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self._flush)
            else:
                self._calls.append((future, method, args, kwargs))
                self._wake_thread()
        return future

    async def call(self, method: str, *args, **kwargs):
        return await self.submit(method, *args, **kwargs)

    async def available(self) -> bool:
        try:
            await self.call("depth")
            return True
        except JournalError:
            return False

    async def close(self) -> None:
        """Finish what is queued, close the file, end the thread."""
        await self.call("close")
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def _flush(self) -> None:
        """End of a loop turn: commit the intake batch here, unless the thread
        is busy with the journal; then the thread takes it next."""
        with self._cv:
            self._flush_scheduled = False
        if not self._lock.acquire(blocking=False):
            with self._cv:
                self._wake_thread()
            return
        try:
            while True:
                batch = self._take_intake()
                if not batch:
                    return
                _resolve(self._run_batch(batch))
        finally:
            self._lock.release()

    def _wake_thread(self) -> None:  # with self._cv held
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
            self._thread.start()
        self._cv.notify()

    def _take_intake(self) -> list:
        with self._cv:
            return [self._intake.popleft() for _ in range(min(len(self._intake), self.max_batch))]

    # -- the journal thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._intake or self._calls or self._closed):
                    self._cv.wait()
                if not (self._intake or self._calls):
                    return
            with self._lock:
                batch = self._take_intake()
                if not batch:
                    with self._cv:
                        batch = [self._calls.popleft()] if self._calls else []
                if batch:
                    done = self._run_batch(batch)
            if batch:
                self._settle(done)

    def _run_batch(self, batch: list) -> list:
        """Run intake calls together, or one other call; (future, value, ok) each."""
        method = batch[0][1]
        if method in INTAKE:
            try:
                results = [
                    (r, not isinstance(r, JournalError))
                    for r in self._open().intake([(m, a, k) for _, m, a, k in batch])
                ]
            except Exception as exc:
                results = [(exc, False)] * len(batch)
        elif method == "close":
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            results = [(None, True)]
        else:
            try:
                _, _, args, kwargs = batch[0]
                results = [(getattr(self._open(), method)(*args, **kwargs), True)]
            except Exception as exc:
                results = [(exc, False)]
        return [(item[0], value, ok) for item, (value, ok) in zip(batch, results, strict=False)]

    def _open(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.path)
        return self._journal

    @staticmethod
    def _settle(done: list) -> None:
        """Hand results back to their event loops: one wake-up per loop."""
        by_loop: dict = {}
        for entry in done:
            by_loop.setdefault(entry[0].get_loop(), []).append(entry)
        for loop, entries in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, entries)


def _resolve(entries: list) -> None:
    for future, value, ok in entries:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
