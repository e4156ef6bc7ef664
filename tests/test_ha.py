"""Active-passive instances on one PostgreSQL journal, as real subprocesses
on 127.0.0.1 with a real PostgreSQL the suite starts (pg_helpers.py): one
leads, the other stands by; a standby takes over when the leader dies or is
stopped; a stopped leader that comes back never answers AA again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from service_helpers import Downstream, MllpConnection, Serve, free_port, msa, subprocess_env, wait_until, write_config
from test_context import LOW_PLATELETS, NORMAL_PLATELETS, b12_message, other_message

pytestmark = pytest.mark.slow

LEASE_S, TAKEOVER_S = 2.0, 6.0
DUPLICATES_PER_FAILOVER = 10  # README: the forwarder records its AAs up to 10 at a time


class Instance:
    """One `serve` of the pair: its configuration, its ports, and the process running now."""

    def __init__(self, tmp_path, name: str, url: str, down_url: str):
        self.name, self.port, self.metrics_port = name, free_port(), free_port()
        self.config = write_config(
            tmp_path / f"{name}.toml",
            listener=dict(host="127.0.0.1", port=self.port),
            journal=dict(path=url),
            downstream=dict(url=down_url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
            metrics=dict(host="127.0.0.1", port=self.metrics_port),
            # The context store in the same database: a veto survives a failover (the key file is shared).
            context=dict(store=url, key_file=str(tmp_path / "context.key")),
            ha=dict(instance=name, lease_s=LEASE_S, takeover_s=TAKEOVER_S),
        )
        self.serve: Serve | None = None
        self.runs: list[Serve] = []

    def start(self) -> Instance:
        self.serve = Serve(self.config).start(expect_listening=False)
        self.runs.append(self.serve)
        return self

    def leads(self) -> int:
        return len(self.serve.records("listening"))

    def readyz(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def queue_status(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "b12comment", "queue", "status", "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def aa_count(self) -> int:
        return sum(1 for r in self.serve.records("ack") if r.get("ack_code") == "AA")

    def kill(self) -> None:
        for run in self.runs:
            run.kill()


def test_one_leads_the_other_stands_by_and_takes_over_after_a_clean_stop(tmp_path, pg_url):
    with Downstream() as down:
        a = Instance(tmp_path, "a", pg_url, down.url)
        b = Instance(tmp_path, "b", pg_url, down.url)
        try:
            a.start()
            assert wait_until(lambda: a.leads() == 1), a.serve.stderr
            b.start()
            assert b.serve.wait_record("standby"), b.serve.stderr
            assert wait_until(lambda: b.readyz() == (503, "not ready: standby\n")), b.readyz()
            assert a.readyz() == (200, "ok\n")
            assert "instance b: standby; leader a" in b.queue_status()
            assert "instance a: leader" in a.queue_status()
            with MllpConnection(a.port) as conn:
                assert msa(conn.send(b12_message(control_id="HA-1")))[0] == "AA"
            with pytest.raises(OSError):  # the standby listens on nothing
                MllpConnection(b.port, timeout=2).close()
            assert a.serve.stop() == 0, a.serve.stderr
            assert wait_until(lambda: b.leads() == 1, timeout=TAKEOVER_S + 10), b.serve.stderr
            with MllpConnection(b.port) as conn:
                assert msa(conn.send(b12_message(control_id="HA-2", orc4="R2")))[0] == "AA"
            assert down.wait_for(2)
            assert sorted(msa_id(m) for m in down.received) == ["HA-1", "HA-2"]
            assert b.readyz() == (200, "ok\n")
            assert b.serve.stop() == 0, b.serve.stderr
        finally:
            a.kill()
            b.kill()


def msa_id(message: bytes) -> str:
    return message.split(b"\r", 1)[0].split(b"|")[9].decode()


class Sender:
    """The laboratory system's side: sends in order, waits for each ACK, and
    when its connection drops, the ACK does not come or is not AA, moves to
    the other address and sends the same message again."""

    def __init__(self, ports: list[int]):
        self.ports, self.at = ports, 0
        self.conn: MllpConnection | None = None
        self.acked: list[str] = []
        self.resends = 0
        self.stop = threading.Event()

    def send(self, payload: bytes, control_id: str, deadline: float) -> bool:
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if self.conn is None:
                    self.conn = MllpConnection(self.ports[self.at], timeout=3.0)
                code, _ = msa(self.conn.send(payload))
                if code == "AA":
                    self.acked.append(control_id)
                    return True
            except OSError:
                pass
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self.at = 1 - self.at
            self.resends += 1
            time.sleep(0.05)
        return False


def tails(pair: list[Instance]) -> str:
    """The last log lines of each instance but the per-message ones, for a failure's message."""
    out = []
    for instance in pair:
        for n, run in enumerate(instance.runs):
            lines = [x for x in run.lines if '"ack"' not in x and '"decision"' not in x and "connection_" not in x]
            out.append(f"--- {instance.name} run {n}:\n" + "\n".join(lines[-15:]))
    return "\n".join(out)


