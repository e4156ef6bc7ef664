"""serve from this checkout against serve from another checkout, in the same
interleaved rounds, beside the pipeline floor: a before/after of one run.

    .venv/bin/python bench/serve_compare.py --compare ../before            # 1,000 messages a phase, 4 rounds
    .venv/bin/python bench/serve_compare.py --compare ../before --rate 500 --messages 1000 --rounds 3

Each serve runs from its own checkout (PYTHONPATH), with its own MLLP sink
that notes when each message arrives, a fresh journal and context store,
`info` logging: what `bench/run.py --only serve` starts. Per round, each
server in turn gets the same phases: one sequential sender (msg/s, and
serve's CPU per message), eight concurrent senders (msg/s), and one sender
paced at `--rate` (ACK p99, and from sender to downstream p50 and p99: the
sink's arrival time less the send time). The pipeline floor of
`bench/run.py` is the baseline of the first two. Medians of the rounds (the
paced phase pools its messages); bounded in count and time.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import generate  # noqa: E402
import run as bench  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", required=True, help="the other checkout (its folder holds b12comment/)")
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rate", type=int, default=500, help="the paced phase's messages a second")
    args = p.parse_args()
    trees = {"this": HERE.parent, "other": Path(args.compare).resolve()}
    for tree in trees.values():
        if not (tree / "b12comment").is_dir():
            sys.exit(f"no b12comment/ in {tree}")
        compileall.compile_dir(str(tree / "b12comment"), quiet=1)  # as a wheel install does
    n, rounds = args.messages, args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="b12-compare-"))
    messages = bench.messages_of(generate.generate(tmp / "archive", n, seed=3, mix="team"), n)
    print(f"load average {os.getloadavg()[0]:.1f} at start; {n:,} messages a phase, {rounds} rounds")
    servers, sinks, times = {}, [], {}
    for name, tree in trees.items():
        os.environ["PYTHONPATH"] = str(tree)
        times[name] = tmp / f"{name}-arrivals.txt"
        sink = bench.start_script(tmp, f"{name}-sink", bench.LATENCY_SINK, str(times[name]))
        sinks.append(sink)
        servers[name] = bench.start_serve(tmp, f"mllp://127.0.0.1:{sink.port}", name=name)
    os.environ.pop("PYTHONPATH", None)
    pipeline_sink = bench.start_script(tmp, "pipeline-sink", bench.RAW_NOOP)
    sinks.append(pipeline_sink)
    servers["pipeline floor"] = bench.start_script(
        tmp, "pipeline", bench.PIPELINE_FLOOR, str(tmp / "pipeline.sqlite3"), str(pipeline_sink.port)
    )
    seq: dict[str, list[float]] = {k: [] for k in servers}
    conc: dict[str, list[float]] = {k: [] for k in servers}
    cpu: dict[str, list[float]] = {k: [] for k in servers}
    ack: dict[str, list[float]] = {k: [] for k in servers}
    e2e: dict[str, list[float]] = {k: [] for k in trees}
    try:
        for srv in servers.values():
            bench.send_sequential(srv.port, bench.tagged(messages[:200], "W"))
        for r in range(rounds):
            for name, srv in servers.items():
                before = srv.cpu_s()
                start = time.perf_counter()
                bench.send_sequential(srv.port, bench.tagged(messages, f"S{r}"))
                seq[name].append(n / (time.perf_counter() - start))
                cpu[name].append((srv.cpu_s() - before) / n)
                time.sleep(0.5)
            for name, srv in servers.items():
                conc[name].append(bench.send_concurrent(srv.port, bench.tagged(messages, f"C{r}"), 8))
                time.sleep(1.0)
            for name, srv in servers.items():
                batch = bench.tagged(messages, f"P{r}")
                sent_at: list[float] = []
                ack[name] += bench.send_sequential(srv.port, batch, pace_s=1 / args.rate, sent_at=sent_at)
                if name in times:
                    ids = bench.control_ids(batch)
                    got = bench.arrival_times(times[name], set(ids))
                    e2e[name] += [got[c] - s for c, s in zip(ids, sent_at, strict=True) if c in got]
                time.sleep(0.5)
    finally:
        for srv in (*servers.values(), *sinks):
            srv.stop()
    floor_seq = statistics.median(seq["pipeline floor"])
    floor_conc = statistics.median(conc["pipeline floor"])
    floor_p99 = bench.percentile(ack["pipeline floor"], 99)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(
        "| serve from | 1 sender | 8 senders | CPU a message, 1 sender | ACK p99 paced | downstream p50 / p99 paced |"
    )
    print("|---|---|---|---|---|---|")
    for name in servers:
        s1, s8 = statistics.median(seq[name]), statistics.median(conc[name])
        p99 = bench.percentile(ack[name], 99)
        down = (
            f"{statistics.median(e2e[name]) * 1e3:.1f} / {bench.percentile(e2e[name], 99) * 1e3:.1f} ms"
            if e2e.get(name)
            else ""
        )
        label = f"{name} ({trees[name]})" if name in trees else name
        one = f"{s1:,.0f} msg/s ({s1 / floor_seq:.2f}x floor)"
        eight = f"{s8:,.0f} msg/s ({s8 / floor_conc:.2f}x floor)"
        used = f"{statistics.median(cpu[name]) * 1e6:,.0f} µs"
        late = f"{p99 * 1e3:.2f} ms ({p99 / floor_p99:.1f}x floor)"
        print(f"| {label} | {one} | {eight} | {used} | {late} | {down} |")
    print(f"\nrounds, 1 sender: {', '.join(f'{k} {[round(x) for x in v]}' for k, v in seq.items())}")


if __name__ == "__main__":
    main()
