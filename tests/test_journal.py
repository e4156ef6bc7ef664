"""The SQLite journal on real files: durability settings, states, order,
retransmissions, pruning, retry, and a path that cannot be written."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from journal_helpers import head, keep_invalid, mark_processed, record

from b12comment.storage.model import (
    BATCH_BYTES,
    LARGE_BYTES,
    InvalidFrame,
    JournalError,
    NewMessage,
    Processed,
    Replayed,
    batch_full,
)
from b12comment.storage.sqlite import SCHEMA_VERSION, SqliteJournal
from b12comment.storage.writer import JournalThread

MSG1 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C1|P|2.5.1\rOBX|1|NM|X||1\r"
MSG2 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C2|P|2.5.1\rOBX|1|NM|X||2\r"


@pytest.fixture
def journal(tmp_path):
    j = SqliteJournal(tmp_path / "j.sqlite3")
    yield j
    j.close()


def test_wal_and_full_sync(journal):
    assert journal.settings() == ("wal", 2)  # 2 = FULL


def test_record_is_committed_and_visible_to_another_connection(journal, tmp_path):
    receipt = record(journal, MSG1, "C1", peer="127.0.0.1:5000", conn_seq=1)
    assert not receipt.duplicate
    other = sqlite3.connect(tmp_path / "j.sqlite3")
    raw, state, cid = other.execute(
        "SELECT raw, state, control_id FROM messages WHERE id = ?", (receipt.id,)
    ).fetchone()
    assert (raw, state, cid) == (MSG1, "received", "C1")
    other.close()


def test_rows_survive_reopen(tmp_path):
    j = SqliteJournal(tmp_path / "j.sqlite3")
    rid = record(j, MSG1, "C1").id
    j.close()
    j = SqliteJournal(tmp_path / "j.sqlite3")
    assert j.get(rid).raw == MSG1
    j.close()


def test_retransmission_within_window_is_found_not_stored(journal):
    first = record(journal, MSG1, "C1", retransmit_window_s=60, now=1000.0)
    again = record(journal, MSG1, "C1", retransmit_window_s=60, now=1030.0)
    assert again == type(again)(first.id, True)
    assert len(journal.rows()) == 1


def test_same_control_id_other_bytes_is_a_new_message(journal):
    record(journal, MSG1, "C1", retransmit_window_s=60)
    second = record(journal, MSG1 + b"NTE|1\r", "C1", retransmit_window_s=60)
    assert not second.duplicate
    assert len(journal.rows()) == 2


def test_retransmission_is_found_by_its_bytes_without_a_hash(journal, tmp_path):
    """A message whose control ID was not seen before is stored without
    hashing it; a retransmission is found by comparing the bytes of the rows
    with its control ID (the journal keeps no hash of a message at all)."""
    first = record(journal, MSG1, "C1", retransmit_window_s=60, now=1000.0)
    other = sqlite3.connect(tmp_path / "j.sqlite3")
    columns = [c[1] for c in other.execute("PRAGMA table_info(messages)")]
    assert "digest" not in columns and "raw" in columns
    other.close()
    again = record(journal, MSG1, "C1", retransmit_window_s=60, now=1001.0)
    assert again.duplicate and again.id == first.id


def test_retransmission_after_window_is_stored_again(journal):
    record(journal, MSG1, "C1", retransmit_window_s=60, now=1000.0)
    late = record(journal, MSG1, "C1", retransmit_window_s=60, now=1061.0)
    assert not late.duplicate
    assert len(journal.rows()) == 2


def test_queue_order_and_state_flow(journal):
    a = record(journal, MSG1, "C1").id
    b = record(journal, MSG2, "C2").id
    assert [r.id for r in journal.unprocessed()] == [a, b]
    assert head(journal).id == a
    mark_processed(journal, b, MSG2 + b"NTE|1\r", True, ["x"])
    assert head(journal).id == a  # the head stays the head until it is done
    mark_processed(journal, a, MSG1, False, ["no_b12"])
    first = head(journal)
    assert (first.id, first.state, first.processed, first.reasons, first.commented) == (
        a,
        "processed",
        MSG1,
        ("no_b12",),
        False,
    )
    journal.mark_forwarded_many([a])
    assert head(journal).id == b
    assert journal.mark_attempt_failed(b, "AE") == 1
    assert journal.mark_attempt_failed(b, "timeout") == 2
    journal.mark_dead(b, "AR: unknown patient")
    assert head(journal) is None
    assert journal.counts() == {"received": 0, "processed": 0, "forwarded": 1, "dead": 1, "invalid": 0}
    dead = journal.rows("dead")[0]
    assert (dead.control_id, dead.last_error, dead.attempts) == ("C2", "AR: unknown patient", 2)


def test_retry_puts_dead_back_in_order(journal):
    a = record(journal, MSG1, "C1").id
    b = record(journal, MSG2, "C2").id
    mark_processed(journal, a, MSG1, False, [])
    journal.mark_dead(a, "AR")
    journal.mark_dead(b, "AR")  # dead before processing
    assert journal.retry("nope") == 0
    assert journal.retry("C1") == 1
    assert journal.get(a).state == "processed" and journal.get(a).attempts == 0
    assert journal.retry() == 1
    assert journal.get(b).state == "received"
    assert head(journal).id == a


def test_invalid_frames_are_kept_and_not_queued(journal):
    rid = keep_invalid(journal, b"garbage", "no MSH segment", peer="127.0.0.1:1")
    assert journal.get(rid).state == "invalid"
    assert journal.get(rid).last_error == "no MSH segment"
    assert head(journal) is None
    assert journal.depth() == 0


def test_prune_removes_only_old_delivered_rows(journal):
    old = record(journal, MSG1, "C1", now=1000.0).id
    journal.mark_forwarded_many([old], now=1000.0)
    recent = record(journal, MSG2, "C2", now=1000.0).id
    journal.mark_forwarded_many([recent], now=1000.0 + 86400 * 6)
    dead = record(journal, MSG2 + b"X", "C3", now=1000.0).id
    journal.mark_dead(dead, "AR", now=1000.0)
    waiting = record(journal, MSG2 + b"Y", "C4", now=1000.0).id
    assert journal.prune(7, now=1000.0 + 86400 * 8) == 1
    assert [r.id for r in journal.rows()] == [recent, dead, waiting]


def test_oldest_undelivered(journal):
    assert journal.oldest_undelivered() is None
    record(journal, MSG1, "C1", now=500.0)
    record(journal, MSG2, "C2", now=600.0)
    assert journal.oldest_undelivered() == 500.0


def test_path_under_a_regular_file_fails_even_for_root(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(JournalError):
        SqliteJournal(tmp_path / "afile" / "journal.sqlite3")


def test_write_failure_is_a_journal_error_and_nothing_is_stored(journal):
    journal._db.execute("PRAGMA query_only = ON")
    with pytest.raises(JournalError):
        record(journal, MSG1, "C1")
    journal._db.execute("PRAGMA query_only = OFF")
    assert journal.rows() == []
    assert record(journal, MSG1, "C1").id  # and it recovers


def test_journal_thread_opens_lazily_and_reports_failure(tmp_path):
    (tmp_path / "afile").write_text("x")

    async def main():
        bad = JournalThread(tmp_path / "afile" / "j.sqlite3")
        assert not await bad.available()
        with pytest.raises(JournalError):
            await bad.record(MSG1, control_id="C1", message_type="ORU^R01")
        await bad.close()
        good = JournalThread(tmp_path / "sub" / "j.sqlite3")
        receipt = await good.record(MSG1, control_id="C1", message_type="ORU^R01")
        assert (await good.call(lambda j: j.get(receipt.id))).raw == MSG1
        await good.close()

    asyncio.run(main())


def test_failure_that_does_not_count_is_still_noted(journal):
    rid = record(journal, MSG1, "C1").id
    assert journal.mark_attempt_failed(rid, "connection refused", counts=False) == 0
    assert journal.get(rid).last_error == "connection refused"
    assert journal.mark_attempt_failed(rid, "AE", counts=True) == 1


# -- group commit, batches, and what is stored


def test_intake_batch_is_one_transaction_in_order_with_retransmission_and_reject(journal):
    calls = [
        NewMessage(MSG1, "C1", "ORU^R01", retransmit_window_s=60),
        InvalidFrame(b"junk", "not an HL7 message", peer="p"),
        NewMessage(MSG2, "C2", "ORU^R01", retransmit_window_s=60),
        NewMessage(MSG1, "C1", "ORU^R01", retransmit_window_s=60),
    ]
    first, invalid, second, again = journal.intake(calls)
    assert not first.duplicate and not second.duplicate
    assert again.duplicate and again.id == first.id  # a retransmission within the same batch
    assert [r.id for r in journal.rows()] == [first.id, invalid, second.id]
    assert [r.state for r in journal.rows()] == ["received", "invalid", "received"]


def test_intake_batch_that_cannot_commit_stores_nothing(journal):
    journal._db.execute("PRAGMA query_only = ON")
    calls = [NewMessage(m, c, "ORU^R01") for m, c in ((MSG1, "C1"), (MSG2, "C2"))]
    with pytest.raises(JournalError):  # every caller gets it: answered AE, none AA
        journal.intake(calls)
    journal._db.execute("PRAGMA query_only = OFF")
    assert journal.rows() == []


def test_state_changes_commit_without_fsync_but_intake_keeps_full_sync(journal):
    rid = record(journal, MSG1, "C1").id
    mark_processed(journal, rid, MSG1, False, [])
    assert journal.settings() == ("wal", 2)  # back to FULL for the next intake
    journal.mark_forwarded_many([rid])
    assert journal.settings() == ("wal", 2)
    assert journal.get(rid).state == "forwarded"


def test_unchanged_processed_bytes_are_not_stored_twice(journal, tmp_path):
    a, b = record(journal, MSG1, "C1").id, record(journal, MSG2, "C2").id
    changed = MSG2 + b"NTE|1|L|comment|RE\r"
    journal.mark_processed_many([Processed(a, MSG1, False, ["no_b12"]), Processed(b, changed, True, [])])
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    stored = dict(db.execute("SELECT id, processed FROM messages"))
    db.close()
    assert stored == {a: None, b: changed}
    assert journal.get(a).processed == MSG1 and journal.get(b).processed == changed
    journal.mark_dead(a, "AR")
    assert journal.retry("C1") == 1
    assert (journal.get(a).state, journal.get(a).processed) == ("processed", MSG1)  # not processed again


def test_deliverable_is_the_processed_head_of_the_queue(journal):
    ids = [record(journal, MSG1 + str(n).encode(), f"C{n}").id for n in range(4)]
    journal.mark_processed_many([Processed(i, MSG1, False, []) for i in (ids[0], ids[1], ids[3])])
    assert [r.id for r in journal.deliverable(10)] == ids[:2]  # stops before the unprocessed third
    assert [r.id for r in journal.deliverable(1)] == ids[:1]
    journal.mark_forwarded_many(ids[:2])
    assert journal.deliverable(10) == []


def test_journal_thread_commits_every_waiting_frame_together_before_answering(tmp_path, monkeypatch):
    """Group commit: the records that wait while the writer thread is busy
    share one transaction, and no caller has its result before that commit."""
    batches = []
    original = SqliteJournal.intake

    def spy(self, calls):
        result = original(self, calls)
        batches.append(len(calls))
        return result

    monkeypatch.setattr(SqliteJournal, "intake", spy)
    path = tmp_path / "j.sqlite3"

    def committed(cid: str) -> bool:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT COUNT(*) FROM messages WHERE control_id = ?", (cid,)).fetchone()[0] == 1
        finally:
            db.close()

    async def main():
        jt = JournalThread(path, apart=False)  # one thread: a slow call keeps intake waiting
        await jt.call(lambda j: j.depth())  # opens the journal, starts the thread
        gate, inside = threading.Event(), threading.Event()
        busy = jt.call(lambda j: (inside.set(), gate.wait(10)))  # the thread is busy with a slow call
        assert await asyncio.to_thread(inside.wait, 10)
        futures = [jt.record(MSG1 + str(n).encode(), control_id=f"G{n}", message_type="ORU^R01") for n in range(5)]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in futures)
        gate.set()
        await busy
        seen = []
        for n, future in enumerate(futures):
            receipt = await future
            seen.append((receipt.id, committed(f"G{n}")))  # visible to another connection: committed
        await jt.close()
        return seen

    seen = asyncio.run(main())
    assert batches == [5]
    assert [ok for _, ok in seen] == [True] * 5
    assert [rid for rid, _ in seen] == sorted(rid for rid, _ in seen)


def test_journal_thread_keeps_the_event_loop_free_while_a_commit_waits_for_a_lock(tmp_path):
    """Another connection holds the write lock: the record waits on the writer
    thread while the event loop goes on; it commits once the lock is gone."""
    path = tmp_path / "j.sqlite3"

    async def main():
        jt = JournalThread(path)
        await jt.call(lambda j: j.depth())
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        ticks_while_waiting = 0

        async def ticker():  # another task on the loop: it runs only if the record does not block the loop
            nonlocal ticks_while_waiting
            while True:
                await asyncio.sleep(0.01)
                if not future.done():
                    ticks_while_waiting += 1

        future = jt.record(MSG1, control_id="C1", message_type="ORU^R01")
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.2)
        ticking.cancel()
        # A record that waited for the lock on the event loop would have blocked
        # the ticker until SQLite's busy timeout, and ended (done) by then.
        assert ticks_while_waiting >= 1 and not future.done()
        assert not await jt.available(health_timeout_s=0.2)  # busy past the bound: not healthy
        other.execute("ROLLBACK")
        other.close()
        receipt = await asyncio.wait_for(future, 15)
        assert (await jt.call(lambda j: j.get(receipt.id))).raw == MSG1
        assert await jt.available()
        await jt.close()

    asyncio.run(main())


def test_new_journal_is_readable_by_its_owner_only(tmp_path):
    """It holds whole messages with patient data (SECURITY.md)."""
    import os
    import stat

    from b12comment.storage.sqlite import SqliteJournal

    path = tmp_path / "j.sqlite3"
    old = os.umask(0o022)
    try:
        journal = SqliteJournal(path)
        record(journal, b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|X1|P|2.5.1\r", "X1")
        wal = tmp_path / "j.sqlite3-wal"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        journal.close()
    finally:
        os.umask(old)


_V0_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, updated_at REAL NOT NULL,
    peer TEXT NOT NULL DEFAULT '', conn_seq INTEGER NOT NULL DEFAULT 0, control_id TEXT NOT NULL DEFAULT '',
    message_type TEXT NOT NULL DEFAULT '', digest BLOB NOT NULL, raw BLOB NOT NULL, processed BLOB,
    state TEXT NOT NULL CHECK (state IN ('received', 'processed', 'forwarded', 'dead', 'rejected')),
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, commented INTEGER, reasons TEXT
);
CREATE INDEX messages_by_state ON messages (state, id);
CREATE INDEX messages_by_control_id ON messages (control_id, received_at);
"""


