"""Large messages through `serve` (`max_message_bytes` raised): the memory
one message costs, and what it holds back. `serve` as a real subprocess, a
real socket each way, a real journal and context store. The figures are
printed on lines that start with `LARGE FIGURES`.

The memory is serve's peak RSS (VmHWM in /proc/PID/status) after the large
message went through, less its peak before it: the growth must stay under
3x the message's size plus a fixed allowance (see ALLOWANCE_BYTES).
"""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from service_helpers import CR, EB, SB, MllpConnection, Serve, frame, msa, msh10, wait_until, write_config

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
# What serve may grow by, beyond 3x the message, when its first large message
# goes through: SQLite's page caches (up to 2 MiB each, the journal's and the
# context store's connections), the thread stacks and allocator arenas first
# touched, and blocks under 1 MiB the allocator keeps for reuse.
ALLOWANCE_BYTES = 16 * MIB

HEAD = (
    "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240110120000||ORU^R01|{cid}|P|2.5.1\r"
    "PID|1||{pid}^^^CPR||Testesen^Barn||20160315|M\r"
    "ORC|RE|ORD-{cid}|FIL-{cid}|REQ-{cid}\r"
    "OBR|1|ORD-{cid}|FIL-{cid}|PANEL^Panel^L|||20240110083000" + "|" * 18 + "F\r"
)
B12_OBX = "OBX|{n}|NM|14685-2^Cobalamin (Vitamin B12)^LN||1500|pmol/L||H|||F\r"


def many_obx_message(cid: str, pid: str, count: int) -> bytes:
    """An ORU^R01 of a child: an elevated B12, then `count` normal sodium
    results (about 50 bytes each)."""
    head = (HEAD.format(cid=cid, pid=pid) + B12_OBX.format(n=1)).encode()
    rows = b"".join(b"OBX|%d|NM|2951-2^Sodium^LN||140|mmol/L|136-145||||F\r" % n for n in range(2, count + 2))
    return head + rows


def one_big_segment_message(cid: str, pid: str, size: int) -> bytes:
    """An ORU^R01 of a child: a normal sodium with a report of `size` bytes
    in one NTE under it (as some labs send a long text), then an elevated
    B12 last, so that the comment goes at the end."""
    head = HEAD.format(cid=cid, pid=pid).encode() + b"OBX|1|NM|2951-2^Sodium^LN||140|mmol/L|136-145||||F\r"
    words = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    text = (words * (size // len(words) + 1))[:size]
    return head + b"NTE|1|L|" + text + b"\r" + B12_OBX.format(n=2).encode()


def small_message(cid: str) -> bytes:
    return (HEAD.format(cid=cid, pid="0202029999") + B12_OBX.format(n=1)).encode()


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


class Sink:
    """A downstream that takes frames of any size (its buffer grows in place),
    keeps each payload's length, SHA-256 and arrival time, and answers AA."""

    def __init__(self):
        self.got: list[tuple[str, int, str, float, bytes]] = []  # (control ID, length, sha256, time, tail)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        with conn:
            conn.settimeout(60)
            while not self.stopping:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                start = len(buffer)
                buffer += data
                while True:
                    end = buffer.find(EB, max(0, start - 1))
                    if end < 0:
                        break
                    payload = bytes(buffer[buffer.index(SB) + 1 : end])
                    del buffer[: end + 2 if buffer[end + 1 : end + 2] == CR else end + 1]
                    start = 0
                    cid = msh10(payload[:512])
                    digest = hashlib.sha256(payload).hexdigest()
                    self.got.append((cid, len(payload), digest, time.monotonic(), payload[-2000:]))
                    ack = f"MSH|^~\\&|DOWN|D|B12|B|20240101||ACK|A{len(self.got)}|P|2.5.1\rMSA|AA|{cid}\r"
                    conn.sendall(frame(ack.encode()))

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        self.thread.join(5)


def serve_config(tmp_path: Path, sink: Sink, **context) -> Path:
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, max_message_bytes=64 * MIB),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"mllp://127.0.0.1:{sink.port}", timeout_s=60.0, retry_initial_s=0.05, retry_max_s=0.2),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key"), **context),
    )


