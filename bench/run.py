"""b12comment benchmarks against honest baselines measured in the same run.

    .venv/bin/python bench/run.py                 # every row, a few minutes
    .venv/bin/python bench/run.py --quick         # fewer messages and rounds
    .venv/bin/python bench/run.py --only serve    # one part: process, replay, serve, context, history, latency

Every figure is a median over interleaved rounds (ours, then each baseline,
then ours again, ...), so a burst of other work on the machine hits both
sides. Every row prints its baseline and the ratio. Never run by the tests;
targets are checked by reading the table (bench/README.md).

Baselines, each its own process where it is a server:
- python-hl7 `hl7.parse` + `str()` of the same messages (process());
- a python-hl7 replay: read the files, split, parse, `str()`, write with fsync;
  it decides nothing (no rule, no first pass, no context store), so against
  it our replay with the context on (the default) also pays for the first
  pass over the archive and the store, and the "mode = message" row shows
  the same replay without them;
- a Python copy of the same files with fsync (the I/O floor of replay);
- b12comment's bytecode is compiled before anything is measured, as a wheel
  install does (python-hl7 and the other installed packages load theirs);
- a raw asyncio MLLP no-op server (reads frames, answers a fixed AA);
- the durable floor: an asyncio server that commits each message to SQLite
  (WAL, synchronous=FULL), one commit per message, before its ACK;
- the pipeline floor: the durable floor that also forwards each message to
  a sink over MLLP, in order, waiting for each ACK, and records the
  delivery (serve's like for like);
- the same floor with its commit on a writer thread (what serve must do so
  that a held write lock or a slow disk does not freeze the event loop);
- python-hl7's own asyncio MLLP server answering ACKs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import generate  # noqa: E402

from b12comment.core.engine import process  # noqa: E402
from b12comment.core.rule_config import RuleConfig  # noqa: E402
from b12comment.wire.split import read_pieces  # noqa: E402

ROWS: list[tuple[str, str, str, str, str]] = []


def row(what: str, value: str, baseline: str = "", ratio: str = "", target: str = "") -> None:
    ROWS.append((what, value, baseline, ratio, target))
    extra = f"  (baseline {baseline}; {ratio})" if baseline else ""
    print(f"  {what}: {value}{extra}" + (f"  target {target}" if target else ""), flush=True)


def messages_of(paths, limit=None) -> list[bytes]:
    out = []
    for p in paths:
        with open(p, "rb") as f:
            for piece in read_pieces(f):
                if piece.kind == "message":
                    out.append(piece.data)
                    if limit and len(out) >= limit:
                        return out
    return out


def interleaved(rounds: int, **runs: Callable[[], float]) -> dict[str, float]:
    """Median of each run over `rounds` rounds, the runs alternating within a round."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(fn())
    return {name: statistics.median(v) for name, v in samples.items()}


# ---------------------------------------------------------------- process()


