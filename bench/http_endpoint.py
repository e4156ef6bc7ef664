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
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import platform
import socket
import statistics
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


def start(kind: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
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


def sequential(port: int, message: bytes, n: int) -> tuple[float, list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": f"application/hl7-v2; charset={CHARSETS[message]}"}
    for body in variants(message, min(50, n)):  # warm up (imports, first hl7apy parse)
        conn.request("POST", "/hl7", body=body, headers=headers)
        conn.getresponse().read()
    bodies = variants(message, n)
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
    errors: list[BaseException] = []

    def run():
        try:
            sequential(port, message, n_each)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return clients * n_each / (time.perf_counter() - began)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per server and message")
    p.add_argument("--clients", type=int, default=8)
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
