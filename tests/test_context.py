"""The patient's other results: the context the shells gather and the rule
reads. Real SQLite stores (in memory and on disk), real messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from builders import Obx, build
from service_helpers import subprocess_env

from b12comment.context import ContextError, ContextStore, load_key
from b12comment.core.chain import decide
from b12comment.core.context import Context
from b12comment.core.engine import process
from b12comment.core.rows import ADULT_ROW, NOT_READ_ROW, extract
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig()
KEY = bytes(range(32))
LOW_PLATELETS = Obx(code="777-3^Platelets^LN", value="30", units="10*9/L", range="150-400", flags="L")
NORMAL_PLATELETS = Obx(code="777-3^Platelets^LN", value="250", units="10*9/L", range="150-400")
ALT_HIGH = Obx(code="1742-6^ALT^LN", value="300", units="U/L", range="10-45", flags="H")


def b12_message(**kw) -> bytes:
    kw.setdefault("control_id", "B12MSG")
    kw.setdefault("orc4", "REQ1")
    return build(**kw)


def other_message(result: Obx = LOW_PLATELETS, **kw) -> bytes:
    kw.setdefault("control_id", "CBCMSG")
    kw.setdefault("orc4", "REQ1")
    kw.setdefault("placer", "ORD0")
    kw.setdefault("filler", "FIL0")
    kw.setdefault("service", "CBC^Blood count^L")
    return build(with_b12=False, others=(result,), **kw)


def run(messages: list[bytes], mode: str = "patient", lookback_days: float = 30.0):
    """Decide each message in order with one shared in-memory store; the last decision."""
    store = ContextStore(":memory:", KEY)
    outcome = None
    for seq, message in enumerate(messages, start=1):
        outcome = decide(store, seq, message, RULE, mode, lookback_days)
    assert outcome is not None
    return outcome


def test_alone_the_b12_gets_the_comment():
    assert run([b12_message()]).decision.commented


def test_no_context_is_todays_behaviour():
    message = b12_message()
    assert process(message, RULE, None) == process(message, RULE)
    assert process(message, RULE, Context(arrival=1)) == process(message, RULE)


CASES = [
    ("abnormal_count_same_requisition_before", [other_message()], "patient", False, ("other_abnormal_recent",)),
    (
        "abnormal_count_other_requisition_3_days_before",
        [other_message(orc4="REQ0", collected="20240107083000")],
        "patient",
        False,
        ("other_abnormal_recent",),
    ),
    (
        "abnormal_count_other_requisition_40_days_before",
        [other_message(orc4="REQ0", collected="20231201083000")],
        "patient",
        True,
        (),
    ),
    (
        "same_name_other_patient_id",
        [other_message(orc4="REQ0", patient_id="0202029999^^^CPR")],
        "patient",
        True,
        (),
    ),
    (
        "same_id_other_assigning_authority",
        [other_message(orc4="REQ0", patient_id="0101169999^^^OTHERLAB")],
        "patient",
        True,
        (),
    ),
    ("normal_count_same_requisition", [other_message(NORMAL_PLATELETS)], "patient", True, ()),
    (
        "pending_order_in_requisition",
        [other_message(NORMAL_PLATELETS, obr25="P")],
        "patient",
        False,
        ("requisition_pending",),
    ),
    (
        "corrected_not_final_order_in_requisition",
        [other_message(NORMAL_PLATELETS, obr25="M")],
        "patient",
        False,
        ("requisition_pending",),
    ),
    (
        "order_done_no_results_yet_in_requisition",
        [other_message(NORMAL_PLATELETS, obr25="N")],
        "patient",
        False,
        ("requisition_pending",),
    ),
    ("cancelled_order_in_requisition", [other_message(NORMAL_PLATELETS, obr25="X")], "patient", True, ()),
    (
        "pending_result_in_requisition",
        [other_message(Obx(code="777-3^Platelets^LN", value="", units="", range="", status="P"))],
        "patient",
        False,
        ("requisition_pending",),
    ),
    (
        "pending_order_then_final",
        [
            other_message(NORMAL_PLATELETS, obr25="P", control_id="CBC-P"),
            other_message(NORMAL_PLATELETS, obr25="F", control_id="CBC-F"),
        ],
        "patient",
        True,
        (),
    ),
    (
        "requisition_mode_ignores_other_requisitions",
        [other_message(orc4="REQ0", collected="20240107083000")],
        "requisition",
        True,
        (),
    ),
    ("requisition_mode_same_requisition", [other_message()], "requisition", False, ("other_abnormal_recent",)),
    ("message_mode_sees_nothing", [other_message()], "message", True, ()),
    (
        "earlier_b12_does_not_count",
        [b12_message(control_id="OLDB12", orc4="REQ0", collected="20240105083000", flags="H")],
        "patient",
        True,
        (),
    ),
    (
        "same_placer_number_without_orc",
        [other_message(orc4=None, placer="ORD1", filler="FIL9")],
        "patient",
        False,
        ("other_abnormal_recent",),
    ),
    (
        "deleted_result_is_skipped",
        [other_message(Obx(code="777-3^Platelets^LN", value="30", flags="L", status="D"), orc4="REQ0")],
        "patient",
        True,
        (),
    ),
]


@pytest.mark.parametrize("before, mode, commented, reasons", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_context_case(before, mode, commented, reasons):
    outcome = run([*before, b12_message()], mode)
    assert outcome.decision.commented is commented
    assert outcome.decision.reasons == reasons
    if not commented:
        assert outcome.decision.vetoed_by == (before[-1].split(b"|")[9].decode(),)
        assert outcome.output == b12_message()  # not one byte changed
    else:
        assert outcome.output != b12_message()


def test_later_abnormal_result_in_the_store_vetoes_too():
    """Replay's first pass puts later messages in the store as well."""
    store = ContextStore(":memory:", KEY)
    b12, alt = b12_message(), other_message(ALT_HIGH, control_id="ALTMSG", collected="20240111083000")
    for seq, message in ((1, b12), (2, alt)):
        ex = extract(message, RULE)
        assert ex is not None
        store.add(seq, ex)
    outcome = decide(store, 1, b12, RULE, "patient", 30.0, record=False, watch=False)
    assert not outcome.decision.commented
    assert outcome.decision.reasons == ("other_abnormal_recent",)
    assert outcome.decision.vetoed_by == ("ALTMSG",)