def process_messages() -> dict[str, list[bytes]]:
    """The shapes of the target rows, built like the generator's ORU."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from builders import Obx, build

    def panel(n: int) -> tuple:
        return tuple(
            Obx(code=f"NPU{1000 + i}^Test {i}^IUPP", value=f"{10 + i % 5}.{i % 10}", units="mmol/L", range="5-20")
            for i in range(n)
        )

    def vary(kw: dict, k: int) -> bytes:
        m = build(**kw)
        return m.replace(b"|MSG1|", f"|B{k:06d}|".encode())  # MSH-10

    return {
        "child B12, small (MSH, PID, OBR, B12 OBX, 3 results)": [vary(dict(others=panel(3)), k) for k in range(50)],
        "child B12 in a 30-OBX panel": [vary(dict(others=panel(29)), k) for k in range(50)],
        "adult B12 in a 10-OBX panel": [vary(dict(birth="19700101", others=panel(9)), k) for k in range(50)],
        "no B12 (10-OBX panel)": [vary(dict(others=panel(10)), k).replace(b"14685-2", b"NPU0000") for k in range(50)],
    }


def bench_process(rounds: int) -> None:
    import hl7

    rule = RuleConfig()
    print("process() per message (CPU time), against python-hl7 hl7.parse + str() of the same messages")
    targets = {
        "child B12, small (MSH, PID, OBR, B12 OBX, 3 results)": "≥ 2x python-hl7",
        "child B12 in a 30-OBX panel": "≤ 1.0 ms",
        "adult B12 in a 10-OBX panel": "≤ 0.15 ms",
        "no B12 (10-OBX panel)": "≤ 25 µs",
    }
    for kind, sample in process_messages().items():
        texts = [m.decode("latin-1") for m in sample]

        # CPU time of this process (not wall time): on a shared machine the
        # wall time also counts the other work that ran meanwhile.
        def ours(sample=sample, reps=20) -> float:
            start = time.process_time()
            for _ in range(reps):
                for m in sample:
                    process(m, rule)
            return (time.process_time() - start) / (reps * len(sample))

        def theirs(texts=texts, reps=20) -> float:
            start = time.process_time()
            for _ in range(reps):
                for t in texts:
                    str(hl7.parse(t))
            return (time.process_time() - start) / (reps * len(texts))

        m = interleaved(rounds, ours=ours, theirs=theirs)
        row(
            f"process(), {kind}",
            f"{m['ours'] * 1e6:,.0f} µs",
            f"python-hl7 {m['theirs'] * 1e6:,.0f} µs",
            f"{m['theirs'] / m['ours']:.2f}x python-hl7",
            targets[kind],
        )


# ---------------------------------------------------------------- replay

COPY_FSYNC = r"""
import os, sys
src, dst = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(src):
    for name in sorted(files):
        path = os.path.join(root, name)
        out = os.path.join(dst, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(path, "rb") as fin, open(out, "wb") as fout:
            fout.write(fin.read())
            fout.flush()
            os.fsync(fout.fileno())
"""

PYTHON_HL7_REPLAY = r"""
import os, sys, hl7
sys.path.insert(0, sys.argv[3])
from b12comment.wire.split import read_pieces
src, dst = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(src):
    for name in sorted(files):
        path = os.path.join(root, name)
        out = os.path.join(dst, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(path, "rb") as fin, open(out, "wb") as fout:
            for piece in read_pieces(fin):
                if piece.kind == "message":
                    fout.write(str(hl7.parse(piece.data.decode("latin-1"))).encode("latin-1"))
                else:
                    fout.write(piece.data)
            fout.flush()
            os.fsync(fout.fileno())
"""


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (kB)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_child(args: list[str], out: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS of the process tree in kB), `out` emptied first."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.02)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} exited {proc.returncode}")
    return secs, peak


def bench_replay(tmp: Path, n: int, rounds: int) -> None:
    print(f"replay, {n:,} messages per archive, 1 worker, against baselines as processes of their own")
    copy_py, hl7_py = tmp / "copy_fsync.py", tmp / "pythonhl7_replay.py"
    message_mode = tmp / "message_mode.toml"
    message_mode.write_text('[context]\nmode = "message"\n')  # the message alone: no context store
    copy_py.write_text(COPY_FSYNC)
    hl7_py.write_text(PYTHON_HL7_REPLAY)
    repo = str(HERE.parent)
    for mix in ("dense", "realistic", "team"):
        archive = tmp / f"archive_{mix}"
        generate.generate(archive, n, seed=7, mix=mix)
        out = tmp / "out"

        def ours(workers: int = 1, archive=archive, out=out, extra=()) -> float:
            args = [sys.executable, "-m", "b12comment", "replay", "--quiet", *extra, str(archive), "--out", str(out)]
            secs, _ = run_child([*args, "--workers", str(workers)], out)
            return n / secs

        def ours_message_mode() -> float:
            return ours(extra=("--config", str(message_mode)))

        def copy(archive=archive, out=out) -> float:
            return n / run_child([sys.executable, str(copy_py), str(archive), str(out)], out)[0]

        def python_hl7(archive=archive, out=out) -> float:
            return n / run_child([sys.executable, str(hl7_py), str(archive), str(out), repo], out)[0]

        m = interleaved(rounds, ours=ours, message_mode=ours_message_mode, python_hl7=python_hl7, copy=copy)
        name = {"dense": "B12-dense", "realistic": "realistic (2% B12)", "team": "team mix"}[mix]
        target_hl7 = "≥ 3x" if mix == "dense" else ""
        target_copy = "≥ 0.12x" if mix == "realistic" else ""
        row(
            f"replay, {name} archive, 1 worker",
            f"{m['ours']:,.0f} msg/s",
            f"python-hl7 replay {m['python_hl7']:,.0f} msg/s",
            f"{m['ours'] / m['python_hl7']:.2f}x python-hl7",
            target_hl7,
        )
        row(
            f"replay, {name} archive, 1 worker vs copy",
            f"{m['ours']:,.0f} msg/s",
            f"copy with fsync {m['copy']:,.0f} msg/s",
            f"{m['ours'] / m['copy']:.3f}x copy",
            target_copy,
        )
        row(
            f"replay, {name} archive, 1 worker, [context] mode = message (no store)",
            f"{m['message_mode']:,.0f} msg/s",
            f"python-hl7 replay {m['python_hl7']:,.0f} msg/s / copy {m['copy']:,.0f} msg/s",
            f"{m['message_mode'] / m['python_hl7']:.2f}x python-hl7, {m['message_mode'] / m['copy']:.3f}x copy",
        )
        if mix == "team":
            for workers in (1, 2, 3, 4):
                args = [sys.executable, "-m", "b12comment", "replay", "--quiet", str(archive), "--out", str(out)]
                secs, peak = run_child([*args, "--workers", str(workers)], out)
                row(f"replay peak RSS, {workers} worker(s), team mix", f"{peak / 1024:,.0f} MB", "", "")
        shutil.rmtree(archive)
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- serve

RAW_NOOP = r"""
import asyncio, os, sys, time
port, count_file = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "")
seen = 0
async def handle(reader, writer):
    global seen
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
            out = []
            while True:
                end = buf.find(b"\x1c\r")
                if end < 0:
                    break
                frame, buf = buf[1:end], buf[end + 2:]
                msh = frame[: frame.find(b"\r")]
                cid = msh.split(msh[3:4])[9] if msh.count(msh[3:4]) >= 9 else b""
                out.append(b"\x0bMSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|AA|" + cid + b"\r\x1c\r")
                seen += 1
            if out:
                writer.write(b"".join(out))
                await writer.drain()
    finally:
        writer.close()
async def report():
    last = -1
    while True:
        await asyncio.sleep(0.02)
        if seen != last:
            last = seen
            with open(count_file + ".tmp", "w") as f:
                f.write(str(seen))
            os.replace(count_file + ".tmp", count_file)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    if count_file:
        asyncio.ensure_future(report())
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

DURABLE_FLOOR = r"""
import asyncio, sqlite3, sys
from concurrent.futures import ThreadPoolExecutor
port, path = int(sys.argv[1]), sys.argv[2]
# "thread": each commit on a writer thread, as serve must (the hop is what it costs)
writer_thread = ThreadPoolExecutor(max_workers=1) if sys.argv[3:] == ["thread"] else None
db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, control_id TEXT, raw BLOB)")
def commit(cid, frame):
    db.execute("BEGIN")
    db.execute("INSERT INTO m (control_id, raw) VALUES (?, ?)", (cid.decode("latin-1"), frame))
    db.execute("COMMIT")  # one fsync of the WAL per message, before the ACK
async def handle(reader, writer):
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\x1c\r")
            frame = head[1:-2]
            msh = frame[: frame.find(b"\r")]
            cid = msh.split(msh[3:4])[9] if msh.count(msh[3:4]) >= 9 else b""
            if writer_thread is None:
                commit(cid, frame)
            else:
                await loop.run_in_executor(writer_thread, commit, cid, frame)
            writer.write(b"\x0bMSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|AA|" + cid + b"\r\x1c\r")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 24)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

# A raw no-op downstream that writes, per message, its control ID and the
# wall-clock time it arrived (for the sender-to-downstream latency).
LATENCY_SINK = r"""
import asyncio, sys, time
port, out = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\x1c\r")
            now = time.time()
            frame = head[1:-2]
            msh = frame[: frame.find(b"\r")]
            cid = msh.split(msh[3:4])[9] if msh.count(msh[3:4]) >= 9 else b""
            out.write(f"{cid.decode('latin-1')} {now}\n")
            writer.write(b"\x0bMSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|AA|" + cid + b"\r\x1c\r")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 24)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