def test_journal_of_the_first_schema_is_migrated_in_place(tmp_path):
    """Replay's rows kept their file in peer and position in conn_seq, and a
    frame answered AR was 'rejected': they get their own columns and name."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_V0_SCHEMA)
    rows = [
        ("127.0.0.1:4000", 3, "C1", MSG1, "processed", None),
        ("replay:a/b.hl7", 17, "C2", MSG2, "processed", None),
        ("127.0.0.1:4001", 1, "", b"junk", "rejected", "not an HL7 message"),
    ]
    for peer, seq, cid, raw, state, error in rows:
        db.execute(
            "INSERT INTO messages (received_at, updated_at, peer, conn_seq, control_id, digest, raw, state, last_error,"
            " commented, reasons) VALUES (1, 1, ?, ?, ?, x'00', ?, ?, ?, 0, '[]')",
            (peer, seq, cid, raw, state, error),
        )
    db.commit()
    db.close()
    j = SqliteJournal(path)
    try:
        live, replayed, invalid = j.rows()
        assert (live.peer, live.conn_seq, live.source, live.position) == ("127.0.0.1:4000", 3, "", 0)
        assert (replayed.peer, replayed.conn_seq, replayed.source, replayed.position) == ("", 0, "replay:a/b.hl7", 17)
        assert (invalid.state, invalid.last_error, invalid.peer) == ("invalid", "not an HL7 message", "127.0.0.1:4001")
        assert j.last_position("replay:a/b.hl7") == 17
        assert j.counts()["invalid"] == 1
        assert record(j, MSG1 + b"X", "C9").id == 4  # the id sequence goes on
    finally:
        j.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    SqliteJournal(path).close()  # opening again changes nothing


_V2_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, updated_at REAL NOT NULL,
    peer TEXT NOT NULL DEFAULT '', conn_seq INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT '',
    position INTEGER NOT NULL DEFAULT 0, control_id TEXT NOT NULL DEFAULT '', message_type TEXT NOT NULL DEFAULT '',
    digest BLOB NOT NULL, raw BLOB NOT NULL, processed BLOB,
    state TEXT NOT NULL CHECK (state IN ('received', 'processed', 'forwarded', 'dead', 'invalid')),
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, commented INTEGER, reasons TEXT
);
CREATE INDEX messages_by_state ON messages (state, id);
CREATE INDEX messages_by_control_id ON messages (control_id, received_at);
CREATE INDEX messages_by_source ON messages (source, position) WHERE source != '';
CREATE TABLE holds (id INTEGER PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE large_raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE large_processed (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('journal_id', 'j2');
PRAGMA user_version = 2;
"""


