"""b12comment benchmarks: throughput, latency and memory against baselines
measured in the same run on the same data. Prints one table with ratios.

    .venv/bin/python bench/run.py --quick          # under a minute
    .venv/bin/python bench/run.py                  # 100,000 messages
    .venv/bin/python bench/run.py --messages 1000000 --serve-messages 1000000

Never run by the tests; targets are checked by reading the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import generate  # noqa: E402

from b12comment.config import RuleConfig  # noqa: E402
from b12comment.core.engine import process  # noqa: E402
from b12comment.replay.inputs import read_pieces  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, value: str, baseline: str = "", ratio: str = "") -> None:
    ROWS.append((what, value, baseline, ratio))
    print(f"  {what}: {value}" + (f"  (baseline {baseline}; {ratio})" if baseline else ""), flush=True)


def messages_of(paths, limit=None):
    out = []
    for p in paths:
        with open(p, "rb") as f:
            for piece in read_pieces(f):
                if piece.kind == "message":
                    out.append(piece.data)
                    if limit and len(out) >= limit:
                        return out
    return out


def timed_child(args, env=None) -> tuple[float, int, int]:
    """Wall seconds, exit code and peak RSS (kB) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, os.waitstatus_to_exitcode(status), usage.ru_maxrss


# ---------------------------------------------------------------- process()


