"""`b12comment serve` as a real subprocess, with real sockets and SQLite:
third-party client, corpus, framing on the wire, limits, durability across
SIGKILL, an unwritable journal, start-up errors, metrics, clean stop."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
import urllib.request

import hl7.client
import pytest
from journal_helpers import record
from service_helpers import (
    CORPUS,
    SAMPLES,
    Downstream,
    MllpConnection,
    Serve,
    frame,
    free_port,
    hl7_client_send,
    msa,
    msh10,
    segment,
    wait_until,
    write_config,
)

from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig

CHILD = (
    b"MSH|^~\\&|LAB|RH|EPJ|RH|20240301120000||ORU^R01^ORU_R01|KID-1|P|2.5.1|||||DNK|8859/1\r"
    b"PID|1||0101151234^^^CPR||Jensen^Anna||20150101|F\r"
    b"OBR|1||LAB123|14685-2^Cobalamin^LN|||20240301080000\r"
    b"OBX|1|NM|14685-2^Cobalamin^LN||1500|pmol/L|200-600|H|||F|||20240301080000\r"
)


def oru(n: int, tag: str = "M") -> bytes:
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}{n}|P|2.5.1\r"
        f"PID|1||ID{n}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||{n}|mmol/L|3-6|N|||F\r"
    ).encode()


def fast_downstream(url: str) -> dict:
    return dict(url=url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2)


def outbox_files(folder):
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def journal_states(path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [s for (s,) in db.execute("SELECT state FROM messages ORDER BY id")]
    finally:
        db.close()


# --------------------------------------------------------------------------
# One shared service with a folder drop, for the wire-level tests.


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    cfg = write_config(
        base / "config.toml",
        listener=dict(port=0, max_message_bytes=4000, idle_timeout_s=1.0, max_connections=16),
        journal=dict(path=str(base / "journal.sqlite3")),
        downstream=fast_downstream(f"dir:{base / 'outbox'}"),
    )
    serve = Serve(cfg).start()
    serve.base = base
    yield serve
    assert serve.stop() == 0, serve.stderr
    assert serve.records("stopped")


def test_several_messages_on_one_connection(served):
    with MllpConnection(served.port) as conn:
        for n in range(1, 6):
            assert msa(conn.send(oru(n, "ONE"))) == ("AA", f"ONE{n}")


def test_several_connections_at_once(served):
    results: dict[int, list] = {}

    def client(k: int):
        with MllpConnection(served.port) as conn:
            results[k] = [msa(conn.send(oru(n, f"C{k}-"))) for n in range(1, 11)]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(6))
    for k, answers in results.items():
        assert answers == [("AA", f"C{k}-{n}") for n in range(1, 11)]
    # Each connection's messages reach the folder in the order they were sent.
    outbox = served.base / "outbox"
    assert wait_until(lambda: sum(1 for f in outbox_files(outbox) if "_C" in f.name) >= 60)
    for k in range(6):
        names = [f.name for f in outbox_files(outbox) if f"_C{k}-" in f.name]
        assert [int(n.split("-")[1].split(".")[0]) for n in names] == list(range(1, 11))


def test_frame_split_across_many_reads(served):
    data = frame(oru(1, "SPLIT"))
    with MllpConnection(served.port) as conn:
        for i in range(0, len(data), 7):
            conn.send_raw(data[i : i + 7])
            time.sleep(0.002)
        assert msa(conn.read_ack()) == ("AA", "SPLIT1")


def test_two_frames_in_one_write_get_two_acks_in_order(served):
    with MllpConnection(served.port) as conn:
        conn.send_raw(frame(oru(1, "TWO")) + frame(oru(2, "TWO")))
        assert msa(conn.read_ack()) == ("AA", "TWO1")
        assert msa(conn.read_ack()) == ("AA", "TWO2")


def test_pipelined_frames_each_get_aa_only_once_journaled(served):
    """Many frames in one write share a commit (group commit); each AA comes
    in order, and only when its message is already in the journal."""
    path = served.base / "journal.sqlite3"
    messages = [oru(n, "PIPE") for n in range(1, 21)]
    with MllpConnection(served.port) as conn:
        conn.send_raw(b"".join(frame(m) for m in messages) + frame(b"not hl7 at all"))
        for m in messages:
            code, acked = msa(conn.read_ack())
            assert (code, acked) == ("AA", msh10(m))
            db = sqlite3.connect(path)
            try:
                stored = db.execute(
                    "SELECT raw FROM messages WHERE control_id = ? AND state != 'invalid'", (acked,)
                ).fetchall()
            finally:
                db.close()
            assert [bytes(r) for (r,) in stored] == [m]
        assert msa(conn.read_ack())[0] == "AR"
    db = sqlite3.connect(path)
    try:
        ids = [i for (i,) in db.execute("SELECT id FROM messages WHERE control_id LIKE 'PIPE%' ORDER BY conn_seq")]
    finally:
        db.close()
    assert ids == sorted(ids) and len(ids) == 20  # journal order is the order on the wire


def test_junk_between_frames_is_skipped(served):
    with MllpConnection(served.port) as conn:
        conn.send_raw(b"GARBAGE\r\n" + frame(oru(1, "JUNK")) + b"\r\n\x00xx" + frame(oru(2, "JUNK")))
        assert msa(conn.read_ack()) == ("AA", "JUNK1")
        assert msa(conn.read_ack()) == ("AA", "JUNK2")
    assert served.wait_record("junk_skipped", 2)


def test_oversized_frame_gets_a_nak_and_the_connection_keeps_serving(served):
    big = oru(1, "BIG") + b"NTE|1||" + b"x" * 10_000 + b"\r"
    with MllpConnection(served.port) as conn:
        ack = conn.send(big)
        assert msa(ack) == ("AR", "BIG1")
        err = segment(ack, b"ERR")
        assert err[3].startswith(b"207^") and err[4] == b"E" and b"max_message_bytes" in err[8]
        assert msa(conn.send(oru(2, "BIG"))) == ("AA", "BIG2")
    outbox = served.base / "outbox"
    assert wait_until(lambda: any("_BIG2" in f.name for f in outbox_files(outbox)))
    assert not any("_BIG1" in f.name for f in outbox_files(outbox))


def test_non_hl7_frame_gets_ar_with_err_and_is_kept_as_invalid(served):
    with MllpConnection(served.port) as conn:
        ack = conn.send(b"this is not HL7 at all")
        assert msa(ack) == ("AR", "")
        assert b"not an HL7 message" in segment(ack, b"ERR")[8]
        assert msa(conn.send(oru(1, "AFTER"))) == ("AA", "AFTER1")
    db = sqlite3.connect(served.base / "journal.sqlite3")
    rows = db.execute("SELECT raw, last_error FROM messages WHERE state = 'invalid'").fetchall()
    db.close()
    assert any(raw == b"this is not HL7 at all" and "MSH" in why for raw, why in rows)


def test_batch_in_one_frame_gets_ar_saying_one_message_per_frame_and_is_never_forwarded(served):
    """A batch file (FHS/BHS ... BTS/FTS) sent as one frame: AR with an ERR
    that says to send each message in its own frame; it is kept as invalid,
    never queued or forwarded. Its messages, one per frame, are ACKed AA."""
    batch = (SAMPLES / "night_batch_crlf.hl7").read_bytes()
    with MllpConnection(served.port) as conn:
        answer = conn.send(batch)
        assert msa(answer)[0] == "AR"
        err = segment(answer, b"ERR")
        assert err[3].startswith(b"100^") and b"batch (FHS/BHS) in one frame" in err[8] and b"own frame" in err[8]
        messages = [b"MSH" + part for part in batch.split(b"MSH")[1:]]
        cut = [m[: m.index(b"BTS")] if b"BTS" in m else m for m in messages]
        for m in cut:
            assert msa(conn.send(m)) == ("AA", msh10(m))
    db = sqlite3.connect(served.base / "journal.sqlite3")
    states = dict(db.execute("SELECT control_id, state FROM messages WHERE raw = ?", (batch,)).fetchall())
    queued = {cid for (cid,) in db.execute("SELECT control_id FROM messages WHERE state != 'invalid'")}
    db.close()
    assert states == {"": "invalid"}
    assert {msh10(m) for m in cut} <= queued and "" not in queued


@pytest.mark.slow
def test_idle_connection_is_closed(served):
    with MllpConnection(served.port) as conn:
        conn.sock.settimeout(20)
        assert conn.sock.recv(10) == b""  # the server closed it (idle_timeout_s = 1)
    assert wait_until(lambda: any(r.get("reason") == "idle timeout" for r in served.records("connection_closed")))


def test_retransmission_is_acked_again_and_forwarded_once(served):
    message = oru(1, "RETX")
    with MllpConnection(served.port) as conn:
        assert msa(conn.send(message)) == ("AA", "RETX1")
        assert msa(conn.send(message)) == ("AA", "RETX1")
        assert msa(conn.send(oru(2, "RETX"))) == ("AA", "RETX2")
    outbox = served.base / "outbox"
    # RETX2 comes after any second copy of RETX1 in the queue, so once it is there...
    assert wait_until(lambda: any("_RETX2" in f.name for f in outbox_files(outbox)))
    assert len([f for f in outbox_files(outbox) if "_RETX1" in f.name]) == 1
    assert wait_until(lambda: any(r.get("duplicate") for r in served.records("ack") if r.get("control_id") == "RETX1"))


# --------------------------------------------------------------------------
# A third-party sender: python-hl7's MLLPClient with the samples and the corpus.


@pytest.mark.slow
def test_python_hl7_client_samples_and_corpus_reach_downstream_byte_identical(tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (it sits beside the checkout)")
    files = sorted(SAMPLES.glob("*.hl7")) + sorted(CORPUS.glob("*.hl7"))
    assert len(files) > 100
    assert (CORPUS / "cdcdex_3.hl7").read_bytes() == (CORPUS / "cdcdex_4.hl7").read_bytes()
    rule = RuleConfig()
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(tmp_path / "j.sqlite3")),
            downstream=fast_downstream(down.url),
            # Each message on its own: the samples reuse one patient ID for several children.
            context=dict(mode="message"),
        )
        with Serve(cfg) as serve:
            expected, commented, seen = [], 0, set()
            with hl7.client.MLLPClient("127.0.0.1", serve.port) as client:
                for path in files + [None]:
                    data = path.read_bytes() if path else CHILD
                    code, acked = msa(hl7_client_send(client, data))
                    if data.lstrip().startswith(b"MSH"):
                        assert (code, acked) == ("AA", msh10(data)), path
                        if data in seen:
                            continue  # the corpus has one file twice: a retransmission, ACKed, not resent
                        seen.add(data)
                        out, decision = process(data, rule)
                        expected.append(out)
                        commented += decision.commented
                        if path is not None and path.parent == CORPUS:
                            assert out == data  # no corpus message gets a comment
                    else:
                        assert (code, acked) == ("AR", ""), path
            assert down.wait_for(len(expected)), serve.stderr
            assert down.received == expected
            assert commented >= 2  # the child above and the sample child with isolated high B12
            assert CHILD in down.received[-1] and b"\rNTE|1|L|" in down.received[-1]
            assert serve.wait_record("decision", len(expected))
            assert serve.stop() == 0
        logs = serve.stderr
    # No patient data in any log line: names, IDs and birth dates of the messages sent.
    for secret in ("Jensen", "0101151234", "20150101", "EVERYWOMAN", "Sørensen"):
        assert secret not in logs
    decisions = serve.records("decision")
    assert {"control_id", "message_type", "commented", "reasons", "rule_version"} <= decisions[0].keys()
    assert sum(1 for r in decisions if r["commented"]) == commented
    assert set(journal_states(tmp_path / "j.sqlite3")) == {"forwarded", "invalid"}
    assert sum(1 for r in serve.records("ack") if r.get("duplicate")) == 1


# --------------------------------------------------------------------------
# Durability


@pytest.mark.slow
def test_sigkill_after_acks_before_delivery_then_restart_delivers_all_in_order(tmp_path):
    port = free_port()  # the downstream is down: nothing listens here yet
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=fast_downstream(f"mllp://127.0.0.1:{port}"),
    )
    messages = [oru(n, "KILL") for n in range(1, 8)] + [CHILD]
    first = Serve(cfg).start()
    try:
        with MllpConnection(first.port) as conn:
            for m in messages:
                assert msa(conn.send(m))[0] == "AA"
        first.proc.send_signal(signal.SIGKILL)
        assert first.wait_exit() == -signal.SIGKILL
    finally:
        first.kill()
    assert "forwarded" not in journal_states(tmp_path / "j.sqlite3")
    with Downstream(port=port) as down, Serve(cfg) as second:
        assert down.wait_for(len(messages)), second.stderr
        assert down.received == [process(m, RuleConfig())[0] for m in messages]
        assert second.stop() == 0
    assert journal_states(tmp_path / "j.sqlite3") == ["forwarded"] * len(messages)


def test_journal_that_can_never_be_written_stops_serve_at_start(tmp_path):
    """A journal path that cannot be written (here: under a regular file, which
    stops even root) is one line naming it and a non-zero exit, before anything
    listens: never a service that answers AE to everything."""
    (tmp_path / "afile").write_text("a regular file, so no folder can be made under it, even by root")
    outbox = tmp_path / "outbox"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "afile" / "journal.sqlite3")),
        downstream=fast_downstream(f"dir:{outbox}"),
    )
    serve = Serve(cfg).start(expect_listening=False)
    assert serve.wait_exit() == 1
    lines = [line for line in serve.lines if line.strip()]
    assert len(lines) == 1, serve.stderr
    assert lines[0].startswith("b12comment: ") and "afile/journal.sqlite3" in lines[0], lines
    assert not serve.records("listening")
    assert outbox_files(outbox) == []


@pytest.mark.slow
def test_sigterm_closes_open_connections_and_exits_zero(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, idle_timeout_s=300.0),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=fast_downstream(f"dir:{tmp_path / 'outbox'}"),
    )
    with Serve(cfg) as serve, MllpConnection(serve.port) as conn:
        assert msa(conn.send(oru(1, "TERM")))[0] == "AA"
        assert serve.stop(signal.SIGTERM) == 0  # does not wait for the 300 s idle timeout
        assert conn.sock.recv(10) == b""
    assert any(r.get("reason") == "service stopping" for r in serve.records("connection_closed"))  # read after exit
    with Serve(cfg) as again:  # what was ACKed is delivered (if it was not yet); SIGINT stops it too
        assert wait_until(lambda: len(outbox_files(tmp_path / "outbox")) == 1)
        assert again.stop(signal.SIGINT) == 0
    assert journal_states(tmp_path / "j.sqlite3") == ["forwarded"]


# --------------------------------------------------------------------------
# Start-up errors, limits, metrics


@pytest.mark.slow
def test_sigterm_with_a_downstream_that_never_answers_exits_within_5_s_and_resends_after_restart(tmp_path):
    """The delivery waiting for an ACK is abandoned at once (with timeout_s =
    30, waiting it out took up to 3 x 30 s); the message stays in the journal
    and is sent again by the next start."""
    port = free_port()
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"mllp://127.0.0.1:{port}", timeout_s=30.0),
    )
    with Downstream(port=port, answer=lambda i, payload: None) as silent, Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(oru(1, "TERM")))[0] == "AA"
        assert silent.wait_for(1)
        started = time.monotonic()
        assert serve.stop(timeout=30) == 0
        took = time.monotonic() - started
    assert took < 5.0, f"SIGTERM took {took:.1f} s"
    with Downstream(port=port) as down, Serve(cfg) as serve:
        assert down.wait_for(1), serve.stderr
        assert msh10(down.received[0]) == "TERM1"
        assert serve.stop() == 0
    print(f"SIGTERM FIGURES stop with a silent downstream took {took:.2f} s; resent after restart: 1")


def test_port_in_use_is_one_clear_line_and_non_zero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=busy.getsockname()[1]),
            journal=dict(path=str(tmp_path / "j.sqlite3")),
            downstream=dict(url=f"dir:{tmp_path}/o"),
        )
        serve = Serve(cfg).start(expect_listening=False)
        assert serve.wait_exit() == 1
    errors = [line for line in serve.lines if line.startswith("b12comment:")]
    assert len(errors) == 1 and "cannot listen" in errors[0]
    assert "Traceback" not in serve.stderr


def test_bad_tls_file_is_one_clear_line_and_non_zero(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "k.pem")),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path}/o"),
    )
    serve = Serve(cfg).start(expect_listening=False)
    assert serve.wait_exit() == 2
    errors = [line for line in serve.lines if line.startswith("b12comment:")]
    assert len(errors) == 1 and "missing.pem" in errors[0]
    assert "Traceback" not in serve.stderr


def test_allowed_peers_and_max_connections(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, allowed_peers=["10.0.0.0/8"]),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path}/o"),
    )
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            conn.send_raw(frame(oru(1)))
            with pytest.raises(ConnectionError):
                conn.read_ack()
        assert serve.wait_record("connection_refused")
        assert serve.stop() == 0
    cfg = write_config(
        tmp_path / "config2.toml",
        listener=dict(port=0, max_connections=1, allowed_peers=["127.0.0.0/8"]),
        journal=dict(path=str(tmp_path / "j2.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path}/o"),
    )
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as first:
            assert msa(first.send(oru(1)))[0] == "AA"
            with MllpConnection(serve.port) as second:
                second.send_raw(frame(oru(2)))
                with pytest.raises(ConnectionError):
                    second.read_ack()
            assert msa(first.send(oru(3)))[0] == "AA"
        assert serve.stop() == 0
    assert any(r.get("reason") == "max_connections reached" for r in serve.records("connection_refused"))


def test_metrics_and_healthz(tmp_path):
    metrics_port = free_port()
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        metrics=dict(port=metrics_port),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=fast_downstream(f"dir:{tmp_path / 'outbox'}"),
        logging=dict(level="debug"),  # a delivery's record is at debug
    )
    with Serve(cfg) as serve:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(CHILD))[0] == "AA"
            assert msa(conn.send(oru(1)))[0] == "AA"
            assert msa(conn.send(b"junk"))[0] == "AR"
        assert wait_until(lambda: len(outbox_files(tmp_path / "outbox")) == 2)
        assert serve.wait_record("forwarded", 2)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert serve.stop() == 0
    values = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    }
    assert values["b12comment_messages_received_total"] == 3
    assert values['b12comment_acks_sent_total{code="AA"}'] == 2
    assert values['b12comment_acks_sent_total{code="AR"}'] == 1
    assert values["b12comment_invalid_frames_total"] == 1
    assert values["b12comment_commented_total"] == 1
    assert values['b12comment_decisions_total{decision="commented"}'] == 1
    assert values['b12comment_decisions_total{decision="unchanged"}'] == 1
    assert values["b12comment_forwarded_total"] == 2
    assert values["b12comment_queue_depth"] == 0
    assert values["b12comment_processing_seconds_count"] == 2
    assert values["b12comment_ack_seconds_count"] == 3
    assert "b12comment_dead_lettered_total" in values and "b12comment_retries_total" in values


def test_processing_failure_forwards_the_original(tmp_path):
    """A rule the core cannot use (None) breaks interpretation; the message
    still goes on, unchanged, marked internal_error."""
    import asyncio

    import structlog

    from b12comment.serve.metrics import Metrics
    from b12comment.serve.processing import Processor
    from b12comment.storage.sqlite import SqliteJournal
    from b12comment.storage.writer import JournalThread

    raw = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
    assert process(raw, RuleConfig())[0] != raw  # with a good rule it gets the comment
    j = SqliteJournal(tmp_path / "j.sqlite3")
    rid = record(j, raw, msh10(raw)).id
    j.close()

    async def main():
        journal = JournalThread(tmp_path / "j.sqlite3")
        stop, wake, processed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        proc = Processor(journal, None, Metrics(), structlog.get_logger(), wake, processed, poll_s=0.05)
        task = asyncio.create_task(proc.run(stop))
        await asyncio.wait_for(processed.wait(), 30)
        stop.set()
        wake.set()
        await asyncio.wait_for(task, 10)
        row = await journal.call(lambda j: j.get(rid))
        await journal.close()
        return row

    row = asyncio.run(main())
    assert (row.state, row.processed, row.commented) == ("processed", raw, False)
    assert row.reasons == ("internal_error",)