def test_journal_with_a_digest_column_is_migrated_without_it(tmp_path):
    """Version 2 wrote a hash of every message that nothing read: the column
    goes, every row, hold, large message and state stays, the journal keeps
    its id, and an id is never given twice (not even one whose row was pruned)."""
    path = tmp_path / "v2.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(_V2_SCHEMA)
    big = MSG1 + b"NTE|1||" + b"x" * LARGE_BYTES + b"\r"
    for cid, raw, state, processed, commented in [
        ("C1", MSG1, "processed", MSG1 + b"NTE|1\r", 1),
        ("C2", b"", "received", None, None),  # a large one, its bytes in large_raw
        ("C3", MSG2, "dead", None, 0),
        ("C4", MSG2 + b"X", "forwarded", None, 0),
    ]:
        db.execute(
            "INSERT INTO messages (received_at, updated_at, control_id, message_type, digest, raw, processed, state,"
            " commented, reasons) VALUES (5, 6, ?, 'ORU^R01', x'0102', ?, ?, ?, ?, '[\"r\"]')",
            (cid, raw, processed, state, commented),
        )
    db.execute("INSERT INTO large_raw VALUES (2, ?)", (big,))
    db.execute("INSERT INTO holds VALUES (2, 99.0)")
    db.execute("DELETE FROM messages WHERE id = 4")  # pruned: the sequence stays at 4
    db.commit()
    db.close()
    j = SqliteJournal(path)
    try:
        assert j.journal_id == "j2"
        one, two, three = j.rows()
        assert (one.control_id, one.state, one.processed, one.commented, one.reasons) == (
            "C1",
            "processed",
            MSG1 + b"NTE|1\r",
            True,
            ("r",),
        )
        assert (two.raw, two.state) == (big, "received") and [r.id for r, _ in j.held()] == [2]
        assert (three.state, three.raw, three.processed) == ("dead", MSG2, MSG2)
        assert record(j, MSG1 + b"Y", "C5").id == 5
    finally:
        j.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert "digest" not in [c[1] for c in db.execute("PRAGMA table_info(messages)")]
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_journal_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    SqliteJournal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        SqliteJournal(path)


