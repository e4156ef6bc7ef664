"""What replay's per-message decision record costs: the realistic archive
(bench/generate.py) replayed with and without `--log-file`, 1 worker, dry
run, interleaved repetitions, medians. The target: the record costs at most
5% of replay time.

    python bench/replay_log.py [--messages 20000] [--repeat 7]

Two measurements, both in the same run: replay's file loop in this process
(`replay_file` over every file; the log's cost without process start-up
noise), and the whole command as a subprocess. Both are CPU time (user +
system), not wall time: on a shared machine the wall time of the same run
varies by 2x, the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generate import generate

from b12comment.config import Config
from b12comment.replay.run import Job, replay_file


def loop_s(files: list[Path], log: str | None) -> float:
    rule = Config().rule
    started = time.process_time()
    for f in files:
        replay_file(Job(str(f), f.name, None, rule, None, log))
    return time.process_time() - started


def command_s(archive: Path, *extra: str) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", "--dry-run", "--workers", "1", str(archive), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "replay failed"
    return usage.ru_utime + usage.ru_stime


def report(what: str, plain: list[float], logged: list[float]) -> None:
    a, b = statistics.median(plain), statistics.median(logged)
    print(f"  {what}: CPU without {a:.3f} s, with --log-file {b:.3f} s: the record costs {100 * (b - a) / a:+.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        files = sorted(generate(archive, args.messages))
        log = str(Path(tmp) / "decisions.jsonl")
        loop_s(files, None)  # warm the page cache and the caches
        plain, logged = [], []
        for _ in range(args.repeat):
            plain.append(loop_s(files, None))
            Path(log).write_bytes(b"")
            logged.append(loop_s(files, log))
        records = Path(log).read_text(encoding="utf-8").count("\n")
        print(f"replay of {args.messages:,} messages (realistic mix), 1 worker, dry run, median of {args.repeat}:")
        report("file loop", plain, logged)
        print(f"  ({records:,} decision records written per run)")
        plain, logged = [], []
        for _ in range(args.repeat):
            plain.append(command_s(archive))
            logged.append(command_s(archive, "--log-file", log))
        report("whole command", plain, logged)
    print("target: at most +5%")


if __name__ == "__main__":
    main()
