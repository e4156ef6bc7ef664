"""The queue console an on-call engineer needs: `queue show` (one message:
state, times, tries, decision; the bytes only with --message), `queue list`
with filters, `queue export --dead`, `queue discard` with a recorded reason,
`--json` on every queue command, and try counts that count a rejection.
A real serve, a real downstream that answers AR to one message, the CLI as
a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from service_helpers import SAMPLES, Downstream, MllpConnection, Serve, msa, subprocess_env, write_config

CHILD = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()  # control ID S0001
ADULT = (SAMPLES / "adult_high_b12.hl7").read_bytes()


def queue(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "--config", str(cfg), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )


def as_json(cfg, *args):
    done = queue(cfg, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """A journal with one delivered message and one the downstream rejected (AR)."""
    base = tmp_path_factory.mktemp("console")
    reject = ADULT.split(b"|")[9].decode()
    with Downstream(answer=lambda i, payload: "AR" if reject.encode() in payload else "AA") as down:
        cfg = write_config(
            base / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(base / "journal.sqlite3")),
            downstream=dict(url=down.url, retry_initial_s=0.05, retry_max_s=0.1),
            context=dict(store=str(base / "context.sqlite3"), key_file=str(base / "context.key")),
            logging=dict(level="debug"),  # a delivery's record is at debug
        )
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(CHILD))[0] == "AA"
                assert msa(conn.send(ADULT))[0] == "AA"
            assert serve.wait_record("dead_lettered") and serve.wait_record("forwarded")
            assert serve.stop() == 0
    return cfg, reject, base


def test_a_rejected_message_counts_its_try(journal):
    cfg, reject, _ = journal
    dead = as_json(cfg, "dead")
    assert [d["control_id"] for d in dead] == [reject]
    assert dead[0]["tries"] == 1 and "rejected" in dead[0]["last_error"]
    assert f"{reject}" in queue(cfg, "dead").stdout and "    1  downstream rejected" in queue(cfg, "dead").stdout


def test_show_gives_state_times_tries_decision_and_no_bytes_without_message(journal):
    cfg, _, _ = journal
    text = queue(cfg, "show", "S0001").stdout
    assert "state        forwarded" in text and "decision     commented" in text and "tries        0" in text
    assert "PID|" not in text  # patient data only on request
    shown = as_json(cfg, "show", "S0001")["messages"][0]
    assert shown["state"] == "forwarded" and shown["commented"] is True and "message" not in shown
    assert shown["received_at"].endswith("Z") and shown["tries"] == 0
    with_bytes = queue(cfg, "show", "S0001", "--message").stdout
    assert "PID|" in with_bytes and "NTE|" in with_bytes  # the processed message
    missing = queue(cfg, "show", "NOPE")
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == "b12comment: no message with control ID NOPE in the journal"
    )


def test_list_filters_by_state_time_control_id_and_peer(journal):
    cfg, reject, _ = journal
    assert [r["control_id"] for r in as_json(cfg, "list")] == ["S0001", reject]
    assert [r["control_id"] for r in as_json(cfg, "list", "--state", "dead")] == [reject]
    assert [r["control_id"] for r in as_json(cfg, "list", "--control-id", "0001")] == ["S0001"]
    assert as_json(cfg, "list", "--since", "2999-01-01") == []
    assert len(as_json(cfg, "list", "--until", "2999-01-01T00:00")) == 2
    assert len(as_json(cfg, "list", "--peer", "127.0.0.1")) == 2 and as_json(cfg, "list", "--peer", "10.9.9.9") == []
    bad = queue(cfg, "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since wants a time" in bad.stderr


def test_status_review_and_retry_speak_json(journal):
    cfg, _, _ = journal
    status = as_json(cfg, "status")
    assert status["counts"]["dead"] == 1 and status["counts"]["forwarded"] == 1 and status["undelivered"] == 0
    assert as_json(cfg, "review") == []


def test_export_dead_writes_the_dead_letters_and_discard_records_why(journal, tmp_path):
    cfg, reject, _ = journal
    done = queue(cfg, "export", tmp_path / "dead", "--dead")
    assert done.returncode == 0 and done.stdout.strip() == f"exported 1 dead-lettered message to {tmp_path / 'dead'}"
    files = list((tmp_path / "dead").glob("*.hl7"))
    assert [f.name.split("_", 1)[1] for f in files] == [f"{reject}.hl7"] and files[0].read_bytes() == ADULT
    assert queue(cfg, "export", tmp_path / "undelivered").stdout.startswith("exported 0 undelivered")
    assert queue(cfg, "discard", reject, "--reason", " ").returncode == 2  # a reason is required
    assert queue(cfg, "discard", "S0001", "--reason", "x").returncode == 1  # only dead letters
    result = as_json(cfg, "discard", reject, "--reason", "the lab resent it corrected as C-123")
    assert result["discarded"] == 1 and "@" in result["by"]
    assert as_json(cfg, "dead") == [] and as_json(cfg, "status")["discarded"] == 1
    record = as_json(cfg, "show", reject)
    assert record["messages"] == []
    (kept,) = record["discarded"]
    assert kept["reason"] == "the lab resent it corrected as C-123" and kept["tries"] == 1
    assert "rejected" in kept["last_error"] and kept["control_id"] == reject
    assert "the lab resent it corrected" in queue(cfg, "show", reject).stdout
