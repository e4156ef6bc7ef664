"""A message answered AE is never forwarded. A commit that takes longer than
commit_timeout_s is answered AE; if it lands after that, the journal marks
it void (kept, never delivered), so a sender that takes AE to mean "not
accepted" and moves on, or sends a corrected message, has one message in
the chain, not two. `serve` as a subprocess; another process holds the
journal's write lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from service_helpers import MllpConnection, Serve, msa, subprocess_env, wait_until, write_config
from test_journal_faults import oru, send_all


def rows(journal) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(journal, timeout=30)
    try:
        return db.execute("SELECT control_id, state, COALESCE(last_error, '') FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_commit_that_lands_after_its_ae_is_void_and_never_forwarded(tmp_path):
    journal = tmp_path / "journal.sqlite3"
    outbox = tmp_path / "outbox"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(journal), commit_timeout_s=0.5),
        downstream=dict(url=f"dir:{outbox}", retry_initial_s=0.1, retry_max_s=0.5),
    )
    with Serve(cfg) as serve:
        db = sqlite3.connect(journal, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        try:
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(oru("LATE"))) == ("AE", "LATE")
        finally:
            db.execute("ROLLBACK")  # the commit that waited for the lock lands now
            db.close()
        assert wait_until(lambda: any(cid == "LATE" for cid, _, _ in rows(journal)))
        assert send_all(serve.port, [oru("AFTER")]) == ["AA"]
        assert wait_until(lambda: any(p.name.endswith("_AFTER.hl7") for p in outbox.glob("*.hl7"))), serve.stderr
        status = subprocess.run(
            [sys.executable, "-m", "b12comment", "queue", "status", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(),
        )
        assert serve.stop() == 0
    assert [p.name.split("_", 1)[1] for p in outbox.glob("*.hl7")] == ["AFTER.hl7"]  # LATE never forwarded
    late = [r for r in rows(journal) if r[0] == "LATE"]
    assert len(late) == 1 and late[0][1] == "invalid" and late[0][2].startswith("void:"), late
    assert status.returncode == 0 and "void" in status.stdout, status.stdout


def test_abandon_voids_the_commit_under_way_drops_a_queued_one_and_leaves_a_committed_one(tmp_path):
    """The journal thread's side: a message in the commit under way when its
    sender gets AE is voided right after the commit; one still queued is never
    committed; one already committed is answered by its receipt."""
    import asyncio
    import time

    from b12comment.storage.writer import JournalThread

    path = tmp_path / "j.sqlite3"

    async def main():
        jt = JournalThread(path)
        done = await jt.record(oru("DONE"), control_id="DONE", message_type="ORU^R01")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        committing = jt.record(oru("WAIT"), control_id="WAIT", message_type="ORU^R01")
        deadline = time.monotonic() + 10
        while not jt._committing and time.monotonic() < deadline:  # the thread waits for the lock
            await asyncio.sleep(0.01)
        queued = jt.record(oru("QUEUED"), control_id="QUEUED", message_type="ORU^R01")
        assert jt.abandon(committing) is True
        assert jt.abandon(queued) is True and queued.cancelled()
        other.execute("ROLLBACK")
        other.close()
        receipt = await asyncio.wait_for(committing, 15)  # committed, then voided
        assert jt.abandon(asyncio.get_running_loop().create_future()) is False
        rows_now = await jt.call(lambda j: [(r.control_id, r.state, r.last_error or "") for r in j.rows()])
        await jt.close()
        return done, receipt, rows_now

    done, receipt, found = asyncio.run(main())
    assert [(cid, state) for cid, state, _ in found] == [("DONE", "received"), ("WAIT", "invalid")]
    assert found[1][2].startswith("void:") and not receipt.duplicate and done.id != receipt.id
