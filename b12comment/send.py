"""`b12comment send FILE... --to HOST:PORT`: send messages to an MLLP listener
and show each ACK.

Files are read as replay reads them (any segment terminator, batch files,
MLLP captures, gzip: `wire.split`), each message goes in its own frame
(`wire.mllp`), and the next is sent only when its ACK is in. One line per
message: control ID, ACK code, whether MSA-2 names the message, round trip.

With `--count N` the messages of the files are sent in turn until N have
gone (repeats get `-2`, `-3`, ... appended to MSH-10, so a listener does not
take them for retransmissions), at most `--rate R` a second, and a summary
gives the rate and the round-trip percentiles. This is a tool for people at
a terminal: the messages are their own, nothing goes to the log.
"""

from __future__ import annotations

import gzip
import io
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from b12comment.core.segments import Malformed, read_header
from b12comment.errors import EXIT_IO, EXIT_NOT_ACCEPTED, EXIT_OK, B12Error, UsageError, describe_os_error
from b12comment.wire import mllp
from b12comment.wire.split import GZIP_MAGIC, open_input, read_pieces
from b12comment.wire.tls import client_context
from b12comment.wire.waiter import ACCEPTED_CODES, AckWaiter, Unreadable


@dataclass(frozen=True)
class SendOptions:
    host: str
    port: int
    timeout_s: float = 10.0
    count: int | None = None
    rate: float = 0.0  # messages a second; 0: as fast as the ACKs come
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class Answer:
    control_id: str
    code: str  # AA, AE, AR, ..., or "-" when no ACK came
    acked: str  # MSA-2
    ms: float
    why: str = ""  # what went wrong, when no usable ACK came

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED_CODES and self.acked == self.control_id


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--to wants HOST:PORT (such as 127.0.0.1:2575), not {text!r}")
    return host.strip("[]"), int(port)


def read_messages(files: list[str], skipped: list[str] | None = None) -> Iterator[bytes]:
    """Every message of every file, in order. A file that holds no HL7
    message is skipped with a warning on stderr (and named in `skipped`): the
    files after it are still sent. A file that cannot be read stops the run."""
    for name in files:
        found = 0
        try:
            with _open(name) as f:
                for piece in read_pieces(f):
                    if piece.kind == "message":
                        found += 1
                        yield piece.data
        except FileNotFoundError:
            raise UsageError(f"input not found: {name}") from None
        except IsADirectoryError:
            raise UsageError(f"{name} is a folder; send takes files") from None
        except (OSError, EOFError) as exc:
            raise B12Error(f"cannot read {name}: {describe_os_error(exc)}") from None
        if not found:
            print(f"b12comment: warning: no HL7 message (no MSH segment) in {name}; skipped", file=sys.stderr)
            if skipped is not None:
                skipped.append(name)


def _open(name: str) -> BinaryIO:
    """A file, or standard input for '-' (as python-hl7's mllp_send reads it), plain or gzip."""
    if name != "-":
        return open_input(Path(name))
    data = sys.stdin.buffer.read()
    if data[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=io.BytesIO(data))  # type: ignore[return-value]
    return io.BytesIO(data)


def control_id_of(message: bytes) -> str:
    try:
        return read_header(message).control_id
    except Malformed:
        return ""


def with_control_id(message: bytes, suffix: str) -> bytes:
    """The message with `suffix` appended to MSH-10 (nothing else changes)."""
    try:
        header = read_header(message)
    except Malformed:
        return message
    end = message.find(header.terminator, header.start)
    end = len(message) if end < 0 else end
    parts = message[header.start : end].split(header.delimiters.field)
    while len(parts) < 10:
        parts.append(b"")
    parts[9] += suffix.encode("ascii")  # parts[n] is MSH-(n+1)
    return message[: header.start] + header.delimiters.field.join(parts) + message[end:]


