"""A decision's cost does not grow with the patient's history: the patient
part of a look-up reads the patient's open results (what may veto), never
every row the patient ever had, and vetoes exactly what reading them all
vetoed. Real SQLite stores, real messages."""

from __future__ import annotations

import random
import sqlite3

import pytest
from builders import Obx, build

from b12comment.context import ContextStore, open_rows
from b12comment.context.store import _FIELDS
from b12comment.core.chain import decide
from b12comment.core.context import Context, PriorResult, veto
from b12comment.core.rows import OBX, ORDER, extract
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig()
KEY = bytes(range(32))
NORMAL = Obx(code="777-3^Platelets^LN", value="250", units="10*9/L", range="150-400")
LOW = Obx(code="777-3^Platelets^LN", value="30", units="10*9/L", range="150-400", flags="L")
PENDING = Obx(code="1742-6^ALT^LN", value="", units="U/L", range="10-45", status="P")


def other(result: Obx, n: int, **kw) -> bytes:
    kw.setdefault("orc4", f"REQ-OTHER-{n}")
    kw.setdefault("control_id", f"OTHER-{n}")
    return build(with_b12=False, others=(result,), placer=f"ORD{n}", filler=f"FIL{n}", service="CBC^CBC^L", **kw)


def b12(**kw) -> bytes:
    kw.setdefault("control_id", "B12MSG")
    kw.setdefault("orc4", "REQ-B12")
    return build(**kw)


def looked_up(store: ContextStore, seq: int, message: bytes) -> Context:
    ex = extract(message, RULE)
    assert ex is not None
    return store.context(seq, ex, "patient", 30.0)


def _history(store: ContextStore, count: int, result: Obx = NORMAL) -> int:
    for n in range(1, count + 1):
        decide(store, n, other(result, n), RULE, "patient")
    return count


@pytest.mark.parametrize("count", [1, 40])
def test_a_history_of_normal_final_results_is_not_read(count):
    store = ContextStore(":memory:", KEY)
    seq = _history(store, count) + 1
    context = looked_up(store, seq, b12())
    assert context.results == ()  # nothing of the other requisitions can veto
    assert decide(store, seq, b12(), RULE, "patient").decision.commented


@pytest.mark.parametrize("result", [LOW, PENDING], ids=["abnormal", "pending"])
def test_one_open_result_among_a_long_normal_history_still_vetoes(result):
    store = ContextStore(":memory:", KEY)
    decide(store, 1, other(result, 0, control_id="THE-ONE"), RULE, "patient")
    seq = _history(store, 40) + 2
    context = looked_up(store, seq, b12())
    assert [r.control_id for r in context.results] == ["THE-ONE"]
    outcome = decide(store, seq, b12(), RULE, "patient")
    assert not outcome.decision.commented
    assert outcome.decision.vetoed_by == ("THE-ONE",)


def test_a_later_normal_final_row_of_the_same_requisition_settles_the_open_one():
    store = ContextStore(":memory:", KEY)
    decide(store, 1, other(LOW, 7, control_id="LOW"), RULE, "patient")
    decide(store, 2, other(NORMAL, 7, control_id="FIXED"), RULE, "patient")
    assert decide(store, 3, b12(), RULE, "patient").decision.commented


def test_a_later_row_under_another_identifier_of_the_patient_settles_the_open_one():
    """The open row was kept for identifiers A and X; the newer normal row
    of the same requisition came under A only. A message of X and A reads
    both; a message of X alone only the open one."""
    store = ContextStore(":memory:", KEY)
    decide(store, 1, other(LOW, 7, control_id="LOW", patient_id="AAA^^^CPR~XXX^^^CPR"), RULE, "patient")
    decide(store, 2, other(NORMAL, 7, control_id="FIXED", patient_id="AAA^^^CPR"), RULE, "patient")
    both = b12(patient_id="XXX^^^CPR~AAA^^^CPR")
    assert decide(store, 3, both, RULE, "patient").decision.commented
    alone = decide(store, 4, b12(patient_id="XXX^^^CPR", control_id="B12-X"), RULE, "patient")
    assert alone.decision.vetoed_by == ("LOW",)
    for reference in (EveryRow(":memory:", KEY),):  # what reading every row decided
        decide(reference, 1, other(LOW, 7, control_id="LOW", patient_id="AAA^^^CPR~XXX^^^CPR"), RULE, "patient")
        decide(reference, 2, other(NORMAL, 7, control_id="FIXED", patient_id="AAA^^^CPR"), RULE, "patient")
        assert decide(reference, 3, both, RULE, "patient").decision.commented


def test_an_older_message_stored_late_does_not_reopen_a_settled_result():
    store = ContextStore(":memory:", KEY)
    decide(store, 5, other(NORMAL, 7, control_id="FIXED"), RULE, "patient")
    decide(store, 2, other(LOW, 7, control_id="LOW"), RULE, "patient")  # seq 2 is older than 5
    assert decide(store, 9, b12(), RULE, "patient").decision.commented


