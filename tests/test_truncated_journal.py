"""A journal truncated under serve loses what it held: serve cannot deliver
what it can no longer read, but it names every message it ACKed and has not
delivered (control ID, sender, time of the ACK) in one error line and in a
file beside the journal, so that the senders can send them again. It keeps
what that needs (control IDs, not bytes) outside the journal file. The
restart refusal says "damaged". `serve` as a subprocess, the downstream down."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from service_helpers import MllpConnection, Serve, free_port, msa, subprocess_env, wait_until, write_config
from test_journal_faults import oru, refused


def test_a_truncated_journal_names_every_acked_message_it_can_no_longer_deliver(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(journal), commit_timeout_s=2.0),
        downstream=dict(url=f"mllp://127.0.0.1:{free_port()}", retry_initial_s=0.2, retry_max_s=0.5),
    )
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            for tag in ("T1", "T2", "T3"):
                assert msa(conn.send(oru(tag))) == ("AA", tag)
        # Another process checkpoints the WAL into the file, then truncates it to nothing.
        db = sqlite3.connect(journal, timeout=30)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        os.truncate(journal, 0)

        def noticed() -> bool:
            with MllpConnection(serve.port) as c:
                return msa(c.send(oru("AFTER")))[0] == "AE"

        assert wait_until(noticed, timeout=20, interval=0.2), serve.stderr
        assert serve.wait_record("acked_not_delivered_unreadable"), serve.stderr
        assert serve.stop() != 0  # a journal fault: exit 1
    lines = serve.records("acked_not_delivered_unreadable")
    assert len(lines) == 1 and lines[0]["level"] == "error"
    named = lines[0]["messages"]
    assert [m["control_id"] for m in named] == ["T1", "T2", "T3"]
    assert all(m["peer"] == "127.0.0.1" and m["acked_at"] for m in named)
    listing = journal.with_name(journal.name + ".unreadable.jsonl")
    assert lines[0]["file"] == str(listing)
    found = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [m["control_id"] for m in found] == ["T1", "T2", "T3"]
    assert b"PID" not in listing.read_bytes()  # control IDs, senders and times; not the messages
    # queue export says what it could not give back.
    export = subprocess.run(
        [sys.executable, "-m", "b12comment", "queue", "export", str(tmp_path / "saved"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert export.returncode == 1, export.stderr
    assert "3 messages it had ACKed and not delivered unreadable" in export.stderr and str(listing) in export.stderr
    # The restart refusal says what happened.
    line = refused(cfg)
    assert "damaged" in line, line


def test_the_ledger_forgets_what_was_delivered_and_names_only_what_cannot_be_read(tmp_path):
    from journal_helpers import record

    from b12comment.serve.acked import AckedLedger, name_unreadable
    from b12comment.storage.sqlite import SqliteJournal

    journal = tmp_path / "j.sqlite3"
    j = SqliteJournal(journal)
    ids = [record(j, oru(tag), tag).id for tag in ("A", "B", "C")]
    j.close()
    ledger = AckedLedger(max_kept=3)
    for id, tag in zip(ids, ("A", "B", "C"), strict=True):
        ledger.acked(id, tag, "10.0.0.9:5000")
    ledger.acked(99, "GONE", "10.0.0.9:5001")  # never journaled here: cannot be read
    assert ledger.forgotten == 1 and ids[0] not in ledger.undelivered()  # bounded: the oldest is counted only
    ledger.settled([ids[1]])  # delivered: nothing to name
    named, path = name_unreadable(journal, ledger.undelivered())
    assert [(m["journal_id"], m["control_id"], m["peer"]) for m in named] == [(99, "GONE", "10.0.0.9")]
    assert path.read_text().count("\n") == 1
    journal.write_bytes(b"")  # truncated: nothing can be read
    named, _ = name_unreadable(journal, {ids[2]: ("C", "10.0.0.9", 0.0)})
    assert [m["control_id"] for m in named] == ["C"]
