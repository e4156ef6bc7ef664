"""Health, split the usual way, on the metrics port and the HTTP port alike.
Each answers 200 `ok`, or 503 with a one-line reason:

- `/livez` (liveness): the process answers. A supervisor restarts a
  service whose liveness fails; nothing else belongs in it.
- `/readyz` (readiness): this instance accepts messages and can make them
  durable: it is not stopping, the journal has no fault (deleted, replaced,
  damaged), answers within `TIMEOUT_S`, and its folder is writable with room
  for a message of `max_message_bytes`. A load balancer sends messages only
  to an instance whose readiness is 200 (a sender gets `AE` otherwise).
- `/healthz` (everything works): readiness, and delivery: the oldest message
  not yet delivered downstream is younger than `[metrics]
  max_delivery_lag_s`. Monitoring probes it; its reason says which failed.

Further readiness conditions (such as a standby of a pair) are added with
`Health.add_ready_check`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

TIMEOUT_S = 2.0
OK = ""  # a check's answer when it holds; otherwise the reason

ReadyCheck = Callable[[], Awaitable[str]]


class Health:
    def __init__(
        self,
        journal=None,  # a JournalThread, or None when serve runs the HTTP endpoint alone
        journal_path: str | Path | None = None,
        max_message_bytes: int = 0,
        max_delivery_lag_s: float = 900.0,
        accepting: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ):
        self.journal = journal
        self.folder = Path(journal_path).parent if journal_path is not None else None
        self.max_message_bytes = max_message_bytes
        self.max_delivery_lag_s = max_delivery_lag_s
        self.accepting = accepting
        self.clock = clock
        self._ready_checks: list[ReadyCheck] = []

    def add_ready_check(self, check: ReadyCheck) -> None:
        """`check()` gives "" when it holds, else the one-line reason."""
        self._ready_checks.append(check)

    async def answer(self, path: str) -> tuple[int, str]:
        """(status, body) for /livez, /readyz or /healthz."""
        if path == "/livez":
            reason = OK
        elif path == "/readyz":
            reason = await self.ready()
        else:
            reason = await self.ready() or await self.delivery()
        return (200, "ok\n") if not reason else (503, reason + "\n")

    async def ready(self) -> str:
        if not self.accepting():
            return "not ready: the service is stopping"
        for check in self._ready_checks:
            reason = await check()
            if reason:
                return f"not ready: {reason}"
        if self.journal is None:
            return OK
        fault = self.journal.fault
        if fault is not None:
            return f"not ready: journal fault: {fault}"
        reason = self._disk()
        if reason:
            return f"not ready: {reason}"
        if not await self.journal.available(TIMEOUT_S):
            return f"not ready: the journal did not answer within {TIMEOUT_S:g} s"
        return OK

    def _disk(self) -> str:
        if self.folder is None:  # a journal in a database: no disk of this host's to look at
            return OK
        try:
            st = os.statvfs(self.folder)
        except OSError as exc:
            return f"cannot look at the journal's folder {self.folder}: {exc.strerror or exc}"
        if st.f_flag & os.ST_RDONLY:
            return f"the journal's folder {self.folder} is on a read-only filesystem"
        free = st.f_bavail * st.f_frsize
        if free < self.max_message_bytes:
            return (
                f"the journal's disk is full: {free} bytes free in {self.folder}, "
                f"a message may need {self.max_message_bytes}"
            )
        return OK

    async def delivery(self) -> str:
        if self.journal is None:
            return OK
        try:
            oldest = await self._oldest()
        except Exception as exc:  # the journal cannot say: not healthy
            return f"delivery unknown: the journal did not answer ({type(exc).__name__})"
        if oldest is None:
            return OK
        age = self.clock() - oldest
        if age > self.max_delivery_lag_s:
            return (
                f"delivery lagging: the oldest undelivered message is {age:.0f} s old "
                f"(limit {self.max_delivery_lag_s:g} s); see b12comment queue status"
            )
        return OK

    async def _oldest(self) -> float | None:
        assert self.journal is not None
        return await asyncio.wait_for(asyncio.shield(self.journal.call(lambda j: j.oldest_undelivered())), TIMEOUT_S)

    async def oldest_age(self) -> float | None:
        """Seconds since the oldest undelivered message arrived: 0 when none
        waits, None when there is no journal or it did not answer."""
        if self.journal is None:
            return None
        try:
            oldest = await self._oldest()
        except Exception:
            return None
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest)