def send_large_then_small(serve: Serve, sink: Sink, large: bytes) -> dict:
    """Warm up, send `large` and at once a small one on another connection;
    returns the figures (and asserts what was answered and delivered)."""
    pid = serve.proc.pid
    with MllpConnection(serve.port, timeout=60) as conn:
        for i in range(3):  # warm-up: every stage has run once
            assert msa(conn.send(small_message(f"WARM{i}")))[0] == "AA"
    assert wait_until(lambda: len(sink.got) == 3, 30), serve.stderr
    before = status_kb(pid, "VmHWM")
    t0 = time.monotonic()
    with MllpConnection(serve.port, timeout=60) as big, MllpConnection(serve.port, timeout=60) as small:
        big.send_raw(frame(large))
        assert msa(big.read_ack()) == ("AA", msh10(large))
        acked = time.monotonic()
        assert msa(small.send(small_message("AFTER")))[0] == "AA"
    assert wait_until(lambda: len(sink.got) == 5, 60), serve.stderr
    after = status_kb(pid, "VmHWM")
    (cid_l, len_l, _, at_l, _), (cid_s, _, _, at_s, _) = sink.got[3], sink.got[4]
    assert (cid_l, cid_s) == (msh10(large), "AFTER")  # journal order: the small one after the large one
    return dict(
        size=len(large),
        delivered_len=len_l,
        growth=(after - before) * 1024,
        before_kb=before,
        after_kb=after,
        ack_s=acked - t0,
        large_s=at_l - t0,
        small_s=at_s - t0,
    )


def report(name: str, f: dict) -> None:
    print(
        f"LARGE FIGURES {name}: {f['size'] / 1e6:.1f} MB; VmHWM {f['before_kb'] / 1024:.0f} -> "
        f"{f['after_kb'] / 1024:.0f} MiB, growth {f['growth'] / 1e6:.1f} MB = {f['growth'] / f['size']:.2f}x; "
        f"AA {f['ack_s']:.2f} s, large delivered {f['large_s']:.2f} s, small {f['small_s']:.2f} s after sending"
    )


def context_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


@pytest.mark.parametrize("mode", ["patient", "message"])
def test_many_obx_message_costs_at_most_3x_its_size_and_holds_back_nothing_else(tmp_path, mode):
    large = many_obx_message("BIG1", "0101169999", 400_000)  # about 22 MB
    sink = Sink()
    try:
        with Serve(serve_config(tmp_path, sink, mode=mode)) as serve:
            f = send_large_then_small(serve, sink, large)
            report(f"many OBX, mode {mode}", f)
            decisions = {r["control_id"]: r for r in serve.records("decision")}
            assert serve.stop() == 0
    finally:
        sink.close()
    cid, length, digest, _, _ = sink.got[3]
    assert (length, digest) == (len(large), hashlib.sha256(large).hexdigest())  # unchanged, whole
    assert decisions["BIG1"]["commented"] is False
    assert decisions["BIG1"]["reasons"] == ["too_many_segments"]
    assert decisions["AFTER"]["commented"] is True
    if mode == "patient":  # the context extraction was bounded: no row per OBX in the store
        assert context_rows(tmp_path / "context.sqlite3") < 100
    assert f["growth"] <= 3 * len(large) + ALLOWANCE_BYTES, f
    assert f["small_s"] < 20, f  # liveness: before, reading every OBX held it back 51 s


def test_one_big_segment_message_is_commented_and_costs_at_most_3x_its_size(tmp_path):
    large = one_big_segment_message("BIG2", "0101169998", 20_000_000)
    sink = Sink()
    try:
        with Serve(serve_config(tmp_path, sink)) as serve:
            f = send_large_then_small(serve, sink, large)
            report("one big segment", f)
            decisions = {r["control_id"]: r for r in serve.records("decision")}
            assert serve.stop() == 0
    finally:
        sink.close()
    assert decisions["BIG2"]["commented"] is True
    cid, length, digest, _, tail = sink.got[3]
    nte = tail[tail.rindex(b"\rNTE|") + 1 :]
    assert nte.startswith(b"NTE|1|L|") and nte.endswith(b"\r")
    assert length == len(large) + len(nte)  # the input plus one NTE at its end
    assert digest == hashlib.sha256(large + nte).hexdigest()
    assert f["growth"] <= 3 * len(large) + ALLOWANCE_BYTES, f
