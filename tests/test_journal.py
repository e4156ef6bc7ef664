"""The SQLite journal on real files: durability settings, states, order,
retransmissions, pruning, retry, and a path that cannot be written."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from b12comment.journal import Journal, JournalError, JournalThread

MSG1 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C1|P|2.5.1\rOBX|1|NM|X||1\r"
MSG2 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C2|P|2.5.1\rOBX|1|NM|X||2\r"


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    yield j
    j.close()


def record(j: Journal, raw: bytes, cid: str, **kw):
    return j.record(raw, control_id=cid, message_type="ORU^R01", **kw)


def test_wal_and_full_sync(journal):
    assert journal.settings() == ("wal", 2)  # 2 = FULL


def test_record_is_committed_and_visible_to_another_connection(journal, tmp_path):
    receipt = record(journal, MSG1, "C1", peer="127.0.0.1:5000", conn_seq=1)
    assert not receipt.duplicate
    other = sqlite3.connect(tmp_path / "j.sqlite3")
    raw, state, cid = other.execute("SELECT raw, state, control_id FROM messages WHERE id = ?",
                                    (receipt.id,)).fetchone()
    assert (raw, state, cid) == (MSG1, "received", "C1")
    other.close()


def test_rows_survive_reopen(tmp_path):
    j = Journal(tmp_path / "j.sqlite3")
    rid = record(j, MSG1, "C1").id
    j.close()
    j = Journal(tmp_path / "j.sqlite3")
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


def test_retransmission_after_window_is_stored_again(journal):
    record(journal, MSG1, "C1", retransmit_window_s=60, now=1000.0)
    late = record(journal, MSG1, "C1", retransmit_window_s=60, now=1061.0)
    assert not late.duplicate
    assert len(journal.rows()) == 2


def test_queue_order_and_state_flow(journal):
    a = record(journal, MSG1, "C1").id
    b = record(journal, MSG2, "C2").id
    assert [r.id for r in journal.unprocessed()] == [a, b]
    assert journal.next_undelivered().id == a
    journal.mark_processed(b, MSG2 + b"NTE|1\r", True, ["x"])
    assert journal.next_undelivered().id == a  # the head stays the head until it is done
    journal.mark_processed(a, MSG1, False, ["no_b12"])
    head = journal.next_undelivered()
    assert (head.id, head.state, head.processed, head.reasons, head.commented) == (a, "processed", MSG1, ("no_b12",), False)
    journal.mark_forwarded(a)
    assert journal.next_undelivered().id == b
    assert journal.mark_attempt_failed(b, "AE") == 1
    assert journal.mark_attempt_failed(b, "timeout") == 2
    journal.mark_dead(b, "AR: unknown patient")
    assert journal.next_undelivered() is None
    assert journal.counts() == {"received": 0, "processed": 0, "forwarded": 1, "dead": 1, "rejected": 0}
    dead = journal.rows("dead")[0]
    assert (dead.control_id, dead.last_error, dead.attempts) == ("C2", "AR: unknown patient", 2)


def test_retry_puts_dead_back_in_order(journal):
    a = record(journal, MSG1, "C1").id
    b = record(journal, MSG2, "C2").id
    journal.mark_processed(a, MSG1, False, [])
    journal.mark_dead(a, "AR")
    journal.mark_dead(b, "AR")  # dead before processing
    assert journal.retry("nope") == 0
    assert journal.retry("C1") == 1
    assert journal.get(a).state == "processed" and journal.get(a).attempts == 0
    assert journal.retry() == 1
    assert journal.get(b).state == "received"
    assert journal.next_undelivered().id == a


def test_rejected_frames_are_kept_and_not_queued(journal):
    rid = journal.reject(b"garbage", "no MSH segment", peer="127.0.0.1:1")
    assert journal.get(rid).state == "rejected"
    assert journal.get(rid).last_error == "no MSH segment"
    assert journal.next_undelivered() is None
    assert journal.depth() == 0


def test_prune_removes_only_old_delivered_rows(journal):
    old = record(journal, MSG1, "C1", now=1000.0).id
    journal.mark_forwarded(old, now=1000.0)
    recent = record(journal, MSG2, "C2", now=1000.0).id
    journal.mark_forwarded(recent, now=1000.0 + 86400 * 6)
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
        Journal(tmp_path / "afile" / "journal.sqlite3")


def test_write_failure_is_a_journal_error_and_nothing_is_stored(journal):
    journal._db.execute("PRAGMA query_only = ON")  # noqa: SLF001 - makes SQLite itself refuse writes
    with pytest.raises(JournalError):
        record(journal, MSG1, "C1")
    journal._db.execute("PRAGMA query_only = OFF")  # noqa: SLF001
    assert journal.rows() == []
    assert record(journal, MSG1, "C1").id  # and it recovers


def test_journal_thread_opens_lazily_and_reports_failure(tmp_path):
    (tmp_path / "afile").write_text("x")

    async def main():
        bad = JournalThread(tmp_path / "afile" / "j.sqlite3")
        assert not await bad.available()
        with pytest.raises(JournalError):
            await bad.call("record", MSG1, control_id="C1", message_type="ORU^R01")
        await bad.close()
        good = JournalThread(tmp_path / "sub" / "j.sqlite3")
        receipt = await good.call("record", MSG1, control_id="C1", message_type="ORU^R01")
        assert (await good.call("get", receipt.id)).raw == MSG1
        await good.close()

    asyncio.run(main())


def test_failure_that_does_not_count_is_still_noted(journal):
    rid = record(journal, MSG1, "C1").id
    assert journal.mark_attempt_failed(rid, "connection refused", counts=False) == 0
    assert journal.get(rid).last_error == "connection refused"
    assert journal.mark_attempt_failed(rid, "AE", counts=True) == 1
