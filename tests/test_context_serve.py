"""The context through `serve`: a subprocess, real sockets, a real SQLite
journal and context store. The cornerstone cases of the patient's other
results, the review alert, and no identifier in the store file."""

from __future__ import annotations

import subprocess
import sys

import pytest
from builders import build
from service_helpers import Downstream, MllpConnection, Serve, msa, msh10, subprocess_env, write_config
from test_context import ALT_HIGH, LOW_PLATELETS, NORMAL_PLATELETS, b12_message, other_message

pytestmark = pytest.mark.slow

# Each case has its own patient and requisition, so one service runs them all.
# (name, messages before the B12, B12 commented?)
CASES = [
    ("same_requisition", [other_message()], False),
    ("other_requisition_3_days_before", [other_message(orc4="R-OLD", collected="20240107083000")], False),
    ("other_requisition_40_days_before", [other_message(orc4="R-OLD", collected="20231201083000")], True),
    ("pending_order_seen_earlier", [other_message(NORMAL_PLATELETS, obr25="P")], False),
    # The same ID under an adult's birth date earlier: whose results? In doubt, none.
    ("same_id_adult_birth_date_before", [other_message(NORMAL_PLATELETS, orc4="R-OLD", birth="19800101")], False),
]


def _case_messages(index: int, name: str, before: list[bytes]) -> tuple[list[bytes], bytes]:
    """Give a case's messages its own patient ID, requisition and control IDs."""

    def own(message: bytes) -> bytes:
        return (
            message.replace(b"0101169999^^^CPR", f"01011699{index:02d}^^^CPR".encode())
            .replace(b"|REQ1\r", f"|REQ-{index}\r".encode())
            .replace(b"|R-OLD", f"|R-OLD-{index}".encode())
            .replace(b"|CBCMSG|", f"|CBC-{name}|".encode())
            .replace(b"|B12MSG|", f"|B12-{name}|".encode())
        )

    return [own(m) for m in before], own(b12_message())


def commented(message: bytes) -> bool:
    return b"\rNTE|1|L|" in message


def test_cornerstone_cases_review_alert_and_no_identifier_in_the_store(tmp_path):
    store = tmp_path / "var" / "context.sqlite3"
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(tmp_path / "journal.sqlite3")),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
        )
        with Serve(cfg) as serve:
            sent: list[bytes] = []
            expect: dict[str, bool] = {}
            with MllpConnection(serve.port) as conn:
                for index, (name, before, want) in enumerate(CASES, start=1):
                    messages, b12 = _case_messages(index, name, before)
                    for m in [*messages, b12]:
                        assert msa(conn.send(m)) == ("AA", msh10(m))
                        sent.append(m)
                    expect[msh10(b12)] = want
                # A child of the same name with another ID: the abnormal count is not theirs.
                for m in (
                    other_message(orc4="REQ-X", control_id="CBC-X", patient_id="7777777777^^^CPR"),
                    b12_message(orc4="REQ-Y", control_id="B12-Y", patient_id="0101169998^^^CPR"),
                ):
                    assert msa(conn.send(m))[0] == "AA"
                    sent.append(m)
                expect["B12-Y"] = True
                # Without a hold: the B12 first gets the comment; an abnormal ALT a
                # second message later contradicts it (the review alert).
                for m in (
                    b12_message(orc4="REQ-Z", control_id="B12-Z", patient_id="0101169997^^^CPR"),
                    other_message(ALT_HIGH, orc4="REQ-Z", control_id="ALT-Z", patient_id="0101169997^^^CPR"),
                ):
                    assert msa(conn.send(m))[0] == "AA"
                    sent.append(m)
                expect["B12-Z"] = True
            assert down.wait_for(len(sent)), serve.stderr
            got = {msh10(m): m for m in down.received}
            assert [msh10(m) for m in down.received] == [msh10(m) for m in sent]  # journal order kept
            for control_id, want in expect.items():
                assert commented(got[control_id]) is want, control_id
            decisions = {r["control_id"]: r for r in serve.records("decision")}
            assert decisions["B12-same_requisition"]["reasons"] == ["other_abnormal_recent"]
            assert decisions["B12-same_requisition"]["vetoed_by"] == ["CBC-same_requisition"]
            assert decisions["B12-pending_order_seen_earlier"]["reasons"] == ["requisition_pending"]
            assert serve.wait_record("comment_contradicted")
            alert = serve.records("comment_contradicted")[0]
            assert (alert["comment_control_id"], alert["control_id"]) == ("B12-Z", "ALT-Z")
            # Every byte of the store and its -wal while the service runs, then after it stopped.
            live = b"".join(p.read_bytes() for p in store.parent.glob("context.sqlite3*"))
            assert serve.stop() == 0
        after = b"".join(p.read_bytes() for p in store.parent.glob("context.sqlite3*"))
    assert len(live) > 4096
    for secret in (b"010116", b"7777777777", b"Testesen", b"Barn", b"20160315", b"REQ-", b"ORD0", b"FIL0"):
        assert secret not in live and secret not in after, secret
    review = subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "review", "--config", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert review.returncode == 0, review.stderr
    assert "B12-Z" in review.stdout and "ALT-Z" in review.stdout and "abnormal_result" in review.stdout
    # The store is derived data: rebuilt from the journal, the review list comes back.
    for p in store.parent.glob("context.sqlite3*"):
        p.unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "b12comment", "context", "rebuild", "--config", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"from {len(sent)} journaled messages" in rebuilt.stdout
    again = subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "review", "--config", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert "B12-Z" in again.stdout and "ALT-Z" in again.stdout


def test_unreadable_key_file_stops_serve_with_one_line(tmp_path):
    (tmp_path / "key").mkdir()
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        context=dict(key_file=str(tmp_path / "key")),
    )
    serve = Serve(cfg).start(expect_listening=False)
    assert serve.wait_exit() == 1
    lines = [line for line in serve.stderr.splitlines() if line.startswith("b12comment:")]
    assert lines == [f"b12comment: cannot read the context key file {tmp_path / 'key'}: Is a directory"]


def test_message_mode_keeps_no_store(tmp_path):
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(tmp_path / "journal.sqlite3")),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
            context=dict(mode="message"),
        )
        with Serve(cfg) as serve, MllpConnection(serve.port) as conn:
            for m in (other_message(), b12_message()):
                assert msa(conn.send(m))[0] == "AA"
            assert down.wait_for(2), serve.stderr
            assert commented(down.received[1])  # today's behaviour: the message alone
            assert serve.stop() == 0
    assert not (tmp_path / "var").exists()


_ = (build, LOW_PLATELETS)
