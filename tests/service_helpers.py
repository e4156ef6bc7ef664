"""Test helpers for the service: `serve` as a real subprocess, a small MLLP
downstream server in a thread, MLLP clients, TOML configs. Every wait is
bounded so that nothing can hang CI.

The downstream and the client helpers do their own framing on purpose, so
that the product's codec is not checked against itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from paths import CORPUS, PACKAGE_ROOT, SAMPLES  # noqa: F401 (CORPUS and SAMPLES are re-exported to the tests)

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
WAIT_S = 30.0


def wait_until(predicate, timeout: float = WAIT_S, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


def take_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the complete MLLP frames at the start of `buffer`, and
    what is left of it (an unfinished frame)."""
    payloads = []
    while EB in buffer:
        head, buffer = buffer.split(EB, 1)
        buffer = buffer[1:] if buffer.startswith(CR) else buffer
        payloads.append(head[head.index(SB) + 1 :])
    return payloads, buffer


def msh10(message: bytes) -> str:
    """MSH-10 read the simple way (independent of the product's framing)."""
    first = message.lstrip().replace(b"\n", b"\r").split(b"\r", 1)[0]
    fields = first.split(first[3:4])
    return fields[9].decode("latin-1").strip() if len(fields) > 9 else ""


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK payload."""
    fs = ack[3:4]
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA"):
            f = seg.split(fs)
            return f[1].decode(), (f[2].decode("latin-1") if len(f) > 2 else "")
    raise AssertionError(f"no MSA in {ack!r}")


def segment(message: bytes, name: bytes) -> list[bytes]:
    fs = message[3:4]
    for seg in message.split(b"\r"):
        if seg.startswith(name):
            return seg.split(fs)
    raise AssertionError(f"no {name!r} segment")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, **sections: dict) -> Path:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class MllpConnection:
    """A plain MLLP client socket (optionally TLS) that reads ACKs frame by frame."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None, timeout: float = 15.0
    ):
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context else raw
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes:
        while EB not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before an ACK")
            self.buffer += data
        head, self.buffer = self.buffer.split(EB, 1)
        self.buffer = self.buffer[1:] if self.buffer.startswith(CR) else self.buffer
        return head[head.index(SB) + 1 :]

    def send(self, payload: bytes) -> bytes:
        self.send_raw(frame(payload))
        return self.read_ack()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hl7_client_send(client, payload: bytes) -> bytes:
    """Send with python-hl7's MLLPClient and return the ACK payload."""
    client.socket.settimeout(15)
    data = client.send_message(payload)
    while EB not in data:
        more = client.socket.recv(4096)
        if not more:
            break
        data += more
    return data[data.index(SB) + 1 : data.index(EB)]


def ack_for(message: bytes, code: str) -> bytes:
    return (
        b"MSH|^~\\&|DOWN|STREAM|B12|B12|20240101000000||ACK|D"
        + str(time.monotonic_ns()).encode()
        + b"|P|2.5.1\rMSA|"
        + code.encode()
        + b"|"
        + msh10(message).encode("latin-1")
        + b"\r"
    )


class Downstream:
    """A small MLLP server in a thread. `answer(index, payload)` returns the
    ACK code for the index-th frame received (0-based), a whole ACK payload
    (bytes), or None to stay silent. Every received payload is kept, in order, in `received`."""

    def __init__(
        self,
        port: int = 0,
        answer=lambda i, payload: "AA",
        ssl_context: ssl.SSLContext | None = None,
        close_after_answer: bool = False,
    ):
        self.answer, self.ssl_context = answer, ssl_context
        self.close_after_answer = close_after_answer  # like receivers that take one message per connection
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'mllps' if self.ssl_context else 'mllp'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            if self.ssl_context:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            buffer = b""
            while not self.stopping:
                data = conn.recv(65536)
                if not data:
                    return
                payloads, buffer = take_frames(buffer + data)
                for payload in payloads:
                    with self.lock:
                        index = len(self.received)
                        self.received.append(payload)
                    code = self.answer(index, payload)
                    if isinstance(code, bytes):
                        conn.sendall(frame(code))
                    elif code is not None:
                        conn.sendall(frame(ack_for(payload, code)))
                    if self.close_after_answer:
                        return
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            conn.close()

    def wait_for(self, count: int, timeout: float = WAIT_S) -> bool:
        return wait_until(lambda: len(self.received) >= count, timeout)

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def subprocess_env() -> dict:
    """The environment for `python -m b12comment` children: the package this
    test process imported (the installed wheel in CI, the checkout in a dev
    loop) first on the path, so parent and child always run the same code."""
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


class Serve:
    """`python -m b12comment serve --config PATH` as a subprocess; collects its
    JSON log lines from stderr and knows the port it listens on."""

    def __init__(self, config: Path, cwd: Path | None = None):
        self.config, self.cwd = config, cwd or config.parent
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    def start(self, expect_listening: bool = True) -> Serve:
        env = subprocess_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "b12comment", "serve", "--config", str(self.config)],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if expect_listening:
            ok = wait_until(lambda: self.port is not None or self.proc.poll() is not None, timeout=WAIT_S)
            if not ok or self.port is None:
                self.kill()
                raise AssertionError("serve did not start:\n" + self.stderr)
        return self

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            record = _json(line)
            if record.get("event") == "listening":
                self.metrics_port = record.get("metrics_port")
                self.port = record["port"]

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def records(self, event: str | None = None) -> list[dict]:
        found = [_json(line) for line in list(self.lines)]
        return [r for r in found if r and (event is None or r.get("event") == event)]

    def wait_record(self, event: str, count: int = 1, timeout: float = WAIT_S) -> bool:
        return wait_until(lambda: len(self.records(event)) >= count, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("serve did not stop in time:\n" + self.stderr) from None
        self._reader.join(5)
        return code

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()


def _json(line: str) -> dict:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
