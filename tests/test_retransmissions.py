"""A retransmission is the same control ID within the window and the same
bytes but for what ends the message: python-hl7's `mllp_send --loose`
strips the final segment terminator, other senders add a newline. A control
ID used again for other content is a new message, forwarded, with a warning
and a metric. Every backend (SQLite, PostgreSQL), then `serve` end to end."""

from __future__ import annotations

import urllib.request

import pytest
from service_helpers import MllpConnection, Serve, free_port, msa, wait_until, write_config
from test_storage_backends import location, record, store  # noqa: F401 - the fixtures, per backend

from b12comment.storage import Receipt

MSG = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C1|P|2.5.1\rPID|1||X\rOBX|1|NM|X||1\r"


@pytest.mark.parametrize(
    "again",
    [MSG.rstrip(b"\r"), MSG + b"\n", MSG + b"\r\n", MSG + b" \r\n\t", MSG[:-1] + b"\n"],
    ids=["final_cr_stripped", "newline_added", "crlf_added", "whitespace_added", "lf_for_the_final_cr"],
)
def test_bytes_that_differ_only_at_the_end_are_a_retransmission(store, again):  # noqa: F811
    first = record(store, MSG, "C1", retransmit_window_s=60, now=1000.0)
    assert record(store, again, "C1", retransmit_window_s=60, now=1001.0) == Receipt(first.id, True, False)
    assert len(store.rows()) == 1


def test_other_content_under_the_same_control_id_is_a_new_message_marked_reused(store):  # noqa: F811
    first = record(store, MSG, "C1", retransmit_window_s=60, now=1000.0)
    assert not first.reused
    inner = MSG.replace(b"PID|1||X\r", b"PID|1||X \r")  # a difference inside is a difference
    second = record(store, inner, "C1", retransmit_window_s=60, now=1001.0)
    assert (second.duplicate, second.reused) == (False, True) and second.id != first.id
    other = record(store, MSG.replace(b"|C1|", b"|C2|"), "C2", retransmit_window_s=60, now=1002.0)
    assert (other.duplicate, other.reused) == (False, False)
    late = record(store, MSG + b"NTE|1\r", "C1", retransmit_window_s=60, now=1100.0)  # outside the window
    assert (late.duplicate, late.reused) == (False, False)


def config(tmp_path):
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
        metrics=dict(port=free_port()),
    )


def test_serve_forwards_a_loose_resend_once_and_a_reused_control_id_twice_with_a_warning(tmp_path):
    outbox = tmp_path / "outbox"
    with Serve(config(tmp_path)) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(MSG)) == ("AA", "C1")
            assert msa(conn.send(MSG.rstrip(b"\r"))) == ("AA", "C1")  # mllp_send --loose
            changed = MSG.replace(b"OBX|1|NM|X||1\r", b"OBX|1|NM|X||2\r")
            assert msa(conn.send(changed)) == ("AA", "C1")
        assert wait_until(lambda: len(list(outbox.glob("*.hl7"))) == 2)
        assert serve.wait_record("control_id_reused")
        reused = serve.records("control_id_reused")
        assert len(reused) == 1 and reused[0]["control_id"] == "C1" and reused[0]["level"] == "warning"
        with urllib.request.urlopen(f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert serve.stop() == 0
    delivered = sorted(p.read_bytes() for p in outbox.glob("*.hl7"))
    assert delivered == sorted([MSG, changed])
    # At info a message has one record, its decision; an AA is a debug
    # record, except the retransmission's (it gets no decision of its own).
    acks = [r for r in serve.records("ack") if r.get("control_id") == "C1"]
    assert [(r["duplicate"], r["level"]) for r in acks] == [(True, "info")]
    assert [r["journal_id"] for r in serve.records("decision")] == [1, 2]
    assert "b12comment_control_ids_reused_total 1.0" in metrics
