"""Active-passive instances on one PostgreSQL journal: one leads, the
others stand by, and a leader that may no longer lead stops before another
starts.

The leader holds two things:

- a session advisory lock (`LEADER_LOCK`) on a connection of its own: not
  pooled, with TCP keepalives, so the database frees the lock when the
  leader's process or host dies or its network goes;
- the lease row (`b12_lease`): holder, epoch (one more at every takeover),
  and an expiry in the database's clock, renewed every `lease_s / 3`.

A standby polls. It takes over when it gets the lock (the leader's session
ended: a crash or a kill frees it at once), or when the lease has lapsed
(the leader stopped renewing: SIGSTOP, a hung host, a half-open connection
that still holds the lock): it then ends the old leader's sessions
(`pg_terminate_backend`, by their application_name `b12comment:<instance>`)
and takes the lock. Either way it ends the old holder's sessions before it
writes itself into the lease row, so no transaction of the old leader is
still open when it starts.

Fencing, so that two instances never ACK at once:

- every journal write checks the lease row in its own transaction (FOR
  SHARE: a takeover waits for that commit, or the commit sees the takeover;
  see journal.py);
- `holds()` is this side's own clock: the lease is good for `lease_s` from
  the moment its last renewal was *sent*, which is never later than the
  database's expiry, so a leader stops answering AA before a standby may
  take over; a renewal that fails, or a lost connection, ends it at once;
- a leader stopped (SIGSTOP) and continued finds `holds()` false (the
  monotonic clock ran on), its connections ended and the row another's: it
  answers AE, and turns standby.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from b12comment.storage.model import JournalError
from b12comment.storage.postgres.connect import APP_PREFIX, connect, describe, psycopg_module, redact
from b12comment.storage.postgres.schema import LEADER_LOCK, migrate


@dataclass(frozen=True)
class LeaseState:
    """The lease row as the database has it."""

    holder: str
    epoch: int
    remaining_s: float  # negative: lapsed


def read_lease(conn: Any) -> LeaseState | None:
    row = conn.execute(
        "SELECT holder, epoch, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 FROM b12_lease "
        "WHERE name = 'leader'"
    ).fetchone()
    if row is None or not row[0]:
        return None
    return LeaseState(row[0], row[1], row[2] if row[2] is not None else float("-inf"))


class Leadership:
    """This instance's claim to lead. `wait_to_lead()` (standby) returns
    once it leads; then `holds()` says whether it still may; `on_lost` is
    called once (from the lease's thread) when it no longer may."""

    def __init__(
        self,
        url: str,
        instance: str,
        lease_s: float = 5.0,
        takeover_s: float = 10.0,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url, self.instance = url, instance
        self.lease_s, self.takeover_s = lease_s, takeover_s
        self.poll_s = max(0.05, min(1.0, (takeover_s - lease_s) / 3))
        self.log = log
        self.clock = clock
        self.epoch = 0
        self._valid_until = 0.0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self.on_lost: Callable[[str], None] | None = None
        self._psycopg = psycopg_module()

    # -- the local view

    def holds(self) -> bool:
        """Whether this instance may still ACK and forward (its own clock)."""
        return not self._lost.is_set() and self.clock() < self._valid_until

    @property
    def leading(self) -> bool:
        return self._thread is not None and not self._lost.is_set()

    # -- standby

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = connect(self.url, self.instance, autocommit=True)
            migrate(self._conn, redact(self.url))
        return self._conn

    def try_lead(self) -> bool:
        """One standby poll: take the lead if it is free or lapsed. Raises JournalError."""
        try:
            conn = self._connection()
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()[0]
            state = read_lease(conn)
            if not got:
                if state is not None and state.remaining_s < 0 and state.holder != self.instance:
                    self._end_sessions(conn, state.holder, with_lock=True)
                    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()[0]
                if not got:
                    return False
            previous = state.holder if state is not None else ""
            if previous and previous != self.instance:
                self._end_sessions(conn, previous)
            sent = self.clock()
            row = conn.execute(
                "UPDATE b12_lease SET holder = %s, epoch = epoch + 1, since = clock_timestamp(), "
                "expires_at = clock_timestamp() + make_interval(secs => %s) WHERE name = 'leader' RETURNING epoch",
                (self.instance, self.lease_s),
            ).fetchone()
        except self._psycopg.Error as exc:
            self._drop_connection()
            raise JournalError(f"lease on {redact(self.url)}: {describe(exc)}") from None
        self.epoch = row[0]
        self._valid_until = sent + self.lease_s
        self._lost.clear()
        if self.log is not None:
            self.log.warning("leading", instance=self.instance, epoch=self.epoch, previous=previous or None)
        return True

    def _end_sessions(self, conn: Any, holder: str, with_lock: bool = False) -> None:
        """End every session of another instance (and whoever holds the lock, with_lock)."""
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND pid != pg_backend_pid()",
            (f"{APP_PREFIX}{holder}"[:63],),
        )
        if with_lock:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = %s AND pid != pg_backend_pid()",
                (LEADER_LOCK,),
            )
        if self.log is not None:
            self.log.warning("ended_sessions", instance=self.instance, of=holder, lapsed=with_lock)

    def wait_to_lead(self, stop: threading.Event) -> bool:
        """Poll until this instance leads (True) or `stop` is set (False)."""
        failing = False
        while not stop.is_set():
            try:
                if self.try_lead():
                    return True
                failing = False
            except JournalError as exc:
                if not failing and self.log is not None:
                    self.log.error("lease_unavailable", instance=self.instance, error=str(exc))
                failing = True
            stop.wait(self.poll_s)
        return False

    # -- leader

    def start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        every = self.lease_s / 3
        while not self._stop.wait(every):
            if not self.holds():
                self._lose("the lease ran out before it was renewed")
                return
            sent = self.clock()
            try:
                row = self._conn.execute(
                    "UPDATE b12_lease SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE name = 'leader' AND holder = %s AND epoch = %s RETURNING 1",
                    (self.lease_s, self.instance, self.epoch),
                ).fetchone()
            except self._psycopg.Error as exc:
                self._lose(f"the lease's connection failed: {describe(exc)}")
                return
            if row is None:
                self._lose("another instance holds the lease")
                return
            self._valid_until = sent + self.lease_s

    def _lose(self, why: str) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        self._drop_connection()
        if self.log is not None:
            self.log.error("lease_lost", instance=self.instance, epoch=self.epoch, why=why)
        if self.on_lost is not None:
            self.on_lost(why)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # (a broken connection may fail to close; it is gone either way)
                self._conn.close()
            self._conn = None

    def step_down(self) -> None:
        """Stop leading (a clean stop, or after the lease was lost): stop
        renewing, let the lease lapse now, free the lock."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.lease_s)
        lost = self._lost.is_set()
        self._lost.set()
        if self._conn is not None and not lost:
            try:
                self._conn.execute(
                    "UPDATE b12_lease SET expires_at = clock_timestamp() WHERE name = 'leader' AND holder = %s "
                    "AND epoch = %s",
                    (self.instance, self.epoch),
                )
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))
            except self._psycopg.Error:
                pass
        self._drop_connection()

    def close(self) -> None:
        self.step_down()
