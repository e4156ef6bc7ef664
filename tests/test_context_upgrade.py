"""A context store written by an earlier version, whose requisition keys were
derived the earlier way (the placer number alone, not the patient's first
identifier with it), opened by this one: its rows are never silently lost.

The store records the version of its key derivation (`key_derivation`) and
each row its own. A row of the earlier derivation is found by the number its
requisition was keyed on (the message's own number, hashed the earlier way),
within the message's patients, until it leaves the look-back window: an
abnormal result, a pending one or an unfinished order recorded before the
upgrade still vetoes a B12 of the same requisition after it, in every mode.

The earlier stores are written here as the earlier versions wrote them: their
schema (frozen below) and their derivation, with no code of this version's
store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import sqlite3
import time

import pytest
from builders import Obx, build

from b12comment.context import ContextError, ContextStore
from b12comment.core.chain import decide
from b12comment.core.rows import extract
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig()
KEY = bytes(range(32))
DAY = 86400.0
PATIENT_A, PATIENT_B = "0101169999^^^CPR", "0202029999^^^CPR"
LOW_PLATELETS = Obx(code="777-3^Platelets^LN", value="30", units="10*9/L", range="150-400", flags="L")
PENDING_FERRITIN = Obx(code="2276-4^Ferritin^LN", value="", units="ug/L", range="", flags="", status="I")

# The store of 0.3.0 (the results table as it was; no meta table).
EARLIER_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER NOT NULL, row_index INTEGER NOT NULL, patient BLOB NOT NULL, requisition BLOB NOT NULL,
    kind TEXT NOT NULL, analyte TEXT NOT NULL, is_b12 INTEGER NOT NULL, verdict TEXT NOT NULL,
    status TEXT NOT NULL, order_status TEXT NOT NULL, collected TEXT NOT NULL, control_id TEXT NOT NULL,
    stored_at REAL NOT NULL, PRIMARY KEY (seq, row_index, patient)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_by_patient ON results (patient);
CREATE INDEX IF NOT EXISTS results_by_requisition ON results (requisition);
CREATE INDEX IF NOT EXISTS results_by_time ON results (stored_at);
CREATE TABLE IF NOT EXISTS comments (
    seq INTEGER NOT NULL, patient BLOB NOT NULL, control_id TEXT NOT NULL, stored_at REAL NOT NULL,
    PRIMARY KEY (seq, patient)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contradictions (
    comment_control_id TEXT NOT NULL, control_id TEXT NOT NULL, why TEXT NOT NULL, found_at REAL NOT NULL,
    PRIMARY KEY (comment_control_id, control_id)) WITHOUT ROWID;
"""
# The PostgreSQL store as the version before the derivation's change made it.
EARLIER_POSTGRES_SCHEMA = [
    """CREATE TABLE b12_context_results (
        seq bigint NOT NULL, row_index integer NOT NULL, patient bytea NOT NULL, requisition bytea NOT NULL,
        kind text NOT NULL, analyte text NOT NULL, is_b12 boolean NOT NULL, verdict text NOT NULL,
        status text NOT NULL, order_status text NOT NULL, collected text NOT NULL, control_id text NOT NULL,
        stored_at double precision NOT NULL, obx integer NOT NULL DEFAULT 0, system text NOT NULL DEFAULT '',
        display text NOT NULL DEFAULT '', value_type text NOT NULL DEFAULT '',
        PRIMARY KEY (seq, row_index, patient))""",
    "CREATE INDEX b12_context_results_by_patient ON b12_context_results (patient)",
    "CREATE INDEX b12_context_results_by_requisition ON b12_context_results (requisition)",
    "CREATE INDEX b12_context_results_by_time ON b12_context_results (stored_at)",
    """CREATE TABLE b12_context_comments (
        seq bigint NOT NULL, patient bytea NOT NULL, control_id text NOT NULL, stored_at double precision NOT NULL,
        PRIMARY KEY (seq, patient))""",
    """CREATE TABLE b12_context_contradictions (
        comment_control_id text NOT NULL, control_id text NOT NULL, why text NOT NULL,
        found_at double precision NOT NULL, PRIMARY KEY (comment_control_id, control_id))""",
]


def _hmac(raw: bytes) -> bytes:
    return hmac.new(KEY, raw, hashlib.sha256).digest() if raw else b""


def _earlier_rows(seq: int, message: bytes, orc4: str, stored_at: float) -> list[tuple]:
    """The rows the earlier version kept of `message`: the requisition keyed
    on ORC-4 alone (prefixed with which), every patient identifier hashed."""
    found = extract(message, RULE)
    assert found is not None and found.rows
    rows = []
    for r in found.rows:
        requisition = _hmac(b"ORC-4\x00" + orc4.encode())
        for patient in [_hmac(k) for k in r.patient_keys] or [b""]:
            rows.append(
                (seq, r.row_index, patient, requisition, r.kind, r.analyte, int(r.is_b12), r.verdict)
                + (r.status, r.order_status, r.collected, found.control_id, stored_at)
            )
    return rows


