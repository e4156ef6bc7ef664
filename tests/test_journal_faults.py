"""The journal's file under faults, with `serve` as a real subprocess: deleted
while open, damaged, unable to record a delivery, or claimed by a second
serve. Each test prints a line `FAULT FIGURES` with what was sent, ACKed AA,
delivered and lost (docs/reliability.md keeps the last run's)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from disk_helpers import fill, tmpfs
from service_helpers import (
    Downstream,
    MllpConnection,
    Serve,
    free_port,
    msa,
    msh10,
    subprocess_env,
    wait_until,
    write_config,
)


def oru(tag: str, pad: int = 0) -> bytes:
    note = f"NTE|1||{'x' * pad}\r" if pad else ""
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}|P|2.5.1\r"
        f"PID|1||ID-{tag}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||5|mmol/L|3-6|N|||F\r{note}"
    ).encode()


def config(tmp_path: Path, journal: Path, url: str, name: str = "config.toml", **extra) -> Path:
    return write_config(
        tmp_path / name,
        listener=dict(port=0),
        journal=dict(path=str(journal)),
        downstream=dict(url=url, retry_initial_s=0.1, retry_max_s=0.5, timeout_s=5.0),
        metrics=dict(port=free_port()),
        logging=dict(level="debug"),  # a delivery's record is at debug
        **extra,
    )


def healthz(serve: Serve) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{serve.metrics_port}/healthz", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def send_all(port: int, messages: list[bytes]) -> list[str]:
    with MllpConnection(port) as conn:
        codes = []
        for m in messages:
            code, acked = msa(conn.send(m))
            assert acked == msh10(m)
            codes.append(code)
        return codes


def queue(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )


def figures(name: str, **values) -> None:
    print(f"FAULT FIGURES {name} {json.dumps(values)}")


def no_traceback(serve: Serve) -> None:
    assert "Traceback" not in serve.stderr, serve.stderr


def refused(cfg: Path) -> str:
    serve = Serve(cfg).start(expect_listening=False)
    assert serve.wait_exit() == 1, serve.stderr
    lines = [line for line in serve.lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("b12comment: "), lines
    return lines[0]


# -- the journal's file deleted while serve runs


@pytest.mark.slow
def test_journal_deleted_while_serving_answers_ae_delivers_what_it_held_and_restarts_clean(tmp_path):
    """rm journal.sqlite3* under a running serve: from the next frame on every
    message is answered AE (one error line, /healthz 503); what was ACKed
    before is still delivered from the open file; the restart after a clean
    stop with nothing left starts a new journal."""
    journal = tmp_path / "journal.sqlite3"
    port = free_port()
    cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{port}")
    before = [oru(f"D{n}") for n in range(300)]
    after = [oru(f"E{n}") for n in range(300)]
    with Serve(cfg) as serve:
        assert send_all(serve.port, before) == ["AA"] * 300
        for p in tmp_path.glob("journal.sqlite3*"):
            p.unlink()
        codes = send_all(serve.port, after)
        assert codes == ["AE"] * 300, codes[:5]
        assert healthz(serve) == 503
        with Downstream(port=port) as down:
            assert down.wait_for(300), serve.stderr
            assert wait_until(lambda: len(serve.records("forwarded")) >= 300)
            assert serve.stop() == 1  # it ran into a fault
            no_traceback(serve)
        faults = serve.records("journal_fault")
        assert len(faults) == 1 and "deleted" in faults[0]["error"], serve.stderr
        assert not serve.records("journal_unavailable")
        assert not serve.records("journal_recovered")  # nothing was left to save
    delivered = {msh10(m) for m in down.received}
    assert delivered == {msh10(m) for m in before}
    with Serve(cfg) as serve, Downstream(port=port) as down:  # the sender sends the AE'd ones again
        assert send_all(serve.port, after) == ["AA"] * 300
        assert down.wait_for(300), serve.stderr
        assert serve.stop() == 0
    delivered |= {msh10(m) for m in down.received}
    lost = {msh10(m) for m in before + after} - delivered
    assert not lost
    figures("journal_deleted", sent=600, acked_aa_before=300, answered_ae_after=300, delivered=len(delivered), lost=0)


@pytest.mark.slow
def test_journal_deleted_with_undelivered_messages_saves_them_and_refuses_a_new_journal(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{free_port()}")  # nothing listens there
    messages = [oru(f"U{n}") for n in range(20)]
    with Serve(cfg) as serve:
        assert send_all(serve.port, messages) == ["AA"] * 20
        assert serve.wait_record("decision", 20)
        for p in tmp_path.glob("journal.sqlite3*"):
            p.unlink()
        assert send_all(serve.port, [oru("LATE")]) == ["AE"]
        assert serve.stop() == 1
        no_traceback(serve)
    saved = serve.records("journal_recovered")
    assert len(saved) == 1 and saved[0]["messages"] == 20, serve.stderr
    folder = Path(saved[0]["folder"])
    files = sorted(folder.glob("*.hl7"))
    assert [f.read_bytes() for f in files] == messages  # no comment due: the bytes as received
    line = refused(cfg)
    assert "missing" in line and "20 undelivered" in line and ".journal.sqlite3.marker" in line
    (tmp_path / ".journal.sqlite3.marker").unlink()  # the operator sent them on, and says so
    with Serve(cfg) as serve:
        assert send_all(serve.port, [oru("NEW")]) == ["AA"]
        assert serve.stop() == 0


def test_journal_replaced_by_another_file_is_noticed_before_the_ack(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{free_port()}")
    with Serve(cfg) as serve:
        assert send_all(serve.port, [oru("R1")]) == ["AA"]
        other = tmp_path / "other.sqlite3"
        sqlite3.connect(other).close()
        os.replace(other, journal)
        assert send_all(serve.port, [oru("R2")]) == ["AE"]
        assert serve.stop() == 1
        no_traceback(serve)
    assert "replaced" in serve.records("journal_fault")[0]["error"]


# -- a damaged journal


def damage(journal: Path, fraction: float = 0.5) -> None:
    """Garbage over one page of the file, `fraction` of the way in."""
    size = journal.stat().st_size
    page = 4096
    offset = (int(size * fraction) // page) * page
    with open(journal, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(page))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.slow
def test_damaged_journal_is_refused_at_start_and_queue_export_saves_what_can_be_read(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{free_port()}")
    messages = [oru(f"C{n}", pad=3000) for n in range(120)]
    with Serve(cfg) as serve:
        assert send_all(serve.port, messages) == ["AA"] * 120
        assert serve.wait_record("decision", 120)
        assert serve.stop() == 0
    damage(journal)
    line = refused(cfg)
    assert "damaged" in line and "queue export" in line, line
    out = tmp_path / "export"
    proc = queue(cfg, "export", str(out))
    files = sorted(out.glob("*.hl7"))
    unreadable = 120 - len(files)
    assert proc.returncode == (1 if unreadable else 0), proc.stderr
    assert f"exported {len(files)} undelivered" in proc.stdout
    assert 0 < len(files) < 120  # one page lost, the rest saved
    by_cid = {msh10(m): m for m in messages}
    for f in files:  # each file is one message exactly as it was sent (no comment was due)
        assert f.read_bytes() == by_cid[f.name.split("_", 1)[1].removesuffix(".hl7")]
    assert "traceback" not in (proc.stdout + proc.stderr).lower()
    figures("journal_damaged_at_start", sent=120, acked_aa=120, exported=len(files), unreadable=unreadable)


@pytest.mark.slow
def test_journal_damaged_while_serving_stops_aa_with_one_error_line(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{free_port()}")
    messages = [oru(f"M{n}", pad=16000) for n in range(300)]  # past SQLite's checkpoint: the rows are in the file
    with Serve(cfg) as serve:
        assert send_all(serve.port, messages) == ["AA"] * 300
        assert serve.wait_record("decision", 300)
        other = sqlite3.connect(journal, isolation_level=None, timeout=30)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row's latest pages now in the file
        pages = journal.stat().st_size // 4096
        with open(journal, "r+b") as f:  # garbage over every 8th page but the first
            for page in range(2, pages, 8):
                f.seek(page * 4096)
                f.write(os.urandom(4096))
            os.fsync(f.fileno())
        # Another connection writes, as `queue retry` would: serve's SQLite
        # drops its page cache and reads the pages from the file again.
        other.execute("PRAGMA user_version = 1")  # a write of the first page only (the value it has)
        other.close()
        assert serve.wait_record("journal_fault", timeout=30), serve.stderr
        codes = send_all(serve.port, [oru(f"N{n}") for n in range(50)])
        assert codes == ["AE"] * 50
        assert healthz(serve) == 503
        errors_then = len([r for r in serve.records() if r.get("level") == "error"])
        wait_until(lambda: False, timeout=3)  # three seconds of forwarder retries
        errors_now = len([r for r in serve.records() if r.get("level") == "error"])
        assert serve.stop() == 1
    assert len(serve.records("journal_fault")) == 1 and "damaged" in serve.records("journal_fault")[0]["error"]
    assert errors_now == errors_then, "the damaged journal is told once, not once a second"
    figures("journal_damaged_while_serving", sent=350, acked_aa=300, answered_ae=50, error_lines=errors_now)


# -- the journal cannot record a delivery


@pytest.mark.slow
def test_delivery_the_journal_cannot_record_is_not_sent_again_and_again(tmp_path):
    """The disk fills after the messages are queued: the forwarder gets the
    downstream's AA but cannot mark it forwarded. It waits for the journal
    instead of sending the same message about once a second: while the disk
    is full, at most one group of deliveries (their AAs are recorded together)
    goes out, each message once."""
    from b12comment.delivery.forwarder import RECORD_EVERY

    with tmpfs(tmp_path / "disk", "2m") as disk:
        journal = disk / "journal.sqlite3"
        port = free_port()
        cfg = config(tmp_path, journal, f"mllp://127.0.0.1:{port}")
        count = RECORD_EVERY + 5
        messages = [oru(f"F{n}") for n in range(count)]
        with Serve(cfg) as serve:
            assert send_all(serve.port, messages) == ["AA"] * count
            assert serve.wait_record("decision", count)
            filler = fill(disk)
            with Downstream(port=port) as down:
                assert down.wait_for(1)
                wait_until(lambda: False, timeout=4)  # four seconds with a full disk: retries every 0.1-0.5 s
                while_full = [msh10(m) for m in down.received]
                copies_while_full = len(while_full)
                filler.unlink()
                assert wait_until(lambda: len(serve.records("forwarded")) >= count), serve.stderr
                assert serve.stop() == 0
        received = [msh10(m) for m in down.received]
    assert set(received) == {msh10(m) for m in messages}
    assert 1 <= copies_while_full <= RECORD_EVERY, while_full  # then it waits for the journal
    assert len(set(while_full)) == copies_while_full, while_full  # none sent twice while full
    assert max(received.count(c) for c in set(received)) <= 2  # at most once more
    assert len(serve.records("delivery_not_recorded")) == 1
    figures("delivery_not_recorded", sent=count, acked_aa=count, copies_while_disk_full=copies_while_full, lost=0)


# -- one journal, one serve


@pytest.mark.slow
def test_second_serve_on_the_same_journal_is_refused(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = config(tmp_path, journal, f"dir:{tmp_path / 'outbox'}")
    with Serve(cfg) as first:
        line = refused(config(tmp_path, journal, f"dir:{tmp_path / 'outbox'}", "second.toml"))
        assert "another serve is using the journal" in line and str(first.proc.pid) in line, line
        assert send_all(first.port, [oru("ONE")]) == ["AA"]
        assert first.stop() == 0


# -- another process holds the journal's write lock


@pytest.mark.slow
def test_journal_locked_by_another_process_keeps_the_listener_answering(tmp_path):
    """Intake commits run on the writer thread: while another process holds
    the write lock, the event loop still answers. A message whose commit
    does not finish within commit_timeout_s gets AE (not after SQLite's 10 s
    busy timeout), /healthz answers at once (503), and once the lock is gone
    the message sent again is ACKed AA and delivered once."""
    import time

    journal = tmp_path / "journal.sqlite3"
    outbox = tmp_path / "outbox"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(journal), commit_timeout_s=1.0),
        downstream=dict(url=f"dir:{outbox}", retry_initial_s=0.1, retry_max_s=0.5),
        metrics=dict(port=free_port()),
    )
    with Serve(cfg) as serve:
        assert send_all(serve.port, [oru("BEFORE")]) == ["AA"]
        db = sqlite3.connect(journal, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with MllpConnection(serve.port) as conn:
                code, acked = msa(conn.send(oru("LOCKED")))
                ae_after = time.monotonic() - started
                health_started = time.monotonic()
                status = healthz(serve)
                health_s = time.monotonic() - health_started
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert (code, acked) == ("AE", "LOCKED")
        assert ae_after < 5.0, f"AE after {ae_after:.1f} s"  # the bound is 1 s; SQLite's busy timeout is 10 s
        assert status == 503 and health_s < 5.0
        assert send_all(serve.port, [oru("LOCKED")]) == ["AA"]
        assert wait_until(lambda: len(list(outbox.glob("*.hl7"))) == 2), serve.stderr
        assert serve.stop() == 0
    names = sorted(p.name.split("_", 1)[1] for p in outbox.glob("*.hl7"))
    assert names == ["BEFORE.hl7", "LOCKED.hl7"]  # the AE'd commit that finished later is not delivered twice
    figures(
        "journal_locked",
        sent=3,
        acked_aa=2,
        answered_ae=1,
        ae_after_s=round(ae_after, 2),
        healthz_s=round(health_s, 2),
        delivered=2,
        lost=0,
    )