# The pipeline floor: what serve does at the least, in one asyncio process:
# each message committed to SQLite (WAL, synchronous=FULL) before its AA,
# then forwarded in order over one MLLP connection to a sink, waiting for
# each ACK, and its delivery recorded (10 at a time, or when the queue is
# empty, one commit each). No parsing, no decision, no context.
PIPELINE_FLOOR = r"""
import asyncio, sqlite3, sys
port, path, down = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute(
    "CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, control_id TEXT, raw BLOB, forwarded INTEGER DEFAULT 0)"
)
queue = None
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\x1c\r")
            frame = head[1:-2]
            msh = frame[: frame.find(b"\r")]
            cid = msh.split(msh[3:4])[9] if msh.count(msh[3:4]) >= 9 else b""
            db.execute("BEGIN")
            rid = db.execute("INSERT INTO m (control_id, raw) VALUES (?, ?)", (cid.decode("latin-1"), frame)).lastrowid
            db.execute("COMMIT")
            writer.write(b"\x0bMSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|AA|" + cid + b"\r\x1c\r")
            queue.put_nowait((rid, frame))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def forward():
    reader, writer = await asyncio.open_connection("127.0.0.1", down, limit=1 << 24)
    done = []
    while True:
        rid, frame = await queue.get()
        writer.write(b"\x0b" + frame + b"\x1c\r")
        await writer.drain()
        await reader.readuntil(b"\x1c\r")
        done.append(rid)
        if len(done) >= 10 or queue.empty():
            db.execute("BEGIN")
            db.executemany("UPDATE m SET forwarded = 1 WHERE id = ?", [(i,) for i in done])
            db.execute("COMMIT")
            done = []
async def main():
    global queue
    queue = asyncio.Queue()
    asyncio.ensure_future(forward())
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 24)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

PYTHON_HL7_NOOP = r"""
import asyncio, sys, hl7
from hl7.mllp import start_hl7_server
async def handle(reader, writer):
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            writer.writemessage(msg.create_ack())
            await writer.drain()
    except Exception:
        pass
