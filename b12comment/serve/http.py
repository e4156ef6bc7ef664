"""HL7 over HTTP: `POST` a message, get it back commented where due.

For an interface engine (Mirth Connect / Open Integration Engine, Rhapsody,
InterSystems, ...) that keeps its own queueing and wants the comment as one
step of a channel. The convention is HAPI's "HL7 over HTTP" specification:

- `POST <path>` with `Content-Type: application/hl7-v2` (also
  `application/hl7-v2+er7`, `x-application/hl7-v2+er7`, `text/plain`) and
  a `charset`. The answer to every HL7 outcome is `200` with the processed
  message (byte for byte the request body, plus the NTE where due) in the
  request's content type and charset; the decision is in the headers
  `X-B12comment-Decision` (`commented`, `unchanged`, or `rejected` for a body
  that is no HL7 message: that one gets an HL7 ACK `AR` with an ERR segment),
  `X-B12comment-Reasons`, `X-B12comment-Rule`, `X-B12comment-Messages` and
  `X-B12comment-Commented` (of a batch: commented when at least one message
  was, how many were, and the reasons of those left unchanged).
- Non-2xx only for transport problems, each with a one-line text/plain
  reason: 400 (no body, bad HTTP), 403 (peer not allowed), 404, 405, 408 (the
  request did not arrive within `request_timeout_s`), 413 (body over
  `max_body_bytes`), 415 (content type or charset), 503 (too many
  connections).
- The charset: the request's `charset` parameter, else MSH-18, else
  ISO-8859-1 (the specification says MSH-18 is ignored, but real engines
  send ISO-8859-1 messages without saying so).
- `GET /healthz` and `GET /metrics` as on the metrics port.

The engine keeps the message: nothing here is journaled or forwarded, and no
request is ever held. The HTTP protocol itself is h11's (a sans-I/O HTTP/1.1
state machine); this module only moves bytes between it and asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import h11

from b12comment.audit.recorder import Recorder
from b12comment.config import STATUS_PATHS, HttpConfig
from b12comment.core import charset
from b12comment.core.chain import Outcome, decide
from b12comment.core.decision import MALFORMED, RULE_VERSION, Decision
from b12comment.core.rule_config import RuleConfig
from b12comment.core.screen import has_b12_code
from b12comment.core.segments import Malformed, read_header
from b12comment.serve.health import Health
from b12comment.serve.metrics import CONTENT_TYPE, Metrics
from b12comment.serve.peers import PeerFilter
from b12comment.serve.processing import ContextStage
from b12comment.wire.ack import REJECT, SEGMENT_SEQUENCE_ERROR, AckError, ack_id, build_ack, now_dtm
from b12comment.wire.split import Piece, split_messages

HL7_TYPES = frozenset({"application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7", "text/plain"})
FALLBACK_CODEC = "iso8859-1"  # no charset parameter and no MSH-18
_BATCH_START = re.compile(rb"[\xef\xbb\xbf \t\r\n\x00]*(FHS|BHS)")  # as replay's inputs recognise one
READ_SIZE = 65536
AUDIT_PURGE_EVERY_S = 3600.0  # the audit's rows past [audit] retention_days are deleted this often
MAX_HEAD_BYTES = 16384  # request line and headers (h11 answers 431 beyond)
LINGER_S, LINGER_BYTES = 2.0, 8 * 1024 * 1024  # reading an unread body after the answer, before closing
LINGER_REFUSED_S = 0.5  # ... and the request of a connection refused with 503


@dataclass
class Reply:
    """One HTTP response, and what the request log record says about it."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    fields: dict | None = None  # for the log record: no patient data


def _text(status: int, line: str, close: bool = False, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, (line + "\n").encode("utf-8"), headers=headers, close=close, fields={"reason": line})