def test_vetoes_name_control_ids_only():
    decision = run([other_message(), b12_message()]).decision
    assert decision.log_fields()["vetoed_by"] == ["CBCMSG"]
    assert "0101169999" not in repr(decision.as_dict())


def test_comment_contradicted_by_later_abnormal_result():
    store = ContextStore(":memory:", KEY)
    first = decide(store, 1, b12_message(), RULE, "patient", 30.0)
    assert first.decision.commented
    later = decide(store, 2, other_message(ALT_HIGH, control_id="ALTMSG", orc4="REQ9"), RULE, "patient", 30.0)
    assert later.contradicts == ("B12MSG",)
    assert later.why == "abnormal_result"
    assert store.contradictions()[0][:3] == ("B12MSG", "ALTMSG", "abnormal_result")
    again = decide(store, 2, other_message(ALT_HIGH, control_id="ALTMSG", orc4="REQ9"), RULE, "patient", 30.0)
    assert again.contradicts == ()  # recorded once


def test_corrected_b12_contradicts_and_normal_result_does_not():
    store = ContextStore(":memory:", KEY)
    assert decide(store, 1, b12_message(), RULE, "patient", 30.0).decision.commented
    normal = decide(store, 2, other_message(NORMAL_PLATELETS, control_id="N1", orc4="R2"), RULE, "patient", 30.0)
    assert normal.contradicts == ()
    other_child = decide(
        store, 3, other_message(ALT_HIGH, control_id="X1", patient_id="0202029999^^^CPR"), RULE, "patient", 30.0
    )
    assert other_child.contradicts == ()
    corrected = decide(store, 4, b12_message(control_id="B12C", status="C", value="300"), RULE, "patient", 30.0)
    assert corrected.contradicts == ("B12MSG",)
    assert corrected.why == "corrected_b12"


def huge(message: bytes) -> bytes:
    """The message with normal sodium results appended up to 10,001 segments."""
    sodium = b"OBX|9|NM|2951-2^Sodium^LN||140|mmol/L|136-145||||F\r"
    return message + sodium * (10_001 - message.count(b"\r"))


