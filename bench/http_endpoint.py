"""HL7 over HTTP: requests per second and latency of the [http] endpoint,
against a no-op endpoint on the same server code in the same run.

    .venv/bin/python bench/http_endpoint.py              # about 1 minute on the 2-core machine
    .venv/bin/python bench/http_endpoint.py --requests 500   # a quicker look

Three servers, each a subprocess, each HTTP only:

- `noop`: the same `HttpServer` (h11 on asyncio streams, the same request
  handling, headers and metrics) with the engine replaced by "return the
  body as it is": the floor of the HTTP part;
- `endpoint`: `b12comment serve` with `[context] mode = "message"`;
- `endpoint+context`: `b12comment serve` with the default context store
  (`mode = "patient"`: every request writes its rows and commits).

Each is driven by the standard library's http.client over keep-alive
connections: one sequential client (latency p50/p99 from its round trips,
and requests/s), then 8 concurrent clients (requests/s). Messages: an
ORU^R01 blood count without B12 (the common case: the engine never reads it
past the byte pre-check), and a child's isolated high B12 (commented).
The overhead of the endpoint is its p50 minus the no-op's p50, per message.

    .venv/bin/python bench/http_endpoint.py --rate 100   # paced: about 2 minutes

`--rate R` paces instead: an open-loop client sends child-B12 requests at R
per second, each at its scheduled time whatever the answers before it did
(on another keep-alive connection when every open one is busy), and a
request's latency runs from its *scheduled* time to the last byte of its
answer, so a stall counts for every request it delays (no coordinated
omission). The no-op server and the two endpoints take turns, `--rounds`
rounds of `--requests` requests each (the order rotated per round); the
medians over the rounds of p50/p99, their ratio to the no-op's, and how late
the client itself sent (its own lag, included in the latency) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import platform
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NO_B12 = (
    b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261102071500||ORU^R01^ORU_R01|BENCH0001|P|2.5.1|||AL|NE|DNK|8859/1\r"
    b"PID|1||0101159999^^^CPR^NNDNK||Testesen^Barn||20150602|F\r"
    b"ORC|RE|REQ1|LAB1||CM\r"
    b"OBR|1|REQ1|LAB1|CBC^Blood count^L|||20261101093000|||||||||GP1^Lund^Karen|||||||F\r"
    b"OBX|1|NM|NPU02319^B-Haemoglobin^IUPP||7.6|mmol/L|7.0-9.0|N|||F|||20261101093000\r"
    b"OBX|2|NM|NPU02593^B-Leukocytes^IUPP||6.1|10*9/L|4.5-13.0|N|||F|||20261101093000\r"
    b"OBX|3|NM|NPU03568^B-Platelets^IUPP||250|10*9/L|145-390|N|||F|||20261101093000\r"
)
B12 = (REPO / "sample_messages" / "child_isolated_high_b12.hl7").read_bytes()
CHARSETS = {NO_B12: "ISO-8859-1", B12: "UTF-8"}  # as their MSH-18 say


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def noop_server(port: int) -> None:
    """The no-op endpoint: HttpServer whose decision returns the body unchanged."""
    from b12comment.config import HttpConfig
    from b12comment.core.decision import Decision
    from b12comment.serve.http import HttpServer
    from b12comment.serve.metrics import Metrics

    class Noop(HttpServer):
        async def _decide(self, message, text_codec):
            return message, Decision(False, ("noop",))

    class Quiet:
        def info(self, *a, **k):
            pass

        warning = error = info

    async def main():
        server = Noop(HttpConfig(enabled=True, port=port), None, Quiet(), Metrics())
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def start(kind: str, tmp: Path, code: Path = REPO) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(code))
    if kind == "noop":
        cmd = [sys.executable, str(Path(__file__)), "--noop-server", str(port)]
    else:
        mode = "message" if kind == "endpoint" else "patient"
        d = tmp / kind
        d.mkdir()
        (d / "config.toml").write_text(
            f'[listener]\nenabled = false\n[http]\nenabled = true\nport = {port}\n[context]\nmode = "{mode}"\n'
            f'store = "{d}/context.sqlite3"\nkey_file = "{d}/context.key"\n[logging]\nlevel = "warning"\n'
        )
        cmd = [sys.executable, "-m", "b12comment", "serve", "--config", str(d / "config.toml")]
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, proc)
    return proc, port


_serial = iter(range(1, 1 << 62))


def variants(message: bytes, n: int) -> list[bytes]:
    """n copies of a message, each of another patient, requisition and control
    ID (as a real feed is: the context store then grows as in production)."""
    out = []
    for _ in range(n):
        k = next(_serial)
        out.append(
            message.replace(b"0101159999", b"%010d" % k)
            .replace(b"0101150000", b"%010d" % k)
            .replace(b"REQ1", b"RQ%08d" % k)
            .replace(b"REQ100", b"RQ%08d" % k)
            .replace(b"BENCH0001", b"B%08d" % k)
            .replace(b"|S0001|", b"|S%08d|" % k)
        )
    return out


def sequential(port: int, message: bytes, n: int, warmed: threading.Barrier | None = None) -> tuple[float, list[float]]:
    """n requests one after the other on one connection, after 50 not
    counted (`warmed`: then wait there for the other clients' warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": f"application/hl7-v2; charset={CHARSETS[message]}"}
    for body in variants(message, min(50, n)):  # warm up (imports, first hl7apy parse)
        conn.request("POST", "/hl7", body=body, headers=headers)
        conn.getresponse().read()
    bodies = variants(message, n)
    if warmed is not None:
        warmed.wait(120)
    times = []
    clock = time.perf_counter
    began = clock()
    for body in bodies:
        t = clock()
        conn.request("POST", "/hl7", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        times.append(clock() - t)
        assert response.status == 200
    elapsed = clock() - began
    conn.close()
    return n / elapsed, times


def concurrent(port: int, message: bytes, clients: int, n_each: int) -> float:
    """Requests/s of `clients` sequential clients at once, timed from the
    end of their warm-ups (not counted) to the last answer."""
    errors: list[BaseException] = []
    warmed = threading.Barrier(clients + 1)

    def run():
        try:
            sequential(port, message, n_each, warmed)
        except BaseException as exc:  # reported below
            errors.append(exc)
            warmed.abort()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    warmed.wait(120)
    began = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return clients * n_each / (time.perf_counter() - began)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # (Linux) the kernel's receive time of each read


class PacedConnection:
    """One keep-alive connection of the paced client. Its answers are timed
    by the kernel (SO_TIMESTAMPNS, CLOCK_REALTIME), so that a client busy
    sending, or not scheduled, does not add to the latency it measures."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.buf = bytearray()
        self.request: tuple[int, float] | None = None  # (index, due) of the request in flight

    def read(self) -> tuple[int, float, float] | None:
        """Read what is there: (index, due, answered) when the answer is complete."""
        data, ancillary, _, _ = self.sock.recvmsg(65536, 256)
        if not data:
            raise SystemExit("the server closed a connection")
        answered = time.time()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, ns = struct.unpack("qq", raw[:16])
                answered = sec + ns / 1e9
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return None
        if int(head.split(b" ", 2)[1]) != 200:
            raise SystemExit(f"answer {head.splitlines()[0]!r}")
        del self.buf[: end + 4 + length]
        assert self.request is not None
        (i, due), self.request = self.request, None
        return i, due, answered


def paced_run(port: int, bodies: list[bytes], rate: float, max_connections: int = 64) -> dict:
    """Open loop, one thread: request i is due at start + i/rate and is sent
    then, on an idle keep-alive connection or a new one, whatever the answers
    before it did. Latency: from the due time to the kernel's receipt of the
    answer's last bytes; lag: how late the client sent."""
    wall = time.time
    label = CHARSETS[B12]
    requests = [
        b"POST /hl7 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Type: application/hl7-v2; charset={label}\r\nContent-Length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    ]
    latency = [0.0] * len(requests)
    lag = [0.0] * len(requests)
    selector = selectors.DefaultSelector()
    idle = [PacedConnection(port) for _ in range(4)]
    opened, in_flight, done = len(idle), 0, 0

    def take(timeout: float) -> None:
        nonlocal in_flight, done
        for key, _ in selector.select(timeout):
            conn = key.data
            got = conn.read()
            if got is not None:
                i, due, answered = got
                latency[i] = answered - due
                selector.unregister(conn.sock)
                idle.append(conn)
                in_flight -= 1
                done += 1

    start = wall() + 0.05
    for i, request in enumerate(requests):
        due = start + i / rate
        while in_flight and due - wall() > 0.0015:  # read answers until just before the due time
            take(due - wall() - 0.0015)
        if in_flight:
            while wall() < due:  # (select's timer is ms-grained) spin, answers are timed by the kernel
                pass
        elif due > wall():
            time.sleep(due - wall())
        if idle:
            conn = idle.pop()
        elif opened < max_connections:
            conn = PacedConnection(port)
            opened += 1
        else:
            raise SystemExit(f"over {max_connections} requests in flight at {rate:g} req/s: the server is saturated")
        conn.sock.sendall(request)
        lag[i] = wall() - due
        conn.request = (i, due)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        in_flight += 1
    deadline = wall() + 60
    while in_flight and wall() < deadline:
        take(1.0)
    for conn in idle:
        conn.sock.close()
    selector.close()
    if done != len(requests):
        raise SystemExit(f"{len(requests) - done} requests unanswered after 60 s")
    return dict(
        p50=pct(latency, 50) * 1000,
        p99=pct(latency, 99) * 1000,
        max=max(latency) * 1000,
        lag99=pct(lag, 99) * 1000,
        sent99=pct([t - s for t, s in zip(latency, lag, strict=True)], 99) * 1000,
        connections=opened,
    )


def paced(args) -> None:
    kinds: tuple[str, ...] = ("noop", "endpoint", "endpoint+context")
    if args.compare:  # the context endpoint of another checkout: a before/after in the same run
        kinds += (f"endpoint+context@{args.compare.name}",)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        procs = {}
        try:
            for kind in kinds:
                procs[kind] = start(kind, tmp, args.compare if "@" in kind else REPO)
            for kind in kinds:  # warm up: imports, the first hl7apy parse, the store's first pages
                sequential(procs[kind][1], B12, 50)
            for r in range(args.rounds):
                order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
                load = os.getloadavg()[0]
                for kind in order:
                    res = paced_run(procs[kind][1], variants(B12, args.requests), args.rate)
                    res["load"] = load
                    results[kind].append(res)
                    print(
                        f"round {r + 1} {kind:17} p50 {res['p50']:6.2f} ms  p99 {res['p99']:6.2f} ms  "
                        f"max {res['max']:6.1f} ms  client lag p99 {res['lag99']:5.2f} ms  "
                        f"p99 from the send {res['sent99']:6.2f} ms  "
                        f"connections {res['connections']}  load {load:.1f}",
                        flush=True,
                    )
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(30)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print()
    med = {
        k: {m: statistics.median(r[m] for r in results[k]) for m in ("p50", "p99", "max", "lag99", "sent99")}
        for k in kinds
    }
    print(f"child B12 at {args.rate:g} req/s, {args.requests} requests x {args.rounds} rounds (medians over rounds)")
    print(
        "| server | p50 ms | p99 ms | max ms | client lag p99 ms | p99 from the send ms | p99 / no-op's | p99 ≤ 5 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        m = med[kind]
        ratio = "" if kind == "noop" else f"{m['p99'] / med['noop']['p99']:.2f}x"
        verdict = "yes" if m["p99"] <= 5.0 else "no"
        print(
            f"| {kind} | {m['p50']:.2f} | {m['p99']:.2f} | {m['max']:.1f} | {m['lag99']:.2f} | {m['sent99']:.2f} "
            f"| {ratio} | {verdict} |"
        )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per server and message")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rate", type=float, help="paced mode: child-B12 requests per second, open loop")
    p.add_argument("--rounds", type=int, default=3, help="paced mode: rounds (servers take turns)")
    p.add_argument(
        "--compare", type=Path, help="paced mode: also the context endpoint of the checkout at this path (before/after)"
    )
    p.add_argument("--noop-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.noop_server:
        noop_server(args.noop_server)
        return
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}; "
        f"load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    if args.rate:
        if args.requests == p.get_default("requests"):
            args.requests = 1000
        paced(args)
        return
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in ("noop", "endpoint", "endpoint+context"):
            proc, port = start(kind, tmp)
            try:
                for label, message in (("no B12", NO_B12), ("child B12", B12)):
                    rate, times = sequential(port, message, args.requests)
                    conc = concurrent(port, message, args.clients, max(50, args.requests // args.clients))
                    r = dict(seq=rate, p50=pct(times, 50) * 1000, p99=pct(times, 99) * 1000, conc=conc)
                    results[(kind, label)] = r
                    print(
                        f"{kind:17} {label:9}  1 client {r['seq']:7.0f} req/s  p50 {r['p50']:.3f} ms  "
                        f"p99 {r['p99']:.3f} ms   {args.clients} clients {r['conc']:7.0f} req/s",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(f"| server | message | 1 client req/s | p50 ms | p99 ms | {args.clients} clients req/s | p50 over no-op |")
    print("|---|---|---|---|---|---|---|")
    for (kind, label), r in results.items():
        over = r["p50"] - results[("noop", label)]["p50"]
        extra = "" if kind == "noop" else f"{over:+.3f} ms"
        print(f"| {kind} | {label} | {r['seq']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['conc']:.0f} | {extra} |")


if __name__ == "__main__":
    main()
