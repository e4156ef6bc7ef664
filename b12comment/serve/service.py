"""`b12comment serve`: listener -> journal -> processing -> forwarder.

The stages meet only in the journal, so each can stop and restart on its own:

- the listener journals each frame and ACKs it (see listener.py);
- the processing stage takes journaled rows in id order, runs the core's
  `process()` on a worker thread and records the processed bytes and the
  decision (one "decision" log record per message). An error there forwards
  the original bytes: results always flow. After a crash, rows still in
  state `received` are processed at start: `process()` is pure, so the redo
  gives the same bytes;
- the forwarder delivers processed rows in id order (see forwarder.py);
- a pruning task deletes delivered rows after `[journal] retention_days`.

SIGTERM and SIGINT stop accepting, let open connections finish the frames
they have read, let the forwarder finish its current delivery, and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from b12comment import logs
from b12comment.config import Config
from b12comment.core.decision import INTERNAL_ERROR
from b12comment.core.engine import process
from b12comment.serve.aio import wait_event
from b12comment.serve.forwarder import Forwarder, transport_for
from b12comment.serve.journal import JournalError, Processed
from b12comment.serve.journal_writer import JournalThread
from b12comment.serve.listener import Intake, Listener
from b12comment.serve.metrics import Metrics, MetricsServer
from b12comment.serve.tls import TlsError, server_context

EXIT_OK, EXIT_IO, EXIT_USAGE = 0, 1, 2
PRUNE_EVERY_S = 3600.0
LINGER_S = 0.05  # how long a new message may wait for others to join its processing batch


class StartupError(Exception):
    """serve cannot start; the message is the one line to print."""

    def __init__(self, message: str, exit_code: int = EXIT_IO):
        super().__init__(message)
        self.exit_code = exit_code


class Processor:
    """Runs process() on every journaled message, in id order.

    Rows are taken from the journal in batches; a batch is processed in one
    hop to the worker thread (bounded by `batch_s` of work) and recorded in
    one journal transaction. Once the queue is drained, the next batch
    starts `linger_s` after a new message arrives, so that at a high rate a
    batch holds many messages (up to `linger_s`, 50 ms, more on the way
    downstream, instead of thread hops and commits per message competing
    with the listener for the two cores).
    """

    def __init__(
        self,
        journal: JournalThread,
        rule,
        metrics: Metrics,
        log,
        wake: asyncio.Event,
        processed: asyncio.Event,
        poll_s: float = 1.0,
        batch: int = 200,
        batch_s: float = 0.05,
        linger_s: float = LINGER_S,
    ):
        self.journal, self.rule, self.metrics, self.log = journal, rule, metrics, log
        self.wake, self.processed, self.poll_s = wake, processed, poll_s
        self.batch, self.batch_s, self.linger_s = batch, batch_s, linger_s

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process")
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    rows = await self.journal.unprocessed(self.batch)
                except JournalError as exc:
                    self.log.error("journal_unavailable", stage="processing", error=str(exc))
                    await wait_event(stop, self.poll_s)
                    continue
                drained = len(rows) < self.batch
                while rows and not stop.is_set():
                    done = await loop.run_in_executor(self._executor, _process_rows, rows, self.rule, self.batch_s)
                    rows = rows[len(done) :]
                    try:
                        results = [Processed(r.id, out, f["commented"], f["reasons"]) for r, out, f, _ in done]
                        await self.journal.mark_processed_many(results)
                    except JournalError as exc:
                        self.log.error("journal_unavailable", stage="processing", error=str(exc))
                        await wait_event(stop, self.poll_s)
                        break
                    for row, _out, fields, elapsed in done:
                        self.metrics.observe("b12comment_processing_seconds", elapsed)
                        if fields["commented"]:
                            self.metrics.inc("b12comment_commented_total")
                        fields = {"control_id": row.control_id, "message_type": row.message_type, **fields}
                        self.log.info(
                            "decision",
                            journal_id=row.id,
                            peer=row.peer,
                            processing_ms=round(elapsed * 1000, 3),
                            **fields,
                        )
                    self.processed.set()
                if drained:
                    await wait_event(self.wake, self.poll_s)
                    await wait_event(stop, self.linger_s)
        finally:
            self._executor.shutdown(wait=False)


def _process_rows(rows, rule, budget_s: float) -> list:
    """(row, output, log fields, seconds) for the first rows, at least one,
    until `budget_s` of work is done."""
    done = []
    clock = time.perf_counter
    first = clock()
    for row in rows:
        started = clock()
        out, fields = _safe_process(row.raw, rule)
        finished = clock()
        done.append((row, out, fields, finished - started))
        if finished - first >= budget_s:
            break
    return done


def _safe_process(raw: bytes, rule) -> tuple[bytes, dict]:
    """process(), with the promise kept even if the core broke its own: on
    any failure, and whenever there is no comment, the original bytes go on."""
    try:
        out, decision = process(raw, rule)
        fields = decision.log_fields()
        if not decision.commented and out != raw:
            out = raw
        return out, fields
    except Exception as exc:
        return raw, {"commented": False, "reasons": [INTERNAL_ERROR], "error": type(exc).__name__}


class Service:
    """All stages of serve, started and stopped together."""

    def __init__(self, config: Config, log=None):
        self.config = config
        # Bound once: the lazy proxy would build a new logger for every record.
        self.log = log or logs.get_logger().bind()
        self.metrics = Metrics()
        self.journal = JournalThread(config.journal.path)
        self.stop_event = asyncio.Event()
        self.journaled = asyncio.Event()
        self.processed = asyncio.Event()
        self.listener: Listener | None = None
        self.metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        cfg = self.config
        lis, ds = cfg.listener, cfg.downstream
        try:
            ssl_ctx = server_context(lis.tls_cert, lis.tls_key, lis.tls_client_ca) if lis.tls_cert else None
            transport = transport_for(ds)
        except TlsError as exc:
            raise StartupError(str(exc), EXIT_USAGE) from None
        try:
            await self.journal.depth()
        except JournalError as exc:
            self.log.error(
                "journal_unavailable",
                stage="start",
                error=str(exc),
                consequence="messages are answered AE until the journal can be written",
            )
        intake = Intake(self.journal, cfg.journal, self.log, on_journaled=self.journaled.set)
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
                queue_depth=self.journal.depth,
                healthy=self.journal.available,
            )
            try:
                await self.metrics_server.start()
            except OSError as exc:
                await self.listener.stop(0)
                raise StartupError(
                    f"cannot serve metrics on {cfg.metrics.host}:{cfg.metrics.port}: {exc.strerror or exc}"
                ) from None
        processor = Processor(self.journal, cfg.rule, self.metrics, self.log, self.journaled, self.processed)
        forwarder = Forwarder(self.journal, transport, ds, self.metrics, self.log, self.processed)
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

    async def _supervise(self, name: str, run) -> None:
        """Keep a stage running: a bug in one must not silently stop the flow."""
        while not self.stop_event.is_set():
            try:
                await run(self.stop_event)
            except Exception as exc:
                self.log.error("stage_failed", stage=name, error=type(exc).__name__, restart_in_s=1.0)
                await wait_event(self.stop_event, 1.0)

    async def _prune(self) -> None:
        while not self.stop_event.is_set():
            try:
                removed = await self.journal.prune(self.config.journal.retention_days)
                if removed:
                    self.log.info("journal_pruned", rows=removed)
            except JournalError as exc:
                self.log.error("journal_unavailable", stage="prune", error=str(exc))
            await wait_event(self.stop_event, PRUNE_EVERY_S)

    async def stop(self) -> None:
        self.log.info("stopping")
        if self.listener is not None:
            await self.listener.stop(grace_s=30.0)
        self.stop_event.set()
        self.journaled.set()
        self.processed.set()
        if self._tasks:
            # A delivery in flight may take connect + send + ACK, each up to timeout_s.
            _, pending = await asyncio.wait(self._tasks, timeout=3 * self.config.downstream.timeout_s + 5)
            for task in pending:
                task.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self.journal.close()
        self.log.info("stopped")


async def serve(config: Config) -> int:
    service = Service(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except StartupError:
        await service.journal.close()
        raise
    await stop.wait()
    await service.stop()
    return EXIT_OK


def run_serve(config: Config) -> int:
    """Entry point for `b12comment serve`: returns the exit code."""
    lg = config.logging
    logs.configure(lg.level, lg.format, lg.patient_data)
    try:
        return asyncio.run(serve(config))
    except StartupError as exc:
        print(f"b12comment: {exc}", file=sys.stderr)
        return exc.exit_code