class HttpServer:
    """The asyncio HTTP server of the `[http]` endpoint."""

    def __init__(
        self,
        cfg: HttpConfig,
        rule: RuleConfig,
        log,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
        health: Health | None = None,
        queue_depth: Callable[[], Awaitable[int]] | None = None,
        context: ContextStage | None = None,
        audit: Recorder | None = None,
        alone: bool = False,
    ):
        self.cfg, self.rule, self.log, self.metrics = cfg, rule, log, metrics
        self.audit = audit  # [audit] enabled: used on the worker thread only
        self._audit_purged = 0.0
        self.ssl_context = ssl_context
        self.peers = PeerFilter(cfg.allowed_peers)
        self.port = cfg.port
        self.health = health or Health(accepting=lambda: not self._stop.is_set())
        self._queue_depth = queue_depth
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._receiving: set[asyncio.Task] = set()  # connections waiting for bytes of a request
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-process")
        self.context = context  # its own store connection: used by one thread at a time (see _decide_waiting)
        # The only server on its event loop (no MLLP listener beside it): a
        # request that waits alone for the store is decided on the loop.
        self.alone = alone
        self._arrival = 0
        # Requests waiting for the store: decided together, in arrival order,
        # in one hop to the worker thread and one commit (_decide_stored).
        self._waiting: list[tuple[int, bytes, str | None, asyncio.Future]] = []
        self._decider: asyncio.Task | None = None

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        # TLS is started per connection, so that a failed handshake can be
        # logged with the peer's address (as the MLLP listener does).
        self._server = await asyncio.start_server(self._serve, self.cfg.host, self.cfg.port, limit=READ_SIZE)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; close the connections waiting for (more of) a
        request; let the requests in hand (read, being decided or answered) finish."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._receiving):
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        self._executor.shutdown(wait=True)  # a decision in hand finishes before the store closes
        if self.context is not None:
            self.context.close()

    # -- the engine: the one place a message is decided

    async def _decide(self, message: bytes, text_codec: str | None) -> tuple[bytes, Decision]:
        out, decision = await self._decide_message(message, text_codec)
        if self.audit is not None:
            loop = asyncio.get_running_loop()
            error = await loop.run_in_executor(self._executor, self._record_audit, message, decision)
            if error:
                self.log.error("audit_unavailable", stage="http", error=error)
        return out, decision

    def _record_audit(self, message: bytes, decision: Decision) -> str | None:
        """(On the worker thread.) The decision into the audit, before the
        answer; an error's text, or None: the audit never holds a result back."""
        assert self.audit is not None
        try:
            self.audit.record(message, decision)
            self.audit.flush()
            now = time.time()
            if now - self._audit_purged >= AUDIT_PURGE_EVERY_S:
                self._audit_purged = now
                self.audit.store.purge(self.audit.retention_days, now)
            return None
        except Exception as exc:
            return str(exc)

    async def _decide_message(self, message: bytes, text_codec: str | None) -> tuple[bytes, Decision]:
        """Decide one message at once (never held, never journaled): the
        processed bytes and the Decision.

        With a context store, every message updates it and a message that
        would get a comment is decided with it, as serve's own messages are;
        the store is used by one thread at a time (the worker thread, or the
        loop: _decide_waiting), and its rows are committed before the
        answer. Without one, a message without a
        B12 code is decided on the event loop (microseconds) and one with a
        B12 code on the worker thread, so that the MLLP listener on the same
        loop keeps answering while hl7apy reads it."""
        loop = asyncio.get_running_loop()
        if self.context is not None and self.context.mode != "message":
            outcome, store_error = await self._decide_stored(message, text_codec)
            if store_error:
                self.log.error("context_unavailable", stage="http", error=store_error)
            for comment_id in outcome.contradicts:
                self.metrics.inc("b12comment_comments_contradicted_total")
                self.log.warning(
                    "comment_contradicted",
                    comment_control_id=comment_id,
                    control_id=outcome.decision.control_id,
                    why=outcome.why,
                    action="review the earlier comment (b12comment queue review)",
                )
            return outcome.output, outcome.decision
        if has_b12_code(message, self.rule):
            outcome = await loop.run_in_executor(self._executor, self._decide_alone, message, text_codec)
        else:
            outcome = self._decide_alone(message, text_codec)
        return outcome.output, outcome.decision

    def _decide_alone(self, message: bytes, text_codec: str | None) -> Outcome:
        return decide(None, 0, message, self.rule, text_codec=text_codec)

    async def _decide_stored(self, message: bytes, text_codec: str | None) -> tuple[Outcome, str | None]:
        """Decide with the store: the requests that wait meanwhile are decided
        together (one hop to the worker thread, one commit of the store),
        each answered after the commit, in arrival order. A request given up
        (its client gone) never holds back the others."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._waiting.append((self._next_arrival(), message, text_codec, future))
        if self._decider is None or self._decider.done():
            self._decider = loop.create_task(self._decide_waiting())
        return await future

    async def _decide_waiting(self) -> None:
        """Decide the waiting requests, group by group: on the worker thread,
        or, for a lone request while this server is alone on its loop, on the
        loop itself: two thread hand-offs fewer (each a wake-up that waits
        for a free core on a busy machine), and nothing else on the loop
        waits meanwhile but other HTTP requests, which would wait for the
        worker anyway. Either way one group at a time, so the store is used
        by one thread at a time, and each answer comes after the commit."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                if self.alone and len(group) == 1:
                    done = self._decide_with_store(group)
                else:
                    done = await loop.run_in_executor(self._executor, self._decide_with_store, group)
            except Exception as exc:  # (decide never raises; the executor may be shut down)
                for *_, f in group:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (*_, f), result in zip(group, done, strict=True):
                if not f.done():
                    f.set_result(result)

    def _decide_with_store(self, group: list) -> list[tuple[Outcome, str | None]]:
        """The chain with the store for each message of the group, in order,
        then their rows committed together."""
        assert self.context is not None
        cx = self.context
        outcomes = [
            decide(cx.store, arrival, message, self.rule, cx.mode, cx.settings.lookback_days, text_codec=codec)
            for arrival, message, codec, _ in group
        ]
        error = cx.commit()
        return [(outcome, error) for outcome in outcomes]

    def _next_arrival(self) -> int:
        """The arrival order in the context store for a request: microseconds
        since the epoch (strictly increasing). It never meets serve's journal
        ids, so an HTTP message never replaces the rows of a journaled one;
        if one store is fed by both, HTTP messages count as the newer."""
        self._arrival = max(self._arrival + 1, time.time_ns() // 1000)
        return self._arrival

    async def _transform(self, body: bytes, param_codec: str | None) -> tuple[bytes, list[Decision], str]:
        """Every message of the body decided; other bytes (an HL7 batch's
        FHS/BHS/BTS/FTS lines) copied as they are. Returns the bytes, the
        decisions (none: the body holds no HL7 message) and the charset label."""
        pieces = _pieces(body)
        out: list[bytes] = []
        decisions: list[Decision] = []
        label = charset.http_label(param_codec) if param_codec else ""
        for piece in pieces:
            if piece.kind != "message":
                out.append(piece.data)
                continue
            codec = param_codec or _codec_from_msh18(piece.data)
            if not label and codec:
                label = charset.http_label(codec)
            data, decision = await self._decide(piece.data, codec)
            out.append(data)
            decisions.append(decision)
        return b"".join(out), decisions, label or charset.http_label(FALLBACK_CODEC)

    # -- connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{peername[0]}:{peername[1]}"
        task = asyncio.current_task()
        assert task is not None  # a connection handler runs as a task
        if len(self._connections) >= self.cfg.max_connections or self._stop.is_set():
            why = "the service is stopping" if self._stop.is_set() else "max_connections reached"
            self.log.warning("http_connection_refused", peer=peer, reason=why)
            if self.ssl_context is None:  # (over TLS there is no answer before a handshake)
                with contextlib.suppress(OSError, RuntimeError):
                    reply = _text(503, f"{why}; try again shortly", close=True)
                    writer.write(_encode(h11.Connection(h11.SERVER), reply, (("Retry-After", "1"),)))
                    await _linger(reader, writer, LINGER_REFUSED_S)
            writer.close()
            return
        self._connections.add(task)
        try:
            if self.ssl_context is not None and not await self._start_tls(writer, peer):
                return
            await self._converse(reader, writer, peer, self.peers.allows(str(peername[0])))
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            task.uncancel()  # stopping: this connection was waiting for a request, and is closed
        except (ConnectionError, ssl.SSLError, OSError, TimeoutError) as exc:
            self.log.info("http_connection_lost", peer=peer, error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            self._receiving.discard(task)
            writer.close()

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        assert self.ssl_context is not None
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=min(self.cfg.request_timeout_s, 30.0))
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            why = getattr(exc, "reason", None) or type(exc).__name__
            self.log.warning("tls_handshake_failed", peer=peer, endpoint="http", error=why)
            return False
        return True

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, allowed: bool):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        task = asyncio.current_task()
        assert task is not None
        while True:
            # Between requests: wait up to idle_timeout_s for the next one to begin.
            if not conn.trailing_data[0]:  # (else a pipelined request is already buffered)
                try:
                    async with asyncio.timeout(self.cfg.idle_timeout_s):
                        data = await self._read(reader)
                except TimeoutError:
                    return
                if not data:
                    return
                conn.receive_data(data)
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.cfg.request_timeout_s):
                    reply, endpoint, method = await self._request(conn, reader, writer, allowed)
            except TimeoutError:
                reply, endpoint, method = (
                    _text(408, f"request not complete within {self.cfg.request_timeout_s:g} s", close=True),
                    "-",
                    "-",
                )
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return  # h11 cannot answer any more (a protocol error after the response began)
            data = _encode(conn, reply)
            writer.write(data)
            if writer.transport.get_write_buffer_size():  # a peer that never reads: wait, but not for ever
                async with asyncio.timeout(self.cfg.request_timeout_s):
                    await writer.drain()
            self._account(reply, endpoint, method, peer, time.monotonic() - started)
            if conn.their_state is h11.SEND_BODY:  # answered before the body was read (413, 415, 403)
                await _linger(reader, writer)
                return
            if reply.close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allowed: bool
    ) -> tuple[Reply, str, str]:
        """Read one request and decide its answer: (reply, endpoint label, method)."""
        try:
            event = await self._next(conn, reader, writer)
        except h11.RemoteProtocolError as exc:
            return _text(exc.error_status_hint, f"bad HTTP request: {exc}", close=True), "-", "-"
        if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Request):
            raise ConnectionResetError("closed before a request")
        method = event.method.decode("ascii", "replace")
        path = event.target.split(b"?", 1)[0].decode("ascii", "replace")
        endpoint = path if path == self.cfg.path or path in STATUS_PATHS else "other"
        if not allowed:
            return _text(403, "this address is not in [http] allowed_peers", close=True), endpoint, method
        if path == self.cfg.path:
            if method != "POST":
                return _text(405, f"{path} takes POST", headers=(("Allow", "POST"),)), endpoint, method
            return await self._post(conn, reader, writer, event), endpoint, method
        if path in STATUS_PATHS:
            if method != "GET":
                return _text(405, f"{path} takes GET", headers=(("Allow", "GET"),)), endpoint, method
            await self._body(conn, reader, writer, 0)
            return await self._status(path), endpoint, method
        return _text(404, f"not found; POST messages to {self.cfg.path}"), endpoint, method

    async def _post(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: h11.Request
    ) -> Reply:
        headers = {name.lower(): value for name, value in request.headers}
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        media, params = _content_type(raw_type)
        if media not in HL7_TYPES:
            why = f"content type {media!r}" if media else "no Content-Type"
            return _text(415, f"{why}: send application/hl7-v2 (or text/plain) with a charset", close=True)
        param_codec = None
        if "charset" in params:
            param_codec = charset.http_codec(params["charset"])
            if param_codec is None:
                return _text(
                    415,
                    f"charset {params['charset']!r} is not supported: use UTF-8, ISO-8859-x, windows-1252 or US-ASCII",
                    close=True,
                )
        length = headers.get(b"content-length")
        limit = self.cfg.max_body_bytes
        if length is not None and int(length) > limit:
            return _text(413, f"body of {int(length)} bytes is over the limit of {limit} bytes", close=True)
        body = await self._body(conn, reader, writer, limit)
        if body is None:
            return _text(413, f"body is over the limit of {limit} bytes", close=True)
        if not body:
            return _text(400, "no body: POST one HL7 v2 message")
        out, decisions, label = await self._transform(body, param_codec)
        content_type = f"{media}; charset={label}"
        count = len(decisions)
        if not decisions:
            if _BATCH_START.match(body):  # an HL7 batch without a readable message: it goes back as it came
                decisions = [Decision(False, (MALFORMED,), detail="an HL7 batch without an MSH segment")]
            else:
                return self._reject(body, content_type)
        # Several messages (a batch): commented when at least one was; the
        # reasons are those of the messages left unchanged.
        n_commented = sum(d.commented for d in decisions)
        commented = n_commented > 0
        reasons = list(dict.fromkeys(r for d in decisions if not d.commented for r in d.reasons))
        rule_version = decisions[0].rule_version
        fields = decisions[0].log_fields() if len(decisions) == 1 else {}
        fields["messages"] = count
        fields.update(commented=commented, reasons=reasons, rule_version=rule_version)
        return Reply(
            200,
            out,
            content_type,
            (
                ("X-B12comment-Decision", "commented" if commented else "unchanged"),
                ("X-B12comment-Reasons", ",".join(reasons)),
                ("X-B12comment-Rule", rule_version),
                ("X-B12comment-Messages", str(fields["messages"])),
                ("X-B12comment-Commented", str(n_commented)),
            ),
            fields=fields,
        )

    def _reject(self, body: bytes, content_type: str) -> Reply:
        code = SEGMENT_SEQUENCE_ERROR
        try:
            read_header(body)
            why = "no MSH segment"
        except Malformed as exc:
            why, code = str(exc), exc.code
        why = f"not an HL7 message: {why}"
        ack = build_ack(body, REJECT, ack_id(), now_dtm(), AckError(code, why))
        return Reply(
            200,
            ack,
            content_type,
            (
                ("X-B12comment-Decision", "rejected"),
                ("X-B12comment-Reasons", "malformed"),
                ("X-B12comment-Rule", RULE_VERSION),
                ("X-B12comment-Messages", "0"),
                ("X-B12comment-Commented", "0"),
            ),
            fields={"commented": False, "reasons": ["malformed"], "ack_code": REJECT, "reason": why},
        )

    async def _status(self, path: str) -> Reply:
        if path != "/metrics":
            status, text = await self.health.answer(path)
            return Reply(status, text.encode("utf-8")) if status == 200 else _text(status, text.rstrip("\n"))
        depth = None
        if self._queue_depth is not None:
            with contextlib.suppress(Exception):  # the journal may be unavailable; the counters still count
                depth = await self._queue_depth()
        oldest = await self.health.oldest_age() if depth is not None else None
        ready = not await self.health.ready()
        return Reply(200, self.metrics.render(depth, oldest, ready).encode("utf-8"), CONTENT_TYPE)

    # -- reading with h11

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            conn.receive_data(await self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        """The next bytes of a request; stop() cancels a connection waiting here."""
        task = asyncio.current_task()
        assert task is not None
        self._receiving.add(task)
        try:
            return await reader.read(READ_SIZE)
        finally:
            self._receiving.discard(task)

    async def _body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
    ) -> bytes | None:
        """The request body, or None as soon as it is over `limit` bytes."""
        body = bytearray()
        while True:
            try:
                event = await self._next(conn, reader, writer)
            except h11.RemoteProtocolError as exc:
                raise ConnectionResetError(f"bad request body: {exc}") from None
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise ConnectionResetError("closed in the middle of a request body")

    def _account(self, reply: Reply, endpoint: str, method: str, peer: str, elapsed: float) -> None:
        self.metrics.inc("b12comment_http_requests_total", endpoint=endpoint, status=str(reply.status))
        self.metrics.observe("b12comment_http_request_seconds", elapsed, endpoint=endpoint)
        fields = reply.fields or {}
        if endpoint == self.cfg.path and reply.status == 200:
            decision = next(v for k, v in reply.headers if k == "X-B12comment-Decision")
            self.metrics.inc("b12comment_http_decisions_total", decision=decision)
        elif endpoint in STATUS_PATHS and reply.status == 200:
            return  # scrapes are counted, not logged
        log = self.log.info if reply.status < 400 else self.log.warning
        log(
            "http_request",
            peer=peer,
            method=method,
            endpoint=endpoint,
            status=reply.status,
            latency_ms=round(elapsed * 1000, 3),
            **fields,
        )


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float = LINGER_S) -> None:
    """Close gently a connection whose request body was not read: say we are
    done writing, then read and drop what the client still sends (for a short
    while). Closing at once with unread bytes makes the kernel reset the
    connection, and the client may lose the answer it is about to read."""
    with contextlib.suppress(OSError, RuntimeError, TimeoutError, ConnectionError, ssl.SSLError):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout_s):
            for _ in range(LINGER_BYTES // READ_SIZE):
                if not await reader.read(READ_SIZE):
                    break


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header (RFC 9110: a server with a clock sends it), formatted once a second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


def _encode(conn: h11.Connection, reply: Reply, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = [
        ("Date", _http_date()),
        ("Content-Type", reply.content_type),
        ("Content-Length", str(len(reply.body))),
        *reply.headers,
        *extra,
    ]
    if reply.close:
        headers.append(("Connection", "close"))
    phrase = HTTPStatus(reply.status).phrase.encode("ascii")
    out = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=phrase)) or b""
    out += conn.send(h11.Data(data=reply.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """`application/hl7-v2; charset="UTF-8"` -> ("application/hl7-v2", {"charset": "UTF-8"})."""
    media, *rest = value.split(";")
    params = {}
    for part in rest:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return media.strip().lower(), params


def _pieces(body: bytes) -> list[Piece]:
    """The body cut as replay cuts a file (messages, batch lines); the common
    case, one message and nothing else, without the regular expression."""
    if body.startswith(b"MSH") and body.find(b"MSH", 3) < 0 and not any(t in body for t in _BATCH_TAGS):
        return [Piece("message", body)]
    return split_messages(body)


_BATCH_TAGS = (b"FHS", b"BHS", b"BTS", b"FTS")


def _codec_from_msh18(message: bytes) -> str | None:
    """No charset parameter: MSH-18 if it names one we know, ISO-8859-1 when
    it is empty, None (the engine says unsupported_charset) otherwise."""
    try:
        msh18 = read_header(message).charset
    except Malformed:
        return FALLBACK_CODEC
    if not msh18.strip():
        return FALLBACK_CODEC
    return charset.codec_for(msh18)
