"""`b12comment serve`: listener -> journal -> processing -> forwarder, and
beside them (or alone, with `[listener] enabled = false`) the `[http]`
endpoint, which decides each request at once (see http.py).

The stages meet only in the journal, so each can stop and restart on its own:

- the listener journals each frame and ACKs it (see listener.py);
- the processing stage takes journaled rows in id order, runs the core's
  `process()` on a worker thread and records the processed bytes and the
  decision (one "decision" log record per message). An error there forwards
  the original bytes: results always flow. After a crash, rows still in
  state `received` are processed at start: `process()` is pure, so the redo
  gives the same bytes;
- the forwarder delivers processed rows in id order (see delivery/forwarder.py);
- a pruning task deletes delivered rows after `[journal] retention_days`.

SIGTERM and SIGINT stop accepting, let open connections finish the frames
they have read, let the forwarder finish its current delivery, and exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from b12comment import logs
from b12comment.aio import describe_error, wait_event
from b12comment.audit.recorder import Recorder, audit_spec, open_recorder
from b12comment.audit.rows import HTTP, SERVE
from b12comment.config import Config
from b12comment.context import ContextError
from b12comment.delivery.forwarder import Forwarder
from b12comment.delivery.transports import transport_for
from b12comment.errors import EXIT_IO, EXIT_OK, EXIT_USAGE, B12Error
from b12comment.launch import catch_again, stop_requested
from b12comment.serve.acked import AckedLedger, name_unreadable
from b12comment.serve.health import Health
from b12comment.serve.http import HttpServer
from b12comment.serve.journal_guard import (
    JournalLock,
    Marker,
    check_after_open,
    check_before_open,
    marker_path,
    write_marker,
)
from b12comment.serve.listener import Intake, Listener
from b12comment.serve.malloc import return_large_blocks
from b12comment.serve.metrics import Metrics, MetricsServer
from b12comment.serve.processing import ContextStage, Processor, open_context, tell_earlier_derivation, unavailable
from b12comment.serve.queue_cli import export_messages
from b12comment.storage import is_url, open_journal
from b12comment.storage.model import JournalCorrupt, JournalError, JournalFault, JournalGone
from b12comment.storage.writer import JournalThread
from b12comment.wire.tls import server_context

if TYPE_CHECKING:
    from b12comment.storage.postgres.lease import Leadership

PRUNE_EVERY_S = 3600.0
PRUNE_FIRST_S = 60.0  # after the start
FILES_RESERVED = 64  # file descriptors beside the connections: journal, WAL, lock, downstream, metrics, logs
STOP_TASKS_S = 3.0  # how long stop() waits for the stages before cancelling them


class StartupError(B12Error):
    """serve cannot start; the message is the one line to print (exit 1, or 2
    for a setting that can never work)."""


class AcceptPauses:
    """Out of file descriptors at accept() (EMFILE, ENFILE): asyncio takes the
    listening socket out of the loop and tries again a second later, by
    itself, and new connections wait in the kernel's listen backlog
    meanwhile. This says so in one line when the pause starts
    (`accept_paused`) and one when accept() has not failed for QUIET_S
    (`accept_resumed`, with how long it failed and on how many retries).

    Each retry reports many failures: asyncio's accept loop (3.11) goes on
    calling accept() up to its backlog of 100 times in the turn that failed,
    and Linux answers EMFILE while no descriptor is free even with no
    connection waiting. They count as one retry, and are not logged."""

    QUIET_S = 5.0

    def __init__(self, log, clock=time.monotonic):
        self.log, self.clock = log, clock
        self.since: float | None = None
        self.retries = 0
        self._last = 0.0

    def failed(self, exc: OSError, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock()
        if self.since is None:
            self.since, self.retries = now, 0
            self.log.warning(
                "accept_paused",
                error=describe_error(exc),
                consequence="new connections wait in the listen backlog; accepting is retried every second "
                f"until a file descriptor is free (accept_resumed once it has not failed for {self.QUIET_S:g} s)",
            )
            loop.call_later(self.QUIET_S, self._check, loop)
        if now - self._last >= 0.5:  # a new turn of the event loop's retry
            self.retries += 1
        self._last = now

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.since is None:
            return
        quiet = self.clock() - self._last
        if quiet < self.QUIET_S:
            loop.call_later(self.QUIET_S - quiet, self._check, loop)
            return
        self.log.info("accept_resumed", paused_s=round(self._last - self.since + 1, 1), retries=self.retries)
        self.since = None


class Service:
    """All stages of serve, started and stopped together."""

    def __init__(self, config: Config, log=None, leadership: Leadership | None = None):
        self.config = config
        # Bound once: the lazy proxy would build a new logger for every record.
        self.log = log or logs.get_logger().bind()
        self.metrics = Metrics()
        self.ledger = AckedLedger()  # what was ACKed and not delivered, outside the journal
        self._naming: asyncio.Task | None = None
        self.journal_path = Path(config.journal.path)
        # A postgresql:// URL: a database that active-passive instances share;
        # this one runs only while it leads (`leadership`, see serve/ha.py).
        self.journal_in_db = is_url(config.journal.path)
        self.leadership = leadership
        if leadership is not None:
            fence = leadership
            self.journal = JournalThread(
                config.journal.path,
                opener=lambda location: open_journal(location, fence.instance, fence),
                holds=fence.holds,
                apart=False,  # one session to the database, checking the lease in each transaction
            )
        else:  # on_fault is set once the journal is open
            # SQLite: intake on a thread of its own, everything else on a second
            # connection (storage/writer.py); a database keeps one session.
            self.journal = JournalThread(
                config.journal.path if self.journal_in_db else self.journal_path, apart=not self.journal_in_db
            )
        self.lock = JournalLock(self.journal_path)
        self.journal_id = ""
        self.stop_event = asyncio.Event()
        self.journaled = asyncio.Event()
        self.processed = asyncio.Event()
        self.listener: Listener | None = None
        self.metrics_server: MetricsServer | None = None
        self.context: ContextStage | None = None
        self.http_server: HttpServer | None = None
        self.audits: list[Recorder] = []  # [audit] enabled: processing's recorder, and the HTTP endpoint's
        self._tasks: list[asyncio.Task] = []
        self.accept_pauses = AcceptPauses(self.log)
        self.stopping = False
        self.health = Health(
            self.journal if config.listener.enabled else None,
            None if self.journal_in_db else self.journal_path,  # a database has no folder here to look at
            config.listener.max_message_bytes,
            config.metrics.max_delivery_lag_s,
            accepting=lambda: not self.stopping,
        )

    async def start(self) -> None:
        self._check_open_files()
        asyncio.get_running_loop().set_exception_handler(self._loop_exception)
        if self.config.listener.enabled:
            await self._start_mllp()
        if self.config.http.enabled:
            await self._start_http()

    def _check_open_files(self) -> None:
        """Every allowed connection needs a file descriptor: raise the soft
        open-file limit to what the settings need, or refuse to start with
        one line when the hard limit is lower (else accept() fails at run time)."""
        cfg = self.config
        parts = [("[listener] max_connections", cfg.listener.max_connections if cfg.listener.enabled else 0)]
        parts.append(("[http] max_connections", cfg.http.max_connections if cfg.http.enabled else 0))
        needed = sum(n for _, n in parts) + FILES_RESERVED
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        if hard != resource.RLIM_INFINITY and hard < needed:
            named = " + ".join(f"{name} {n}" for name, n in parts if n)
            raise StartupError(
                f"{named} + {FILES_RESERVED} for the journal, downstream and metrics need {needed} open files, "
                f"but the limit is {soft} (hard limit {hard}): lower max_connections, or raise the limit "
                "(systemd: LimitNOFILE=)",
                EXIT_USAGE,
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        self.log.info("open_file_limit_raised", soft_was=soft, soft=needed, hard=hard)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's own errors. Out of file descriptors at accept(), asyncio
        pauses accepting for a second by itself: one line for the whole pause
        (AcceptPauses) instead of a traceback for each failed accept()."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.accept_pauses.failed(exc, loop)
            return
        loop.default_exception_handler(context)

    async def _start_http(self) -> None:
        """The [http] endpoint, on this event loop; it neither journals nor forwards."""
        http = self.config.http
        try:
            ssl_ctx = server_context(http.tls_cert, http.tls_key, http.tls_client_ca) if http.tls_cert else None
            # Its own connection to the store: the processing stage keeps its own on its own thread.
            context = open_context(self.config.context)
        except B12Error:  # TlsError, ContextError: their message and exit code are the ones to give
            await self._stop_mllp()
            raise
        try:
            audit = self._open_audit(HTTP)
        except B12Error:  # AuditError
            context.close()
            await self._stop_mllp()
            raise
        mllp = self.config.listener.enabled
        self.http_server = HttpServer(
            http,
            self.config.rule,
            self.log,
            self.metrics,
            ssl_ctx,
            health=self.health,
            queue_depth=self.journal.depth if mllp else None,
            context=context,
            audit=audit,
            alone=not mllp,
        )
        try:
            await self.http_server.start()
        except OSError as exc:
            context.close()
            await self._stop_mllp()
            raise StartupError(f"cannot listen on {http.host}:{http.port} (http): {exc.strerror or exc}") from None
        m = self.config.metrics
        if not mllp and m.port:  # HTTP alone: no journal to report on, the counters still count
            self.metrics_server = MetricsServer(self.metrics, m.host, m.port, self.health)
            try:
                await self.metrics_server.start()
            except OSError as exc:
                await self.http_server.stop(0)
                raise StartupError(f"cannot serve metrics on {m.host}:{m.port}: {exc.strerror or exc}") from None
        self.log.info(
            "http_listening",
            host=http.host,
            port=self.http_server.port,
            path=http.path,
            context=context.mode,
            tls=ssl_ctx is not None,
            mutual_tls=bool(http.tls_client_ca),
            metrics_port=self.metrics_server.port if self.metrics_server else None,
        )

    def _open_audit(self, source: str) -> Recorder | None:
        """[audit] enabled: a recorder of the decisions on children's B12
        results (its own connection, used on one worker thread)."""
        cfg = self.config
        if not cfg.audit.enabled:
            return None
        spec = audit_spec(cfg.audit, cfg.rule, cfg.context, source=source)
        recorder = open_recorder(spec, buffered=True, beside=self.audits[0] if self.audits else None)
        self.audits.append(recorder)
        return recorder

    async def _stop_mllp(self) -> None:
        if self.listener is not None:
            await self.listener.stop(0)
        if self.metrics_server is not None:
            await self.metrics_server.close()

    async def _start_mllp(self) -> None:
        cfg = self.config
        lis, ds = cfg.listener, cfg.downstream
        ssl_ctx = server_context(lis.tls_cert, lis.tls_key, lis.tls_client_ca) if lis.tls_cert else None  # TlsError
        transport = transport_for(ds)
        # The journal's lock first: a second serve on the same journal is told
        # so, whatever else the two share (the context store has a lock too).
        await self._open_journal()
        self.context = open_context(cfg.context)  # ContextError
        tell_earlier_derivation(self.context, self.log)
        audit = self._open_audit(SERVE)  # AuditError
        await self._check_new_store()
        intake = Intake(
            self.journal,
            cfg.journal,
            self.log,
            on_journaled=self.journaled.set,
            metrics=self.metrics,
            ledger=None if self.journal_in_db else self.ledger,
            enhanced_ack=lis.enhanced_ack,
        )
        self._loop = asyncio.get_running_loop()
        self.listener = Listener(lis, intake, self.log, self.metrics, ssl_ctx)
        try:
            await self.listener.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {lis.host}:{lis.port}: {exc.strerror or exc}") from None
        if cfg.metrics.port:
            self.metrics_server = MetricsServer(
                self.metrics,
                cfg.metrics.host,
                cfg.metrics.port,
                self.health,
                queue_depth=self.journal.depth,
            )
            try:
                await self.metrics_server.start()
            except OSError as exc:
                await self.listener.stop(0)
                raise StartupError(
                    f"cannot serve metrics on {cfg.metrics.host}:{cfg.metrics.port}: {exc.strerror or exc}"
                ) from None
        processor = Processor(
            self.journal, cfg.rule, self.metrics, self.log, self.journaled, self.processed, self.context, audit=audit
        )
        forwarder = Forwarder(
            self.journal, transport, ds, self.metrics, self.log, self.processed, on_settled=self.ledger.settled
        )
        self._tasks = [
            asyncio.create_task(self._supervise("processing", processor.run), name="processing"),
            asyncio.create_task(self._supervise("forwarder", forwarder.run), name="forwarder"),
            asyncio.create_task(self._prune(), name="prune"),
        ]
        self.log.info(
            "listening",
            host=lis.host,
            port=self.listener.port,
            tls=ssl_ctx is not None,
            mutual_tls=bool(lis.tls_client_ca),
            downstream=ds.url.split("://")[0],
            metrics_port=self.metrics_server.port if self.metrics_server else None,
        )

    async def _check_new_store(self) -> None:
        """A context store made empty at this start, beside a journal that holds
        messages of the look-back window, would let a comment miss their
        results: refused (and the empty store removed), with the way out."""
        store = self.context.store if self.context is not None else None
        if store is None or not store.new:
            return
        cx = self.config.context
        cutoff = time.time() - cx.lookback_days * 86400
        recent = await self.journal.call(lambda j: any(at >= cutoff for _, at, _ in j.raw_rows()))
        if recent:
            store.remove_new()
            raise ContextError(
                f"the context store {cx.store} is missing (or new), but the journal holds messages of the last "
                f"{cx.lookback_days:g} days: their results would be missing from every decision; make the store "
                "from the journal first with `b12comment context rebuild`"
            )

    async def _open_journal(self) -> None:
        """Take the journal's lock, check its marker, open it and check it:
        serve starts only on a journal it can write and trust."""
        if self.journal_in_db:  # the database is the guard: the leader's lease and its fenced writes
            try:
                self.journal_id = await self.journal.open_checked()
            except JournalError as exc:
                raise StartupError(f"{exc} (serve needs a journal it can write: [journal] path)") from None
            self.journal.on_fault = self._on_fault
            return
        path = self.journal_path
        try:
            self.lock.acquire()
            marker = check_before_open(path)
            try:
                self.journal_id = await self.journal.open_checked()
            except JournalCorrupt as exc:
                raise StartupError(
                    f"{exc}; serve will not run on it. Save what can still be read with "
                    f"`b12comment queue export DIR`, then move {path} aside"
                ) from None
            except JournalError as exc:
                raise StartupError(f"{exc} (serve needs a journal it can write: [journal] path)") from None
            check_after_open(path, self.journal_id, marker)
            write_marker(path, Marker(self.journal_id, None))
            self.journal.on_fault = self._on_fault
        except OSError as exc:
            raise StartupError(f"cannot write the journal marker beside {path}: {exc.strerror or exc}") from None

    def _on_fault(self, fault: JournalFault) -> None:
        """From the journal thread, once: the journal can no longer be trusted."""
        gone = isinstance(fault, JournalGone)
        self.log.error(
            "journal_fault",
            error=str(fault),
            consequence="every new message is answered AE until serve is restarted on a sound journal"
            + ("; messages already journaled are still delivered from the open file" if gone else ""),
        )
        loop = getattr(self, "_loop", None)
        if isinstance(fault, JournalCorrupt) and loop is not None:  # what it held may be lost: name it
            loop.call_soon_threadsafe(self._name_unreadable)

    def _name_unreadable(self) -> None:
        if self._naming is None:
            self._naming = asyncio.ensure_future(self._name_unreadable_now(self.ledger.undelivered()))

    async def _name_unreadable_now(self, kept: dict[int, tuple[str, str, float]]) -> None:
        """One error line and a file beside the journal: every message ACKed and
        not delivered that the damaged journal can no longer give back."""
        try:
            found = await asyncio.to_thread(name_unreadable, self.journal_path, kept)
        except OSError as exc:
            self.log.error("acked_not_delivered_unreadable", error=str(exc), count=len(kept))
            return
        if found is None and not self.ledger.forgotten:
            return
        named, path = found if found is not None else ([], None)
        self.log.error(
            "acked_not_delivered_unreadable",
            count=len(named),
            messages=named,
            file=str(path) if path else None,
            not_named=self.ledger.forgotten,
            consequence="ACKed AA, not delivered, no longer in the journal: ask their senders to send them again",
        )

    async def _supervise(self, name: str, run) -> None:
        """Keep a stage running: a bug in one must not silently stop the flow."""
        while not self.stop_event.is_set():
            try:
                await run(self.stop_event)
            except Exception as exc:
                self.log.error("stage_failed", stage=name, error=type(exc).__name__, restart_in_s=1.0)
                await wait_event(self.stop_event, 1.0)

    async def _prune(self) -> None:
        # Not at once: a prune is a write, and writes share the intake's
        # connection, so one that waits for another process's lock (a
        # backup, a queue command) would hold up the first messages too.
        await wait_event(self.stop_event, PRUNE_FIRST_S)
        while not self.stop_event.is_set():
            try:
                removed = await self.journal.write(lambda j: j.prune(self.config.journal.retention_days))
                if removed:
                    self.log.info("journal_pruned", rows=removed)
            except JournalError as exc:
                unavailable(self.log, "prune", exc)
            await wait_event(self.stop_event, PRUNE_EVERY_S)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop every stage; connections get `grace_s` to finish (0 after a
        lost lease: nothing more is ACKed from here)."""
        self.stopping = True
        self.log.info("stopping")
        if self.http_server is not None:
            await self.http_server.stop(grace_s=grace_s)
        if self.listener is not None:
            await self.listener.stop(grace_s=grace_s)
        self.stop_event.set()
        self.journaled.set()
        self.processed.set()
        if self._tasks:
            # A delivery in flight is abandoned at once (it stays in the journal,
            # sent again after the restart); a batch being processed finishes.
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TASKS_S)
            for task in pending:
                task.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.context is not None:
            self.context.close()
        for recorder in self.audits:
            try:
                recorder.close()
            except B12Error as exc:
                self.log.error("audit_unavailable", stage="stop", error=str(exc))
        if self._naming is not None:
            await asyncio.wait({self._naming}, timeout=STOP_TASKS_S)
        await self._settle_journal()
        await self.journal.close()
        self.lock.release()
        self.log.info("stopped")

    async def _settle_journal(self) -> None:
        """Say in the marker how many messages the journal holds undelivered
        (the next start relies on it). A deleted journal's undelivered
        messages are saved as files beside it first: they are nowhere else."""
        fault = self.journal.fault
        if self.journal_in_db:
            return  # no marker: nothing of the journal is on this host
        if not self.journal_id or isinstance(fault, JournalCorrupt):
            return  # the marker keeps saying 'not stopped cleanly'
        try:
            if isinstance(fault, JournalGone):
                salvage = await self.journal.call(lambda j: list(j.salvage_undelivered()))
                if salvage:
                    folder = self.journal_path.with_name(
                        f"{self.journal_path.name}.recovered-{time.strftime('%Y%m%dT%H%M%S')}"
                    )
                    written, unreadable = export_messages(salvage, folder)
                    self.log.error(
                        "journal_recovered",
                        folder=str(folder),
                        messages=written,
                        unreadable=unreadable,
                        consequence="these messages were ACKed but not delivered: send them on, then remove "
                        f"{marker_path(self.journal_path)} to start with a new journal",
                    )
                    write_marker(self.journal_path, Marker(self.journal_id, len(salvage)))
                    return
                write_marker(self.journal_path, Marker(self.journal_id, 0))
                return
            write_marker(self.journal_path, Marker(self.journal_id, await self.journal.depth()))
        except (JournalError, OSError) as exc:
            self.log.error("journal_marker_not_written", error=str(exc))


async def serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stop_requested():  # SIGTERM or SIGINT came while serve was still starting up
        return EXIT_OK
    if is_url(config.journal.path):
        from b12comment.serve.ha import serve_ha

        return await serve_ha(config, stop)
    service = Service(config)
    try:
        await service.start()
    except B12Error:
        await service.journal.close()
        service.lock.release()
        raise
    await stop.wait()
    await service.stop()
    return EXIT_IO if service.journal.fault is not None else EXIT_OK


def run_serve(config: Config) -> int:
    """Entry point for `b12comment serve`: returns the exit code."""
    lg = config.logging
    logs.configure(lg.level, lg.format, lg.patient_data)
    return_large_blocks()  # a large message's memory is given back once it is done with
    try:
        return asyncio.run(serve(config))
    except B12Error as exc:  # StartupError, TlsError, GuardError, ContextError, JournalError
        print(f"b12comment: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        # The event loop gave SIGTERM and SIGINT back to Python's defaults when it
        # closed: one arriving while the process ends must not turn its exit code into 143.
        catch_again()