def _earlier_sqlite_store(path, earlier: list[tuple[bytes, str]], age_days: float = 10.0) -> None:
    db = sqlite3.connect(path)
    db.executescript(EARLIER_SQLITE_SCHEMA)
    for seq, (m, orc4) in enumerate(earlier, start=1):
        db.executemany(
            f"INSERT INTO results VALUES ({','.join('?' * 13)})",
            _earlier_rows(seq, m, orc4, time.time() - age_days * DAY),
        )
    db.commit()
    db.close()


def _earlier_postgres_store(url: str, earlier: list[tuple[bytes, str]], age_days: float = 10.0) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as db:
        for statement in EARLIER_POSTGRES_SCHEMA:
            db.execute(statement)
        for seq, (m, orc4) in enumerate(earlier, start=1):
            for row in _earlier_rows(seq, m, orc4, time.time() - age_days * DAY):
                db.execute(
                    "INSERT INTO b12_context_results (seq, row_index, patient, requisition, kind, analyte, is_b12, "
                    "verdict, status, order_status, collected, control_id, stored_at) "
                    f"VALUES ({','.join(['%s'] * 13)})",
                    row[:6] + (bool(row[6]),) + row[7:],
                )


def _count(patient: str, orc4: str, others=(LOW_PLATELETS,), obr25: str = "F") -> bytes:
    return build(
        with_b12=False,
        others=others,
        patient_id=patient,
        orc4=orc4,
        placer="ORD0",
        filler="FIL0",
        control_id="EARLIER",
        service="CBC^Blood count^L",
        obr25=obr25,
    )


def _b12(patient: str = PATIENT_A, orc4: str = "REQ1") -> bytes:
    return build(patient_id=patient, orc4=orc4, control_id="B12")


# What an earlier message of the same requisition held: each must still veto.
EARLIER_VETOES = {
    "abnormal result": (_count(PATIENT_A, "REQ1"), "other_abnormal_recent"),
    "pending result": (_count(PATIENT_A, "REQ1", others=(PENDING_FERRITIN,)), "requisition_pending"),
    "unfinished order": (
        _count(PATIENT_A, "REQ1", others=(Obx(code="777-3^Platelets^LN", value="250", range="150-400"),), obr25="I"),
        "requisition_pending",
    ),
}


