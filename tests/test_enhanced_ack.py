"""Enhanced acknowledgement, opt-in ([listener] enhanced_ack): a sender that
fills MSH-15/MSH-16 gets commit ACKs (CA when stored), sent only as MSH-15
asks (AL always, NE never, ER on an error only, SU on success only).
Original mode (AA) stays the default, and for messages that ask nothing.
A real serve and a real MLLP connection."""

from __future__ import annotations

import pytest
from service_helpers import MllpConnection, Serve, frame, msa, wait_until, write_config

from b12comment.wire.ack import commit_ack_wanted


def oru(cid: str, msh15: str = "", msh16: str = "") -> bytes:
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{cid}|P|2.5.1|||{msh15}|{msh16}\r"
        f"PID|1||ID{cid}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||5|mmol/L|3-6|N|||F\r"
    ).encode()


def config(tmp_path, enhanced: bool):
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, enhanced_ack=enhanced),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
    )


@pytest.mark.parametrize(
    "mode, code, wanted",
    [("AL", "AA", True), ("AL", "AE", True), ("NE", "AA", False), ("NE", "AE", False)]
    + [("ER", "AA", False), ("ER", "AE", True), ("SU", "AA", True), ("SU", "AE", False)],
)
def test_msh15_decides_which_commit_acks_are_sent(mode, code, wanted):
    assert commit_ack_wanted(mode, code) is wanted


def test_enhanced_mode_answers_ca_and_only_when_msh15_asks(tmp_path):
    with Serve(config(tmp_path, enhanced=True)) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(oru("E-AL", "AL", "NE"))) == ("CA", "E-AL")
            assert msa(conn.send(oru("E-SU", "SU", "AL"))) == ("CA", "E-SU")
            assert msa(conn.send(oru("E-16", "", "AL"))) == ("CA", "E-16")  # only MSH-16: AL
            assert msa(conn.send(oru("O-1"))) == ("AA", "O-1")  # asks nothing: original mode
            # NE and ER (stored, no error): no answer; the next message's ACK is the next thing read.
            conn.send_raw(frame(oru("E-NE", "NE", "NE")) + frame(oru("E-ER", "ER", "NE")))
            conn.send_raw(frame(oru("E-AFTER", "AL", "NE")))
            assert msa(conn.read_ack()) == ("CA", "E-AFTER")
        outbox = tmp_path / "outbox"
        assert wait_until(lambda: len(list(outbox.glob("*.hl7"))) == 7), serve.stderr  # every one delivered
        assert {r["control_id"] for r in serve.records("ack_not_sent")} == {"E-NE", "E-ER"}
        assert serve.stop() == 0


def test_original_mode_is_the_default_whatever_the_message_asks(tmp_path):
    with Serve(config(tmp_path, enhanced=False)) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(oru("E-AL", "AL", "AL"))) == ("AA", "E-AL")
            assert msa(conn.send(oru("E-NE", "NE", "NE"))) == ("AA", "E-NE")
        assert serve.stop() == 0
