"""Hostile network input against one `b12comment serve` subprocess.

One serve (max_message_bytes at its default of 1 MiB) takes, test after
test: random bytes, truncated frames, frames without an end, a 1 GiB frame,
thousands of tiny frames, senders that trickle a byte at a time, 500
connections at once (and more than max_connections), connections that close
mid-frame, and a journal that cannot be written for a while.

Throughout, a well-behaved client on its own connection keeps sending
well-formed messages. Each test holds its hostile state open (half a frame,
half a gigabyte, 500 open connections ...) until that client has had more
AAs, so "serve answers others meanwhile" is shown, not timed. An RSS monitor
samples serve's memory the whole time. The last test checks the promises
over everything: every AA is in the journal and reached the downstream,
nothing unanswered or answered AE/AR was journaled as a message or
forwarded, serve is alive, and SIGTERM gives exit code 0.
"""

from __future__ import annotations

import json
import random
import resource
import socket
import sqlite3
import struct
import threading
import time

import pytest
from service_helpers import CR, EB, SB, Serve, frame, msa, segment, take_frames, wait_until, write_config
from soak_helpers import RestartableDownstream, RssMonitor, rss_kb, set_control_id, templates

from b12comment.config import Config
from b12comment.core.engine import process

pytestmark = pytest.mark.slow

SEED = 20241125
GIB = 1 << 30
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 520
MEMORY_MARGIN_KB = 150 * 1024  # growth allowed over the baseline, in any scenario
WAIT = 120.0  # a bound on every wait, not an expectation


def oru(cid: str, n: int = 1) -> bytes:
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{cid}|P|2.5.1\r"
        f"PID|1||ID{n}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||{n}|mmol/L|3-6|N|||F\r"
    ).encode()


def read_frames(sock: socket.socket, count: int | None = None, timeout: float = WAIT) -> list[bytes]:
    """ACK payloads until `count` of them, or until the peer closes."""
    sock.settimeout(timeout)
    out, buffer = [], b""
    while count is None or len(out) < count:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        payloads, buffer = take_frames(buffer + data)
        out += payloads
    return out