class Connection:
    def __init__(self, opts: SendOptions):
        self.opts = opts
        self.sock: socket.socket | None = None
        self.waiter = AckWaiter(first_answer=True)  # the first ACK is shown, whatever MSA-2 names
        self.context = None
        if opts.tls or opts.tls_ca or opts.tls_cert:
            self.context = client_context(opts.tls_ca, opts.tls_cert, opts.tls_key)  # TlsError: exit 2

    def open(self) -> None:
        o = self.opts
        try:
            sock = socket.create_connection((o.host, o.port), timeout=o.timeout_s)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=o.host)
        except ssl.SSLError as exc:
            raise B12Error(f"TLS with {o.host}:{o.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise B12Error(f"cannot connect to {o.host}:{o.port}: {describe_os_error(exc)}") from None
        self.sock = sock
        self.waiter.reset()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, message: bytes) -> Answer:
        cid = control_id_of(message)
        try:
            frame = mllp.encode(message)
        except ValueError as exc:
            return Answer(cid, "-", "", 0.0, f"not sent: {exc}")
        reused = self.sock is not None
        answer, heard = self._attempt(cid, frame)
        if answer.code == "-" and reused and not heard:
            # A listener that closes the connection after each ACK (many do):
            # the reused connection was already closed. Once more, on a new one.
            answer, _ = self._attempt(cid, frame)
        return answer

    def _attempt(self, cid: str, frame: bytes) -> tuple[Answer, bool]:
        """(the answer, whether any byte came back)."""
        if self.sock is None:
            self.open()
        assert self.sock is not None
        started = time.perf_counter()
        self.waiter.expect(cid)
        try:
            self.sock.sendall(frame)
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError(self.waiter.no_answer("the listener closed the connection before answering"))
                reply = self.waiter.feed(data)
                if reply is None:
                    continue
                ms = (time.perf_counter() - started) * 1000
                if isinstance(reply, Unreadable):
                    self.close()
                    return Answer(cid, "-", "", ms, reply.why), True
                why = "; ".join(
                    part for part in (f"error code {reply.error}" if reply.error else "", reply.text) if part
                )
                return Answer(cid, reply.code, reply.acked, ms, why), True
        except TimeoutError:
            self.close()
            why = self.waiter.no_answer("no ACK in time")
            return Answer(cid, "-", "", (time.perf_counter() - started) * 1000, why), self.waiter.heard > 0
        except (OSError, EOFError) as exc:
            self.close()
            return Answer(
                cid, "-", "", (time.perf_counter() - started) * 1000, describe_os_error(exc)
            ), self.waiter.heard > 0


def line(a: Answer) -> str:
    if a.code == "-":
        match = "no ACK"
    elif a.acked == a.control_id:
        match = "MSA-2 matches"
    else:
        match = f"MSA-2 is {a.acked or '(empty)'!r}, not this message"
    text = f"{a.control_id or '(no control ID)'}  {a.code}  {match}  {a.ms:.1f} ms"
    return text + (f"  ({a.why})" if a.why else "")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _plan(files: list[str], count: int | None, skipped: list[str]) -> Iterator[bytes]:
    if count is None:
        yield from read_messages(files, skipped)
        return
    messages = list(read_messages(files, skipped))
    if not messages:
        return
    for n in range(count):
        round_, i = divmod(n, len(messages))
        yield messages[i] if round_ == 0 else with_control_id(messages[i], f"-{round_ + 1}")


def run_send(files: list[str], opts: SendOptions, out=None) -> int:
    out = out or sys.stdout
    conn = Connection(opts)
    answers: list[Answer] = []
    started = time.perf_counter()
    interval = 1.0 / opts.rate if opts.rate > 0 else 0.0
    skipped: list[str] = []
    try:
        for n, message in enumerate(_plan(files, opts.count, skipped)):
            if interval:
                wait = started + n * interval - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            if n == 0:
                conn.open()  # a listener that is not there is one clear line, exit 1
            answer = conn.exchange(message)
            answers.append(answer)
            if opts.count is None or not answer.accepted:
                print(line(answer), file=out, flush=True)
    finally:
        conn.close()
    elapsed = time.perf_counter() - started
    print(summary(answers, elapsed), file=out, flush=True)
    if not all(a.accepted for a in answers):
        return EXIT_NOT_ACCEPTED
    if skipped:
        n = len(skipped)
        print(
            f"b12comment: {n} file{'' if n == 1 else 's'} held no HL7 message and {'was' if n == 1 else 'were'} "
            "skipped (see the warnings above)",
            file=sys.stderr,
        )
        return EXIT_IO
    return EXIT_OK


def summary(answers: list[Answer], elapsed: float) -> str:
    ok = sum(a.accepted for a in answers)
    times = [a.ms for a in answers if a.code != "-"]
    n = len(answers)
    return (
        f"sent {n} message{'' if n == 1 else 's'}: {ok} AA, {n - ok} not AA; "
        f"{n / elapsed if elapsed > 0 else 0:,.1f} msg/s; "
        f"round trip p50 {percentile(times, 50):.1f} ms, p99 {percentile(times, 99):.1f} ms"
    )