def bench_process(paths) -> None:
    rule = RuleConfig()
    msgs = messages_of(paths, 20000)
    kinds = {"no B12 (ORU, 5-40 OBX)": [], "adult B12": [], "paediatric B12": []}
    for m in msgs:
        _, d = process(m, rule)
        if d.reasons == ("no_b12",) and len(kinds["no B12 (ORU, 5-40 OBX)"]) < 500:
            kinds["no B12 (ORU, 5-40 OBX)"].append(m)
        elif "adult" in d.reasons and len(kinds["adult B12"]) < 200:
            kinds["adult B12"].append(m)
        elif d.results and d.results[0].paediatric and len(kinds["paediatric B12"]) < 200:
            kinds["paediatric B12"].append(m)
    print("process() cost per message, by kind")
    for kind, sample in kinds.items():
        if not sample:
            continue
        rounds = max(1, 2000 // len(sample))
        start = time.perf_counter()
        for _ in range(rounds):
            for m in sample:
                process(m, rule)
        per = (time.perf_counter() - start) / (rounds * len(sample))
        row(f"process(), {kind}", f"{per * 1e6:,.0f} µs")


# ---------------------------------------------------------------- replay


def floor_copy(paths, out: Path) -> None:
    for p in paths:
        dst = out / p.name
        with open(p, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)


def python_hl7_forward(messages, out: Path) -> None:
    import hl7

    with open(out / "pythonhl7.out", "wb") as f:
        for m in messages:
            text = m.decode("latin-1")
            f.write(str(hl7.parse(text)).encode("latin-1"))


def naive_forward(messages, out: Path) -> None:
    """What one writes first: parse the whole message with hl7apy, walk it, re-serialise."""
    from hl7apy.parser import parse_message

    with open(out / "naive.out", "wb") as f:
        for m in messages:
            text = m.decode("latin-1")
            try:
                msg = parse_message(text, find_groups=False)
                for seg in msg.children:
                    if seg.name == "OBX":
                        seg.obx_3.to_er7()
                f.write(msg.to_er7().encode("latin-1"))
            except Exception:
                f.write(m)


def rate_of(fn, messages, out, minimum_s=2.0) -> float:
    start = time.perf_counter()
    done = 0
    while True:
        fn(messages, out)
        done += len(messages)
        elapsed = time.perf_counter() - start
        if elapsed >= minimum_s:
            return done / elapsed


def bench_replay(archive: Path, paths, n: int, tmp: Path) -> None:
    print(f"replay of {n:,} messages ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB)")
    results = {}
    for workers in (1, 2):
        out = tmp / f"replay{workers}"
        secs, code, rss = timed_child(
            [
                sys.executable,
                "-m",
                "b12comment",
                "replay",
                "--quiet",
                str(archive),
                "--out",
                str(out),
                "--workers",
                str(workers),
            ]
        )
        assert code == 0, "replay failed"
        results[workers] = (n / secs, rss)
        shutil.rmtree(out)
    floor_out = tmp / "floor"
    floor_out.mkdir()
    start = time.perf_counter()
    floor_copy(paths, floor_out)
    floor_rate = n / (time.perf_counter() - start)
    shutil.rmtree(floor_out)
    sample = messages_of(paths, 3000)
    small = sample[:300]
    (tmp / "base").mkdir(exist_ok=True)
    hl7_rate = rate_of(python_hl7_forward, sample, tmp / "base")
    naive_rate = rate_of(naive_forward, small, tmp / "base")
    for workers in (1, 2):
        rate, rss = results[workers]
        row(
            f"replay, {workers} worker{'s' * (workers > 1)}",
            f"{rate:,.0f} msg/s",
            f"naive hl7apy {naive_rate:,.0f} msg/s",
            f"{rate / naive_rate:,.0f}x naive",
        )
        row(
            f"replay, {workers} worker{'s' * (workers > 1)} vs python-hl7",
            f"{rate:,.0f} msg/s",
            f"python-hl7 parse+str {hl7_rate:,.0f} msg/s",
            f"{rate / hl7_rate:.2f}x python-hl7",
        )
        row(
            f"replay, {workers} worker{'s' * (workers > 1)} vs I/O floor",
            f"{rate:,.0f} msg/s",
            f"read+write bytes {floor_rate:,.0f} msg/s",
            f"{rate / floor_rate:.3f}x floor",
        )
    row(f"replay peak RSS ({n:,} messages, 1 worker)", f"{results[1][1] / 1024:,.0f} MB")


# ---------------------------------------------------------------- serve


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


NOOP_SERVER = """
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
    server = await start_hl7_server(handle, host="127.0.0.1", port=int(sys.argv[1]), encoding="latin-1")
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def start_serve(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f"[listener]\nport = {port}\nmax_connections = 64\n"
        f'[journal]\npath = "{tmp / "journal.sqlite3"}"\n'
        f'[downstream]\nurl = "dir:{tmp / "outbox"}"\n'
        f'[logging]\nlevel = "warning"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc, port


def start_noop(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    script = tmp / "noop_server.py"
    script.write_text(NOOP_SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    return proc, port


def send_sequential(port: int, messages, pace_s: float = 0.0) -> list[float]:
    """python-hl7's MLLPClient, one message after another, each waiting for its ACK."""
    from hl7.client import MLLPClient

    latencies = []
    with MLLPClient("127.0.0.1", port) as client:
        next_at = time.perf_counter()
        for i, m in enumerate(messages):
            if pace_s:
                now = time.perf_counter()
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += pace_s
            start = time.perf_counter()
            ack = client.send_message(m)
            while ack and b"\x1c" not in ack:  # the client reads once; an ACK may come in two reads
                ack += client.socket.recv(4096)
            latencies.append(time.perf_counter() - start)
            if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
                raise RuntimeError(
                    f"port {port}: message {i} ({len(m):,} bytes) got "
                    f"{ack[:200]!r}" + (" (connection closed)" if not ack else "")
                )
    return latencies


def tagged(messages, tag: str) -> list[bytes]:
    """The messages with `tag` appended to MSH-10, so that each phase sends new
    messages: the same control ID and bytes again would be a retransmission,
    ACKed from the journal without writing anything."""
    out = []
    for m in messages:
        end = m.find(b"\r")
        fs = m[3:4]
        fields = m[:end].split(fs)
        fields[9] += tag.encode("ascii")
        out.append(fs.join(fields) + m[end:])
    return out


def send_concurrent(port: int, messages, senders: int) -> float:
    share = [messages[i::senders] for i in range(senders)]
    threads = [threading.Thread(target=send_sequential, args=(port, part)) for part in share]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(messages) / (time.perf_counter() - start)


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def wait_files(folder: Path, count: int, timeout: float = 600.0) -> float:
    """Seconds (perf_counter) at which `folder` holds `count` files."""
    deadline = time.monotonic() + timeout
    while count_files(folder) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_files(folder)} of {count} messages reached {folder}")
        time.sleep(0.02)
    return time.perf_counter()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bench_serve(paths, n: int, tmp: Path) -> None:
    try:
        import b12comment.serve.service  # noqa: F401
    except ImportError:
        print("serve: not available in this build; skipped")
        return
    messages = messages_of(paths, n)
    n = len(messages)
    print(f"serve: {n:,} messages, every ACK after the SQLite commit (each phase sends new control IDs)")
    results = {}
    for name, starter in (("b12comment serve", start_serve), ("python-hl7 no-op server", start_noop)):
        work = tmp / name.replace(" ", "_")
        work.mkdir()
        proc, port = starter(work)
        try:
            send_sequential(port, tagged(messages[:200], "W"))  # warm-up
            outbox = work / "outbox"
            ours = name.startswith("b12comment")
            if ours:
                wait_files(outbox, 200)
            start = time.perf_counter()
            send_sequential(port, messages)
            seq = n / (time.perf_counter() - start)
            # b12comment: also until every message is in the downstream folder (fsynced there)
            e2e = n / (wait_files(outbox, 200 + n) - start) if ours else 0.0
            conc = send_concurrent(port, tagged(messages, "C"), 8)
            if ours:
                wait_files(outbox, 200 + 2 * n)  # the queue drained: latency is measured on a quiet service
            lat = sorted(send_sequential(port, tagged(messages[: min(n, 5000)], "L"), pace_s=1 / 500))
            results[name] = (seq, conc, lat, rss_kb(proc.pid), e2e)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    seq, conc, lat, rss, e2e = results["b12comment serve"]
    bseq, bconc, blat, _, _ = results["python-hl7 no-op server"]
    row("serve, 1 sequential sender", f"{seq:,.0f} msg/s", f"no-op {bseq:,.0f} msg/s", f"{seq / bseq:.2f}x no-op")
    row("serve, 1 sequential sender, until all delivered (folder drop)", f"{e2e:,.0f} msg/s")
    row("serve, 8 concurrent senders", f"{conc:,.0f} msg/s", f"no-op {bconc:,.0f} msg/s", f"{conc / bconc:.2f}x no-op")
    p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    bp50, bp99 = statistics.median(blat), blat[int(len(blat) * 0.99) - 1]
    row("ACK latency at 500 msg/s, p50", f"{p50 * 1e3:.2f} ms", f"no-op {bp50 * 1e3:.2f} ms", f"{p50 / bp50:.1f}x")
    row("ACK latency at 500 msg/s, p99", f"{p99 * 1e3:.2f} ms", f"no-op {bp99 * 1e3:.2f} ms", f"{p99 / bp99:.1f}x")
    row(f"serve peak RSS after {3 * n + 200 + min(n, 5000):,} messages", f"{rss / 1024:,.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10,000 messages, 2,000 through serve")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--serve-messages", type=int, default=20_000)
    p.add_argument("--keep", type=Path, help="generate the archive here and keep it")
    p.add_argument(
        "--only",
        action="append",
        choices=("process", "replay", "serve"),
        help="run only this part (may be given more than once)",
    )
    args = p.parse_args()
    n, serve_n = (10_000, 2_000) if args.quick else (args.messages, args.serve_messages)
    parts = set(args.only or ("process", "replay", "serve"))
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="b12bench-") as t:
        tmp = Path(t)
        archive = args.keep or tmp / "archive"
        paths = generate.generate(archive, max(n, serve_n) if "serve" in parts else n, seed=1)
        if "process" in parts:
            bench_process(paths)
        if "replay" in parts:
            bench_replay(archive, paths, sum(1 for _ in messages_of(paths)) if n < serve_n else n, tmp)
        if "serve" in parts:
            bench_serve(paths, serve_n, tmp)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on the machine makes figures noisy)")
    print()
    print("| measure | b12comment | baseline | ratio |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
