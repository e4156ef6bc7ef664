"""Helpers for the soak, outage and hostile-input tests: a downstream that can
be stopped and started again on the same port, senders that reconnect, the
memory of a process, the metrics endpoint, and the message mix.

Like service_helpers, everything frames on its own (not with the product's
codec) and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from service_helpers import CR, EB, SAMPLES, SB, ack_for, frame, msa, msh10, take_frames, wait_until

# --------------------------------------------------------------------------
# The message mix: the sample messages (the batch file split into its three
# messages, CRLF kept), each a template whose MSH-10 is rewritten.


def templates() -> list[bytes]:
    found = []
    for path in sorted(SAMPLES.glob("*.hl7")):
        data = path.read_bytes()
        if data.startswith(b"MSH"):
            found.append(data)
            continue
        # A batch file (FHS/BHS ... BTS/FTS): its MSH messages, line endings as they are.
        lines = data.splitlines(keepends=True)
        current: list[bytes] = []
        for line in lines:
            if line.startswith(b"MSH"):
                if current:
                    found.append(b"".join(current))
                current = [line]
            elif line[:3] in (b"BTS", b"FTS", b"BHS", b"FHS"):
                if current:
                    found.append(b"".join(current))
                current = []
            elif current:
                current.append(line)
        if current:
            found.append(b"".join(current))
    return found


def set_control_id(message: bytes, control_id: str) -> bytes:
    """The message with MSH-10 replaced (every other byte kept)."""
    end = re.search(rb"\r\n|\r|\n", message)
    cut = end.start() if end else len(message)
    first, rest = message[:cut], message[cut:]
    fs = first[3:4]
    fields = first.split(fs)
    fields[9] = control_id.encode("ascii")
    return fs.join(fields) + rest


# --------------------------------------------------------------------------
# A downstream that records and ACKs AA, and can be stopped (listener and
# every open connection closed) and started again on the same port.


@dataclass
class Delivery:
    control_id: str
    digest: bytes  # sha256 of the payload
    payload: bytes | None  # the payload itself, when keep_payload(payload) said so
    connection: int  # which downstream connection brought it (1, 2, ...)
    incarnation: int  # which start of the downstream


class RestartableDownstream:
    def __init__(self, port: int = 0, answer=lambda payload: "AA", keep_payload=lambda payload: True):
        self.answer = answer
        self.keep_payload = keep_payload
        self.received: list[Delivery] = []
        self.lock = threading.Lock()
        self.port = port
        self.incarnation = 0
        self.connections = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mllp://127.0.0.1:{self.port}"

    def start(self) -> RestartableDownstream:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.2)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self.incarnation += 1
        self._running = True
        self._thread = threading.Thread(target=self._accept, args=(sock, self.incarnation), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Like a crash of the downstream: stop listening, drop every connection."""
        with self.lock:
            self._running = False
            conns, self._open = list(self._open), set()
        if self._listener is not None:
            self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._thread is not None:
            self._thread.join(5)

    def _accept(self, sock: socket.socket, incarnation: int) -> None:
        while True:
            with self.lock:
                if not self._running:
                    return
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                if not self._running:
                    conn.close()
                    return
                self.connections += 1
                number = self.connections
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn, number, incarnation), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int, incarnation: int) -> None:
        try:
            conn.settimeout(120)
            buffer = b""
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                payloads, buffer = take_frames(buffer + data)
                for payload in payloads:
                    with self.lock:
                        if not self._running:
                            return  # stopped: this frame is neither recorded nor answered
                        self.received.append(
                            Delivery(
                                msh10(payload),
                                hashlib.sha256(payload).digest(),
                                payload if self.keep_payload(payload) else None,
                                number,
                                incarnation,
                            )
                        )
                    conn.sendall(frame(ack_for(payload, self.answer(payload))))
        except (OSError, ValueError):
            return
        finally:
            with self.lock:
                self._open.discard(conn)
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float) -> bool:
        return wait_until(lambda: self.count() >= count, timeout, interval=0.1)


