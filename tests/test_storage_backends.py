"""The journal's interface, the same test for every backend: SQLite (a
file) and PostgreSQL (a database the suite starts, see pg_helpers.py)."""

from __future__ import annotations

import pytest

from b12comment.storage import (
    LARGE_BYTES,
    InvalidFrame,
    JournalError,
    NewMessage,
    NotLeader,
    Processed,
    Receipt,
    Replayed,
    open_journal,
    open_journal_for_reading,
)

MSG1 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C1|P|2.5.1\rOBX|1|NM|X||1\r"
MSG2 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C2|P|2.5.1\rOBX|1|NM|X||2\r"
MSG3 = b"MSH|^~\\&|L|F|R|F|2024||ORU^R01|C3|P|2.5.1\rOBX|1|NM|X||3\r"


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "j.sqlite3")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(location):
    j = open_journal(location)
    yield j
    j.close()


def record(j, raw, cid, **kw) -> Receipt:
    result = j.intake([NewMessage(raw, cid, "ORU^R01", **kw)])[0]
    assert isinstance(result, Receipt), result
    return result


def test_intake_order_and_the_whole_state_flow(store):
    a = record(store, MSG1, "C1", peer="10.0.0.1:5", conn_seq=3).id
    b = record(store, MSG2, "C2").id
    c = record(store, MSG3, "C3").id
    assert a < b < c
    assert [r.id for r in store.unprocessed()] == [a, b, c]
    assert store.deliverable() == []  # the head is not processed yet
    store.mark_processed_many([Processed(a, MSG1 + b"NTE|1\r", True, ["commented"]), Processed(b, None, False, [])])
    first, second = store.deliverable()
    assert (first.processed, first.commented, first.reasons, first.peer, first.conn_seq) == (
        MSG1 + b"NTE|1\r",
        True,
        ("commented",),
        "10.0.0.1:5",
        3,
    )
    assert (second.processed, second.commented) == (MSG2, False)  # unchanged: the received bytes again
    store.mark_processed_many([Processed(c, MSG3, False, ["x"])])
    assert store.get(c).processed == MSG3
    store.mark_forwarded_many([a])
    assert store.mark_attempt_failed(b, "AE") == 1
    assert store.mark_attempt_failed(b, "timeout", counts=False) == 1
    store.mark_dead(b, "AR: unknown patient")
    assert store.counts() == {"received": 0, "processed": 1, "forwarded": 1, "dead": 1, "invalid": 0}
    assert store.depth() == 1
    dead = store.rows("dead")[0]
    assert (dead.id, dead.last_error, dead.attempts) == (b, "AR: unknown patient", 1)
    assert store.retry("nope") == 0
    assert store.retry("C2") == 1
    assert [r.id for r in store.deliverable()] == [b, c]
    assert store.get(b).attempts == 0


def test_a_retransmission_is_found_within_its_window_only(store):
    first = record(store, MSG1, "C1", retransmit_window_s=60, now=1000.0)
    assert record(store, MSG1, "C1", retransmit_window_s=60, now=1030.0) == Receipt(first.id, True)
    assert not record(store, MSG1 + b"NTE|1\r", "C1", retransmit_window_s=60, now=1031.0).duplicate
    assert not record(store, MSG1, "C1", retransmit_window_s=60, now=1100.0).duplicate
    assert len(store.rows()) == 3


def test_invalid_frames_are_kept_apart_and_a_batch_answers_each(store):
    results = store.intake(
        [
            NewMessage(MSG1, "C1", "ORU^R01"),
            InvalidFrame(b"junk\x00\xff", "not an HL7 message", peer="p", control_id="bad\x00id"),
            NewMessage(MSG2, "C2", "ORU^R01"),
        ]
    )
    assert isinstance(results[0], Receipt) and isinstance(results[1], int) and isinstance(results[2], Receipt)
    assert [r.state for r in store.rows()] == ["received", "invalid", "received"]
    assert store.get(results[1]).raw == b"junk\x00\xff"
    assert [r.id for r in store.unprocessed()] == [results[0].id, results[2].id]


def test_holds_keep_a_message_back_until_it_is_processed(store):
    a = record(store, MSG1, "C1").id
    b = record(store, MSG2, "C2").id
    store.hold_many([(a, 123.5)])
    assert [r.id for r in store.unprocessed()] == [b]
    assert [(r.id, until) for r, until in store.held()] == [(a, 123.5)]
    store.mark_processed_many([Processed(b, None, False, [])])
    assert [r.id for r in store.deliverable()] == [b]  # the held one is passed over
    store.mark_processed_many([Processed(a, None, False, [])])
    assert store.held() == [] and [r.id for r in store.deliverable()] == [a, b]