def test_two_values_of_one_analyte_in_one_message_the_open_one_vetoes():
    store = ContextStore(":memory:", KEY)
    message = build(with_b12=False, others=(LOW, NORMAL), orc4="REQ7", control_id="BOTH", placer="O7", filler="F7")
    decide(store, 1, message, RULE, "patient")
    assert decide(store, 2, b12(), RULE, "patient").decision.vetoed_by == ("BOTH",)


def test_a_store_made_before_the_open_rows_is_filled_when_opened(tmp_path):
    path = tmp_path / "context.sqlite3"
    store = ContextStore(path, KEY)
    decide(store, 1, other(LOW, 1, control_id="LOW"), RULE, "patient")
    decide(store, 2, other(NORMAL, 2, control_id="NORMAL"), RULE, "patient")
    decide(store, 3, other(LOW, 3, control_id="LOW-THEN-FIXED"), RULE, "patient")
    decide(store, 4, other(NORMAL, 3, control_id="FIXED"), RULE, "patient")
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"DROP TABLE {open_rows.TABLE}")
    db.close()
    reopened = ContextStore(path, KEY)
    outcome = decide(reopened, 5, b12(), RULE, "patient")
    assert outcome.decision.vetoed_by == ("LOW",)
    reopened.close()


def test_purge_drops_open_rows_with_their_results():
    store = ContextStore(":memory:", KEY)
    ex = extract(other(LOW, 1), RULE)
    assert ex is not None
    store.add(1, ex, now=1000.0)
    store.purge(30.0, now=1000.0 + 41 * 86400)
    assert looked_up(store, 2, b12()).results == ()


class EveryRow(ContextStore):
    """The look-up as it was: every row of the patient and requisitions."""

    def context(self, seq, extract, mode, lookback_days):
        patients, requisitions = self._keys(extract)
        where, args = [], []
        if requisitions:
            where.append(f"requisition IN ({','.join('?' * len(requisitions))})")
            args += requisitions
        if mode == "patient" and patients:
            where.append(f"patient IN ({','.join('?' * len(patients))})")
            args += patients
        if not where:
            return Context(arrival=seq, lookback_days=lookback_days)
        found = self._run(
            f"SELECT {_FIELDS}, MAX(seq) FROM results WHERE {' OR '.join(where)} GROUP BY "
            "CASE WHEN length(requisition) = 0 THEN CAST(seq AS BLOB) ELSE requisition END, kind, analyte",
            args,
        )
        own = set(requisitions)
        return Context(
            arrival=seq,
            results=tuple(
                PriorResult(
                    arrival=r[0],
                    control_id=r[1],
                    requisition=bytes(r[2]).hex() or f"arrival:{r[0]}",
                    same_requisition=bool(r[2]) and bytes(r[2]) in own,
                    kind=r[3],
                    analyte=r[4],
                    is_b12=bool(r[5]),
                    verdict=r[6],
                    status=r[7],
                    order_status=r[8],
                    collected=r[9],
                    obx=r[10],
                    system=r[11],
                    display=r[12],
                    value_type=r[13],
                )
                for r in found
            ),
            lookback_days=lookback_days,
        )


def _random_message(rng: random.Random, n: int) -> bytes:
    patient = rng.choice(["AAA^^^CPR", "BBB^^^CPR", "AAA^^^CPR~BBB^^^CPR", "BBB^^^CPR~AAA^^^CPR", "CCC^^^CPR"])
    requisition = rng.choice([None, "R1", "R2", "R3", "R4"])
    ids = {} if requisition else {"placer": "", "filler": ""}
    if requisition:
        ids = {"placer": f"P{requisition}", "filler": f"F{requisition}"}
    collected = rng.choice(["20240110083000", "20240101", "20230101", ""])
    results = []
    for code in rng.sample(["777-3^Platelets^LN", "1742-6^ALT^LN", "2951-2^Sodium^LN"], rng.randrange(1, 3)):
        value, flags, status = rng.choice(
            [("200", "", "F"), ("200", "", "F"), ("20", "L", "F"), ("", "", "P"), ("200", "", "C"), ("", "", "D")]
        )
        results.append(Obx(code=code, value=value, units="U", range="100-300", flags=flags, status=status))
    common = dict(patient_id=patient, orc4=requisition, collected=collected, control_id=f"M{n}", **ids)
    if rng.random() < 0.3:
        return build(others=tuple(results), obr25=rng.choice(["F", "F", "P"]), **common)
    return build(with_b12=False, others=tuple(results), service="CBC^CBC^L", **common)


