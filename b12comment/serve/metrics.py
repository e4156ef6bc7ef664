"""Counters and histograms in memory, served as Prometheus text over a tiny
asyncio HTTP endpoint (`/healthz`, `/metrics`). Standard library only."""

from __future__ import annotations

import asyncio
from collections import defaultdict

COUNTERS = {
    "b12comment_messages_received_total": "Frames received from senders.",
    "b12comment_acks_sent_total": "ACKs sent to senders, by MSA-1 code.",
    "b12comment_commented_total": "Messages that got the B12 comment.",
    "b12comment_forwarded_total": "Messages delivered downstream.",
    "b12comment_retries_total": "Failed delivery attempts that will be retried.",
    "b12comment_dead_lettered_total": "Messages dead-lettered (rejected downstream or out of attempts).",
    "b12comment_comments_contradicted_total": "Comments a later result of the same patient contradicts (to review).",
    "b12comment_http_requests_total": "HTTP requests answered, by endpoint and status code.",
    "b12comment_http_decisions_total": "Messages decided through HTTP, by decision (commented, unchanged, rejected).",
}
GAUGES = {
    "b12comment_held_messages": "Messages held now, waiting for the rest of their requisition ([context] hold_s).",
    "b12comment_longest_hold_seconds": "The longest a message has been held since the service started.",
}
HISTOGRAMS = {
    "b12comment_processing_seconds": "Time spent in process() per message.",
    "b12comment_ack_seconds": "Time from a complete frame to its ACK written.",
    "b12comment_http_request_seconds": "Time from a complete HTTP request to its response written, by endpoint.",
}
# Counters and histograms that only exist with labels (none at zero before the first).
LABELLED = {"b12comment_acks_sent_total", "b12comment_http_requests_total", "b12comment_http_decisions_total"}
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    def __init__(self, buckets=BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class Metrics:
    """What the service counts. Used from the event loop only."""

    def __init__(self):
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.histograms: dict[tuple[str, tuple], Histogram] = {
            (name, ()): Histogram() for name in HISTOGRAMS if name != "b12comment_http_request_seconds"
        }
        for name in COUNTERS:
            if name not in LABELLED:
                self.counters[(name, ())] = 0.0
        self.gauges: dict[str, float] = dict.fromkeys(GAUGES, 0.0)

    def set(self, name: str, value: float) -> None:
        if name not in GAUGES:
            raise KeyError(name)
        self.gauges[name] = value

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(name)
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        if name not in HISTOGRAMS:
            raise KeyError(name)
        key = (name, tuple(sorted(labels.items())))
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram()
        h.observe(seconds)

    def histogram(self, name: str, **labels: str) -> Histogram | None:
        return self.histograms.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, queue_depth: int | None = None) -> str:
        lines = []
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for (n, labels), value in sorted(self.counters.items()):
                if n == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        lines += [
            "# HELP b12comment_queue_depth Messages journaled and not yet delivered or dead.",
            "# TYPE b12comment_queue_depth gauge",
        ]
        if queue_depth is not None:
            lines.append(f"b12comment_queue_depth {queue_depth}")
        for name, help_text in GAUGES.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {self.gauges[name]:g}"]
        for name, help_text in HISTOGRAMS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for (n, labels), h in sorted(self.histograms.items(), key=lambda item: item[0]):
                if n != name:
                    continue
                for bound, count in zip(h.buckets, h.counts, strict=False):
                    lines.append(f"{name}_bucket{_labels(labels + (('le', f'{bound:g}'),))} {count}")
                lines += [
                    f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {h.count}",
                    f"{name}_sum{_labels(labels)} {h.total:.6f}",
                    f"{name}_count{_labels(labels)} {h.count}",
                ]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


class MetricsServer:
    """GET /healthz (200 when the journal answers, else 503) and GET /metrics."""

    def __init__(self, metrics: Metrics, host: str, port: int, queue_depth, healthy):
        self.metrics, self.host, self.port = metrics, host, port
        self._queue_depth, self._healthy = queue_depth, healthy  # async callables
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            for _ in range(100):  # headers, until the blank line
                line = await asyncio.wait_for(reader.readline(), 10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] != "GET":
                status, body = "405 Method Not Allowed", "GET only\n"
            elif path == "/healthz":
                ok = await self._healthy()
                status, body = ("200 OK", "ok\n") if ok else ("503 Service Unavailable", "journal unavailable\n")
            elif path == "/metrics":
                try:
                    depth = await self._queue_depth()
                except Exception:  # the journal may be unavailable; the counters still count
                    depth = None
                status, body = "200 OK", self.metrics.render(depth)
            else:
                status, body = "404 Not Found", "try /healthz or /metrics\n"
            data = body.encode("utf-8")
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode("ascii")
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