# --------------------------------------------------------------------------
# A sender: its own connection, its own sequence of control IDs, waits for
# each ACK, reconnects (and sends the same message again) after a failure.


@dataclass
class SenderLog:
    sent: int = 0  # distinct messages sent (each control ID once)
    attempts: int = 0  # transmissions, resends included
    acked: dict = field(default_factory=dict)  # control ID -> last ACK code
    reconnects: int = 0
    non_aa: list = field(default_factory=list)  # (control ID, code)
    errors: list = field(default_factory=list)


class Sender(threading.Thread):
    def __init__(
        self, name: str, port_of, messages: list[tuple[str, bytes]], give_up_s: float = 180.0, timeout: float = 60.0
    ):
        super().__init__(daemon=True, name=f"sender-{name}")
        self.port_of, self.messages = port_of, messages
        self.give_up_s, self.timeout = give_up_s, timeout
        self.log = SenderLog()
        self.acked_order: list[str] = []
        self.lock = threading.Lock()
        self.stopping = False

    def acked_aa(self) -> set[str]:
        with self.lock:
            return {cid for cid, code in self.log.acked.items() if code == "AA"}

    def _connect(self):
        port = self.port_of()
        if port is None:
            raise ConnectionError("serve is not listening")
        sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def run(self) -> None:
        sock, buffer = None, b""
        for cid, payload in self.messages:
            deadline = time.monotonic() + self.give_up_s
            self.log.sent += 1
            while not self.stopping:
                if time.monotonic() > deadline:
                    self.log.errors.append(f"{cid}: gave up")
                    return
                try:
                    if sock is None:
                        sock, buffer = self._connect(), b""
                    self.log.attempts += 1
                    sock.sendall(frame(payload))
                    while EB not in buffer:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("closed before the ACK")
                        buffer += data
                    head, buffer = buffer.split(EB, 1)
                    buffer = buffer[1:] if buffer.startswith(CR) else buffer
                    code, acked = msa(head[head.index(SB) + 1 :])
                    if acked != cid:
                        self.log.errors.append(f"{cid}: ACK for {acked!r}")
                        raise ConnectionError("ACK for another message")
                    with self.lock:
                        self.log.acked[cid] = code
                        if code == "AA":
                            self.acked_order.append(cid)
                    if code == "AA":
                        break
                    self.log.non_aa.append((cid, code))
                    time.sleep(0.2)  # AE: the journal could not take it; send it again
                except (OSError, ConnectionError, ValueError):
                    if sock is not None:
                        sock.close()
                        self.log.reconnects += 1
                    sock = None
                    time.sleep(0.05)
            if self.stopping:
                break
        if sock is not None:
            sock.close()


# --------------------------------------------------------------------------
# Process memory and metrics.


def rss_kb(pid: int) -> int:
    """VmRSS of a process in kB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssMonitor(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds; `peak_since(mark)`."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True, name="rss-monitor")
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stopping = False
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping:
            value = rss_kb(self.pid)
            with self.lock:
                self.samples.append((time.monotonic(), value))
            time.sleep(self.interval)

    def peak_since(self, since: float) -> int:
        now = rss_kb(self.pid)
        with self.lock:
            return max([v for t, v in self.samples if t >= since] + [now])

    def stop(self) -> None:
        self.stopping = True
        self.join(5)


def scrape(port: int) -> dict[str, float]:
    """/metrics as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


__all__ = [
    "Delivery",
    "RestartableDownstream",
    "RssMonitor",
    "Sender",
    "msh10",
    "rss_kb",
    "scrape",
    "seeded",
    "set_control_id",
    "templates",
    "expected_outputs",
]


def expected_outputs(messages: list[bytes]) -> list[bytes]:
    """process() of each message with the built-in rule (run in a worker process)."""
    from b12comment.config import Config
    from b12comment.core.engine import process

    rule = Config().rule
    return [process(m, rule)[0] for m in messages]
