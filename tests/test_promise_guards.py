"""Tests that guard the promises against changes that used to survive the
fast lane: each one fails when the line it guards is changed by hand (the
mutant named in its docstring). Real SQLite files and real sockets; each
takes well under 2 s."""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import threading

from builders import build
from journal_helpers import mark_processed, record
from service_helpers import ack_for, frame, take_frames
from test_forwarder import FAST, all_done, fill, run_forwarder
from test_rule_cases import OTHER_PENDING, RULE

from b12comment.config import DownstreamConfig
from b12comment.core.engine import process
from b12comment.storage import InvalidFrame, NewMessage, Processed
from b12comment.storage.sqlite import SqliteJournal

MSG = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C1|P|2.5.1\rOBX|1|NM|X||1\r"


def traced(journal: SqliteJournal) -> list[str]:
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    return statements


def synchronous_at_commit(statements: list[str], default: str = "FULL") -> list[str]:
    """The synchronous setting in force at each COMMIT, from the statements run."""
    setting, found = default, []
    for sql in statements:
        text = sql.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            setting = text.split("=", 1)[1]
        elif text == "COMMIT":
            found.append(setting)
    return found


def test_the_intake_commit_is_made_with_an_fsync(tmp_path):
    """Mutant: intake committed with durable=False (synchronous=NORMAL): an AA
    for a message a power cut could take back. The connection is FULL, and no
    intake that holds a message lowers it, alone or beside an invalid frame."""
    journal = SqliteJournal(tmp_path / "j.sqlite3")
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    statements = traced(journal)
    journal.intake([NewMessage(MSG, "C1", "ORU^R01")])
    journal.intake([InvalidFrame(b"junk", "not HL7"), NewMessage(MSG.replace(b"C1", b"C2"), "C2", "ORU^R01")])
    assert synchronous_at_commit(statements) == ["FULL", "FULL"], statements
    journal._db.set_trace_callback(None)
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    journal.close()


def test_the_trace_check_sees_a_commit_without_an_fsync(tmp_path):
    journal = SqliteJournal(tmp_path / "j.sqlite3")
    statements = traced(journal)
    journal.intake([InvalidFrame(b"junk", "not HL7")])  # invalid frames only: kept without an fsync of their own
    assert synchronous_at_commit(statements) == ["NORMAL"], statements
    journal.close()


def test_mark_processed_many_changes_only_received_rows(tmp_path):
    """Mutant: the `state = 'received'` guard dropped: a late processing
    result would turn a forwarded or dead row back into one to deliver (sent twice)."""
    journal = SqliteJournal(tmp_path / "j.sqlite3")
    ids = [record(journal, MSG.replace(b"C1", f"C{n}".encode()), f"C{n}").id for n in range(3)]
    for id in ids:
        mark_processed(journal, id, b"first", True, [])
    journal.mark_forwarded_many([ids[0]])
    journal.mark_dead(ids[1], "rejected")
    journal.mark_processed_many([Processed(id, b"second", False, ("late",)) for id in ids])
    rows = {r.id: r for r in journal.rows()}
    assert [rows[id].state for id in ids] == ["forwarded", "dead", "processed"]
    assert [rows[id].processed for id in ids] == [b"first", b"first", b"first"]
    journal.close()


def test_unprocessed_leaves_out_held_rows(tmp_path):
    """Mutant: unprocessed() without `id NOT IN holds`: a message held for the
    rest of its requisition would be decided before it came."""
    journal = SqliteJournal(tmp_path / "j.sqlite3")
    ids = [record(journal, MSG.replace(b"C1", f"C{n}".encode()), f"C{n}").id for n in range(3)]
    journal.hold_many([(ids[1], 1e12)])
    assert [r.id for r in journal.unprocessed()] == [ids[0], ids[2]]
    assert [row.id for row, _ in journal.held()] == [ids[1]]
    journal.close()