def test_large_messages_and_batches_bounded_by_bytes(store):
    big = MSG1 + b"NTE|1||" + b"x" * (LARGE_BYTES + 10) + b"\r"
    ids = [record(store, big, f"B{n}").id for n in range(3)]
    assert [r.id for r in store.unprocessed(100, max_bytes=len(big) * 2)] == ids[:2]
    assert [r.id for r in store.unprocessed(100, max_bytes=1)] == ids[:1]
    store.mark_processed_many([Processed(ids[0], big + b"NTE|2\r", True, []), Processed(ids[1], big, False, [])])
    one, two = store.deliverable()
    assert (one.raw, one.processed, two.processed) == (big, big + b"NTE|2\r", big)
    assert [m for _, _, m in store.raw_rows()] == [big, big, big]


def test_replay_queue_resumes_by_position(store):
    batch = [
        Replayed(MSG1, MSG1 + b"NTE|1\r", "C1", "ORU^R01", True, ("c",), 1),
        Replayed(MSG2, MSG2, "C2", "ORU^R01", False, (), 2),
    ]
    store.enqueue_processed("replay:a.hl7", batch)
    assert store.last_position("replay:a.hl7") == 2 and store.last_position("replay:b.hl7") == 0
    assert [(r.source, r.position, r.processed) for r in store.deliverable()] == [
        ("replay:a.hl7", 1, MSG1 + b"NTE|1\r"),
        ("replay:a.hl7", 2, MSG2),
    ]


def test_prune_removes_old_delivered_and_invalid_rows_only(store):
    old = record(store, MSG1, "C1").id
    waiting = record(store, MSG2, "C2").id
    store.intake([InvalidFrame(b"junk", "why", now=10.0)])
    store.mark_processed_many([Processed(old, None, False, [])], now=10.0)
    store.mark_forwarded_many([old], now=10.0)
    assert store.prune(1, now=10.0 + 2 * 86400) == 2
    assert [r.id for r in store.rows()] == [waiting]
    assert store.oldest_undelivered() is not None


def test_salvage_reads_every_undelivered_message(store, location):
    a = record(store, MSG1, "C1").id
    record(store, MSG2, "C2")
    store.mark_processed_many([Processed(a, None, False, [])])
    store.mark_forwarded_many([a])
    reader = open_journal_for_reading(location)
    try:
        assert [r.raw for r in reader.salvage_undelivered()] == [MSG2]
        assert reader.journal_id == store.journal_id and reader.integrity_problems() == []
    finally:
        reader.close()


class _Lease:
    def __init__(self, instance: str, epoch: int):
        self.instance, self.epoch, self.held = instance, epoch, True

    def holds(self) -> bool:
        return self.held


def test_a_fenced_postgres_journal_writes_only_while_its_lease_holds(pg_url):
    """Every write checks the lease in its own transaction: a lease lost
    locally, or taken over in the database, commits nothing."""
    import psycopg

    open_journal(pg_url).close()  # the schema
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(
            "UPDATE b12_lease SET holder = 'a', epoch = 7, expires_at = clock_timestamp() + interval '1 hour' "
            "WHERE name = 'leader'"
        )
        lease = _Lease("a", 7)
        j = open_journal(pg_url, "a", fence=lease)
        try:
            first = record(j, MSG1, "C1").id
            lease.held = False  # lost here (a renewal failed, or its time ran out)
            with pytest.raises(NotLeader):
                j.intake([NewMessage(MSG2, "C2", "ORU^R01")])
            with pytest.raises(NotLeader):
                j.deliverable()
            lease.held = True
            db.execute("UPDATE b12_lease SET holder = 'b', epoch = 8 WHERE name = 'leader'")  # taken over
            for write in (
                lambda: j.intake([NewMessage(MSG2, "C2", "ORU^R01")]),
                lambda: j.mark_processed_many([Processed(first, None, False, [])]),
                lambda: j.unprocessed(),
            ):
                with pytest.raises(NotLeader):
                    write()
            assert [r.control_id for r in j.rows()] == ["C1"] and j.get(first).state == "received"
        finally:
            j.close()


def test_a_postgres_journal_of_a_newer_schema_is_refused(pg_url):
    import psycopg

    open_journal(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE b12_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="schema version 99"):
        open_journal(pg_url)


def test_an_unreachable_database_is_a_journal_error_without_its_password(tmp_path):
    pytest.importorskip("psycopg")
    url = f"postgresql://user:secret@/db?host={tmp_path}&port=1"
    with pytest.raises(JournalError) as caught:
        open_journal(url)
    assert "secret" not in str(caught.value) and "***" in str(caught.value)


