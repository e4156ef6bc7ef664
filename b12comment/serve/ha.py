"""`serve` on a PostgreSQL journal: active-passive instances.

Every instance runs the same configuration with its own `[ha] instance`.
One leads: it runs the whole service (MLLP and HTTP listeners, processing,
forwarding). The others stand by: they answer `/readyz` with 503
"standby" on the metrics port, listen on nothing else, and poll the lease
(storage/postgres/lease.py). When the leader's lease is lost (its process
or host died, it was stopped, its connection went), a standby takes over
within `[ha] takeover_s` and goes on from the journal: the messages the old
leader ACKed and had not delivered are processed and forwarded in journal
order.

A leader that loses its lease stops at once (no grace for open
connections: nothing more is ACKed from here) and stands by again.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time

from b12comment import logs
from b12comment.config import Config
from b12comment.errors import EXIT_OK, B12Error
from b12comment.serve.health import Health
from b12comment.serve.metrics import Metrics, MetricsServer
from b12comment.storage.postgres.connect import name_process
from b12comment.storage.postgres.lease import Leadership


def instance_name(config: Config) -> str:
    return config.ha.instance or socket.gethostname()


def _tell(loop: asyncio.AbstractEventLoop, lost: asyncio.Event, why: str) -> None:
    """From the lease's thread: the lease is lost."""
    loop.call_soon_threadsafe(lost.set)


async def serve_ha(config: Config, stop: asyncio.Event) -> int:
    from b12comment.serve.service import Service

    log = logs.get_logger().bind()
    loop = asyncio.get_running_loop()
    instance = instance_name(config)
    name_process(instance)
    # (psycopg missing: a JournalError, one line and exit 1, as any journal that cannot be opened)
    lead = Leadership(config.journal.path, instance, config.ha.lease_s, config.ha.takeover_s, log)
    waiting = threading.Event()  # set: stop waiting to lead
    stop_task = asyncio.create_task(stop.wait())
    stop_task.add_done_callback(lambda _: waiting.set())
    try:
        while not stop.is_set():
            standby = await _standby_server(config, log)
            log.info("standby", instance=instance, takeover_s=config.ha.takeover_s)
            started = time.monotonic()
            try:
                leading = await asyncio.to_thread(lead.wait_to_lead, waiting)
            finally:
                if standby is not None:
                    await standby.close()
            if not leading:
                break
            lost = asyncio.Event()
            lead.on_lost = functools.partial(_tell, loop, lost)
            lead.start_renewing()
            service = Service(config, log, leadership=lead)
            try:
                await service.start()
            except B12Error:  # (StartupError, ContextError, ...: one line, the exit code it carries)
                await service.journal.close()
                lead.step_down()
                raise
            log.warning(
                "leader", instance=instance, epoch=lead.epoch, standby_for_s=round(time.monotonic() - started, 3)
            )
            lost_task = asyncio.create_task(lost.wait())
            await asyncio.wait({stop_task, lost_task}, return_when=asyncio.FIRST_COMPLETED)
            lost_task.cancel()
            await service.stop(grace_s=30.0 if not lost.is_set() else 0.0)
            lead.step_down()
            if lost.is_set():
                log.error("stepped_down", instance=instance, consequence="standing by; another instance leads")
    finally:
        stop_task.cancel()
        lead.close()
    return EXIT_OK


async def _standby_server(config: Config, log) -> MetricsServer | None:
    """The metrics port while standing by: /readyz 503 "not ready: standby", /livez 200."""
    m = config.metrics
    if not m.port:
        return None
    health = Health()
    health.add_ready_check(_standby)
    server = MetricsServer(Metrics(), m.host, m.port, health)
    last: OSError | None = None
    for _ in range(50):  # the port may still be closing after a step-down
        try:
            await server.start()
            return server
        except OSError as exc:
            last = exc
            await asyncio.sleep(0.1)
    log.error("standby_metrics_unavailable", host=m.host, port=m.port, error=str(last))
    return None


async def _standby() -> str:
    return "standby"
