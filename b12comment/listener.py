"""The MLLP listener: sockets in, ACKs out.

`Intake` decides the answer to one frame: journal it (the commit comes
before the answer), then AA; AE with an ERR when the journal cannot be
written; AR with an ERR for a frame that is not an HL7 message or is too
large (kept in the journal as rejected). `Listener` runs the asyncio server:
many connections, many messages per connection, answered in order, with the
limits of `[listener]` (frame size, idle timeout, connection count, allowed
peers, TLS).
"""
from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from . import mllp
from .ack import (ACCEPT, APPLICATION_INTERNAL_ERROR, ERROR, REJECT, SEGMENT_SEQUENCE_ERROR, AckError,
                  build_ack)
from .config import JournalConfig, ListenerConfig
from .framing import Malformed, read_header
from .journal import JournalError, JournalThread


@dataclass(frozen=True)
class Answer:
    ack: bytes
    code: str
    fields: dict  # for the log record: no patient data


def _ack_id() -> str:
    return uuid.uuid4().hex[:20]


def _now_dtm() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")


class Intake:
    """Frame -> journal -> ACK."""

    def __init__(self, journal: JournalThread, cfg: JournalConfig, log, on_journaled=lambda: None):
        self.journal, self.cfg, self.log = journal, cfg, log
        self.on_journaled = on_journaled

    async def accept(self, payload: bytes, peer: str, seq: int) -> Answer:
        try:
            header = read_header(payload)
        except Malformed as exc:
            return await self._reject(payload, peer, seq, SEGMENT_SEQUENCE_ERROR,
                                      f"not an HL7 message: {exc}", "", "")
        cid, mtype = header.control_id, header.message_type
        fields = dict(control_id=cid, message_type=mtype)
        try:
            receipt = await self.journal.call(
                "record", payload, control_id=cid, message_type=mtype, peer=peer, conn_seq=seq,
                retransmit_window_s=self.cfg.retransmit_window_s)
        except JournalError as exc:
            self.log.error("journal_unavailable", stage="listener", error=str(exc), peer=peer, **fields)
            error = AckError(APPLICATION_INTERNAL_ERROR,
                             "message not stored: the journal cannot be written; send it again later")
            return Answer(build_ack(payload, ERROR, _ack_id(), _now_dtm(), error), ERROR, fields)
        if not receipt.duplicate:
            self.on_journaled()
        fields.update(journal_id=receipt.id, duplicate=receipt.duplicate)
        return Answer(build_ack(payload, ACCEPT, _ack_id(), _now_dtm()), ACCEPT, fields)

    async def oversize(self, size: int, head: bytes, limit: int, peer: str, seq: int) -> Answer:
        try:
            header = read_header(head)
            cid, mtype = header.control_id, header.message_type
        except Malformed:
            cid = mtype = ""
        why = f"message of {size} bytes is over the limit of {limit} bytes (max_message_bytes); not stored"
        return await self._reject(head, peer, seq, APPLICATION_INTERNAL_ERROR, why, cid, mtype)

    async def _reject(self, payload: bytes, peer: str, seq: int, code: str, why: str,
                      cid: str, mtype: str) -> Answer:
        fields = dict(control_id=cid, message_type=mtype, reason=why)
        try:
            fields["journal_id"] = await self.journal.call(
                "reject", payload, why, peer=peer, conn_seq=seq, control_id=cid, message_type=mtype)
        except JournalError as exc:
            self.log.error("journal_unavailable", stage="listener", error=str(exc), peer=peer)
        return Answer(build_ack(payload, REJECT, _ack_id(), _now_dtm(), AckError(code, why)), REJECT, fields)


class _Refused(Exception):
    """The connection is closed before any frame (already logged)."""


