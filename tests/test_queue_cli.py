"""`python -m b12comment queue ...` against a real journal file."""

from __future__ import annotations

import subprocess
import sys

import pytest
from journal_helpers import keep_invalid, mark_processed, record
from service_helpers import subprocess_env, write_config

from b12comment.storage.sqlite import SqliteJournal

PATIENT = b"PID|1||0101151234^^^CPR||Jensen^Anna||20150101|F\r"


def msg(cid: str) -> bytes:
    return f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{cid}|P|2.5.1\r".encode() + PATIENT


def queue(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "journal.sqlite3"
    j = SqliteJournal(path)
    ids = {}
    for cid in ("OK1", "DEAD1", "DEAD2", "WAIT1"):
        ids[cid] = record(j, msg(cid), cid, now=1_700_000_000.0).id
        mark_processed(j, ids[cid], msg(cid), False, ["no_b12"])
    j.mark_forwarded_many([ids["OK1"]])
    j.mark_attempt_failed(ids["DEAD1"], "downstream answered AE")
    j.mark_dead(ids["DEAD1"], "downstream rejected it (AR, error code 207)")
    j.mark_dead(ids["DEAD2"], "gave up after 20 attempts: no ACK within 30 s")
    keep_invalid(j, b"not hl7", "not an HL7 message: message does not start with an MSH segment")
    j.close()
    return write_config(tmp_path / "config.toml", journal=dict(path=str(path)))


def test_status_counts_and_oldest_undelivered(cfg):
    result = queue(cfg, "status")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:6]}
    assert lines == {"received": "0", "processed": "1", "forwarded": "1", "dead": "2", "invalid": "1"}
    assert "undelivered: 1, oldest received 2023-11-14 22:13:20 UTC" in result.stdout


def test_status_shows_the_held_messages_apart(cfg, tmp_path):
    """A message held for the rest of its requisition is undelivered, but not
    stuck: status says how many are held and when the next hold ends."""
    j = SqliteJournal(tmp_path / "journal.sqlite3")
    held = record(j, msg("HELD1"), "HELD1", now=1_700_000_100.0).id
    j.hold_many([(held, 1_700_000_900.0)])
    j.close()
    result = queue(cfg, "status")
    assert result.returncode == 0, result.stderr
    assert "undelivered: 2, oldest received 2023-11-14 22:13:20 UTC" in result.stdout
    assert "held: 1 (waiting for the rest of the requisition; the next hold ends 2023-11-14 22:28:20 UTC)" in (
        result.stdout
    )


def test_status_without_holds_says_none_held(cfg):
    assert "held: none" in queue(cfg, "status").stdout


def test_dead_lists_control_ids_and_reasons_without_patient_data(cfg):
    result = queue(cfg, "dead")
    assert result.returncode == 0, result.stderr
    assert "DEAD1" in result.stdout and "AR, error code 207" in result.stdout
    assert "DEAD2" in result.stdout and "gave up after 20 attempts" in result.stdout
    assert "OK1" not in result.stdout and "WAIT1" not in result.stdout
    for secret in ("Jensen", "0101151234", "20150101"):
        assert secret not in result.stdout


@pytest.mark.slow
def test_retry_one_then_all(cfg, tmp_path):
    result = queue(cfg, "retry", "DEAD1")
    assert result.returncode == 0, result.stderr
    assert "requeued 1 message" in result.stdout
    j = SqliteJournal(tmp_path / "journal.sqlite3")
    states = {r.control_id: (r.state, r.attempts) for r in j.rows() if r.control_id}
    j.close()
    assert states["DEAD1"] == ("processed", 0)
    assert states["DEAD2"] == ("dead", 0)
    assert queue(cfg, "retry", "DEAD1").returncode == 1  # nothing dead with that ID any more
    result = queue(cfg, "retry", "--all")
    assert result.returncode == 0 and "requeued 1 message" in result.stdout
    assert "no dead-lettered messages" in queue(cfg, "dead").stdout
    result = queue(cfg, "retry", "--all")  # nothing dead any more: not a failure
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing to retry: no dead-lettered messages"


def test_retry_needs_an_id_or_all(cfg):
    result = queue(cfg, "retry")
    assert result.returncode == 2 and "CONTROL_ID or --all" in result.stderr


def test_missing_journal_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "config.toml", journal=dict(path=str(tmp_path / "nothing.sqlite3")))
    result = queue(cfg, "status")
    assert result.returncode == 1
    assert "no journal at" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nothing.sqlite3").exists()


@pytest.mark.slow
def test_retry_while_serve_runs_delivers_the_dead_message(tmp_path):
    from service_helpers import Downstream, MllpConnection, Serve, msa, wait_until

    first_answer = {}

    def answer(index, payload):
        return "AR" if first_answer.setdefault("seen", index) == index else "AA"

    with Downstream(answer=answer) as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(tmp_path / "j.sqlite3")),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
        )
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(msg("R1")))[0] == "AA"
                assert msa(conn.send(msg("R2")))[0] == "AA"
            assert down.wait_for(2)
            assert serve.wait_record("dead_lettered")
            assert "R1" in queue(cfg, "dead").stdout
            result = queue(cfg, "retry", "R1")
            assert result.returncode == 0, result.stderr
            assert down.wait_for(3), serve.stderr
            assert [p.split(b"|")[9] for p in down.received] == [b"R1", b"R2", b"R1"]
            assert wait_until(lambda: "no dead-lettered messages" in queue(cfg, "dead").stdout)
            assert serve.stop() == 0