def _open(kind: str, where, request):
    if kind == "sqlite":
        return ContextStore(where, KEY)
    from b12comment.storage.postgres.context import PostgresContextStore

    return PostgresContextStore(where, KEY)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(kind, where, write_earlier) for a store of each kind."""
    if request.param == "sqlite":
        where = str(tmp_path / "context.db")
        return request.param, where, lambda earlier, **kw: _earlier_sqlite_store(where, earlier, **kw)
    url = request.getfixturevalue("pg_url")
    return request.param, url, lambda earlier, **kw: _earlier_postgres_store(url, earlier, **kw)


@pytest.mark.parametrize("mode", ["requisition", "patient"])
@pytest.mark.parametrize("held", sorted(EARLIER_VETOES))
def test_an_earlier_derivations_rows_still_veto_the_same_requisition(backend, request, mode, held):
    kind, where, write_earlier = backend
    earlier, reason = EARLIER_VETOES[held]
    write_earlier([(earlier, "REQ1")])
    store = _open(kind, where, request)
    try:
        b12 = _b12()
        outcome = decide(store, 100, b12, RULE, mode, 30.0)
        assert reason in outcome.decision.reasons, (held, mode, outcome.decision.reasons)
        assert outcome.output == b12  # not commented
        assert "EARLIER" in outcome.decision.vetoed_by
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["requisition", "patient"])
def test_an_earlier_row_of_another_patient_with_the_same_number_does_not_veto(backend, request, mode):
    kind, where, write_earlier = backend
    write_earlier([(_count(PATIENT_B, "REQ1"), "REQ1")])
    store = _open(kind, where, request)
    try:
        outcome = decide(store, 100, _b12(), RULE, mode, 30.0)
        assert outcome.decision.reasons == ()
        assert outcome.output != _b12()  # commented
    finally:
        store.close()


def test_the_store_records_its_key_derivation_and_counts_the_earlier_rows(backend, request):
    kind, where, write_earlier = backend
    write_earlier([(_count(PATIENT_A, "REQ1"), "REQ1"), (_count(PATIENT_B, "REQ2"), "REQ2")], age_days=10.0)
    store = _open(kind, where, request)
    try:
        count, until = store.earlier_derivation(30.0)
        assert count == 4  # of each message its order and its result, each under its one patient identifier
        assert until == pytest.approx(time.time() - 10 * DAY + 30 * DAY, abs=120)
        # rows written now are of this derivation, and the earlier rows of
        # their requisition and patient take its key: patient B's stay earlier
        decide(store, 100, _b12(), RULE, "patient", 30.0)
        store.commit()
        assert store.earlier_derivation(30.0)[0] == 2
        # once the earlier rows leave the window, nothing of them is left
        store.purge(30.0, now=time.time() + 25 * DAY)
        assert store.earlier_derivation(30.0) == (0, None)
    finally:
        store.close()


def test_a_store_of_a_later_derivation_is_refused(tmp_path):
    path = tmp_path / "context.db"
    ContextStore(path, KEY).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE name = 'key_derivation'")
    db.commit()
    db.close()
    with pytest.raises(ContextError, match="key derivation 99"):
        ContextStore(path, KEY)


def test_serve_says_once_at_start_how_many_earlier_rows_and_until_when(tmp_path):
    import structlog

    from b12comment.config import ContextConfig
    from b12comment.serve.processing import open_context, tell_earlier_derivation

    where = str(tmp_path / "context.db")
    _earlier_sqlite_store(where, [(_count(PATIENT_A, "REQ1"), "REQ1")], age_days=10.0)
    (tmp_path / "key").write_bytes(KEY)  # the key the earlier version made
    stage = open_context(ContextConfig(mode="requisition", store=where, key_file=str(tmp_path / "key")))
    try:
        with structlog.testing.capture_logs() as lines:
            tell_earlier_derivation(stage, structlog.get_logger())
    finally:
        stage.close()
    [line] = [x for x in lines if x["event"] == "context_earlier_key_derivation"]
    assert line["rows"] == 2 and line["lookback_days"] == 30.0
    until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 20 * DAY))
    assert line["until"].startswith(until[:8])  # the day they leave the window (UTC)
    assert not {"patient_id", "patient_name"} & line.keys()
    # a store with none says nothing
    fresh = open_context(
        ContextConfig(mode="requisition", store=str(tmp_path / "new.db"), key_file=str(tmp_path / "key"))
    )
    try:
        with structlog.testing.capture_logs() as lines:
            tell_earlier_derivation(fresh, structlog.get_logger())
    finally:
        fresh.close()
    assert lines == []


@pytest.mark.parametrize("b12_in", ["REQ1", "REQ2"])
@pytest.mark.parametrize("mode", ["requisition", "patient"])
def test_an_earlier_rows_pending_result_is_settled_by_its_final_one_after_the_upgrade(backend, request, mode, b12_in):
    """The earlier row is of the requisition, so the newer row of the same
    result settles it, as any newer row would, for a B12 of the same
    requisition and of another one (the patient's look-back): no needless
    silence."""
    kind, where, write_earlier = backend
    write_earlier([(_count(PATIENT_A, "REQ1", others=(PENDING_FERRITIN,)), "REQ1")])
    store = _open(kind, where, request)
    try:
        final = dataclasses.replace(PENDING_FERRITIN, value="40", range="15-150", status="F")
        decide(store, 50, _count(PATIENT_A, "REQ1", others=(final,)), RULE, mode, 30.0)
        store.commit()
        outcome = decide(store, 100, _b12(orc4=b12_in), RULE, mode, 30.0)
        assert outcome.decision.reasons == ()
        assert outcome.output != _b12(orc4=b12_in)  # commented
    finally:
        store.close()


def test_serve_on_an_earlier_versions_store_keeps_the_veto_and_says_so_once(tmp_path):
    """The upgrade as an operator makes it: the earlier version's store and
    key stay where they were, serve of this version starts on them in mode
    requisition, and the child's B12 of the requisition with an abnormal
    result recorded before the upgrade goes on without the comment."""
    from service_helpers import Downstream, MllpConnection, Serve, msa, write_config

    from b12comment.storage import NewMessage, Processed, open_journal

    var = tmp_path / "var"
    var.mkdir()
    _earlier_sqlite_store(str(var / "context.sqlite3"), [(_count(PATIENT_A, "REQ1"), "REQ1")], age_days=10.0)
    (var / "context.key").write_bytes(KEY)
    # The earlier version's journal: its message went downstream (the store's seq is its id).
    journal = open_journal(str(tmp_path / "journal.sqlite3"))
    [receipt] = journal.intake([NewMessage(_count(PATIENT_A, "REQ1"), "EARLIER", "ORU^R01")])
    journal.mark_processed_many([Processed(receipt.id, None, False, ())])
    journal.mark_forwarded_many([receipt.id])
    journal.close()
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(tmp_path / "journal.sqlite3")),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
            context=dict(mode="requisition", store=str(var / "context.sqlite3"), key_file=str(var / "context.key")),
        )
        with Serve(cfg) as serve:
            b12 = _b12()
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(b12)) == ("AA", "B12")
            assert down.wait_for(1), serve.stderr
            assert down.received == [b12]  # byte for byte: no comment
            [decision] = serve.records("decision")
            assert decision["reasons"] == ["other_abnormal_recent"] and decision["vetoed_by"] == ["EARLIER"]
            [line] = serve.records("context_earlier_key_derivation")
            assert line["rows"] == 2
            assert serve.stop() == 0
    assert "0101169999" not in serve.stderr
