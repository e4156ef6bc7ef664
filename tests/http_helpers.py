"""The [http] endpoint in this process, on a real socket and its own event
loop thread, for tests that call it with the standard library's http.client."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import ssl
import threading

from b12comment.config import HttpConfig
from b12comment.core.rule_config import RuleConfig
from b12comment.serve.http import HttpServer
from b12comment.serve.metrics import Metrics
from b12comment.wire.tls import server_context


class RecordingLog:
    """A logger that keeps (event, fields) records; the service binds structlog the same way."""

    def __init__(self):
        self.records: list[dict] = []

    def _log(self, event: str, **fields) -> None:
        self.records.append(dict(fields, event=event))

    info = warning = error = debug = _log

    def events(self, event: str) -> list[dict]:
        return [r for r in list(self.records) if r["event"] == event]


class Endpoint:
    """HttpServer(cfg) serving on 127.0.0.1 from a thread; `with Endpoint(...) as ep:`."""

    def __init__(self, rule: RuleConfig | None = None, server_cls=HttpServer, context=None, alone=False, **cfg):
        cfg.setdefault("port", 0)
        self.cfg = dataclasses.replace(HttpConfig(enabled=True), **cfg)
        self.rule = rule or RuleConfig()
        self.server_cls = server_cls
        self.context = context  # a ContextStage (serve.processing.open_context), or None
        self.alone = alone  # the server alone on its loop (serve without the MLLP listener)
        self.log = RecordingLog()
        self.metrics = Metrics()
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Endpoint:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the HTTP endpoint did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        c = self.cfg
        ctx = server_context(c.tls_cert, c.tls_key, c.tls_client_ca) if c.tls_cert else None
        extra = {"alone": True} if self.alone else {}
        self.server = self.server_cls(c, self.rule, self.log, self.metrics, ctx, context=self.context, **extra)
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = self.server.port
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(grace_s=5.0)

    def __exit__(self, *exc) -> None:
        if self._error is None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the HTTP endpoint did not stop"

    def connection(self, timeout: float = 30.0, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if context is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@dataclasses.dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


def post(conn: http.client.HTTPConnection, body: bytes, content_type: str | None = "application/hl7-v2", path="/hl7"):
    headers = {"Content-Type": content_type} if content_type is not None else {}
    conn.request("POST", path, body=body, headers=headers)
    return read(conn)


def read(conn: http.client.HTTPConnection) -> Answer:
    response = conn.getresponse()
    body = response.read()
    return Answer(response.status, body, {k.lower(): v for k, v in response.getheaders()})