def load_message(n: int, patients: int = 7) -> tuple[str, bytes]:
    patient, seq = n % patients, n // patients
    cid = f"L{patient}-{seq:05d}"
    m = other_message(NORMAL_PLATELETS, control_id=cid, patient_id=f"02020{patient:05d}^^^CPR", orc4=f"RQ{n}")
    return cid, m


def test_failover_under_load_loses_no_acked_message(tmp_path, pg_url):
    """SIGKILL the leader 5 times and SIGSTOP it once for longer than the
    lease, under a steady sender: every AA is delivered, duplicates stay
    within the bound, each patient's messages arrive in order, each takeover
    is within [ha] takeover_s, a veto recorded before the failovers still
    vetoes after them; the stopped leader, continued, never answers AA again
    and stands by."""
    with Downstream() as down:
        a = Instance(tmp_path, "a", pg_url, down.url)
        b = Instance(tmp_path, "b", pg_url, down.url)
        pair = [a, b]
        sender = Sender([a.port, b.port])
        deadline = time.monotonic() + 240
        try:
            a.start()
            assert wait_until(lambda: a.leads() == 1), a.serve.stderr
            b.start()
            assert b.serve.wait_record("standby"), b.serve.stderr
            # The veto: an abnormal result of the patient before any failover.
            veto_patient = "0303030303^^^CPR"
            veto = other_message(LOW_PLATELETS, control_id="VETO-CBC", patient_id=veto_patient, orc4="RV1")
            assert sender.send(veto, "VETO-CBC", deadline)

            sent = 0

            def run() -> None:
                nonlocal sent
                while sent < 20_000 and not sender.stop.is_set():  # bounded; stopped after the last failover
                    cid, m = load_message(sent)
                    if not sender.send(m, cid, deadline):
                        return
                    sent += 1

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            takeovers: list[tuple[str, float]] = []
            leader, standby = a, b
            for k in range(6):
                before = len(sender.acked)
                assert wait_until(lambda b=before: len(sender.acked) >= b + 60, timeout=60), "the sender stalled:\n" + (
                    tails(pair)
                )
                leads_before = standby.leads()
                stopped = k == 5
                t0 = time.monotonic()
                if stopped:
                    leader.serve.proc.send_signal(signal.SIGSTOP)
                    time.sleep(0.5)  # its last log lines reach this side
                    aa_before = leader.aa_count()
                else:
                    leader.serve.proc.kill()
                assert wait_until(lambda s=standby, n=leads_before: s.leads() > n, timeout=TAKEOVER_S * 3), (
                    standby.serve.stderr[-6000:]
                )
                takeovers.append(("stop" if stopped else "kill", time.monotonic() - t0))
                if stopped:
                    # Fencing: the stopped leader, continued after the takeover,
                    # steps down and never answers AA again.
                    continued = time.time()
                    leader.serve.proc.send_signal(signal.SIGCONT)
                    assert leader.serve.wait_record("stepped_down", timeout=30), leader.serve.stderr[-3000:]
                    assert leader.serve.wait_record("standby", count=2, timeout=30)
                    with pytest.raises(OSError):
                        MllpConnection(leader.port, timeout=2).send(load_message(10**6)[1])
                    late = [r for r in leader.serve.records("ack") if r.get("ack_code") == "AA"][aa_before:]
                    assert not late, (late, continued)
                else:
                    leader.serve.proc.wait(10)
                    leader.start()  # back, as a standby
                    assert leader.serve.wait_record("standby"), leader.serve.stderr
                leader, standby = standby, leader
            before = len(sender.acked)
            assert wait_until(lambda: len(sender.acked) >= before + 60, timeout=60)
            # The veto still holds: a child's isolated high B12 of that patient gets no comment.
            b12 = b12_message(control_id="VETO-B12", patient_id=veto_patient, orc4="RV2")
            sender.stop.set()
            thread.join(30)
            sender.stop.clear()
            assert sender.send(b12, "VETO-B12", deadline)
            control = b12_message(control_id="CTRL-B12", patient_id="0404040404^^^CPR", orc4="RC1")
            assert sender.send(control, "CTRL-B12", deadline)

            acked = set(sender.acked)
            assert wait_until(lambda: acked <= {msa_id(m) for m in down.received}, timeout=60), sorted(
                acked - {msa_id(m) for m in down.received}
            )[:10]
            received = [msa_id(m) for m in down.received]
            duplicates = sum(n - 1 for n in Counter(received).values())
            by_id = {msa_id(m): m for m in down.received}
            assert b"\rNTE|" not in by_id["VETO-B12"], "the veto recorded before the failovers was lost"
            assert b"\rNTE|" in by_id["CTRL-B12"]
            for patient in range(7):
                firsts: list[str] = []
                for cid in received:
                    if cid.startswith(f"L{patient}-") and cid not in firsts:
                        firsts.append(cid)
                assert firsts == sorted(firsts), f"patient {patient} out of order"
            figures = dict(
                acked=len(acked),
                delivered=len(set(received)),
                duplicates=duplicates,
                sender_resends=sender.resends,
                takeovers=[(kind, round(s, 2)) for kind, s in takeovers],
            )
            print("FAILOVER FIGURES " + json.dumps(figures))
            assert duplicates <= DUPLICATES_PER_FAILOVER * len(takeovers), figures
            assert all(s < TAKEOVER_S for _, s in takeovers), figures
        finally:
            sender.stop.set()
            for instance in pair:
                if instance.serve is not None and instance.serve.proc.poll() is None:
                    instance.serve.proc.send_signal(signal.SIGCONT)
                instance.kill()


