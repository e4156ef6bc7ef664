"""Intake apart from the other calls (storage/writer.py, SQLite): an intake
commit never waits behind the processing stage's or the forwarder's calls,
nor they behind it; and a message whose sender was answered AE is never
handed to those stages, although their connection can read it between its
commit and its voiding, or after a fault. Real SQLite files and threads."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time

import pytest

from b12comment.storage.model import JournalGone, NewMessage
from b12comment.storage.sqlite import SqliteJournal
from b12comment.storage.writer import JournalThread


def msg(cid: str) -> bytes:
    return f"MSH|^~\\&|L|F|R|F|2024||ORU^R01|{cid}|P|2.5.1\rOBX|1|NM|X||1\r".encode()


def committed(path, cid: str) -> bool:
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM messages WHERE control_id = ?", (cid,)).fetchone()[0] == 1
    finally:
        db.close()


async def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_a_call_is_answered_while_an_intake_commit_waits_for_the_lock(tmp_path):
    path = tmp_path / "j.sqlite3"

    async def main():
        jt = JournalThread(path)
        await jt.record(msg("A"), control_id="A", message_type="ORU^R01")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            waiting = jt.record(msg("B"), control_id="B", message_type="ORU^R01")
            assert await wait_for(lambda: bool(jt._committing))
            # On one thread this call would wait behind the commit (SQLite's busy timeout, 10 s).
            depth = await asyncio.wait_for(jt.call(lambda j: j.depth()), 5)
            assert depth == 1 and not waiting.done()
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert not (await asyncio.wait_for(waiting, 15)).duplicate
        assert await jt.call(lambda j: j.depth()) == 2
        await jt.close()

    asyncio.run(main())


class SlowToSettle(SqliteJournal):
    """A journal whose intake returns a while after its commit: the window in
    which another connection already reads what it committed."""

    committed = threading.Event()

    def intake(self, arrivals):
        results = super().intake(arrivals)
        self.committed.set()
        time.sleep(0.5)
        return results


def test_a_message_answered_ae_during_its_commit_is_never_handed_on(tmp_path):
    path = tmp_path / "j.sqlite3"
    SlowToSettle.committed = threading.Event()

    async def main():
        jt = JournalThread(path, opener=SlowToSettle)
        await jt.record(msg("BEFORE"), control_id="BEFORE", message_type="ORU^R01")
        SlowToSettle.committed = threading.Event()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        late = jt.record(msg("LATE"), control_id="LATE", message_type="ORU^R01")
        assert await wait_for(lambda: bool(jt._committing))
        assert jt.abandon(late) is True  # its sender is answered AE
        other.execute("ROLLBACK")
        other.close()
        assert await asyncio.to_thread(SlowToSettle.committed.wait, 15)
        assert committed(path, "LATE")  # in the file, not voided yet: the stages' connection could read it
        unprocessed = await jt.rows(lambda j: j.unprocessed(10))
        deliverable = await jt.rows(lambda j: j.deliverable(10))
        await asyncio.wait_for(late, 15)
        later = await jt.rows(lambda j: j.unprocessed(10))
        states = await jt.call(lambda j: [(r.control_id, r.state) for r in j.rows()])
        await jt.close()
        return unprocessed, deliverable, later, states

    unprocessed, deliverable, later, states = asyncio.run(main())
    assert [r.control_id for r in unprocessed] == ["BEFORE"]
    assert [r.control_id for r in deliverable] == []  # BEFORE is not processed yet
    assert [r.control_id for r in later] == ["BEFORE"]
    assert states == [("BEFORE", "received"), ("LATE", "invalid")]


class GoneAfterCommit(SqliteJournal):
    """The journal's file is found deleted or replaced right after a commit
    (the commit landed in the file open here, which the path no longer names)."""

    fail = False

    def intake(self, arrivals):
        results = super().intake(arrivals)
        if GoneAfterCommit.fail:
            raise JournalGone(f"journal {self.path} was replaced by another file while serve had it open")
        return results


def test_after_a_fault_nothing_committed_past_the_last_settled_batch_is_handed_on(tmp_path):
    path = tmp_path / "j.sqlite3"
    GoneAfterCommit.fail = False
    faults = []

    async def main():
        jt = JournalThread(path, opener=GoneAfterCommit, on_fault=faults.append)
        await jt.record(msg("KEPT"), control_id="KEPT", message_type="ORU^R01")
        GoneAfterCommit.fail = True
        try:
            await jt.record(msg("AFTER"), control_id="AFTER", message_type="ORU^R01")
            raise AssertionError("answered as stored")
        except JournalGone:
            pass
        assert committed(path, "AFTER")
        handed = await jt.rows(lambda j: j.unprocessed(10))
        await jt.close()
        return handed

    handed = asyncio.run(main())
    assert [r.control_id for r in handed] == ["KEPT"]  # what was ACKed before goes on downstream
    assert len(faults) == 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_commit_into_a_journal_file_that_is_gone_is_void_in_that_file(tmp_path, how):
    """The file's identity is checked after each intake commit: a commit that
    landed in a file the path no longer names is answered as gone (AE), and
    what it wrote is void in that file, so that nothing reading it (serve's
    stages, salvage, `queue export`) delivers a message answered AE."""
    path = tmp_path / "j.sqlite3"
    journal = SqliteJournal(path)
    try:
        journal.intake([NewMessage(msg("ACKED"), "ACKED", "ORU^R01")])
        if how == "deleted":
            os.unlink(path)
        else:
            os.rename(path, tmp_path / "old.sqlite3")
            path.write_bytes(b"another file")  # where it was
        with pytest.raises(JournalGone):
            journal.intake([NewMessage(msg("LATE"), "LATE", "ORU^R01")])
        found = {r.control_id: (r.state, r.last_error or "") for r in journal.rows()}
    finally:
        journal.close()
    assert found["ACKED"] == ("received", "")
    assert found.get("LATE", ("invalid", "void:"))[0] == "invalid"
    assert found.get("LATE", ("invalid", "void:"))[1].startswith("void:")


def test_writes_run_on_the_intake_connection_and_the_other_only_reads(tmp_path):
    """Only one connection writes: the bookkeeping's writes run on the intake
    thread, between two intake commits, so that they never wait in SQLite's
    busy handler (which sleeps longer and longer while intake goes on) and
    never fail after its timeout; reads run on the other connection."""
    path = tmp_path / "j.sqlite3"

    async def main():
        jt = JournalThread(path)
        receipt = await jt.record(msg("A"), control_id="A", message_type="ORU^R01")
        wrote = await jt.write(lambda j: (threading.current_thread().name, id(j)))
        read = await jt.call(lambda j: (threading.current_thread().name, id(j)))
        await jt.write(lambda j: j.mark_forwarded_many([receipt.id]))
        state = await jt.call(lambda j: j.get(receipt.id).state)
        await jt.close()
        return wrote, read, state

    wrote, read, state = asyncio.run(main())
    assert wrote[0] == "journal" and read[0] == "journal-calls" and wrote[1] != read[1]
    assert state == "forwarded"  # a write awaited is seen by the next read