def test_batches_of_rows_are_bounded_by_their_bytes(journal):
    """Large messages come a few at a time: a batch stops at the row that
    crosses max_bytes (and always holds one)."""
    big = [padded(n) for n in range(5)]
    ids = [record(journal, m, f"B{n}").id for n, m in enumerate(big)]
    assert [r.id for r in journal.unprocessed(100, max_bytes=2500)] == ids[:3]
    assert [r.id for r in journal.unprocessed(100, max_bytes=1)] == ids[:1]
    journal.mark_processed_many([Processed(i, m, False, []) for i, m in zip(ids, big, strict=True)])
    assert [r.id for r in journal.deliverable(100, max_bytes=2500)] == ids[:3]
    assert [r.id for r in journal.deliverable(2, max_bytes=10**9)] == ids[:2]


def padded(n: int) -> bytes:
    """A message of about 1,050 bytes."""
    return MSG1.replace(b"|C1|", f"|B{n}|".encode()) + b"NTE|1||" + b"x" * 1000 + b"\r"


def test_journal_thread_runs_other_calls_between_intake_batches(tmp_path):
    """Intake goes first, but never only: while senders keep the intake queue
    full, the processing stage's and the forwarder's calls still run, one
    between two intake commits (else delivery stops while intake flows)."""
    path = tmp_path / "j.sqlite3"
    order: list[str] = []

    async def main():
        jt = JournalThread(path, max_batch=1, apart=False)  # (a database's one session)
        await jt.call(lambda j: j.depth())
        gate, inside = threading.Event(), threading.Event()
        busy = jt.call(lambda j: (inside.set(), gate.wait(10)))
        assert await asyncio.to_thread(inside.wait, 10)
        # while the thread is busy: 30 frames (30 intake batches of one) and two calls wait
        futures = [jt.record(MSG1 + str(n).encode(), control_id=f"F{n}", message_type="ORU^R01") for n in range(30)]
        for n, future in enumerate(futures):
            future.add_done_callback(lambda _f, n=n: order.append(f"intake{n}"))
        depth = jt.call(lambda j: j.depth())  # the future at once, as the typed methods await it
        depth.add_done_callback(lambda _f: order.append("depth"))
        gate.set()
        await busy
        await asyncio.gather(*futures)
        assert await depth >= 1
        await jt.close()

    asyncio.run(main())
    assert len(order) == 31
    assert order.index("depth") <= 2, order  # not after all 30 intake commits
    assert [o for o in order if o != "depth"] == [f"intake{n}" for n in range(30)]  # intake keeps its order