def test_a_database_that_goes_away_gets_ae_never_aa_and_serve_leads_again_when_it_is_back(tmp_path):
    """The database fails over (here: stops at once, then comes back on the
    same address): a message in flight or sent meanwhile is never answered
    AA (AE, or no answer); the instance stands by, leads again once the
    database is back, and every message it answered AA is delivered."""
    from pg_helpers import PostgresServer, unavailable

    server = PostgresServer()
    why = server.start()
    if why is not None:
        server.stop()
        unavailable(why)
    try:
        url = server.new_database()
        with Downstream() as down:
            a = Instance(tmp_path, "a", url, down.url)
            try:
                a.start()
                assert wait_until(lambda: a.leads() == 1), a.serve.stderr
                sender = Sender([a.port, a.port])
                deadline = time.monotonic() + 120
                assert sender.send(load_message(0)[1], "L0-00000", deadline)
                server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop")
                answers = []
                for n in range(1, 6):  # while the database is gone
                    cid, m = load_message(n)
                    try:
                        with MllpConnection(a.port, timeout=3.0) as conn:
                            answers.append(msa(conn.send(m))[0])
                    except OSError:
                        answers.append("no answer")
                    time.sleep(0.3)
                assert "AA" not in answers and answers, answers
                assert a.serve.wait_record("stepped_down", timeout=30), tails([a])
                done = server._run(
                    "pg_ctl",
                    "-D",
                    str(server.data),
                    "-o",
                    f"-c listen_addresses='' -c unix_socket_directories='{server.folder}' -p {server.port}",
                    "-w",
                    "-l",
                    str(server.folder / "log"),
                    "start",
                )
                assert done.returncode == 0, done.stderr
                assert wait_until(lambda: a.leads() == 2, timeout=60), tails([a])
                for n in range(6, 9):
                    cid, m = load_message(n)
                    assert sender.send(m, cid, deadline)
                acked = set(sender.acked)
                assert wait_until(lambda: acked <= {msa_id(m) for m in down.received}, timeout=30)
                assert a.serve.stop() == 0, tails([a])
            finally:
                a.kill()
    finally:
        server.stop()