def connect(port: int, timeout: float = WAIT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class GoodClient(threading.Thread):
    """Sends well-formed messages one after another on its own connection,
    waiting for each ACK. `pause()` holds it between two messages."""

    def __init__(self, port: int, register):
        super().__init__(daemon=True, name="good-client")
        self.port, self.register = port, register
        self.mix = templates()
        self.codes: list[str] = []
        self.problems: list[str] = []
        self.reconnects_while_paused = 0
        self.lock = threading.Lock()
        self._run = threading.Event()
        self._run.set()
        self.idle = threading.Event()
        self.stopping = False

    def aa(self) -> int:
        with self.lock:
            return self.codes.count("AA")

    def progressed(self, by: int = 3, timeout: float = WAIT) -> bool:
        start = self.aa()
        return wait_until(lambda: self.aa() >= start + by, timeout, interval=0.02)

    def pause(self) -> None:
        self._run.clear()
        assert self.idle.wait(WAIT), "the good client did not reach a pause"

    def resume(self) -> None:
        self.idle.clear()
        self._run.set()

    def run(self) -> None:
        sock, n, paused_since_connect = None, 0, False
        while not self.stopping:
            if not self._run.is_set():
                self.idle.set()
                self._run.wait(0.2)
                paused_since_connect = True
                continue
            n += 1
            cid = f"G-{n}"
            message = oru(cid, n) if n % 3 else set_control_id(self.mix[n % len(self.mix)], cid)
            try:
                if sock is None:
                    sock, paused_since_connect = connect(self.port), False
                sock.sendall(frame(message))
                acks = read_frames(sock, 1)
                if not acks:
                    raise ConnectionError("no ACK")
                code, acked = msa(acks[0])
                with self.lock:
                    self.codes.append(code)
                if (code, acked) != ("AA", cid):
                    self.problems.append(f"{cid}: {code} {acked}")
                else:
                    self.register(cid, message)
            except (OSError, ConnectionError) as exc:
                if sock is not None:
                    sock.close()
                sock = None
                if paused_since_connect:  # closed for idleness while paused: allowed
                    self.reconnects_while_paused += 1
                    n -= 1
                else:
                    self.problems.append(f"{cid}: {type(exc).__name__} {exc}")
                    time.sleep(0.5)
            time.sleep(0.01)
        if sock is not None:
            sock.close()


class Hostile:
    """The shared state of the module: serve, downstream, good client, memory."""

    def __init__(self, base):
        self.base = base
        self.journal = base / "journal.sqlite3"
        self.rule = Config().rule
        self.acked: dict[str, bytes] = {}  # control ID -> original, for every AA any client got
        self.never: set[str] = set()  # control IDs that must never be journaled or delivered
        self.figures: dict[str, object] = {}
        self.lock = threading.Lock()
        self.held: list[socket.socket] = []  # sockets a later test looks at

    def register(self, cid: str, message: bytes) -> None:
        with self.lock:
            assert cid not in self.acked or self.acked[cid] == message
            self.acked[cid] = message

    def journal_ids(self, state: str | None = None, invalid: bool = False) -> list[str]:
        db = sqlite3.connect(self.journal, timeout=30)
        try:
            rows = db.execute("SELECT control_id, state FROM messages").fetchall()
        finally:
            db.close()
        if state is not None:
            return [cid for cid, s in rows if s == state]
        return [cid for cid, s in rows if (s == "invalid") == invalid]

    def peak_growth_kb(self, since: float) -> int:
        return self.monitor.peak_since(since) - self.baseline_kb

    def assert_memory_bounded(self, since: float, name: str) -> None:
        growth = self.peak_growth_kb(since)
        self.figures[f"{name}_rss_growth_mb"] = round(growth / 1024, 1)
        assert growth < MEMORY_MARGIN_KB, f"{name}: serve grew by {growth} kB over its baseline"

    def frame_without_end(self) -> socket.socket:
        """The connection that sent a start block and a message but no end
        block, opened once and left hanging for serve's idle timeout."""
        if not self.held:
            sock = connect(self.serve.port)
            sock.sendall(SB + oru("NOEND-1"))
            self.held.append(sock)
            self.never.add("NOEND-1")
            self.opened_noend = time.monotonic()
        return self.held[0]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # serve inherits it
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("cannot raise the open-file limit enough for 500 connections")
    base = tmp_path_factory.mktemp("hostile")
    h = Hostile(base)
    h.down = RestartableDownstream().start()
    cfg = write_config(
        base / "config.toml",
        # max_invalid_frames off: these scenarios count every answer to long runs
        # of invalid frames; closing such a connection is tests/test_junk_fairness.py's.
        # and no per-peer limit or early close: every hostile client is 127.0.0.1, and some are slow to start.
        listener=dict(
            port=0,
            idle_timeout_s=IDLE_TIMEOUT_S,
            max_connections=MAX_CONNECTIONS,
            max_invalid_frames=0,
            max_connections_per_peer=0,
            first_byte_timeout_s=IDLE_TIMEOUT_S,
        ),
        journal=dict(path=str(h.journal)),
        downstream=dict(url=h.down.url, timeout_s=10.0, retry_initial_s=0.05, retry_max_s=0.5),
        logging=dict(format="json", level="info"),
        # Each message decided on its own: the good client repeats a few patients,
        # and the check below compares each delivery with process() of the message.
        context=dict(mode="message"),
    )
    h.serve = Serve(cfg).start()
    h.monitor = RssMonitor(h.serve.proc.pid, interval=0.05)
    h.monitor.start()
    h.good = GoodClient(h.serve.port, h.register)
    h.good.start()
    assert wait_until(lambda: h.good.aa() >= 50, WAIT), h.good.problems
    time.sleep(0.5)
    h.baseline_kb = max(rss_kb(h.serve.proc.pid), h.monitor.peak_since(time.monotonic() - 0.5))
    h.figures["baseline_rss_mb"] = round(h.baseline_kb / 1024, 1)
    yield h
    h.good.stopping = True
    h.good.join(10)
    h.monitor.stop()
    for sock in h.held:
        sock.close()
    h.serve.kill()
    h.down.stop()


# --------------------------------------------------------------------------


def test_frame_without_an_end_is_never_answered(hostile):
    """Opened now and left hanging: the last test checks serve closed it
    (idle timeout) without an answer. Meanwhile others are answered."""
    hostile.frame_without_end()
    assert hostile.good.progressed(5)


def test_random_bytes(hostile):
    rng = random.Random(SEED)
    since = time.monotonic()
    port = hostile.serve.port
    # 1. 8 MB of bytes that hold no start block: all skipped as junk; the same
    #    connection then sends a message and gets AA.
    junk = bytes(b for b in rng.randbytes(8_500_000) if b != 0x0B)[:8_000_000]
    with connect(port) as sock:
        for i in range(0, len(junk), 1 << 20):
            sock.sendall(junk[i : i + (1 << 20)])
        sock.sendall(frame(oru("RND-OK-1")))
        acks = read_frames(sock, 1)
    assert [msa(a) for a in acks] == [("AA", "RND-OK-1")]
    hostile.register("RND-OK-1", oru("RND-OK-1"))
    # 2. Random bytes of every value (start and end blocks included) on 4
    #    connections at once, read concurrently; each frame gets one answer.
    answers: dict[int, list[bytes]] = {}

    def blast(k: int, data: bytes) -> None:
        with connect(port) as sock:
            reader = threading.Thread(target=lambda: answers.__setitem__(k, read_frames(sock)))
            reader.start()
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            reader.join(WAIT)

    blobs = [rng.randbytes(64 * 1024) for _ in range(4)]
    threads = [threading.Thread(target=blast, args=(k, blob)) for k, blob in enumerate(blobs)]
    for t in threads:
        t.start()
    assert hostile.good.progressed(3)
    for t in threads:
        t.join(WAIT)
    codes = [msa(a)[0] for k in answers for a in answers[k]]
    assert len(answers) == 4 and len(codes) > 100
    # Each complete frame (a start block, then an end block before the next start block) got one answer.
    expected = sum(count_frames(blob) for blob in blobs)
    assert len(codes) == expected
    assert set(codes) == {"AR"}, "random bytes are not HL7 messages: AR, never AA or AE"
    assert hostile.serve.proc.poll() is None
    hostile.figures["random_bytes"] = dict(
        junk_bytes=len(junk), random_bytes=sum(map(len, blobs)), random_frames_answered_ar=len(codes)
    )
    hostile.assert_memory_bounded(since, "random_bytes")


def count_frames(data: bytes) -> int:
    """Complete MLLP frames in a byte stream, counted independently of the product's codec."""
    count, pos = 0, 0
    while True:
        start = data.find(SB, pos)
        if start < 0:
            return count
        end = data.find(EB, start + 1)
        if end < 0:
            return count
        restart = data.find(SB, start + 1, end)
        if restart >= 0:
            pos = restart  # the unfinished frame is abandoned at the next start block
            continue
        count += 1
        pos = end + 1


def test_truncated_frames(hostile):
    rng = random.Random(SEED + 1)
    mix = templates()
    since = time.monotonic()
    stream, expected = b"", []
    for i in range(1, 201):
        cut_cid, full_cid = f"TRUNC-{i}", f"FULL-{i}"
        cut = set_control_id(mix[i % len(mix)], cut_cid)
        full = set_control_id(mix[(i + 3) % len(mix)], full_cid)
        # A frame cut short (no end block), then a new start block with a complete frame.
        stream += SB + cut[: rng.randrange(1, len(cut))] + frame(full)
        expected.append((full_cid, full))
        hostile.never.add(cut_cid)
    # A complete frame whose message is cut after MSH: still an HL7 message, AA.
    short = set_control_id(mix[1], "SHORTMSG-1")
    short = short[: short.index(b"\r") + 1 + 10]
    stream += frame(short)
    expected.append(("SHORTMSG-1", short))
    with connect(hostile.serve.port) as sock:
        reader_out: list[bytes] = []
        reader = threading.Thread(target=lambda: reader_out.extend(read_frames(sock, len(expected))))
        reader.start()
        half = len(stream) // 2
        sock.sendall(stream[:half])
        assert hostile.good.progressed(3)
        sock.sendall(stream[half:])
        reader.join(WAIT)
    assert [msa(a) for a in reader_out] == [("AA", cid) for cid, _ in expected]
    for cid, message in expected:
        hostile.register(cid, message)
    journaled = set(hostile.journal_ids())
    assert not {f"TRUNC-{i}" for i in range(1, 201)} & journaled
    hostile.figures["truncated_frames"] = 200
    hostile.assert_memory_bounded(since, "truncated")


def test_gigabyte_frame_is_refused_without_holding_it(hostile):
    since = time.monotonic()
    head = b"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|BIG-1|P|2.5.1\rNTE|1||"
    chunk = (bytes(range(32, 127)) * ((1 << 20) // 95 + 1))[: 1 << 20]
    hostile.never.add("BIG-1")
    started = time.monotonic()
    with connect(hostile.serve.port) as sock:
        sock.sendall(SB + head)
        sent = len(head)
        while sent < GIB // 2:
            sock.sendall(chunk)
            sent += len(chunk)
        # Half a gigabyte in: the good client is still answered.
        assert hostile.good.progressed(3)
        half_growth = hostile.peak_growth_kb(since)
        while sent < GIB:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(EB + CR)
        ack = read_frames(sock, 1)[0]
        seconds = time.monotonic() - started
        assert msa(ack) == ("AR", "BIG-1")
        err = segment(ack, b"ERR")
        assert err[3].startswith(b"207^") and b"max_message_bytes" in err[8]
        # The same connection still works afterwards.
        sock.sendall(frame(oru("BIG-AFTER-1")))
        assert msa(read_frames(sock, 1)[0]) == ("AA", "BIG-AFTER-1")
    hostile.register("BIG-AFTER-1", oru("BIG-AFTER-1"))
    growth = hostile.peak_growth_kb(since)
    assert growth < 64 * 1024, f"serve grew by {growth} kB while reading a 1 GiB frame"
    db = sqlite3.connect(hostile.journal, timeout=30)
    rows = db.execute("SELECT state, length(raw) FROM messages WHERE control_id = 'BIG-1'").fetchall()
    db.close()
    assert rows and all(state == "invalid" and size <= 4096 for state, size in rows), rows
    hostile.figures["gigabyte_frame"] = dict(
        bytes=sent,
        seconds=round(seconds, 1),
        rss_growth_mb_at_half=round(half_growth / 1024, 1),
        rss_growth_mb=round(growth / 1024, 1),
    )
    hostile.assert_memory_bounded(since, "gigabyte")


def test_thousands_of_tiny_frames(hostile):
    since = time.monotonic()
    frames, expected = [], []
    for i in range(1, 2501):
        if i % 5 == 0:
            cid = f"TINY-{i}"
            message = f"MSH|^~\\&|||||||ORU^R01|{cid}|P|2.5\r".encode()
            frames.append(frame(message))
            expected.append(("AA", cid, message))
        elif i % 2:
            frames.append(SB + EB + CR)  # an empty frame
            expected.append(("AR", "", None))
        else:
            frames.append(SB + b"x" + EB)  # one byte, no trailing CR
            expected.append(("AR", "", None))
    data = b"".join(frames)
    with connect(hostile.serve.port) as sock:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.extend(read_frames(sock, len(frames))))
        reader.start()
        sock.sendall(data[: len(data) // 2])
        assert hostile.good.progressed(3)
        sock.sendall(data[len(data) // 2 :])
        reader.join(WAIT * 2)
    assert [msa(a) for a in out] == [(code, cid) for code, cid, _ in expected]
    for code, cid, message in expected:
        if code == "AA":
            hostile.register(cid, message)
    hostile.figures["tiny_frames"] = dict(
        frames=len(frames), aa=sum(1 for e in expected if e[0] == "AA"), ar=sum(1 for e in expected if e[0] == "AR")
    )
    hostile.assert_memory_bounded(since, "tiny_frames")


def test_slow_senders_trickling_a_byte_at_a_time(hostile):
    since = time.monotonic()
    mix = templates()
    half_done = threading.Barrier(6)
    go = threading.Event()
    results: dict[int, list] = {}

    def trickle(k: int) -> None:
        cid = f"SLOW-{k}"
        message = set_control_id(mix[k % len(mix)], cid)
        data = frame(message)
        try:
            with connect(hostile.serve.port) as sock:
                for i, byte in enumerate(data):
                    if i == len(data) // 2:
                        half_done.wait(WAIT)
                        go.wait(WAIT)
                    sock.sendall(bytes([byte]))
                    time.sleep(0.003)
                results[k] = [msa(a) for a in read_frames(sock, 1)] + [message]
        except Exception as exc:
            results[k] = [repr(exc)]

    threads = [threading.Thread(target=trickle, args=(k,)) for k in range(1, 6)]
    for t in threads:
        t.start()
    half_done.wait(WAIT)
    assert hostile.good.progressed(3)  # five frames half-read, byte by byte, and others still answered
    go.set()
    for t in threads:
        t.join(WAIT)
    for k in range(1, 6):
        assert results[k][0] == ("AA", f"SLOW-{k}"), results[k]
        hostile.register(f"SLOW-{k}", results[k][1])
    hostile.figures["slow_senders"] = 5
    hostile.assert_memory_bounded(since, "slow_senders")


def test_500_connections_at_once_and_clean_refusal_past_the_limit(hostile):
    since = time.monotonic()
    port = hostile.serve.port
    conns: list[socket.socket] = []
    extras: list[socket.socket] = []
    try:
        for _ in range(500):
            conns.append(connect(port))
        for i, sock in enumerate(conns):
            sock.sendall(frame(oru(f"C500-{i}", i)))
        answers = [read_frames(sock, 1) for sock in conns]
        assert [msa(a[0]) if a else None for a in answers] == [("AA", f"C500-{i}") for i in range(500)]
        for i in range(500):
            hostile.register(f"C500-{i}", oru(f"C500-{i}", i))
        # Past max_connections (520, with 500 + the good client open): closed at once, never half-served.
        refused_before = sum(
            1 for r in hostile.serve.records("connection_refused") if r.get("reason") == "max_connections reached"
        )
        accepted, refused = [], []
        for i in range(40):
            cid = f"EXTRA-{i}"
            try:
                sock = connect(port)
                extras.append(sock)
                sock.sendall(frame(oru(cid, i)))
                got = read_frames(sock, 1)
            except OSError:
                got = []
            if got:
                assert msa(got[0]) == ("AA", cid)
                accepted.append(cid)
                hostile.register(cid, oru(cid, i))
            else:
                refused.append(cid)
        assert hostile.good.progressed(3)  # 540 connections open, and the good client is answered
        peak_connections_growth = hostile.peak_growth_kb(since)
    finally:
        for sock in conns + extras:
            sock.close()
    assert len(accepted) <= MAX_CONNECTIONS - 501 and len(refused) >= 40 - (MAX_CONNECTIONS - 501)
    assert hostile.serve.wait_record("connection_refused", refused_before + len(refused))
    journaled = set(hostile.journal_ids())
    assert not set(refused) & journaled
    hostile.never.update(refused)
    hostile.figures["connections"] = dict(
        at_once=500,
        all_aa=True,
        extra=40,
        extra_accepted=len(accepted),
        extra_refused=len(refused),
        rss_growth_mb=round(peak_connections_growth / 1024, 1),
    )
    hostile.assert_memory_bounded(since, "connections")
    # And afterwards new connections are served again.
    with connect(port) as sock:
        sock.sendall(frame(oru("AFTER500-1")))
        assert msa(read_frames(sock, 1)[0]) == ("AA", "AFTER500-1")
    hostile.register("AFTER500-1", oru("AFTER500-1"))


def test_connections_that_close_mid_frame(hostile):
    since = time.monotonic()
    records_before = len(hostile.serve.records("incomplete_frame"))
    socks = []
    for i in range(100):
        cid = f"MID-{i}"
        message = oru(cid, i)
        sock = connect(hostile.serve.port)
        sock.sendall(SB + message[: len(message) * (i % 9 + 1) // 10])
        socks.append(sock)
        hostile.never.add(cid)
    assert hostile.good.progressed(3)  # a hundred half-frames open
    for i, sock in enumerate(socks):
        if i % 2:  # abort: RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert hostile.serve.wait_record("incomplete_frame", records_before + 50)  # the 50 closed with FIN
    assert hostile.good.progressed(3)
    journaled = set(hostile.journal_ids()) | set(hostile.journal_ids(invalid=True))
    assert not {f"MID-{i}" for i in range(100)} & journaled
    hostile.figures["closed_mid_frame"] = 100
    hostile.assert_memory_bounded(since, "mid_frame")


def test_journal_that_cannot_be_written_answers_ae_never_aa(hostile):
    """Another process holds the journal's write lock longer than serve's
    busy timeout: the message is answered AE and not stored; sent again after
    the lock is gone, it is answered AA and delivered once."""
    good = hostile.good
    good.pause()
    everything = set(hostile.acked)
    assert wait_until(lambda: everything <= {d.control_id for d in hostile.down.snapshot()}, WAIT)
    message = oru("LOCKED-1")
    db = sqlite3.connect(hostile.journal, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        with connect(hostile.serve.port) as sock:
            sock.sendall(frame(message))
            acks = read_frames(sock, 1)
            assert acks, "no answer while the journal was locked"
            code, acked = msa(acks[0])
            assert (code, acked) == ("AE", "LOCKED-1")
            err = segment(acks[0], b"ERR")
            assert err[3].startswith(b"207^") and b"journal" in err[8]
            assert "LOCKED-1" not in hostile.journal_ids(), "answered AE but stored"
            db.execute("ROLLBACK")
            sock.sendall(frame(message))
            assert msa(read_frames(sock, 1)[0]) == ("AA", "LOCKED-1")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
        good.resume()
    hostile.register("LOCKED-1", message)
    assert hostile.journal_ids().count("LOCKED-1") == 1
    assert good.progressed(3)
    hostile.figures["journal_locked"] = "AE while locked, AA after"


def test_zz_promises_kept_still_alive_and_sigterm_exits_zero(hostile):
    serve, down = hostile.serve, hostile.down
    # The frame without an end: closed by serve at the idle timeout, never answered.
    sock = hostile.frame_without_end()  # opened by the test above, or now when run alone
    sock.settimeout(IDLE_TIMEOUT_S + WAIT)
    assert sock.recv(100) == b"", "a frame without an end must not be answered"
    assert wait_until(
        lambda: any(
            r.get("reason") == "idle timeout" and r.get("in_frame") for r in serve.records("connection_closed")
        ),
        WAIT,
    )
    assert serve.proc.poll() is None, "serve is alive after everything"
    assert hostile.good.progressed(3)
    hostile.good.stopping = True
    hostile.good.join(WAIT)
    assert not hostile.good.problems, hostile.good.problems[:10]
    # Every AA is journaled and delivered exactly as process() makes it; nothing else is.
    acked = dict(hostile.acked)
    journaled = hostile.journal_ids()
    assert not set(acked) - set(journaled), "ACKed AA but not in the journal"
    assert wait_until(lambda: set(acked) <= {d.control_id for d in down.snapshot()}, WAIT)
    deliveries = down.snapshot()
    delivered = {d.control_id for d in deliveries}
    assert delivered == set(acked), f"delivered without an AA: {sorted(delivered - set(acked))[:10]}"
    assert not hostile.never & (set(journaled) | delivered)
    wrong = [d.control_id for d in deliveries if d.payload != process(acked[d.control_id], hostile.rule)[0]]
    assert not wrong, wrong[:10]
    decisions = serve.records("decision")  # at info, a message's one record
    assert decisions and all(r.get("journal_id") for r in decisions)
    overall = hostile.monitor.peak_since(0)
    assert overall - hostile.baseline_kb < MEMORY_MARGIN_KB
    assert serve.stop() == 0
    assert "Traceback" not in serve.stderr
    hostile.figures.update(
        good_client_aa=hostile.good.aa(),
        acked_aa_total=len(acked),
        delivered=len(deliveries),
        duplicates=len(deliveries) - len(delivered),
        peak_rss_mb=round(overall / 1024, 1),
        invalid_rows=len(hostile.journal_ids(invalid=True)),
    )
    print("\nHOSTILE FIGURES " + json.dumps(hostile.figures))