def large(cid: str, size: int = 600_000, fill: bytes = b"x") -> bytes:
    """A message over LARGE_BYTES: its bytes are kept out of its row."""
    head = f"MSH|^~\\&|L|F|R|F|2024||ORU^R01|{cid}|P|2.5.1\rOBX|1|ED|X||".encode()
    return head + fill * (size - len(head) - 1) + b"\r"


def test_a_large_message_is_kept_out_of_its_row_and_read_back_whole(journal, tmp_path):
    """SQLite rewrites a whole row on every state change: the bytes of a
    large message live in a table of their own, written once."""
    big = large("BIG")
    assert len(big) > LARGE_BYTES
    rid = record(journal, big, "BIG", retransmit_window_s=60).id
    small = record(journal, MSG1, "C1").id
    commented = big + b"NTE|1|L|comment|RE\r"
    journal.mark_processed_many([Processed(rid, commented, True, []), Processed(small, None, False, ["no_b12"])])
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    in_row = {i: (r, p) for i, r, p in db.execute("SELECT id, raw, processed FROM messages")}
    assert in_row == {rid: (b"", b""), small: (MSG1, None)}
    assert db.execute("SELECT data FROM large_raw WHERE id = ?", (rid,)).fetchone() == (big,)
    assert db.execute("SELECT data FROM large_processed WHERE id = ?", (rid,)).fetchone() == (commented,)
    db.close()
    row = journal.get(rid)
    assert (row.raw, row.processed, row.state) == (big, commented, "processed")
    assert [r.id for r in journal.deliverable()] == [rid, small]
    assert journal.get(small).processed == MSG1  # None: unchanged
    # A retransmission of the large message is found (compared a piece at a time), another one is new.
    assert record(journal, big, "BIG", retransmit_window_s=60).duplicate
    other = large("BIG", fill=b"y")
    assert not record(journal, other, "BIG", retransmit_window_s=60).duplicate
    assert [m for _, _, m in journal.raw_rows()] == [big, MSG1, other]
    assert [r.raw for r in journal.salvage_undelivered()] == [big, MSG1, other]
    # Delivered and pruned: its bytes go with its row.
    journal.mark_forwarded_many([rid, small])
    assert journal.prune(0, now=time.time() + 10) == 2
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM large_raw").fetchone() == (1,)  # the other one, still queued
    assert db.execute("SELECT COUNT(*) FROM large_processed").fetchone() == (0,)
    db.close()


