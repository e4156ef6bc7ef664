"""replay's peak memory on a large archive: does it stay under the limit?

    .venv/bin/python bench/replay_memory.py                       # 1,000,000 messages (team mix), default workers
    .venv/bin/python bench/replay_memory.py --messages 100000     # a shorter look
    .venv/bin/python bench/replay_memory.py --workers 1 --mode message

Generates a seeded archive (`bench/generate.py`, the team mix unless
`--mix`), runs `b12comment replay` on it once as a subprocess (`--out` into a
scratch folder, or `--dry-run`), and samples every 50 ms the resident memory
of the replay process and of its workers: the peak of their sum (pages the
workers share with the main process since the fork are counted in each, so
the sum is an upper bound), the main process's own peak (VmHWM: the context's
first pass runs there), and a verdict against `--limit-mb` (150 MB). A
script, not a test: 1,000,000 messages are 1.6 GB of input and take a few
minutes on a small machine. `--archive FOLDER` reuses an archive made before.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--mix", choices=sorted(generate.MIXES), default="team")
    p.add_argument("--workers", type=int, default=None, help="replay's --workers (default: replay's own default)")
    p.add_argument("--mode", choices=("patient", "requisition", "message"), default="patient", help="[context] mode")
    p.add_argument("--dry-run", action="store_true", help="write no output files")
    p.add_argument("--archive", type=Path, help="an archive folder made before (skips generating one)")
    p.add_argument("--limit-mb", type=float, default=150.0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="b12replaymem-") as t:
        tmp = Path(t)
        archive = args.archive
        if archive is None:
            archive = tmp / "archive"
            start = time.perf_counter()
            paths = generate.generate(archive, args.messages, seed=17, mix=args.mix)
            size = sum(f.stat().st_size for f in paths)
            print(
                f"generated {args.messages:,} messages ({args.mix} mix), {size / 1e6:,.0f} MB in {len(paths)} files, "
                f"{time.perf_counter() - start:.0f} s"
            )
        config = tmp / "config.toml"
        config.write_text(f'[context]\nmode = "{args.mode}"\n')
        cmd = [sys.executable, "-m", "b12comment", "replay", "--quiet", "--config", str(config), str(archive)]
        cmd += ["--dry-run"] if args.dry_run else ["--out", str(tmp / "out")]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        print("running:", " ".join(["b12comment", *cmd[3:]]))
        print(f"load average {os.getloadavg()[0]:.1f} at the start")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak_tree = peak_main = workers_seen = 0
        while proc.poll() is None:
            kids = children(proc.pid)
            workers_seen = max(workers_seen, len(kids))
            tree = status_kb(proc.pid, "VmRSS") + sum(status_kb(k, "VmRSS") for k in kids)
            peak_tree = max(peak_tree, tree)
            peak_main = max(peak_main, status_kb(proc.pid, "VmHWM"))
            time.sleep(0.05)
        secs = time.perf_counter() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            print(err, file=sys.stderr)
            print(f"replay exited {proc.returncode}", file=sys.stderr)
            return 1
        summary = [line for line in err.splitlines() if line.startswith("replayed")]
        if summary:
            print(summary[0])
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        print(f"wall {secs:.1f} s ({args.messages / secs:,.0f} msg/s), workers seen {workers_seen}")
        print(f"peak RSS, replay and its workers summed: {peak_tree / 1024:.1f} MB")
        print(f"peak RSS of the main process (VmHWM): {peak_main / 1024:.1f} MB")
        ok = peak_tree / 1024 <= args.limit_mb
        print(f"verdict: {'under' if ok else 'OVER'} {args.limit_mb:.0f} MB")
        if archive != args.archive:
            shutil.rmtree(archive, ignore_errors=True)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
