"""How one message, or a batch, reaches the downstream: an MLLP (or MLLPS)
connection, or a folder. Each delivery ends in an outcome:

- `Delivered` (AA/CA, or the file renamed into place),
- `Rejected` (AR/CR: the downstream will not take it),
- `Retry` (AE/CE, no ACK in time, the connection dropped after sending; or,
  not counted against max_attempts, a failure that says nothing about the
  message: no connection, TLS, a folder not writable).

The MLLP side is the socket around the wire's codec and ACK waiter; the
journal is the forwarder's business, not the transports'.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from b12comment.aio import describe_error
from b12comment.config import DownstreamConfig
from b12comment.files import fsync_dir
from b12comment.storage.model import Row
from b12comment.wire import mllp
from b12comment.wire.tls import client_context
from b12comment.wire.waiter import AckWaiter, Unreadable


@dataclass(frozen=True)
class Delivered:
    detail: str = ""


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Retry:
    reason: str
    counts: bool = True  # does this failure count against max_attempts?


Outcome = Delivered | Rejected | Retry


def safe_name(control_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", control_id)[:64].strip(".")
    return name or "no-control-id"


class DirTransport:
    """Folder drop: write a temporary name, fsync, rename, fsync the folder,
    so a reader never sees half a file. Same name on a resend: idempotent."""

    # fsyncs of one batch run this many at a time: the filesystem commits the
    # ones that wait together in one journal transaction (group commit), where
    # one after another each waits for a commit of its own.
    FSYNC_THREADS = 8

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fsyncs: ThreadPoolExecutor | None = None

    def _fsync_all(self, fds: list[int]) -> tuple[int, OSError | None]:
        """fsync every fd; (how many from the first are durable, the first error)."""
        if len(fds) == 1:
            try:
                os.fsync(fds[0])
            except OSError as exc:
                return 0, exc
            return 1, None
        if self._fsyncs is None:
            self._fsyncs = ThreadPoolExecutor(self.FSYNC_THREADS, thread_name_prefix="b12-fsync")
        futures = [self._fsyncs.submit(os.fsync, fd) for fd in fds]
        synced, error = 0, None
        for future in futures:  # wait for all of them: their fds are closed next
            failed = future.exception()
            if failed is not None and error is None:
                error = failed if isinstance(failed, OSError) else OSError(str(failed))
            if error is None:
                synced += 1
        return synced, error

    def path_for(self, row: Row) -> Path:
        return self.folder / f"{row.id:012d}_{safe_name(row.control_id)}.hl7"

    async def deliver(self, row: Row) -> Outcome:
        return (await self.deliver_many([row]))[0]

    async def deliver_many(self, rows: list[Row]) -> list[Outcome]:
        """Deliver rows in order: `Delivered` for each row up to the first
        failure, then that failure (nothing after it is attempted)."""
        done, error = await asyncio.to_thread(self._write_many, rows)
        outcomes: list[Outcome] = [Delivered(self.path_for(row).name) for row in rows[:done]]
        if error is not None:
            outcomes.append(Retry(f"cannot write to {self.folder}: {error.strerror or error}", counts=False))
        return outcomes

    def _write_many(self, rows: list[Row]) -> tuple[int, OSError | None]:
        """(rows whose files are durably in place, the error that stopped it).

        Every file is written, then every file fsynced (several at once, so
        the filesystem commits them together), then renamed into place in
        journal order, then the folder fsynced once: the same guarantees as
        one file at a time, with less work in the filesystem."""
        error: OSError | None = None
        opened: list[tuple[int, Path, Path]] = []  # (fd, temporary name, final name)
        written = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                final = self.path_for(row)
                tmp = final.with_name(f".{final.name}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                opened.append((fd, tmp, final))
                data = memoryview(row.processed if row.processed is not None else row.raw)
                while data:
                    data = data[os.write(fd, data) :]
                written += 1
        except OSError as exc:
            error = exc
        try:
            synced, fsync_error = self._fsync_all([fd for fd, _, _ in opened[:written]])
            error = error or fsync_error
        finally:
            for fd, _, _ in opened:
                with contextlib.suppress(OSError):
                    os.close(fd)
        done = 0
        try:
            for _, tmp, final in opened[:synced]:
                os.replace(tmp, final)
                done += 1
        except OSError as exc:
            error = exc
        if done:
            try:
                fsync_dir(self.folder)
            except OSError as exc:  # the renames may not last: write them all again
                return 0, exc
        return done, error

    async def close(self) -> None:
        if self._fsyncs is not None:
            self._fsyncs.shutdown(wait=True)
            self._fsyncs = None


class MllpTransport:
    """One MLLP connection downstream, opened when needed and dropped after
    any failure (a late ACK on an old connection cannot be mistaken)."""

    WRITE_BYTES = 256 * 1024  # a larger message is written in pieces of this size

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        max_ack_bytes: int = 1024 * 1024,
    ):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.ssl_context = ssl_context
        self.max_ack_bytes = max_ack_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiter = AckWaiter(max_ack_bytes)  # MSA-2 matching and the answer's meaning

    async def deliver(self, row: Row) -> Outcome:
        payload = row.processed if row.processed is not None else row.raw
        try:
            frame = mllp.pieces(payload, self.WRITE_BYTES)
        except ValueError as exc:
            return Rejected(f"cannot be sent over MLLP: {exc}")
        for first_try in (True, False):
            # Many receivers close the connection after each ACK. A connection
            # kept from the last message that the downstream has closed is
            # not this message's failure: open a new one at once.
            reused = self._writer is not None
            if reused and self._reader is not None and self._reader.at_eof():
                await self.close()
                reused = False
            if self._writer is None:
                try:
                    await self._connect()
                except (TimeoutError, OSError, ssl.SSLError) as exc:
                    await self.close()
                    return Retry(f"cannot connect to {self.host}:{self.port}: {describe_error(exc)}", counts=False)
            writer = self._writer
            assert writer is not None  # connected above
            self._waiter.expect(row.control_id)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self._write(writer, frame)
                async with asyncio.timeout(self.timeout_s):
                    return await self._await_ack()
            except TimeoutError:
                await self.close()
                if self._waiter.others:
                    return Retry(
                        f"no ACK for {row.control_id!r} within {self.timeout_s:g} s; ACKs for another control ID "
                        f"arrived: {', '.join(repr(c) for c in self._waiter.others[:3])}"
                    )
                return Retry(self._waiter.no_answer(f"no ACK within {self.timeout_s:g} s"))
            except ssl.SSLError as exc:  # a TLS set-up problem, not this message's fault
                await self.close()
                return Retry(f"TLS failure: {describe_error(exc)}", counts=False)
            except (OSError, EOFError) as exc:
                await self.close()
                if first_try and reused and not self._waiter.heard:
                    continue  # the kept connection was already closed by the downstream
                return Retry(f"connection lost: {describe_error(exc)}")
        raise AssertionError("unreachable")  # the loop returns on its second pass

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, pieces: list[bytes | memoryview]) -> None:
        """Write a frame's pieces, each once the one before has (mostly) gone:
        the transport's buffer holds about one piece, never a whole large message."""
        for piece in pieces:
            writer.write(piece)
            if writer.transport.get_write_buffer_size():  # not all sent at once
                await writer.drain()

    async def _connect(self) -> None:
        async with asyncio.timeout(self.timeout_s):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context, server_hostname=self.host if self.ssl_context else None
            )
        self._waiter.reset()

    async def _await_ack(self) -> Outcome:
        reader = self._reader
        assert reader is not None  # connected before a message is sent
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError(self._waiter.no_answer("downstream closed the connection before answering"))
            reply = self._waiter.feed(data)
            if reply is None:
                continue  # nothing yet, or an answer to something else: keep waiting for ours
            if isinstance(reply, Unreadable):
                return Retry(reply.why)
            if reply.accepted:
                return Delivered(reply.code)
            if reply.rejected:
                return Rejected(f"downstream rejected it ({reply.detail})")
            return Retry(f"downstream answered {reply.detail}")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()


def transport_for(ds: DownstreamConfig):
    """The transport for `[downstream] url`; TLS files are loaded here (TlsError)."""
    if ds.url.startswith("dir:"):
        return DirTransport(ds.url[4:])
    scheme, rest = ds.url.split("://", 1)
    host, port = rest.rsplit(":", 1)
    ctx = client_context(ds.tls_ca, ds.tls_cert, ds.tls_key) if scheme == "mllps" else None
    return MllpTransport(host, int(port), ds.timeout_s, ctx)