def test_a_message_too_large_to_read_vetoes_its_patients_comments_before_and_after():
    """Its results are not read (too_many_segments), so none of them may be
    taken for normal: the store keeps one result that cannot be judged per
    requisition, which vetoes a later B12 of the same patient (another
    requisition) and of the same requisition, and contradicts an earlier
    comment of the patient (the review alert)."""
    big = huge(other_message(NORMAL_PLATELETS, control_id="BIG", orc4="REQ-BIG"))
    ex = extract(big, RULE)
    assert ex is not None and ex.not_read
    assert [(r.requisition_key, r.verdict, r.collected) for r in ex.rows] == [
        (b"0101169999\x00CPR\x01ORC-4\x00REQ-BIG", "unknown", "")
    ]
    assert ex.rows[0].patient_keys == (b"0101169999\x00CPR",)
    later = run([big, b12_message(orc4="REQ-OTHER", collected="20240301083000")])
    assert (later.decision.commented, later.decision.reasons) == (False, ("context_unreadable_recent",))
    assert later.decision.vetoed_by == ("BIG",)
    same = run([big, b12_message(orc4="REQ-BIG")], mode="requisition")
    assert (same.decision.commented, same.decision.vetoed_by) == (False, ("BIG",))
    store = ContextStore(":memory:", KEY)
    assert decide(store, 1, b12_message(), RULE, "patient", 30.0).decision.commented
    alert = decide(store, 2, big, RULE, "patient", 30.0)
    assert (alert.decision.reasons, alert.contradicts, alert.why) == (
        ("no_b12",),
        ("B12MSG",),
        "results_not_read",
    )
    assert store.count() == 2 + 1  # the B12 message's order and result, and one row for the huge one
    adult = huge(other_message(control_id="ADULT", birth="19700101"))
    adult_ex = extract(adult, RULE)  # an adult's, too large to read (the birth date is not looked for): the same
    assert adult_ex is not None and adult_ex.not_read and [r.analyte for r in adult_ex.rows] == [NOT_READ_ROW]


def test_extract_keeps_no_name_or_birth_date():
    ex = extract(other_message(), RULE)
    assert ex is not None
    text = repr(ex)
    assert "Testesen" not in text and "20160315" not in text
    assert [r.kind for r in ex.rows] == ["order", "obx"]
    assert ex.rows[1].verdict == "abnormal"


def test_extract_of_what_is_not_a_result_message():
    assert extract(b"not hl7", RULE) is None
    assert extract(build(msh9="ADT^A01"), RULE) is None


def test_key_file_made_0600_with_32_bytes(tmp_path):
    path = tmp_path / "var" / "context.key"
    key = load_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key


def test_key_file_unreadable_or_wrong_is_one_clear_line(tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(ContextError, match="must hold exactly 32 bytes"):
        load_key(short)
    folder = tmp_path / "dir.key"
    folder.mkdir()
    with pytest.raises(ContextError, match="cannot read the context key file"):
        load_key(folder)


def test_store_file_is_0600_and_holds_no_identifiers(tmp_path):
    path = tmp_path / "context.sqlite3"
    store = ContextStore(path, KEY)
    decide(store, 1, other_message(), RULE, "patient", 30.0)
    decide(store, 2, b12_message(), RULE, "patient", 30.0)
    store.commit()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("context.sqlite3"))
    for secret in (b"0101169999", b"Testesen", b"20160315", b"REQ1", b"ORD0", b"ORD1"):
        assert secret not in data
    store.close()


def test_purge_drops_rows_older_than_the_look_back():
    store = ContextStore(":memory:", KEY)
    ex = extract(other_message(), RULE)
    assert ex is not None
    store.add(1, ex, now=1000.0)
    store.add(2, ex, now=1000.0 + 40 * 86400)
    assert store.purge(30.0, now=1000.0 + 41 * 86400) == 2
    assert store.count() == 2