class PartialAnswerDownstream:
    """Answers the first message AA on a connection it keeps; to the second it
    sends the first bytes of an ACK and closes; after that, AA to all."""

    def __init__(self):
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            conn.settimeout(10)
            while not self.stopping:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                payloads, buffer = take_frames(buffer + data)
                for payload in payloads:
                    self.received.append(payload)
                    if len(self.received) == 2:
                        conn.sendall(b"\x0bMSH|^~\\&|DOWN")  # part of an answer, then gone
                        return
                    conn.sendall(frame(ack_for(payload, "AA")))

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_no_resend_on_a_new_connection_after_the_downstream_answered_part_of_it(tmp_path):
    """Mutant: the transport's one free retry on a new connection taken even
    when the kept connection had already answered part of the message: then
    the downstream may have taken it, and a resend is an attempt that counts
    (with backoff), not a silent second copy."""
    expected = fill(tmp_path / "j.sqlite3", 2)
    down = PartialAnswerDownstream()
    try:
        run_forwarder(tmp_path / "j.sqlite3", DownstreamConfig(url=f"mllp://127.0.0.1:{down.port}", **FAST), all_done)
    finally:
        down.close()
    assert down.received == [expected[0], expected[1], expected[1]]
    journal = SqliteJournal(tmp_path / "j.sqlite3")
    second = journal.rows()[1]
    assert (second.state, second.attempts) == ("forwarded", 1)
    assert "connection lost" in second.last_error
    journal.close()
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM messages WHERE state = 'forwarded'").fetchone()[0] == 2
    db.close()


# The core: a comment only when sure.


def test_a_value_at_or_below_a_bound_flagged_h_is_not_elevated():
    """Mutant: `elevation` treating `<=X` with an H flag as elevated (only `<`
    kept out): a value that is at most X is not known to be above anything."""
    for value in ("<=^2000", "<^2000"):
        message = build(vtype="SN", value=value, flags="H")
        out, decision = process(message, RULE)
        assert (decision.commented, decision.reasons) == (False, ("not_elevated",)), value
        assert out == message
        assert decision.results[0].decided_by == "flag"


def test_a_pending_result_flagged_abnormal_is_both_pending_and_abnormal():
    """Mutant: a pending result's verdict losing `other_abnormal` (every
    pending result judged NORMAL): the silence must name the abnormal finding."""
    pending_high = dataclasses.replace(OTHER_PENDING, value="90", flags="H")
    out, decision = process(build(others=(pending_high,)), RULE)
    assert (decision.commented, decision.reasons) == (False, ("other_abnormal", "context_pending"))
    pending_normal = dataclasses.replace(OTHER_PENDING, value="20")
    _, decision = process(build(others=(pending_normal,)), RULE)
    assert decision.reasons == ("context_pending",)


def test_the_context_stores_commit_is_made_with_an_fsync(tmp_path):
    """Mutant: the context store committed without an fsync of its own
    (synchronous=NORMAL). The journal records a batch as processed after the
    store's commit, and that record becomes durable at the next intake
    commit: a power cut could then keep the message processed and lose its
    rows, which veto a later comment of its patient. serve's store commits
    with synchronous=FULL; replay's temporary store (durable=False) is OFF."""
    from b12comment.context import open_store
    from b12comment.context.store import ContextStore
    from b12comment.core.rows import extract

    store = open_store(str(tmp_path / "context.sqlite3"), str(tmp_path / "context.key"))
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    rows = extract(build(others=(OTHER_PENDING,)), RULE)
    assert rows is not None and rows.rows
    store.add(1, rows)
    store.commit()
    store._db.set_trace_callback(None)
    assert synchronous_at_commit(statements) == ["FULL"], statements
    store.close()
    temporary = ContextStore(tmp_path / "replay.sqlite3", b"k" * 32, durable=False)
    assert temporary._db.execute("PRAGMA synchronous").fetchone()[0] == 0  # OFF
    temporary.close()
