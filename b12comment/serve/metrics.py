"""What the service counts, exposed in Prometheus text by prometheus_client
(its own registry per service, with the process_* metrics), and the small
asyncio HTTP server of the metrics port: `/livez`, `/readyz`, `/healthz`
(health.py) and `/metrics`, its HTTP read and written by h11."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import h11
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from b12comment import __version__
from b12comment.core.decision import RULE_VERSION
from b12comment.serve.health import Health

# No `_created` series beside each counter: they double the output and no alert uses them.
prometheus_client.disable_created_metrics()

# name -> (help, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "b12comment_messages_received_total": ("Frames received from senders.", ()),
    "b12comment_acks_sent_total": ("ACKs sent to senders, by MSA-1 code.", ("code",)),
    "b12comment_invalid_frames_total": ("Frames answered AR: not an HL7 message, or over the size limit.", ()),
    "b12comment_control_ids_reused_total": (
        "Messages journaled under a control ID already used within retransmit_window_s by other bytes.",
        (),
    ),
    "b12comment_commented_total": ("Messages that got the B12 comment.", ()),
    "b12comment_decisions_total": (
        "Messages decided by serve's processing stage, by decision (commented, unchanged).",
        ("decision",),
    ),
    "b12comment_decision_reasons_total": (
        "Reasons given by serve's processing stage for messages left unchanged, one count per reason.",
        ("reason",),
    ),
    "b12comment_forwarded_total": ("Messages delivered downstream.", ()),
    "b12comment_retries_total": ("Failed delivery attempts that will be retried.", ()),
    "b12comment_dead_lettered_total": ("Messages dead-lettered (rejected downstream or out of attempts).", ()),
    "b12comment_comments_contradicted_total": (
        "Comments a later result of the same patient contradicts (to review).",
        (),
    ),
    "b12comment_http_requests_total": ("HTTP requests answered, by endpoint and status code.", ("endpoint", "status")),
    "b12comment_http_decisions_total": (
        "Messages decided through HTTP, by decision (commented, unchanged, rejected).",
        ("decision",),
    ),
}
GAUGES: dict[str, str] = {
    "b12comment_held_messages": "Messages held now, waiting for the rest of their requisition ([context] hold_s).",
    "b12comment_longest_hold_seconds": "The longest a message has been held since the service started.",
    "b12comment_downstream_up": "1 when the last delivery attempt downstream succeeded, 0 when it failed.",
    "b12comment_last_delivery_timestamp_seconds": "Unix time of the last message delivered downstream (0: none yet).",
    "b12comment_context_store_up": "1 when the context store answered its last read or write, 0 when it failed.",
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "b12comment_processing_seconds": ("Time spent in process() per message.", ()),
    "b12comment_ack_seconds": ("Time from a complete frame to its ACK written.", ()),
    "b12comment_http_request_seconds": (
        "Time from a complete HTTP request to its response written, by endpoint.",
        ("endpoint",),
    ),
}
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class _ScrapeTime(Collector):
    """Values read at each scrape (from the journal), left out while unknown."""

    def __init__(self):
        self.queue_depth: int | None = None
        self.oldest_undelivered_s: float | None = None
        self.ready: bool | None = None

    def collect(self):
        ready = GaugeMetricFamily(
            "b12comment_ready",
            "1 when /readyz answers 200: accepting, and the journal can be written; 0 when not.",
        )
        if self.ready is not None:
            ready.add_metric([], 1 if self.ready else 0)
        yield ready
        depth = GaugeMetricFamily("b12comment_queue_depth", "Messages journaled and not yet delivered or dead.")
        if self.queue_depth is not None:
            depth.add_metric([], self.queue_depth)
        yield depth
        oldest = GaugeMetricFamily(
            "b12comment_oldest_undelivered_seconds",
            "Age of the oldest message journaled and not yet delivered or dead (0: none).",
        )
        if self.oldest_undelivered_s is not None:
            oldest.add_metric([], self.oldest_undelivered_s)
        yield oldest


class Metrics:
    """What the service counts. Used from the event loop only."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            name: Counter(name.removesuffix("_total"), help_text, labels, registry=self.registry)
            for name, (help_text, labels) in COUNTERS.items()
        }
        self._gauges = {name: Gauge(name, help_text, registry=self.registry) for name, help_text in GAUGES.items()}
        self._gauges["b12comment_downstream_up"].set(1)
        self._gauges["b12comment_context_store_up"].set(1)
        self._histograms = {
            name: Histogram(name, help_text, labels, buckets=BUCKETS, registry=self.registry)
            for name, (help_text, labels) in HISTOGRAMS.items()
        }
        info = Gauge(
            "b12comment_build_info",
            "The product's version and the rule version this build decides by (always 1).",
            ("version", "rule_version"),
            registry=self.registry,
        )
        info.labels(version=__version__, rule_version=RULE_VERSION).set(1)
        self._scrape = _ScrapeTime()
        self.registry.register(self._scrape)
        ProcessCollector(registry=self.registry)

    def set(self, name: str, value: float) -> None:
        self._gauges[name].set(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        histogram = self._histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def render(
        self, queue_depth: int | None = None, oldest_undelivered_s: float | None = None, ready: bool | None = None
    ) -> str:
        self._scrape.queue_depth = queue_depth
        self._scrape.oldest_undelivered_s = oldest_undelivered_s
        self._scrape.ready = ready
        return prometheus_client.generate_latest(self.registry).decode("utf-8")


class MetricsServer:
    """The metrics port: GET /livez, /readyz, /healthz and /metrics, one request a connection."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        health: Health,
        queue_depth: Callable[[], Awaitable[int]] | None = None,
    ):
        self.metrics, self.host, self.port = metrics, host, port
        self.health, self._queue_depth = health, queue_depth
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def scrape(self) -> str:
        depth = None
        if self._queue_depth is not None:
            with contextlib.suppress(Exception):  # the journal may be unavailable; the counters still count
                depth = await asyncio.wait_for(self._queue_depth(), 2.0)
        oldest = await self.health.oldest_age() if depth is not None else None
        return self.metrics.render(depth, oldest, not await self.health.ready())

    async def answer(self, method: str, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of one request."""
        if path not in ("/livez", "/readyz", "/healthz", "/metrics"):
            return 404, "text/plain; charset=utf-8", "try /livez, /readyz, /healthz or /metrics\n"
        if method != "GET":
            return 405, "text/plain; charset=utf-8", f"{path} takes GET\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE, await self.scrape()
        status, text = await self.health.answer(path)
        return status, "text/plain; charset=utf-8", text

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        try:
            event = await asyncio.wait_for(_next_request(conn, reader), 10)
            if isinstance(event, h11.Request):
                path = event.target.split(b"?", 1)[0].decode("ascii", "replace")
                status, content_type, text = await self.answer(event.method.decode("ascii", "replace"), path)
            else:
                status, content_type, text = 400, "text/plain; charset=utf-8", "bad HTTP request\n"
            body = text.encode("utf-8")
            headers = [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
            if status == 405:
                headers.append(("Allow", "GET"))
            with contextlib.suppress(h11.LocalProtocolError):
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader):
    """The request (its head), or None when the client sent nothing readable."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            conn.receive_data(data)
            if not data:
                with contextlib.suppress(h11.RemoteProtocolError):
                    event = conn.next_event()
                    if isinstance(event, h11.Request):
                        return event
                return None
            continue
        return event if isinstance(event, h11.Request) else None
