"""serve's memory over a long run: does its peak RSS stay flat?

    .venv/bin/python bench/soak.py                      # 1,000,000 messages
    .venv/bin/python bench/soak.py --messages 200000    # a shorter look

Starts `b12comment serve` with an MLLP downstream (a raw asyncio sink in a
process of its own), sends new messages (the team mix, a new MSH-10 each)
from concurrent senders over raw sockets, and every `--every` messages
prints serve's RSS and VmHWM (peak) next to the messages sent and delivered.
At the end: the peak, the growth of RSS over the second half of the run, and
a verdict against `--limit-mb` (60 MB). A script, not a test: it takes the
better part of an hour for 1,000,000 messages on a small machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
from run import RAW_NOOP, messages_of, read_count, send_concurrent, start_script, start_serve, wait_until  # noqa: E402


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=50_000, help="report every this many messages")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--limit-mb", type=float, default=60.0)
    p.add_argument("--drain-s", type=float, default=600.0, help="wait this long for delivery at the end")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="b12soak-") as t:
        tmp = Path(t)
        base = messages_of(generate.generate(tmp / "archive", 5_000, seed=11), 5_000)
        sink_count = tmp / "sink.count"
        sink = start_script(tmp, "sink", RAW_NOOP, str(sink_count))
        serve = start_serve(tmp, f"mllp://127.0.0.1:{sink.port}")
        pid = serve.proc.pid
        samples: list[tuple[int, int, int]] = []  # (messages sent, RSS kB, VmHWM kB)
        print(f"{'sent':>10} {'delivered':>10} {'msg/s':>7} {'RSS MB':>7} {'peak MB':>8}", flush=True)
        sent, start, serial = 0, time.perf_counter(), 0
        try:
            while sent < args.messages:
                chunk_end = min(sent + args.every, args.messages)
                while sent < chunk_end:
                    take = min(len(base), chunk_end - sent)
                    batch = []
                    for m in base[:take]:  # a new control ID for every message
                        end = m.find(b"\r")
                        fields = m[:end].split(b"|")
                        fields[9] = b"S%09d" % serial
                        serial += 1
                        batch.append(b"|".join(fields) + m[end:])
                    send_concurrent(serve.port, batch, args.senders)
                    sent += take
                rss, hwm = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
                samples.append((sent, rss, hwm))
                rate = sent / (time.perf_counter() - start)
                print(
                    f"{sent:>10,} {read_count(sink_count):>10,} {rate:>7,.0f} {rss / 1024:>7.1f} {hwm / 1024:>8.1f}",
                    flush=True,
                )
            try:
                wait_until(lambda: read_count(sink_count), args.messages, timeout=args.drain_s)
            except RuntimeError as exc:  # memory is the question here; delivery has its own bench row
                print(f"not drained within {args.drain_s:.0f} s: {exc}")
        finally:
            serve.stop()
            sink.stop()
    peak = max(h for _, _, h in samples) / 1024
    half = [s for s in samples if s[0] >= args.messages // 2]
    growth = (half[-1][1] - half[0][1]) / 1024 if len(half) > 1 else 0.0
    per_100k = growth / max(1, (half[-1][0] - half[0][0])) * 100_000 if len(half) > 1 else 0.0
    flat = peak <= args.limit_mb and per_100k < 0.5
    print(
        f"peak RSS {peak:.1f} MB (limit {args.limit_mb:.0f}); RSS over the second half {growth:+.1f} MB "
        f"({per_100k:+.2f} MB per 100,000 messages): {'flat' if flat else 'NOT flat'}"
    )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
