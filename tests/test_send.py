"""`b12comment send FILE... --to HOST:PORT` against a real `serve` subprocess
(and a small downstream server where the answer must be AE or none)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time

import pytest
import trustme
from service_helpers import SAMPLES, Downstream, Serve, frame, free_port, msh10, subprocess_env, write_config

from b12comment.wire.split import split_messages


def send(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "send", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
    )


def messages_of(path) -> list[bytes]:
    return [p.data for p in split_messages(path.read_bytes()) if p.kind == "message"]


@pytest.fixture
def serve(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    with Serve(cfg) as s:
        yield s


@pytest.mark.promise
def test_send_every_sample_gets_aa_and_lands_in_the_outbox(serve, tmp_path):
    files = sorted(SAMPLES.glob("*.hl7"))
    expected = [msh10(m) for f in files for m in messages_of(f)]
    assert len(expected) > len(files)  # the batch file holds several
    result = send(*files, "--to", f"127.0.0.1:{serve.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == expected
    for line in lines[:-1]:
        assert line.split()[1] == "AA" and "MSA-2 matches" in line and line.endswith(" ms")
    assert lines[-1].startswith(f"sent {len(expected)} messages: {len(expected)} AA, 0 not AA")
    outbox = tmp_path / "outbox"
    assert serve_wait(lambda: len(list(outbox.glob("*.hl7"))) == len(expected))


def serve_wait(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_send_reads_gzip_lf_and_mllp_captures(serve, tmp_path):
    one = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
    two = (SAMPLES / "adult_high_b12.hl7").read_bytes()
    (tmp_path / "a.hl7.gz").write_bytes(gzip.compress(one.replace(b"\r", b"\n")))
    (tmp_path / "capture.mllp").write_bytes(frame(two) + frame(one.replace(b"S0001", b"CAP2")))
    result = send(tmp_path / "a.hl7.gz", tmp_path / "capture.mllp", "--to", f"127.0.0.1:{serve.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert ids == [msh10(one), msh10(two), "CAP2"]


def test_send_dash_reads_standard_input_plain_or_gzip(serve, tmp_path):
    """`send -` reads the messages from standard input, as python-hl7's mllp_send does."""
    one = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
    two = (SAMPLES / "adult_high_b12.hl7").read_bytes()
    for stdin, label in [(one + two, "plain"), (gzip.compress(one.replace(b"S0001", b"GZ1")), "gzip")]:
        result = subprocess.run(
            [sys.executable, "-m", "b12comment", "send", "-", "--to", f"127.0.0.1:{serve.port}"],
            input=stdin,
            capture_output=True,
            timeout=60,
            env=subprocess_env(),
        )
        assert result.returncode == 0, (label, result.stdout, result.stderr)
        ids = [line.split()[0] for line in result.stdout.decode().splitlines()[:-1]]
        assert ids == ([msh10(one), msh10(two)] if label == "plain" else ["GZ1"]), label


def test_send_dash_with_nothing_on_standard_input_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "b12comment", "send", "-", "--to", f"127.0.0.1:{free_port()}"],
        input=b"",
        capture_output=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "input not found" not in err and "-" in err, err


def test_a_bounded_load_run_gives_new_control_ids_and_a_summary(serve, tmp_path):
    sample = SAMPLES / "child_isolated_high_b12.hl7"
    result = send(sample, "--to", f"127.0.0.1:{serve.port}", "--count", 25, "--rate", 500)
    assert result.returncode == 0, result.stdout + result.stderr
    (summary,) = result.stdout.splitlines()  # only messages not AA get a line of their own
    assert summary.startswith("sent 25 messages: 25 AA, 0 not AA; ")
    assert "msg/s" in summary and "p50" in summary and "p99" in summary
    outbox = tmp_path / "outbox"
    assert serve_wait(lambda: len(list(outbox.glob("*.hl7"))) == 25)  # none taken for a retransmission
    names = sorted(p.name.split("_", 1)[1] for p in outbox.glob("*.hl7"))
    assert "S0001.hl7" in names and "S0001-2.hl7" in names and "S0001-13.hl7" in names


def test_a_message_answered_ae_exits_3_and_says_so(tmp_path):
    messages = [(SAMPLES / n).read_bytes() for n in ("child_isolated_high_b12.hl7", "adult_high_b12.hl7")]
    (tmp_path / "two.hl7").write_bytes(b"".join(messages))
    with Downstream(answer=lambda i, payload: "AA" if i == 0 else "AE") as down:
        result = send(tmp_path / "two.hl7", "--to", f"127.0.0.1:{down.port}")
    assert result.returncode == 3, result.stdout + result.stderr
    first, second, summary = result.stdout.splitlines()
    assert first.split()[1] == "AA" and second.split()[1] == "AE"
    assert summary.startswith("sent 2 messages: 1 AA, 1 not AA")


