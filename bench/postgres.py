"""serve with its journal in PostgreSQL against serve on SQLite, in one run.

    .venv/bin/python bench/postgres.py             # 1,500 messages per phase, 3 rounds
    .venv/bin/python bench/postgres.py --quick

Starts its own PostgreSQL (Debian's package: initdb and pg_ctl, as the
postgres user when run as root) on a temporary folder, with durable
settings (fsync on, synchronous_commit on: an AA is a commit on disk), over
its Unix socket, and one `serve` on each journal (the PostgreSQL one leads,
alone, with [ha] on). Each round sends the same messages to both,
interleaved: one sequential sender, then 8 concurrent senders, then a paced
500 msg/s run for the ACK latency. CPU per message counts serve's process
and, for PostgreSQL, the database's processes too (the work moved there).
Needs the extra: pip install -e '.[postgres]'.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
import run as R  # noqa: E402


class Postgres:
    def __init__(self, folder: Path):
        self.folder, self.port = folder, R.free_port()
        self.bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(folder, "postgres", "postgres")
        self._run("initdb", "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        opts = f"-c listen_addresses='' -c unix_socket_directories='{folder}' -p {self.port}"
        self._run("pg_ctl", "-D", str(folder / "data"), "-o", opts, "-w", "-l", str(folder / "log"), "start")
        self.url = f"postgresql://postgres@/postgres?host={folder}&port={self.port}"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def cpu_s(self) -> float:
        """CPU seconds of every postgres process (the server and its backends)."""
        total = 0.0
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                text = Path(stat).read_text()
            except OSError:
                continue
            name, rest = text.split("(", 1)[1].split(")", 1)
            if name.startswith("postgres"):
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


def p99(v: list[float]) -> float:
    v = sorted(v)
    return v[max(0, int(len(v) * 0.99) - 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--messages", type=int, default=1_500)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    n, rounds = (300, 1) if a.quick else (a.messages, a.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="b12bench-pg-"))
    pg_folder = Path(tempfile.mkdtemp(prefix="b12bench-db-"))  # its own, handed to the postgres user
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    pg = Postgres(pg_folder)
    messages = R.messages_of(generate.generate(tmp / "archive", n, seed=3, mix="team"), n)
    sink_count = tmp / "sink.count"
    sink = R.start_script(tmp, "sink", R.RAW_NOOP, str(sink_count))
    down = f"mllp://127.0.0.1:{sink.port}"
    servers = {
        "sqlite": R.start_serve(tmp, down, name="sqlite"),
        "postgres": R.start_serve(tmp, down, extra='[ha]\ninstance = "bench"\n', name="postgres", journal=pg.url),
    }
    seq: dict[str, list[float]] = {k: [] for k in servers}
    conc: dict[str, list[float]] = {k: [] for k in servers}
    lat: dict[str, list[float]] = {k: [] for k in servers}
    cpu: dict[str, list[float]] = {k: [] for k in servers}
    cpu_db: list[float] = []
    delivered = 0
    try:
        for srv in servers.values():
            R.send_sequential(srv.port, R.tagged(messages[:200], "W"))
            delivered += 200
        R.wait_until(lambda: R.read_count(sink_count), delivered)
        for r in range(rounds):
            for name, srv in servers.items():
                batch = R.tagged(messages, f"S{r}{name[0]}")
                before, db_before = srv.cpu_s(), pg.cpu_s()
                start = time.perf_counter()
                R.send_sequential(srv.port, batch)
                seq[name].append(n / (time.perf_counter() - start))
                delivered += n
                R.wait_until(lambda: R.read_count(sink_count), delivered)
                cpu[name].append((srv.cpu_s() - before) / n)
                if name == "postgres":
                    cpu_db.append((pg.cpu_s() - db_before) / n)
            for name, srv in servers.items():
                conc[name].append(R.send_concurrent(srv.port, R.tagged(messages, f"C{r}{name[0]}"), 8))
                delivered += n
                R.wait_until(lambda: R.read_count(sink_count), delivered)
            for name, srv in servers.items():
                k = min(n, 1000)
                lat[name] += R.send_sequential(srv.port, R.tagged(messages[:k], f"L{r}{name[0]}"), pace_s=1 / 500)
                delivered += k
                R.wait_until(lambda: R.read_count(sink_count), delivered)
    finally:
        for srv in (*servers.values(), sink):
            srv.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in seq.items()}
    cmed = {k: statistics.median(v) for k, v in conc.items()}
    print(f"serve, {n:,} messages per phase (team mix), {rounds} interleaved rounds, MLLP downstream")
    R.row(
        "1 sequential sender: PostgreSQL",
        f"{med['postgres']:,.0f} msg/s",
        f"SQLite {med['sqlite']:,.0f} msg/s",
        f"{med['postgres'] / med['sqlite']:.2f}x SQLite",
    )
    R.row(
        "8 concurrent senders: PostgreSQL",
        f"{cmed['postgres']:,.0f} msg/s",
        f"SQLite {cmed['sqlite']:,.0f} msg/s",
        f"{cmed['postgres'] / cmed['sqlite']:.2f}x SQLite",
    )
    R.row(
        "ACK p99 at 500 msg/s: PostgreSQL",
        f"{p99(lat['postgres']) * 1e3:.2f} ms",
        f"SQLite {p99(lat['sqlite']) * 1e3:.2f} ms",
        f"{p99(lat['postgres']) / p99(lat['sqlite']):.1f}x SQLite",
    )
    R.row(
        "ACK p50 at 500 msg/s: PostgreSQL",
        f"{statistics.median(lat['postgres']) * 1e3:.2f} ms",
        f"SQLite {statistics.median(lat['sqlite']) * 1e3:.2f} ms",
    )
    c_pg, c_db, c_sq = (statistics.median(v) * 1e6 for v in (cpu["postgres"], cpu_db, cpu["sqlite"]))
    R.row(
        "CPU per message, sequential: serve on PostgreSQL",
        f"{c_pg:,.0f} µs + database {c_db:,.0f} µs",
        f"serve on SQLite {c_sq:,.0f} µs",
        f"{(c_pg + c_db) / c_sq:.1f}x SQLite (with the database's)",
    )


if __name__ == "__main__":
    main()