class Listener:
    """The asyncio MLLP server."""

    def __init__(self, cfg: ListenerConfig, intake: Intake, log, metrics,
                 ssl_context: ssl.SSLContext | None = None):
        self.cfg, self.intake, self.log, self.metrics = cfg, intake, log, metrics
        self.ssl_context = ssl_context
        self.networks = [ipaddress.ip_network(p, strict=False) for p in cfg.allowed_peers]
        self.port = cfg.port
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        # TLS is started per connection (see _serve), so that a failed
        # handshake can be logged with the peer's address.
        self._server = await asyncio.start_server(self._serve, self.cfg.host, self.cfg.port, limit=65536)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; let each connection finish the frames it has read; close."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _allowed(self, ip: str) -> bool:
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{peername[0]}:{peername[1]}"
        if not self._allowed(str(peername[0])):
            self.log.warning("connection_refused", peer=peer, reason="peer not in allowed_peers")
            writer.close()
            return
        if len(self._connections) >= self.cfg.max_connections or self._stop.is_set():
            self.log.warning("connection_refused", peer=peer, reason="max_connections reached")
            writer.close()
            return
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            client = await self._start_tls(writer, peer) if self.ssl_context else None
            self.log.info("connection_opened", peer=peer, tls=self.ssl_context is not None, client_cert=client)
            await self._converse(reader, writer, peer)
        except _Refused:
            pass
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.log.info("connection_lost", peer=peer, error=type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: str) -> str | None:
        """Upgrade to TLS; returns the client certificate's name (CN, else first SAN)."""
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=min(self.cfg.idle_timeout_s, 30.0))
        except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            self.log.warning("tls_handshake_failed", peer=peer,
                             error=getattr(exc, "reason", None) or type(exc).__name__)
            raise _Refused() from None
        cert = writer.get_extra_info("peercert") or {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        names += [value for _, value in cert.get("subjectAltName", ())]
        return names[0] if names else None

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = mllp.Decoder(self.cfg.max_message_bytes)
        stopping = asyncio.ensure_future(self._stop.wait())
        seq = 0
        try:
            while True:
                read = asyncio.ensure_future(reader.read(65536))
                done, _ = await asyncio.wait({read, stopping}, timeout=self.cfg.idle_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    reason = "service stopping" if stopping in done else "idle timeout"
                    self.log.info("connection_closed", peer=peer, reason=reason, in_frame=decoder.in_frame)
                    return
                data = read.result()
                if not data:
                    break
                for event in decoder.feed(data):
                    seq = await self._on_event(event, writer, peer, seq)
            for event in decoder.close():
                self.log.warning("incomplete_frame" if isinstance(event, mllp.Incomplete) else "junk_skipped",
                                 peer=peer, bytes=event.size)
            self.log.info("connection_closed", peer=peer, reason="closed by peer")
        finally:
            stopping.cancel()

    async def _on_event(self, event: mllp.Event, writer: asyncio.StreamWriter, peer: str, seq: int) -> int:
        if isinstance(event, mllp.Junk):
            self.log.warning("junk_skipped", peer=peer, bytes=event.size)
            return seq
        if isinstance(event, mllp.Incomplete):
            return seq
        started = time.monotonic()
        seq += 1
        self.metrics.inc("b12comment_messages_received_total")
        if isinstance(event, mllp.Frame):
            answer = await self.intake.accept(event.payload, peer, seq)
        else:
            answer = await self.intake.oversize(event.size, event.head, self.cfg.max_message_bytes, peer, seq)
        writer.write(mllp.encode(answer.ack))
        await asyncio.wait_for(writer.drain(), self.cfg.idle_timeout_s)  # a peer that never reads
        elapsed = time.monotonic() - started
        self.metrics.inc("b12comment_acks_sent_total", code=answer.code)
        self.metrics.observe("b12comment_ack_seconds", elapsed)
        log = self.log.info if answer.code == ACCEPT else self.log.warning
        log("ack", peer=peer, seq=seq, ack_code=answer.code, latency_ms=round(elapsed * 1000, 2), **answer.fields)
        return seq
