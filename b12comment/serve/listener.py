"""The MLLP listener: sockets in, ACKs out.

`Intake` decides the answer to one frame: journal it (the commit comes
before the answer), then AA; AE with an ERR when the journal cannot be
written; AR with an ERR for a frame that is not an HL7 message or is too
large (kept in the journal as invalid). `Listener` runs the asyncio server:
many connections, many messages per connection, answered in order, with the
limits of `[listener]` (frame size, idle timeout, connection count, allowed
peers, TLS).

Group commit: every frame of one read is handed to the journal at once, and
the journal commits all frames waiting for it (from every connection) in
one transaction. Each ACK is still written only after the commit that
holds its frame, and ACKs go out in the order of the frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from b12comment.aio import wait_event
from b12comment.config import JournalConfig, ListenerConfig
from b12comment.core.segments import Header, Malformed, read_header
from b12comment.serve.peers import PeerFilter
from b12comment.storage.model import JournalError, JournalFault, Receipt
from b12comment.storage.writer import JournalThread
from b12comment.wire import mllp
from b12comment.wire.ack import (
    ACCEPT,
    APPLICATION_INTERNAL_ERROR,
    COMMIT,
    ERROR,
    REJECT,
    SEGMENT_SEQUENCE_ERROR,
    AckError,
    accept_ack,
    ack_id,
    build_ack,
    commit_ack_wanted,
    enhanced_mode,
    now_dtm,
)

KEEP_INVALID_BYTES = 4096  # how much of an invalid frame the journal keeps
FRAMES_PER_PASS = 256  # frames of one read taken (and committed together) at a time
BACKOFF_MAX_S = 60.0  # the longest a peer closed for invalid frames waits at accept
BACKOFF_FORGET_S = 600.0  # a peer not closed again for this long after its wait starts afresh
BACKOFF_PEERS = 10_000  # peers remembered at most


@dataclass
class _Backoff:
    """A peer whose connections were closed for invalid frames: its next
    connection waits, at accept, until `until` (doubling with each close)."""

    strikes: int
    until: float
    held: bool = False  # a connection of this peer is open (waiting or served)
    refused: int = 0  # connections closed at once meanwhile, since the last peer_backoff line


@dataclass(eq=False)
class _Connection:
    """One open connection: its task, what it has seen (frames, invalid
    frames in a row), and where it is (waiting for bytes; idle between
    messages since when; why stop() or _make_room() cancelled its wait)."""

    task: asyncio.Task
    peer: str
    host: str
    seq: int = 0
    invalid_run: int = 0
    reading: bool = False  # waiting for bytes
    idle_since: float | None = None  # waiting between messages (nothing half-read), since
    interrupted: str = ""  # the reason, when stop() or _make_room() cancelled its wait


@dataclass(frozen=True)
class Answer:
    ack: bytes
    code: str
    fields: dict  # for the log record: no patient data


class Intake:
    """Frame -> journal -> ACK."""

    def __init__(
        self,
        journal: JournalThread,
        cfg: JournalConfig,
        log,
        on_journaled=lambda: None,
        metrics=None,
        ledger=None,
        enhanced_ack: bool = False,
    ):
        self.enhanced_ack = enhanced_ack  # [listener] enhanced_ack: honour MSH-15/MSH-16
        self.ledger = ledger  # what was ACKed, outside the journal (serve/acked.py)
        self.journal, self.cfg, self.log = journal, cfg, log
        self.on_journaled = on_journaled
        self.metrics = metrics

    def accept(self, payload: bytes, peer: str, seq: int) -> tuple[Coroutine[Any, Any, Answer], bool]:
        """Hand the frame to the journal now; await the result for its answer.
        The flag says whether the frame is invalid (answered AR)."""
        try:
            header = read_header(payload)
        except Malformed as exc:
            code = exc.code
            if payload.lstrip()[:3] in (b"FHS", b"BHS"):
                why, code = "a batch (FHS/BHS) in one frame: send each message in its own frame", SEGMENT_SEQUENCE_ERROR
            else:
                why = f"not an HL7 message: {exc}"
            return self._invalid(payload, peer, seq, code, why, "", ""), True
        cid, mtype = header.control_id, header.message_type
        stored = self.journal.record(
            payload,
            control_id=cid,
            message_type=mtype,
            peer=peer,
            conn_seq=seq,
            retransmit_window_s=self.cfg.retransmit_window_s,
        )
        answer = self._accepted(stored, payload, header, peer, dict(control_id=cid, message_type=mtype))
        mode = enhanced_mode(header) if self.enhanced_ack else None
        return (answer if mode is None else self._enhanced(answer, payload, header, mode)), False

    async def _enhanced(self, answer: Coroutine[Any, Any, Answer], payload: bytes, header: Header, mode: str) -> Answer:
        """The sender asked for enhanced acknowledgement: the commit ACK is
        CA/CE instead of AA/AE, sent only when MSH-15 asks for it. (An
        application ACK, MSH-16, is the final receiver's to send, not this
        intermediary's.)"""
        done = await answer
        fields = {**done.fields, "accept_ack_type": mode}
        if not commit_ack_wanted(mode, done.code):
            return Answer(b"", "", fields)
        code = COMMIT[done.code]
        error = None
        if done.code != ACCEPT:
            error = AckError(
                APPLICATION_INTERNAL_ERROR, "message not stored: the journal cannot be written; send it again later"
            )
        return Answer(build_ack(payload, code, ack_id(), now_dtm(), error, header), code, fields)

    async def _accepted(
        self, stored: asyncio.Future[Receipt], payload: bytes, header: Header, peer: str, fields: dict
    ) -> Answer:
        try:
            try:
                async with asyncio.timeout(self.cfg.commit_timeout_s):
                    receipt = await asyncio.shield(stored)
            except TimeoutError:
                # Answered AE: never to be delivered. Not committed yet: never
                # will be; in the commit under way: voided right after it.
                # Committed just now: its receipt is on its way, answer by it.
                if self.journal.abandon(stored):
                    raise
                receipt = await stored
        except (JournalError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                why = f"the journal did not commit it within {self.cfg.commit_timeout_s:g} s (commit_timeout_s)"
                self.log.error("journal_unavailable", stage="listener", error=why)
            elif not isinstance(exc, JournalFault):  # a fault is told once, by the service
                self.log.error("journal_unavailable", stage="listener", error=str(exc))
            error = AckError(
                APPLICATION_INTERNAL_ERROR, "message not stored: the journal cannot be written; send it again later"
            )
            return Answer(build_ack(payload, ERROR, ack_id(), now_dtm(), error, header), ERROR, fields)
        if not receipt.duplicate:
            self.on_journaled()
            if self.ledger is not None:
                self.ledger.acked(receipt.id, fields["control_id"], peer)
        if receipt.reused:  # forwarded all the same: it is another message, but the sender's IDs may be wrong
            self.log.warning(
                "control_id_reused",
                peer=peer,
                control_id=fields["control_id"],
                journal_id=receipt.id,
                note="another message under this control ID within retransmit_window_s; both are forwarded",
            )
            if self.metrics is not None:
                self.metrics.inc("b12comment_control_ids_reused_total")
        fields.update(journal_id=receipt.id, duplicate=receipt.duplicate)
        return Answer(accept_ack(header, ack_id(), now_dtm()), ACCEPT, fields)

    def oversize(self, size: int, head: bytes, limit: int, peer: str, seq: int) -> Coroutine[Any, Any, Answer]:
        try:
            header = read_header(head)
            cid, mtype = header.control_id, header.message_type
        except Malformed:
            cid = mtype = ""
        why = f"message of {size} bytes is over the limit of {limit} bytes (max_message_bytes); not stored"
        return self._invalid(head, peer, seq, APPLICATION_INTERNAL_ERROR, why, cid, mtype)

    def _invalid(
        self, payload: bytes, peer: str, seq: int, code: str, why: str, cid: str, mtype: str
    ) -> Coroutine[Any, Any, Answer]:
        kept = why
        if len(payload) > KEEP_INVALID_BYTES:  # a frame that is not a message is kept for inspection, not whole
            digest = hashlib.sha256(payload).hexdigest()[:16]
            kept = f"{why} (frame of {len(payload)} bytes, sha256 {digest}..., first {KEEP_INVALID_BYTES} kept)"
            payload = payload[:KEEP_INVALID_BYTES]
        stored = self.journal.keep_invalid(payload, kept, peer=peer, conn_seq=seq, control_id=cid, message_type=mtype)
        fields = dict(control_id=cid, message_type=mtype, reason=why)
        return self._invalid_kept(stored, payload, peer, code, why, fields)

    async def _invalid_kept(
        self, stored: asyncio.Future[int], payload: bytes, peer: str, code: str, why: str, fields: dict
    ) -> Answer:
        try:
            fields["journal_id"] = await asyncio.wait_for(asyncio.shield(stored), self.cfg.commit_timeout_s)
        except TimeoutError:
            pass  # answered AR all the same; it may still be kept
        except JournalError as exc:
            if not isinstance(exc, JournalFault):
                self.log.error("journal_unavailable", stage="listener", error=str(exc))
        return Answer(build_ack(payload, REJECT, ack_id(), now_dtm(), AckError(code, why)), REJECT, fields)


class _Refused(Exception):
    """The connection is closed before any frame (already logged)."""


class Listener:
    """The asyncio MLLP server."""

    def __init__(self, cfg: ListenerConfig, intake: Intake, log, metrics, ssl_context: ssl.SSLContext | None = None):
        self.cfg, self.intake, self.log, self.metrics = cfg, intake, log, metrics
        self.ssl_context = ssl_context
        self.peers = PeerFilter(cfg.allowed_peers)
        self.port = cfg.port
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()  # each holds a slot of max_connections
        self._per_peer: dict[str, int] = {}  # open connections by peer address
        self._backoff: dict[str, _Backoff] = {}  # peers closed for invalid frames, by address
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        # TLS is started per connection (see _serve), so that a failed
        # handshake can be logged with the peer's address.
        self._server = await asyncio.start_server(self._accept, self.cfg.host, self.cfg.port, limit=65536)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; let each connection finish the frames it has read; close."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.reading and not conn.interrupted:  # waiting for a frame: nothing in hand to finish
                conn.interrupted = "service stopping"
                conn.task.cancel()
        if self._connections:
            _, pending = await asyncio.wait({conn.task for conn in self._connections}, timeout=grace_s)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Coroutine[Any, Any, None] | None:
        """Called by asyncio for each new connection, before any task: a
        peer in backoff with a connection open already is closed here at
        once, so a sender that reconnects without pause costs an accept and
        a close, not a task each."""
        if self._backoff:
            peername = writer.get_extra_info("peername") or ("?", 0)
            backoff = self._backoff.get(str(peername[0]))
            if backoff is not None and backoff.held:
                backoff.refused += 1  # told once the wait is over: not a line per connection
                writer.close()
                return None
        return self._serve(reader, writer)

    def _allowed(self, ip: str) -> bool:
        return self.peers.allows(ip)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{peername[0]}:{peername[1]}"
        if not self._allowed(str(peername[0])):
            self.log.warning("connection_refused", peer=peer, reason="peer not in allowed_peers")
            writer.close()
            return
        host = str(peername[0])
        backoff = self._backoff.get(host)
        if backoff is None:
            await self._admit(reader, writer, peer, host)
            return
        # A peer closed for invalid frames: one connection at a time, held
        # unread at accept until its wait is over; another one meanwhile is
        # closed at once. A peer that reconnects whenever it is closed cannot
        # take the event loop or the journal back.
        if backoff.held:
            backoff.refused += 1  # told once the wait is over: not a line per connection
            writer.close()
            return
        backoff.held = True
        try:
            wait = backoff.until - time.monotonic()
            if wait > 0:
                await wait_event(self._stop, wait)
                self.log.info("peer_backoff_over", peer=host, refused=backoff.refused)
                backoff.refused = 0
            if self._stop.is_set():
                writer.close()
                return
            await self._admit(reader, writer, peer, host)
        finally:
            backoff.held = False

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, host: str) -> None:
        per_peer = self.cfg.max_connections_per_peer
        if per_peer and self._per_peer.get(host, 0) >= per_peer:
            self.log.warning("connection_refused", peer=peer, reason="max_connections_per_peer reached")
            writer.close()
            return
        if len(self._connections) >= self.cfg.max_connections and not self._stop.is_set():
            self._make_room()
        if len(self._connections) >= self.cfg.max_connections or self._stop.is_set():
            self.log.warning("connection_refused", peer=peer, reason="max_connections reached")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None  # a connection handler runs as a task
        conn = _Connection(task, peer, host)
        self._connections.add(conn)
        self._per_peer[host] = self._per_peer.get(host, 0) + 1
        try:
            client = await self._start_tls(writer, peer) if self.ssl_context else None
            self.log.info("connection_opened", peer=peer, tls=self.ssl_context is not None, client_cert=client)
            await self._converse(reader, writer, conn)
        except _Refused:
            pass
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.log.info("connection_lost", peer=peer, error=type(exc).__name__)
        finally:
            self._connections.discard(conn)
            self._per_peer[host] -= 1
            if not self._per_peer[host]:
                del self._per_peer[host]
            writer.close()

    def _strike(self, host: str) -> None:
        """A connection of `host` was closed for invalid frames: its next one
        waits invalid_backoff_s, twice as long after each close, up to
        BACKOFF_MAX_S; forgotten BACKOFF_FORGET_S after its wait ended."""
        initial = self.cfg.invalid_backoff_s
        if not initial:
            return
        now = time.monotonic()
        backoff = self._backoff.get(host)
        if backoff is None:
            if len(self._backoff) >= BACKOFF_PEERS:
                for h in [h for h, b in self._backoff.items() if now - b.until > BACKOFF_FORGET_S]:
                    del self._backoff[h]
                for h in list(self._backoff)[: max(0, len(self._backoff) - BACKOFF_PEERS + 1)]:
                    del self._backoff[h]  # still full: the longest known go
            backoff = self._backoff[host] = _Backoff(0, now)
        elif now - backoff.until > BACKOFF_FORGET_S:
            backoff.strikes = 0
        backoff.strikes += 1
        delay = min(max(BACKOFF_MAX_S, initial), initial * 2 ** min(backoff.strikes - 1, 16))
        backoff.until = now + delay
        self.log.warning("peer_backoff", peer=host, closes=backoff.strikes, wait_s=round(delay, 3))

    def _make_room(self) -> None:
        """All slots taken: close the connection idle longest, if it has been
        idle for first_byte_timeout_s at least (it is waiting between
        messages, nothing half-read), so a new sender is not locked out."""
        now = time.monotonic()
        idle = [(c.idle_since, c) for c in self._connections if c.idle_since is not None and not c.interrupted]
        if not idle:
            return
        since, conn = min(idle, key=lambda pair: pair[0])
        if now - since < self.cfg.first_byte_timeout_s:
            return
        conn.interrupted = "closed to admit a new connection (idle longest)"
        self._connections.discard(conn)  # its slot is the new one's from now on
        conn.task.cancel()

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: str) -> str | None:
        """Upgrade to TLS; returns the client certificate's name (CN, else first SAN)."""
        assert self.ssl_context is not None
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=min(self.cfg.idle_timeout_s, 30.0))
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            self.log.warning(
                "tls_handshake_failed", peer=peer, error=getattr(exc, "reason", None) or type(exc).__name__
            )
            raise _Refused() from None
        cert = writer.get_extra_info("peercert") or {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        names += [value for _, value in cert.get("subjectAltName", ())]
        return names[0] if names else None

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> None:
        decoder = mllp.Decoder(self.cfg.max_message_bytes)
        peer = conn.peer
        received = False
        while True:
            if self._stop.is_set():
                self.log.info("connection_closed", peer=peer, reason="service stopping", in_frame=decoder.in_frame)
                return
            conn.reading = True
            if not decoder.in_frame:
                conn.idle_since = time.monotonic()
            wait_s = (
                self.cfg.idle_timeout_s if received else min(self.cfg.idle_timeout_s, self.cfg.first_byte_timeout_s)
            )
            try:
                async with asyncio.timeout(wait_s):
                    data = await reader.read(65536)
            except TimeoutError:
                early = not received and self.cfg.first_byte_timeout_s < self.cfg.idle_timeout_s
                reason = "nothing received (first_byte_timeout_s)" if early else "idle timeout"
                self.log.info("connection_closed", peer=peer, reason=reason, in_frame=decoder.in_frame)
                return
            except asyncio.CancelledError:
                if not conn.interrupted:
                    raise
                conn.task.uncancel()
                self.log.info("connection_closed", peer=peer, reason=conn.interrupted, in_frame=decoder.in_frame)
                return
            finally:
                conn.reading = False
                conn.idle_since = None
            received = received or bool(data)
            if not data:
                break
            # At most FRAMES_PER_PASS frames at a time: a read of thousands of
            # tiny junk frames is cut off after max_invalid_frames, not parsed whole.
            close = False
            while not close:
                events = decoder.feed(data, FRAMES_PER_PASS)
                data = b""
                close = bool(events) and await self._on_events(events, writer, conn)
                del events  # its frames are journaled: not held while the connection waits
                if not decoder.pending:
                    break
            if close:
                self.log.warning(
                    "connection_closed", peer=peer, reason="too many invalid frames in a row", frames=conn.invalid_run
                )
                self._strike(conn.host)
                return
        for event in decoder.close():
            assert isinstance(event, (mllp.Incomplete, mllp.Junk))  # close() reports only these
            self.log.warning(
                "incomplete_frame" if isinstance(event, mllp.Incomplete) else "junk_skipped",
                peer=peer,
                bytes=event.size,
            )
        self.log.info("connection_closed", peer=peer, reason="closed by peer")

    async def _on_events(self, events: list[mllp.Event], writer: asyncio.StreamWriter, conn: _Connection) -> bool:
        """Answer the frames of one read: all go to the journal at once (one
        commit), then each ACK is written, in order, once its frame is stored,
        yielding to other connections between frames. True when the
        connection is to be closed: `max_invalid_frames` invalid frames in a
        row (the frames after them in this read are not taken)."""
        pending: list[tuple[float, int, Coroutine[Any, Any, Answer]]] = []
        peer = conn.peer
        limit = self.cfg.max_invalid_frames
        close = False
        for event in events:
            if isinstance(event, mllp.Junk):
                self.log.warning("junk_skipped", peer=peer, bytes=event.size)
                continue
            if isinstance(event, mllp.Incomplete):
                continue
            started = time.monotonic()
            conn.seq += 1
            self.metrics.inc("b12comment_messages_received_total")
            if isinstance(event, mllp.Frame):
                answer, invalid = self.intake.accept(event.payload, peer, conn.seq)
            else:
                answer = self.intake.oversize(event.size, event.head, self.cfg.max_message_bytes, peer, conn.seq)
                invalid = True
            pending.append((started, conn.seq, answer))
            if invalid:
                self.metrics.inc("b12comment_invalid_frames_total")
            elif self._backoff:
                self._backoff.pop(conn.host, None)  # a message: the peer is trusted again
            conn.invalid_run = conn.invalid_run + 1 if invalid else 0
            if limit and conn.invalid_run >= limit:
                close = True
                break
        try:
            for i, (started, n, answer) in enumerate(pending):
                await self._answer(await answer, started, writer, peer, n)
                if i + 1 < len(pending):
                    await asyncio.sleep(0)  # fair: let other connections be answered between frames
        except BaseException:
            # The connection failed: the frames after it stay journaled (the
            # sender resends them for want of an ACK; they are then
            # retransmissions) and their answers are dropped.
            for _, _, answer in pending[i + 1 :]:
                answer.close()
            raise
        return close

    async def _answer(self, answer: Answer, started: float, writer: asyncio.StreamWriter, peer: str, seq: int) -> None:
        if not answer.ack:  # enhanced mode, and MSH-15 asked for no commit ACK in this case
            self.log.info("ack_not_sent", peer=peer, seq=seq, reason="MSH-15 asks for none", **answer.fields)
            return
        writer.write(mllp.encode(answer.ack))
        if writer.transport.get_write_buffer_size():  # not all sent at once: wait, but not for ever
            async with asyncio.timeout(self.cfg.idle_timeout_s):  # (a peer that never reads)
                await writer.drain()
        elapsed = time.monotonic() - started
        self.metrics.inc("b12comment_acks_sent_total", code=answer.code)
        self.metrics.observe("b12comment_ack_seconds", elapsed)
        # At info a message has one record, its decision (processing.py); an
        # AA is a debug record, except for a retransmission (answered without
        # a decision of its own); AE and AR are warnings.
        if answer.code != ACCEPT:
            log = self.log.warning
        elif answer.fields.get("duplicate"):
            log = self.log.info
        else:
            log = self.log.debug
        log("ack", peer=peer, seq=seq, ack_code=answer.code, latency_ms=round(elapsed * 1000, 2), **answer.fields)