@pytest.mark.promise
def test_an_ack_for_another_control_id_is_not_accepted(tmp_path):
    other = b"MSH|^~\\&|D|D|S|S|20240101||ACK|X1|P|2.5.1\rMSA|AA|SOMEONE-ELSE\r"
    with Downstream(answer=lambda i, payload: other) as down:
        result = send(SAMPLES / "adult_high_b12.hl7", "--to", f"127.0.0.1:{down.port}")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "MSA-2 is 'SOMEONE-ELSE', not this message" in result.stdout


@pytest.mark.slow
def test_no_ack_in_time_is_a_line_not_a_hang(tmp_path):
    with Downstream(answer=lambda i, payload: None) as down:
        result = send(SAMPLES / "adult_high_b12.hl7", "--to", f"127.0.0.1:{down.port}", "--timeout", 0.5)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no ACK" in result.stdout.splitlines()[0]


def test_no_listener_is_one_clear_line_and_exit_1(tmp_path):
    result = send(SAMPLES / "adult_high_b12.hl7", "--to", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()] and "cannot connect to 127.0.0.1" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["missing.hl7", "--to", "127.0.0.1:2575"], "input not found: missing.hl7"),
        (["{sample}", "--to", "nohost"], "--to wants HOST:PORT"),
        (["{sample}", "--to", "127.0.0.1:2575", "--count", "0"], "--count must be 1 or more"),
    ],
)
def test_usage_errors_exit_2(args, says):
    args = [a.replace("{sample}", str(SAMPLES / "adult_high_b12.hl7")) for a in args]
    result = send(*args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_file_without_hl7_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "notes.txt").write_text("not a message\n")
    result = send(tmp_path / "notes.txt", "--to", "127.0.0.1:2575")
    assert result.returncode == 1
    assert "no HL7 message (no MSH segment) in" in result.stderr and "Traceback" not in result.stderr


def test_a_file_without_hl7_is_skipped_with_a_warning_the_rest_sent_and_exit_1(serve, tmp_path):
    """An archive with a stray file in it: every message after it is still sent."""
    (tmp_path / "notes.txt").write_text("not a message\n")
    (tmp_path / "empty.hl7").write_bytes(b"")
    one = SAMPLES / "child_isolated_high_b12.hl7"
    two = SAMPLES / "adult_high_b12.hl7"
    result = send(one, tmp_path / "notes.txt", two, tmp_path / "empty.hl7", "--to", f"127.0.0.1:{serve.port}")
    assert result.returncode == 1, result.stdout + result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert ids == [msh10(one.read_bytes()), msh10(two.read_bytes())]
    assert result.stdout.splitlines()[-1].startswith("sent 2 messages: 2 AA, 0 not AA")
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2 and "notes.txt; skipped" in warnings[0] and "empty.hl7; skipped" in warnings[1]
    assert (
        result.stderr.splitlines()[-1]
        == "b12comment: 2 files held no HL7 message and were skipped (see the warnings above)"
    )


@pytest.mark.slow
def test_send_over_tls_checks_the_server_with_the_given_ca(tmp_path):
    ca = trustme.CA()
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, tls_cert=str(cert), tls_key=str(key)),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    sample = SAMPLES / "child_isolated_high_b12.hl7"
    with Serve(cfg) as s:
        ok = send(sample, "--to", f"127.0.0.1:{s.port}", "--tls-ca", ca_file)
        plain_trust = send(sample, "--to", f"127.0.0.1:{s.port}", "--tls")  # system store: not our test CA
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0].split()[:2] == ["S0001", "AA"]
    assert plain_trust.returncode == 1 and "TLS with 127.0.0.1" in plain_trust.stderr
    assert "Traceback" not in plain_trust.stderr
    assert os.path.isdir(tmp_path / "outbox")


def test_a_listener_that_closes_after_each_ack_gets_every_message(tmp_path):
    """Many receivers close the connection after each ACK: send reconnects."""
    import socket
    import threading

    from service_helpers import ack_for, take_frames

    received: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(20)

    def serve_once_per_connection():
        for _ in range(3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    payloads, buffer = take_frames(buffer + data)
                    if payloads:
                        received.append(payloads[0])
                        conn.sendall(frame(ack_for(payloads[0], "AA")))
                        break  # and close, as hl7apy's server does

    thread = threading.Thread(target=serve_once_per_connection, daemon=True)
    thread.start()
    names = ("child_isolated_high_b12.hl7", "adult_high_b12.hl7", "teen_censored_b12.hl7")
    result = send(*(SAMPLES / n for n in names), "--to", f"127.0.0.1:{server.getsockname()[1]}")
    server.close()
    thread.join(10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [msh10(p) for p in received] == [msh10((SAMPLES / n).read_bytes()) for n in names]
