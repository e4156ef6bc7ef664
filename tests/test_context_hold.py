"""The hold window through `serve` (subprocess, real sockets, real SQLite):
a message that would get the comment waits for the rest of its requisition,
other patients' messages are not delayed, one patient's order never changes,
and a hold survives SIGKILL."""

from __future__ import annotations

import signal
import time

import pytest
from service_helpers import Downstream, MllpConnection, Serve, msa, msh10, wait_until, write_config
from test_context import ALT_HIGH, b12_message, other_message

pytestmark = pytest.mark.slow


def config(tmp_path, down, hold_s: float):
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
        context=dict(hold_s=hold_s),
        metrics=dict(port=0),
    )


def commented(message: bytes) -> bool:
    return b"\rNTE|1|L|" in message


def test_a_newer_message_of_the_patient_releases_the_held_one_before_it(tmp_path):
    with Downstream() as down, Serve(config(tmp_path, down, 30.0)) as serve:
        with MllpConnection(serve.port) as conn:
            b12 = b12_message(control_id="B12-H", orc4="REQ-H", patient_id="0101169901^^^CPR")
            assert msa(conn.send(b12)) == ("AA", "B12-H")
            assert serve.wait_record("held")
            other = other_message(control_id="OTHER", orc4="REQ-O", patient_id="0303039999^^^CPR")
            assert msa(conn.send(other)) == ("AA", "OTHER")
            assert down.wait_for(1), serve.stderr  # another patient: not delayed
            assert [msh10(m) for m in down.received] == ["OTHER"]
            alt = other_message(ALT_HIGH, control_id="ALT-H", orc4="REQ-H", patient_id="0101169901^^^CPR")
            assert msa(conn.send(alt)) == ("AA", "ALT-H")
            assert down.wait_for(3), serve.stderr
        assert [msh10(m) for m in down.received] == ["OTHER", "B12-H", "ALT-H"]  # the B12 before the ALT
        assert not commented(down.received[1])
        assert down.received[1] == b12
        decision = [r for r in serve.records("decision") if r["control_id"] == "B12-H"][0]
        assert decision["reasons"] == ["other_abnormal_recent"] and decision["vetoed_by"] == ["ALT-H"]
        assert decision["released_by"] == "newer_message"
        assert not serve.records("comment_contradicted")  # it never got the comment
        assert serve.stop() == 0


def test_the_hold_ends_and_the_message_is_decided_with_what_is_known_then(tmp_path):
    with Downstream() as down, Serve(config(tmp_path, down, 1.0)) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(b12_message(control_id="B12-T")))[0] == "AA"
        started = time.monotonic()
        assert down.wait_for(1), serve.stderr
        assert time.monotonic() - started >= 0.5  # it waited
        assert commented(down.received[0])
        decision = [r for r in serve.records("decision") if r["control_id"] == "B12-T"][0]
        assert decision["released_by"] == "hold_ended" and decision["held_s"] >= 0.9
        assert serve.stop() == 0


def test_sigkill_during_a_hold_then_the_held_message_is_delivered_after_restart(tmp_path):
    with Downstream() as down:
        cfg = config(tmp_path, down, 3.0)
        first = Serve(cfg).start()
        try:
            with MllpConnection(first.port) as conn:
                assert msa(conn.send(b12_message(control_id="B12-K")))[0] == "AA"
                assert first.wait_record("held")
                assert (
                    msa(conn.send(other_message(control_id="X-K", orc4="REQ-X", patient_id="0505059999^^^CPR")))[0]
                    == "AA"
                )
            assert down.wait_for(1)
            first.proc.send_signal(signal.SIGKILL)
            assert first.wait_exit() == -signal.SIGKILL
        finally:
            first.kill()
        assert [msh10(m) for m in down.received] == ["X-K"]
        with Serve(cfg) as second:
            assert second.wait_record("holds_restored")
            with MllpConnection(second.port) as conn:  # the same patient's next message, after the restart
                alt = other_message(ALT_HIGH, control_id="ALT-K", orc4="REQ9")
                assert msa(conn.send(alt))[0] == "AA"
            assert wait_until(lambda: len(down.received) >= 3), second.stderr
            assert second.stop() == 0
    assert [msh10(m) for m in down.received] == ["X-K", "B12-K", "ALT-K"]  # nothing lost, order kept
    assert not commented(down.received[1])  # decided with the ALT that came after the restart