async def main():
    server = await start_hl7_server(
        handle, host="127.0.0.1", port=int(sys.argv[1]), encoding="latin-1", limit=1 << 24
    )
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Server:
    def __init__(self, args: list[str], port: int):
        self.port = port
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def cpu_s(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        return tree_rss_kb(self.proc.pid)

    def hwm_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_script(tmp: Path, name: str, text: str, *extra: str) -> Server:
    port = free_port()
    script = tmp / f"{name}.py"
    script.write_text(text)
    return Server([sys.executable, str(script), str(port), *extra], port)


def start_serve(
    tmp: Path, downstream: str, extra: str = "", name: str = "bench", journal: str = "", log_level: str = "info"
) -> Server:
    """serve on a fresh SQLite journal, or on `journal` (a postgresql:// URL,
    bench/postgres.py), at the shipped log level (info: a line per message,
    to a pipe read by nobody) unless told otherwise."""
    port = free_port()
    cfg = tmp / f"{name}.toml"
    if not journal:
        journal = str(tmp / f"{name}-journal.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
    cfg.write_text(
        f"[listener]\nport = {port}\nmax_connections = 64\n"
        f'[journal]\npath = "{journal}"\n'
        f'[downstream]\nurl = "{downstream}"\n'
        f'[logging]\nlevel = "{log_level}"\n'
        f'[context]\nstore = "{tmp / f"{name}-context.sqlite3"}"\nkey_file = "{tmp / f"{name}-context.key"}"\n' + extra
    )
    return Server([sys.executable, "-m", "b12comment", "serve", "--config", str(cfg)], port)  # extra: [context] keys


def send_sequential(
    port: int, messages: list[bytes], pace_s: float = 0.0, sent_at: list[float] | None = None
) -> list[float]:
    """One connection, one message after another, each waiting for its ACK
    (a raw socket client: the client's own cost stays small); `sent_at`
    gets the wall-clock time each was sent."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        next_at = time.perf_counter()
        for i, m in enumerate(messages):
            if pace_s:
                now = time.perf_counter()
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += pace_s
            start = time.perf_counter()
            if sent_at is not None:
                sent_at.append(time.time())
            s.sendall(b"\x0b" + m + b"\x1c\r")
            ack = b""
            while not ack.endswith(b"\x1c\r"):
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError(f"port {port}: connection closed at message {i}")
                ack += chunk
            latencies.append(time.perf_counter() - start)
            if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
                raise RuntimeError(f"port {port}: message {i} got {ack[:200]!r}")
    return latencies


def send_concurrent(port: int, messages: list[bytes], senders: int) -> float:
    share = [messages[i::senders] for i in range(senders)]
    errors: list[BaseException] = []

    def one(part):
        try:
            send_sequential(port, part)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(part,)) for part in share]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(messages) / (time.perf_counter() - start)


def tagged(messages: list[bytes], tag: str) -> list[bytes]:
    """New control IDs (tag appended to MSH-10): the same ID and bytes again
    would be a retransmission, ACKed without writing anything."""
    out = []
    for m in messages:
        end = m.find(b"\r")
        fs = m[3:4]
        fields = m[:end].split(fs)
        fields[9] += tag.encode("ascii")
        out.append(fs.join(fields) + m[end:])
    return out


def read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def wait_until(count: Callable[[], int], target: int, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count()} of {target} delivered")
        time.sleep(0.005)
    return time.perf_counter()


def bench_serve(tmp: Path, n: int, rounds: int) -> None:
    paths = generate.generate(tmp / "serve_archive", n, seed=3, mix="team")
    messages = messages_of(paths, n)
    print(f"serve: {n:,} messages per phase (team mix), {rounds} interleaved rounds, raw socket senders")
    sink_count = tmp / "sink.count"
    sink = start_script(tmp, "sink", RAW_NOOP, str(sink_count))
    serve = start_serve(tmp, f"mllp://127.0.0.1:{sink.port}")
    floor = start_script(tmp, "floor", DURABLE_FLOOR, str(tmp / "floor.sqlite3"))
    floor_thread = start_script(tmp, "floor_thread", DURABLE_FLOOR, str(tmp / "floor_thread.sqlite3"), "thread")
    noop = start_script(tmp, "noop", RAW_NOOP)
    pyhl7 = start_script(tmp, "pythonhl7", PYTHON_HL7_NOOP)
    pipeline_sink = start_script(tmp, "pipeline_sink", RAW_NOOP)
    pipeline = start_script(tmp, "pipeline", PIPELINE_FLOOR, str(tmp / "pipeline.sqlite3"), str(pipeline_sink.port))
    servers = {
        "serve": serve,
        "pipeline floor": pipeline,
        "floor": floor,
        "floor, writer thread": floor_thread,
        "raw no-op": noop,
        "python-hl7 no-op": pyhl7,
    }
    seq: dict[str, list[float]] = {k: [] for k in servers}
    conc: dict[str, list[float]] = {k: [] for k in servers}
    lat: dict[str, list[float]] = {k: [] for k in servers}
    cpu: dict[str, list[float]] = {k: [] for k in servers}  # CPU seconds per message, sequential phase
    ratio_delivery: list[float] = []
    try:
        for srv in servers.values():  # warm-up
            send_sequential(srv.port, tagged(messages[:200], "W"))
        delivered = 200
        for r in range(rounds):
            for name, srv in servers.items():
                batch = tagged(messages, f"S{r}")
                cpu_before = srv.cpu_s()
                start = time.perf_counter()
                send_sequential(srv.port, batch)
                end = time.perf_counter()
                seq[name].append(n / (end - start))
                if name == "serve":
                    delivered += n
                    done = wait_until(lambda: read_count(sink_count), delivered)
                    ratio_delivery.append((end - start) / (done - start))
                cpu[name].append((srv.cpu_s() - cpu_before) / n)  # serve: with its delivery downstream
            for name, srv in servers.items():
                conc[name].append(send_concurrent(srv.port, tagged(messages, f"C{r}"), 8))
                if name == "serve":
                    delivered += n
                    wait_until(lambda: read_count(sink_count), delivered)  # quiet before the next phase
            for name, srv in servers.items():
                lat[name] += send_sequential(srv.port, tagged(messages[: min(n, 1000)], f"L{r}"), pace_s=1 / 500)
                if name == "serve":
                    delivered += min(n, 1000)
                    wait_until(lambda: read_count(sink_count), delivered)
        serve_rss = serve.hwm_kb()
    finally:
        for srv in (*servers.values(), sink, pipeline_sink):
            srv.stop()
    med = {k: statistics.median(v) for k, v in seq.items()}
    cmed = {k: statistics.median(v) for k, v in conc.items()}
    bases = ("pipeline floor", "floor", "floor, writer thread", "raw no-op", "python-hl7 no-op")
    for base in bases:
        row(
            "serve, 1 sequential sender, MLLP downstream",
            f"{med['serve']:,.0f} msg/s",
            f"{base} {med[base]:,.0f} msg/s",
            f"{med['serve'] / med[base]:.2f}x {base}",
            "≥ 0.5x pipeline floor" if base == "pipeline floor" else "",
        )
    for base in bases:
        row(
            "serve, 8 concurrent senders",
            f"{cmed['serve']:,.0f} msg/s",
            f"{base} {cmed[base]:,.0f} msg/s",
            f"{cmed['serve'] / cmed[base]:.2f}x {base}",
            "≥ 0.8x pipeline floor" if base == "pipeline floor" else "",
        )
    row(
        "durable floor, 1 sequential sender",
        f"{med['floor']:,.0f} msg/s",
        f"raw no-op {med['raw no-op']:,.0f} msg/s",
        f"{med['floor'] / med['raw no-op']:.2f}x raw no-op",
    )
    for name in ("serve", "floor", "floor, writer thread", "raw no-op"):
        row(
            f"CPU per message, 1 sequential sender: {name}",
            f"{statistics.median(cpu[name]) * 1e6:,.0f} µs",
            f"floor {statistics.median(cpu['floor']) * 1e6:,.0f} µs",
            f"{statistics.median(cpu[name]) / statistics.median(cpu['floor']):.1f}x floor",
        )
    row(
        "durable floor with its commit on a writer thread, 1 sequential sender",
        f"{med['floor, writer thread']:,.0f} msg/s",
        f"floor {med['floor']:,.0f} msg/s",
        f"{med['floor, writer thread'] / med['floor']:.2f}x floor",
    )

    def p99(v: list[float]) -> float:
        v = sorted(v)
        return v[max(0, int(len(v) * 0.99) - 1)]

    for base in ("pipeline floor", "floor", "raw no-op"):
        row(
            "ACK p99 at 500 msg/s",
            f"{p99(lat['serve']) * 1e3:.2f} ms",
            f"{base} {p99(lat[base]) * 1e3:.2f} ms",
            f"{p99(lat['serve']) / p99(lat[base]):.1f}x {base}",
        )
    row(
        "ACK p50 at 500 msg/s",
        f"{statistics.median(lat['serve']) * 1e3:.2f} ms",
        f"floor {statistics.median(lat['floor']) * 1e3:.2f} ms",
        f"{statistics.median(lat['serve']) / statistics.median(lat['floor']):.1f}x floor",
    )
    row(
        "delivery vs intake, 1 sequential sender, MLLP downstream",
        f"{statistics.median(ratio_delivery):.2f}x intake",
        "",
        "",
        "≥ 0.95x",
    )
    row(f"serve peak RSS (VmHWM) after {delivered:,} messages", f"{serve_rss / 1024:,.0f} MB")
    bench_folder_drop(tmp, messages)


def percentile(v: list[float], p: float) -> float:
    v = sorted(v)
    return v[max(0, int(len(v) * p / 100) - 1)]


def control_ids(messages: list[bytes]) -> list[str]:
    out = []
    for m in messages:
        first = m[: m.find(b"\r")]
        out.append(first.split(first[3:4])[9].decode("latin-1"))
    return out


def arrival_times(path: Path, wanted: set[str], timeout: float = 120.0) -> dict[str, float]:
    """When the latency sink (its file at `path`) got each wanted control ID:
    waits until all came, or the timeout."""
    deadline = time.monotonic() + timeout
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        got = {}
        for line in path.read_text().splitlines():
            cid, _, when = line.partition(" ")
            if cid in wanted:
                got[cid] = float(when)
        if len(got) == len(wanted):
            break
        time.sleep(0.05)
    return got


def bench_latency(tmp: Path, n: int, rounds: int) -> None:
    """From sender to downstream: serve with an MLLP downstream that notes
    when each message arrives, one sender paced at 20, 100 and 500 msg/s;
    the baseline is the durable floor's ACK at the same pace (what a
    message costs before anything is done with it)."""
    messages = messages_of(generate.generate(tmp / "latency_archive", n, seed=5, mix="team"), n)
    print(f"sender to downstream: {n:,} messages per pace, {rounds} interleaved rounds")
    arrivals = tmp / "latency-arrivals.txt"
    sink = start_script(tmp, "latency_sink", LATENCY_SINK, str(arrivals))
    serve = start_serve(tmp, f"mllp://127.0.0.1:{sink.port}", name="latency")
    floor = start_script(tmp, "latency_floor", DURABLE_FLOOR, str(tmp / "latency-floor.sqlite3"))
    e2e: dict[int, list[float]] = {rate: [] for rate in (20, 100, 500)}
    ack: dict[int, list[float]] = {rate: [] for rate in (20, 100, 500)}
    floor_ack: dict[int, list[float]] = {rate: [] for rate in (20, 100, 500)}
    try:
        send_sequential(serve.port, tagged(messages[:100], "W"))
        send_sequential(floor.port, tagged(messages[:100], "W"))
        for r in range(rounds):
            for rate in e2e:
                batch = tagged(messages, f"T{rate}R{r}")
                ids, times = control_ids(batch), []
                ack[rate] += send_sequential(serve.port, batch, pace_s=1 / rate, sent_at=times)
                sent = dict(zip(ids, times, strict=True))
                got = arrival_times(arrivals, set(ids))
                e2e[rate] += [got[c] - sent[c] for c in ids if c in got]
                floor_ack[rate] += send_sequential(floor.port, tagged(messages, f"F{rate}R{r}"), pace_s=1 / rate)
    finally:
        for srv in (serve, sink, floor):
            srv.stop()
    for rate in e2e:
        p50 = statistics.median(e2e[rate])
        fp50 = statistics.median(floor_ack[rate])
        row(
            f"sender to downstream p50 at {rate} msg/s",
            f"{p50 * 1e3:.1f} ms (p99 {percentile(e2e[rate], 99) * 1e3:.1f} ms)",
            f"floor's ACK p50 {fp50 * 1e3:.2f} ms",
            f"{p50 / fp50:.1f}x floor's ACK",
            "≤ 10x floor's ACK p50" if rate == 100 else "",
        )
        row(
            f"serve's ACK p50 at {rate} msg/s",
            f"{statistics.median(ack[rate]) * 1e3:.2f} ms",
            f"floor {fp50 * 1e3:.2f} ms",
            f"{statistics.median(ack[rate]) / fp50:.1f}x floor",
        )
        ours, theirs = percentile(ack[rate], 99), percentile(floor_ack[rate], 99)
        row(
            f"serve's ACK p99 at {rate} msg/s",
            f"{ours * 1e3:.2f} ms",
            f"floor {theirs * 1e3:.2f} ms",
            f"{ours / theirs:.1f}x floor",
            "≤ 3x floor's" if rate == 100 else "",
        )


def bench_folder_drop(tmp: Path, messages: list[bytes]) -> None:
    """Sustained intake against delivery into a folder drop (fsync per file)."""
    outbox = tmp / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    serve = start_serve(tmp, f"dir:{outbox}")
    try:
        send_sequential(serve.port, tagged(messages[:200], "W"))
        wait_until(lambda: count_files(outbox), 200)
        batch = tagged(messages, "D")
        start = time.perf_counter()
        rate = send_concurrent(serve.port, batch, 8)
        intake_s = time.perf_counter() - start
        done = wait_until(lambda: count_files(outbox), 200 + len(batch))
    finally:
        serve.stop()
    row(
        "delivery vs intake, 8 senders, folder drop",
        f"{intake_s / (done - start):.2f}x intake",
        f"intake {rate:,.0f} msg/s",
        f"delivery {len(messages) / (done - start):,.0f} msg/s",
        "≥ 0.95x",
    )


# ---------------------------------------------------------------- the context: on vs off

MESSAGE_MODE = 'mode = "message"\n'


def bench_history(tmp: Path, n: int, rounds: int) -> None:
    """A decision's cost as the patient's history grows: replay (the default
    [context] mode "patient") of B12-dense archives of `n` messages whose
    patients are drawn from fewer and fewer patients (1x, 2x, 4x messages
    per patient), interleaved; the time per message against the 1x run."""
    per = max(n // 200, 1)  # messages per patient at 1x (about 25 for 5,000)
    print(f"the patient's history: replay of {n:,} B12-dense messages, {per}, {2 * per} and {4 * per} per patient")
    out = tmp / "out_history"
    archives = {}
    for times in (1, 2, 4):
        archives[times] = tmp / f"archive_history_{times}"
        generate.generate(archives[times], n, seed=17, mix="dense", patients=max(n // (per * times), 1))

    def replay(times: int) -> float:
        args = [sys.executable, "-m", "b12comment", "replay", "--quiet", str(archives[times]), "--out", str(out)]
        return run_child([*args, "--workers", "1"], out)[0] / n * 1e6

    m = interleaved(rounds, **{f"x{t}": (lambda t=t: replay(t)) for t in (1, 2, 4)})
    for times in (2, 4):
        row(
            f"replay, B12-dense, {times * per} messages per patient (context on), time per message",
            f"{m[f'x{times}']:,.0f} µs",
            f"{per} per patient {m['x1']:,.0f} µs",
            f"{m[f'x{times}'] / m['x1']:.2f}x",
            "≤ 1.3x",
        )
    for archive in archives.values():
        shutil.rmtree(archive)
    shutil.rmtree(out, ignore_errors=True)


def bench_context(tmp: Path, replay_n: int, serve_n: int, rounds: int) -> None:
    """The cost of the patient's context: [context] mode "patient" (the
    default: replay's first pass and its store, serve's store) against
    "message" (no store), interleaved in the same run, on the team mix."""
    print(f"context on vs off: replay of {replay_n:,} messages (1 worker), serve of {serve_n:,} (1 sequential sender)")
    archive = tmp / "archive_context"
    generate.generate(archive, replay_n, seed=11, mix="team")
    off_cfg = tmp / "message-mode.toml"
    off_cfg.write_text("[context]\n" + MESSAGE_MODE)
    out = tmp / "out_context"
    peaks: dict[str, int] = {}

    def replay(*extra: str, name: str) -> float:
        args = [sys.executable, "-m", "b12comment", "replay", "--quiet", str(archive), "--out", str(out)]
        secs, peak = run_child([*args, "--workers", "1", *extra], out)
        peaks[name] = max(peaks.get(name, 0), peak)
        return replay_n / secs

    m = interleaved(rounds, on=lambda: replay(name="on"), off=lambda: replay("--config", str(off_cfg), name="off"))
    row(
        "replay, team mix, 1 worker, context on",
        f"{m['on']:,.0f} msg/s",
        f"context off {m['off']:,.0f} msg/s",
        f"{m['on'] / m['off']:.2f}x off",
        "≥ 0.7x off",
    )
    row(
        f"replay peak RSS, {replay_n:,} messages, context on",
        f"{peaks['on'] / 1024:,.0f} MB",
        f"context off {peaks['off'] / 1024:,.0f} MB",
        "",
    )
    shutil.rmtree(archive)
    shutil.rmtree(out, ignore_errors=True)
    messages = messages_of(generate.generate(tmp / "serve_context", serve_n, seed=13, mix="team"), serve_n)
    sink = start_script(tmp, "sink_context", RAW_NOOP)
    servers = {
        "on": start_serve(tmp, f"mllp://127.0.0.1:{sink.port}", name="context-on"),
        "off": start_serve(tmp, f"mllp://127.0.0.1:{sink.port}", MESSAGE_MODE, name="context-off"),
    }
    seq: dict[str, list[float]] = {k: [] for k in servers}
    try:
        for srv in servers.values():
            send_sequential(srv.port, tagged(messages[:200], "W"))
        for r in range(rounds):
            for name, srv in servers.items():
                start = time.perf_counter()
                send_sequential(srv.port, tagged(messages, f"X{r}"))
                seq[name].append(serve_n / (time.perf_counter() - start))
    finally:
        for srv in (*servers.values(), sink):
            srv.stop()
    on, off = statistics.median(seq["on"]), statistics.median(seq["off"])
    row(
        "serve, 1 sequential sender, context on",
        f"{on:,.0f} msg/s",
        f"context off {off:,.0f} msg/s",
        f"{on / off:.2f}x off",
        "≥ 0.8x off",
    )


def compile_package() -> None:
    """Compile b12comment's bytecode before anything is measured, as
    installing a wheel does: python-hl7 and every other installed package
    load theirs, while an editable checkout run with PYTHONDONTWRITEBYTECODE
    set would compile every module in every replay process again (80 to
    100 ms of each replay's start-up on the 2-core machine)."""
    import compileall

    import b12comment

    compileall.compile_dir(str(Path(b12comment.__file__).parent), quiet=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    p.add_argument("--replay-messages", type=int, default=5_000)
    p.add_argument("--serve-messages", type=int, default=1_500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--only",
        action="append",
        choices=("process", "replay", "serve", "context", "history", "latency"),
        help="one part (repeatable)",
    )
    args = p.parse_args()
    replay_n, serve_n, rounds = args.replay_messages, args.serve_messages, args.rounds
    if args.quick:
        replay_n, serve_n, rounds = 3_000, 500, 2
    parts = set(args.only or ("process", "replay", "serve", "context", "history", "latency"))
    compile_package()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="b12bench-") as t:
        tmp = Path(t)
        if "process" in parts:
            bench_process(max(rounds, 5))
        if "replay" in parts:
            bench_replay(tmp, replay_n, rounds)
        if "serve" in parts:
            bench_serve(tmp, serve_n, rounds)
        if "context" in parts:
            bench_context(tmp, replay_n, serve_n, rounds)
        if "history" in parts:
            bench_history(tmp, replay_n, rounds)
        if "latency" in parts:
            bench_latency(tmp, min(serve_n, 500), rounds)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine makes figures noisy)")
    print()
    print("| measure | b12comment | baseline | ratio | target |\n|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