def test_queue_commands_and_context_rebuild_work_on_a_postgres_journal(pg_url, tmp_path, capsys):
    from service_helpers import write_config
    from test_context import b12_message

    from b12comment.cli import main

    j = open_journal(pg_url)
    try:
        first = record(j, b12_message(control_id="Q1"), "Q1").id
        record(j, MSG2, "Q2")
        j.mark_processed_many([Processed(first, None, False, [])])
        j.mark_dead(first, "AR: unknown patient")
    finally:
        j.close()
    cfg = write_config(
        tmp_path / "config.toml",
        journal=dict(path=pg_url),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
        ha=dict(instance="here"),
    )
    assert main(["queue", "--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "dead       1" in out and "instance here: standby; no instance leads now" in out
    assert main(["queue", "--config", str(cfg), "dead"]) == 0
    assert "AR: unknown patient" in capsys.readouterr().out
    assert main(["queue", "--config", str(cfg), "retry", "Q1"]) == 0
    assert main(["queue", "--config", str(cfg), "export", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.hl7"))) == 2
    assert main(["context", "--config", str(cfg), "rebuild"]) == 0
    assert "from 2 journaled messages" in capsys.readouterr().out


@pytest.mark.slow
def test_replay_forward_through_a_postgres_journal(pg_url, tmp_path):
    """replay --forward --journal URL: journaled in the database, delivered in order, counted there."""
    import subprocess
    import sys

    from paths import SAMPLES
    from service_helpers import Downstream, msh10, subprocess_env

    src = tmp_path / "in"
    src.mkdir()
    for f in sorted(SAMPLES.glob("*.hl7"))[:3]:
        (src / f.name).write_bytes(f.read_bytes())
    with Downstream() as down:
        done = subprocess.run(
            [sys.executable, "-m", "b12comment", "replay", "--quiet", str(src), "--forward", down.url]
            + ["--journal", pg_url, "--report", str(tmp_path / "r.json")],
            capture_output=True,
            timeout=120,
            env=subprocess_env(),
        )
        assert done.returncode == 0, done.stderr
        j = open_journal(pg_url)
        try:
            rows = j.rows()
            assert rows and all(r.state == "forwarded" for r in rows)
            assert [msh10(m) for m in down.received] == [r.control_id for r in rows]
        finally:
            j.close()


def test_the_context_store_in_postgres_decides_as_the_sqlite_one(pg_url):
    """The same messages through a store in memory (SQLite) and one in
    PostgreSQL: the same decisions, reasons and review alerts, case by case
    (the cornerstone cases, an adult's ID, a comment contradicted later)."""
    from test_context import ALT_HIGH, KEY, RULE, b12_message, other_message
    from test_context_serve import CASES, _case_messages

    from b12comment.context import ContextStore
    from b12comment.core.chain import decide
    from b12comment.storage.postgres.context import PostgresContextStore, read_contradictions

    sequences = [
        [*_case_messages(i, name, before)[0], _case_messages(i, name, before)[1]]
        for i, (name, before, _) in enumerate(CASES, 1)
    ]
    sequences.append(
        [
            b12_message(orc4="REQ-Z", control_id="B12-Z", patient_id="0101169997^^^CPR"),
            other_message(ALT_HIGH, orc4="REQ-Z", control_id="ALT-Z", patient_id="0101169997^^^CPR"),
        ]
    )
    memory, database = ContextStore(":memory:", KEY), PostgresContextStore(pg_url, KEY)
    try:
        arrival = 0
        for messages in sequences:
            for m in messages:
                arrival += 1
                a = decide(memory, arrival, m, RULE, "patient", 30.0)
                b = decide(database, arrival, m, RULE, "patient", 30.0)
                memory.commit()
                database.commit()
                assert (b.decision, b.output, b.contradicts) == (a.decision, a.output, a.contradicts), m[:80]
        assert [c[:3] for c in database.contradictions()] == [c[:3] for c in memory.contradictions()] != []
        assert [c[:3] for c in read_contradictions(pg_url)] == [c[:3] for c in memory.contradictions()]
        assert database.count() == memory.count() > 0
        assert database.purge(30.0, now=10**10) == memory.purge(30.0, now=10**10) > 0
    finally:
        memory.close()
        database.close()


@pytest.mark.parametrize(
    "ha, why",
    [
        (dict(lease_s=5.0, takeover_s=5.0), "takeover_s"),
        (dict(lease_s=0), "lease_s"),
        (dict(instance="two words"), "instance"),
    ],
)
def test_bad_ha_settings_are_refused_with_their_key(ha, why):
    from b12comment.config import ConfigError, parse_config

    text = "[ha]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in ha.items()) + "\n"
    with pytest.raises(ConfigError, match=rf"c\.toml: \[ha\.{why}\] must"):
        parse_config(text, "c.toml")