def _cli(*args: str, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", *args],
        input=stdin,
        capture_output=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.slow
def test_preview_messages_on_stdin_share_a_context(tmp_path):
    pasted = other_message() + b"\n" + b12_message()
    done = _cli("preview", "-", stdin=pasted, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    second = text.split("message 2:")[1]
    assert "decision: no comment" in second
    assert "reason: other_abnormal_recent" in second
    assert "vetoed by the results of: CBCMSG" in second
    assert not (tmp_path / "var").exists()  # preview keeps its context in memory
    alone = _cli("preview", "-", stdin=b12_message(), cwd=tmp_path)
    assert "decision: COMMENT" in alone.stdout.decode()
    cfg = tmp_path / "message.toml"
    cfg.write_text('[context]\nmode = "message"\n')
    each = _cli("preview", "-", "--json", "--config", str(cfg), stdin=pasted, cwd=tmp_path)
    records = [json.loads(line) for line in each.stdout.decode().splitlines()]
    assert records[1]["commented"] is True and records[1]["vetoed_by"] == []


def test_without_requisition_numbers_a_later_normal_result_does_not_hide_an_earlier_abnormal_one():
    kw = dict(orc4=None, placer="", filler="", collected="20240105083000")
    outcome = run(
        [
            other_message(ALT_HIGH, control_id="ALT-1", **kw),
            other_message(Obx(code="1742-6^ALT^LN", value="30", units="U/L", range="10-45"), control_id="ALT-2", **kw),
            b12_message(),
        ]
    )
    assert outcome.decision.reasons == ("other_abnormal_recent",)
    assert outcome.decision.vetoed_by == ("ALT-1",)


def test_a_corrected_normal_result_in_the_requisition_supersedes_the_abnormal_one():
    outcome = run(
        [
            other_message(ALT_HIGH, control_id="ALT-1"),
            other_message(
                Obx(code="1742-6^ALT^LN", value="30", units="U/L", range="10-45", status="C"), control_id="ALT-C"
            ),
            b12_message(),
        ]
    )
    assert outcome.decision.commented


def _sample_messages() -> list[bytes]:
    from paths import CORPUS, SAMPLES

    from b12comment.wire.split import iter_chunks, iter_pieces

    found = [b12_message(), other_message(), other_message(orc4=None), build(extra_pid=True)]
    for path in sorted(SAMPLES.glob("*.hl7")) + sorted(CORPUS.glob("*.hl7")):
        with open(path, "rb") as f:
            found += [p.data for p in iter_pieces(iter_chunks(f)) if p.kind == "message"]
    return found


def test_keys_are_those_of_the_extracted_rows():
    from b12comment.core.keys import keys

    messages = _sample_messages()
    assert len(messages) > 100
    # A segment's name is its first three bytes, for keys() as for extract().
    messages += [m.replace(b"\rPID|", b"\rPIDX|").replace(b"\rOBR|", b"\rOBRX|") for m in messages[:60]]
    for message in messages:
        ex, found = extract(message, RULE), keys(message, RULE)
        assert (ex is None) == (found is None)
        if ex is None or found is None:
            continue
        if ex.rows:
            assert found.patients >= {k for r in ex.rows for k in r.patient_keys}  # every PID: a superset
            assert found.requisitions == {r.requisition_key for r in ex.rows if r.requisition_key}


@pytest.mark.parametrize(
    "birth, kept",
    [
        ("19800101", False),  # an adult: their results are not read, one marker row instead
        ("20070101", True),  # 17 at collection
        ("20060101", True),  # 18 on 2024-01-01, so 17 at a B12 collected 30 days before
        ("20051201", False),  # 18 even 30 days before
        ("2006", True),  # a partial birth date: 17 or 18, in doubt kept
        ("", True),  # no birth date: kept
    ],
)
def test_rows_are_kept_for_every_patient_who_could_be_a_child_within_the_look_back(birth, kept):
    ex = extract(other_message(birth=birth, collected="20240110083000"), RULE, 30.0)
    assert ex is not None
    if kept:
        assert {r.analyte for r in ex.rows} >= {"777-3"}
    else:  # one result that cannot be judged per order, at an unknown time, for the same keys
        assert [(r.analyte, r.verdict, r.collected) for r in ex.rows] == [(ADULT_ROW, "unknown", "")]
        full = extract(other_message(birth=birth, collected="20240110083000"), RULE, 30.0, skip_adults=False)
        assert full is not None
        assert {(r.patient_keys, r.requisition_key) for r in ex.rows} == {
            (r.patient_keys, r.requisition_key) for r in full.rows
        }


@pytest.mark.parametrize("result", [ALT_HIGH, NORMAL_PLATELETS], ids=["abnormal", "normal"])
def test_a_child_b12_whose_identifier_an_adult_message_carried_gets_no_comment(result):
    """The same PID-3 identifier, with an adult's birth date in an earlier
    message: whose results are they? In doubt, no comment, whatever that
    message's results say (they are not read: an adult's message is one
    result that cannot be judged)."""
    adult = other_message(result, control_id="ADULTMSG", orc4="REQ9", birth="19800101")
    outcome = run([adult, b12_message()])
    assert not outcome.decision.commented
    assert outcome.decision.reasons == ("context_unreadable_recent",)
    assert outcome.decision.vetoed_by == ("ADULTMSG",)


def test_an_adult_message_of_another_identifier_does_not_veto():
    adult = other_message(ALT_HIGH, control_id="ADULTMSG", orc4="REQ9", birth="19800101", patient_id="9999999999^^^CPR")
    assert run([adult, b12_message()]).decision.commented


def test_an_adult_message_after_the_comment_raises_the_review_alert():
    """Its results were not read (whose are they?): as a message too large to
    read, it contradicts the patient's earlier comment."""
    store = ContextStore(":memory:", KEY)
    assert decide(store, 1, b12_message(), RULE, "patient", 30.0).decision.commented
    later = other_message(ALT_HIGH, control_id="ADULTMSG", orc4="REQ9", birth="19800101", collected="20240111083000")
    alert = decide(store, 2, later, RULE, "patient", 30.0)
    assert (alert.contradicts, alert.why) == (("B12MSG",), "results_not_read")


def test_an_adult_message_vetoes_whatever_its_own_times_say():
    """OBR-7 long before the look-back, the result itself (OBX-14) the day
    before the child's B12: an identity in doubt has no time."""
    alt = Obx(code="1742-6^ALT^LN", value="300", units="U/L", range="10-45", flags="H", obx14="20240109083000")
    adult = other_message(alt, control_id="ADULTMSG", orc4="REQ9", birth="19800101", collected="20231101083000")
    outcome = run([adult, b12_message(collected="20240110083000")])
    assert (outcome.decision.commented, outcome.decision.vetoed_by) == (False, ("ADULTMSG",))


@pytest.mark.parametrize("order", ["old_first", "new_first"])
def test_an_adult_message_of_two_orders_vetoes_in_either_order(order):
    times = ["20231101083000", "20240109083000"] if order == "old_first" else ["20240109083000", "20231101083000"]
    adult = other_message(
        NORMAL_PLATELETS,
        control_id="ADULTMSG",
        orc4="REQ8",
        birth="19800101",
        collected=times[0],
        group2=(NORMAL_PLATELETS,),
    )
    second = b"OBR|2|ORD2|FIL2|CBC^Blood count^L|||"
    adult = adult.replace(second + times[0].encode(), second + times[1].encode())
    assert second + times[1].encode() in adult
    outcome = run([adult, b12_message(collected="20240110083000")])
    assert (outcome.decision.commented, outcome.decision.vetoed_by) == (False, ("ADULTMSG",))


def test_every_adult_patient_of_a_message_keeps_a_row_with_or_without_an_order():
    """A PID with results but no OBR, then a second adult PID: both keep a row."""
    first = b"PID|1||0101169999^^^CPR||Voksen^En||19800101|M\rOBX|1|NM|1742-6^ALT^LN||300|U/L|10-45|H|||F\r"
    second = b"PID|2||0202029999^^^CPR||Voksen^To||19790101|F\rOBR|1|ORD2|FIL2|ALT^ALT^L|||20240109083000\r"
    message = b"MSH|^~\\&|LAB|HOSP|MW|HOSP|20240109120000||ORU^R01|TWOADULTS|P|2.5.1\r" + first + second
    ex = extract(message, RULE)
    assert ex is not None
    assert sorted(r.patient_keys for r in ex.rows) == [(b"0101169999\x00CPR",), (b"0202029999\x00CPR",)]
    assert {r.analyte for r in ex.rows} == {ADULT_ROW}
    outcome = run([message, b12_message(collected="20240110083000")])
    assert (outcome.decision.commented, outcome.decision.vetoed_by) == (False, ("TWOADULTS",))


def test_an_adult_patient_beside_a_child_in_one_message_is_judged_on_their_own():
    """The adult PID's results are not read (ADULT rows), the child's are."""
    message = other_message(NORMAL_PLATELETS, control_id="MIXED", orc4="REQ7", birth="19800101", extra_pid=True)
    ex = extract(message, RULE)
    assert ex is not None
    by_patient = {r.patient_keys: r.analyte for r in ex.rows if r.kind == "obx"}
    assert by_patient.get((b"0101169999\x00CPR",)) == ADULT_ROW


def test_results_the_store_cannot_read_take_a_comment_away(monkeypatch):
    """extract() gives None for a message that process() commented (it never
    should): without the message's rows the context was not looked up, so
    the comment goes."""
    import b12comment.core.chain as chain

    monkeypatch.setattr(chain, "extract", lambda *a, **k: None)
    outcome = decide(ContextStore(":memory:", KEY), 1, b12_message(), RULE, "patient", 30.0)
    assert not outcome.decision.commented
    assert outcome.decision.reasons == ("context_unavailable",)
    assert outcome.output == b12_message()


def test_hold_gauges_are_in_the_metrics():
    from b12comment.serve.metrics import Metrics

    metrics = Metrics()
    metrics.set("b12comment_held_messages", 2)
    metrics.set("b12comment_longest_hold_seconds", 12.5)
    text = metrics.render()
    assert "# TYPE b12comment_held_messages gauge\nb12comment_held_messages 2.0\n" in text
    assert "b12comment_longest_hold_seconds 12.5\n" in text


def test_a_result_message_that_fails_to_be_read_for_the_store_vetoes_as_one_not_read(monkeypatch):
    """A result we cannot read is doubt: when reading a message's results for
    the store fails part-way, its rows are one result that cannot be judged
    per requisition (found by a byte search for its keys), not nothing."""
    import b12comment.core.rows as core_rows

    def broken(*args, **kwargs):
        raise ValueError("a result this reader did not expect")

    alt = other_message(ALT_HIGH, control_id="BROKEN", orc4="REQ-B")
    monkeypatch.setattr(core_rows, "cheap_observation", broken)
    ex = extract(alt, RULE)
    assert ex is not None and ex.not_read
    assert [(r.analyte, r.verdict) for r in ex.rows] == [(NOT_READ_ROW, "unknown")]
    store = ContextStore(":memory:", KEY)
    store.add(1, ex)
    monkeypatch.undo()
    later = decide(store, 2, b12_message(orc4="REQ-OTHER"), RULE, "patient", 30.0)
    assert (later.decision.commented, later.decision.vetoed_by) == (False, ("BROKEN",))


def test_a_commented_message_whose_reading_for_the_store_fails_loses_its_comment(monkeypatch):
    import b12comment.core.rows as core_rows

    def broken(*args, **kwargs):
        raise ValueError("a result this reader did not expect")

    monkeypatch.setattr(core_rows, "cheap_observation", broken)
    outcome = decide(ContextStore(":memory:", KEY), 1, b12_message(), RULE, "patient", 30.0)
    assert (outcome.decision.commented, outcome.decision.reasons) == (False, ("context_unavailable",))
    assert outcome.output == b12_message()


def test_the_chain_reads_a_message_once_with_its_context(monkeypatch):
    """process -> context veto -> guard: the message is read once and its
    Decision finished with the context, never decided twice."""
    import b12comment.core.chain as chain

    calls = []
    real = chain.read

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chain, "read", counted)
    store = ContextStore(":memory:", KEY)
    decide(store, 1, other_message(ALT_HIGH, control_id="ALTMSG", orc4="REQ9"), RULE, "patient", 30.0)
    outcome = decide(store, 2, b12_message(), RULE, "patient", 30.0)
    assert len(calls) == 2  # one read per message
    assert (outcome.decision.commented, outcome.decision.vetoed_by) == (False, ("ALTMSG",))
    assert outcome.output == b12_message()