def test_a_large_message_processed_unchanged_is_not_stored_twice(journal, tmp_path):
    big = large("BIG")
    a, b = record(journal, big, "A").id, record(journal, large("B"), "B").id
    journal.mark_processed_many([Processed(a, None, False, []), Processed(b, large("B"), False, [])])
    assert journal.get(a).processed == big and journal.get(b).processed == large("B")
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM large_processed").fetchone() == (0,)
    assert db.execute("SELECT processed FROM messages").fetchall() == [(None,), (None,)]
    db.close()


def test_replay_forward_keeps_large_messages_out_of_their_rows(journal):
    big = large("BIG")
    journal.enqueue_processed(
        "replay:a.hl7",
        [
            Replayed(MSG1, MSG1, "C1", "ORU^R01", False, (), 1),
            Replayed(big, big + b"NTE|1|L|c\r", "BIG", "ORU^R01", True, (), 2),
        ],
    )
    rows = journal.deliverable()
    assert [(r.raw, r.processed) for r in rows] == [(MSG1, MSG1), (big, big + b"NTE|1|L|c\r")]
    assert journal.last_position("replay:a.hl7") == 2


def test_a_batch_holding_a_large_message_is_full(journal):
    """A batch cut short by its bytes is read again at once, not after a poll."""
    rid = record(journal, large("BIG", size=BATCH_BYTES + 10), "BIG").id
    record(journal, MSG1, "C1")
    rows = journal.unprocessed(100)
    assert [r.id for r in rows] == [rid]
    assert batch_full(rows, 100)
    assert not batch_full(journal.unprocessed(100)[1:], 100)