@pytest.mark.parametrize("long", [False, True], ids=["grouped", "skip-scan"])
@pytest.mark.parametrize("seed", range(6))
def test_the_open_rows_veto_exactly_what_every_row_vetoed(seed, long, monkeypatch):
    """Random histories of four identifiers, five requisitions (and none),
    normal, abnormal, pending, corrected and deleted results: every
    decision is the one the look-up of every row gave (with every
    requisition read by GROUP BY, and with every one read as a long one)."""
    if long:
        monkeypatch.setattr(open_rows, "LONG_REQUISITION", 1)
    rng = random.Random(seed)
    new, old = ContextStore(":memory:", KEY), EveryRow(":memory:", KEY)
    seqs = list(range(1, 61))
    rng.shuffle(seqs[:10])  # a few stored out of their order
    compared = 0
    for seq in seqs:
        message = _random_message(rng, seq)
        a, b = decide(new, seq, message, RULE, "patient"), decide(old, seq, message, RULE, "patient")
        assert (a.decision.commented, a.decision.reasons, a.decision.vetoed_by) == (
            b.decision.commented,
            b.decision.reasons,
            b.decision.vetoed_by,
        ), seq
        compared += bool(b.decision.vetoed_by) or b.decision.commented
    assert compared > 0


def test_an_earlier_version_of_the_table_is_made_again(tmp_path):
    path = tmp_path / "context.sqlite3"
    store = ContextStore(path, KEY)
    decide(store, 1, other(LOW, 1, control_id="LOW"), RULE, "patient")
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"ALTER TABLE {open_rows.TABLE} RENAME TO open_results")
    db.execute("DELETE FROM open_results")  # it kept other rows
    db.commit()
    db.close()
    reopened = ContextStore(path, KEY)
    assert decide(reopened, 5, b12(), RULE, "patient").decision.vetoed_by == ("LOW",)
    assert not reopened._run("SELECT 1 FROM sqlite_master WHERE name = 'open_results'")
    reopened.close()


_VERDICTS = ("normal", "abnormal", "unknown", "low", "")
_STATUSES = ("F", "C", "P", "I", "R", "S", "D", "W", "X", "")


@pytest.mark.parametrize("kind", [OBX, ORDER])
@pytest.mark.parametrize("is_b12", [False, True])
def test_every_row_the_core_vetoes_with_from_the_look_back_is_open(kind, is_b12):
    """The store keeps only the open rows of a patient's other requisitions:
    every row core.context.veto vetoes with (another requisition, collected
    within the look-back) must be open, whatever its verdict and status."""
    for verdict in _VERDICTS:
        for status in _STATUSES:
            for value_type in ("NM", "ST", "CWE", "ED", ""):
                row = PriorResult(
                    arrival=1,
                    control_id="EARLIER",
                    requisition="other",
                    same_requisition=False,
                    kind=kind,
                    analyte="X",
                    is_b12=is_b12,
                    verdict=verdict,
                    status=status,
                    order_status=status,
                    collected="20240110",
                    value_type=value_type,
                )
                reasons, _, _ = veto(Context(arrival=2, results=(row,)), "20240110", RULE)
                if reasons:
                    assert open_rows.is_open(kind, int(is_b12), verdict, status), row


def test_a_requisition_sent_again_and_again_is_read_by_its_analytes():
    """Past LONG_REQUISITION rows a requisition is read by index seeks: the
    newest row of each result still decides, an abnormal one vetoes, and of
    two values of one analyte in the newest message the doubtful one."""
    store, reference = ContextStore(":memory:", KEY), EveryRow(":memory:", KEY)
    copies = open_rows.LONG_REQUISITION // 2 + 1  # an order and a result each
    for n in range(copies):
        message = other(NORMAL, 1, orc4="REQ-B12", control_id=f"SAME-{n}")
        decide(store, n + 1, message, RULE, "patient")
        decide(reference, n + 1, message, RULE, "patient")
    assert store.count() >= open_rows.LONG_REQUISITION
    seq = copies + 1
    assert decide(store, seq, b12(), RULE, "patient").decision.commented
    assert decide(reference, seq, b12(), RULE, "patient").decision.commented
    newest = other(LOW, 1, orc4="REQ-B12", control_id="NEWEST")
    decide(store, seq + 1, newest, RULE, "patient")
    assert decide(store, seq + 2, b12(control_id="B12-2"), RULE, "patient").decision.vetoed_by == ("NEWEST",)
    both = build(with_b12=False, others=(NORMAL, LOW), orc4="REQ-B12", control_id="BOTH", placer="ORD1", filler="FIL1")
    decide(store, seq + 3, both, RULE, "patient")
    assert decide(store, seq + 4, b12(control_id="B12-3"), RULE, "patient").decision.vetoed_by == ("BOTH",)
    by_requisition = decide(store, seq + 5, b12(control_id="B12-4"), RULE, "requisition")
    assert by_requisition.decision.vetoed_by == ("BOTH",)
