"""Cornerstones of "right on real feeds": lines that are no finding never
silence the comment, HL7 escapes are read as the text they stand for, the
common normal answers are normal, and the lab's silence is a named setting.

Expected bytes are written here from the guideline and HL7 v2 (chapter 2:
escape sequences; chapter 7: OBX-2 value types), with tests/builders.py
writing the commented message again with the comment NTE in place; nothing
is taken from the product. Facts: ../shared/clinical-facts.md.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from builders import Obx, build

from b12comment.config import load_config
from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig()
DA = (
    "Isoleret forhøjet B12 hos børn og unge under 18 år har ingen klinisk betydning: "
    "når B12 (uanset hvor højt) er det eneste abnorme biokemiske fund, skal det ikke "
    "give anledning til bekymring eller yderligere undersøgelser, heller ikke kontrol af B12. "
    "(Automatisk kommentar, b12comment regel b12-paed-2)"
)


def message(*others: Obx, **kw) -> bytes:
    kw.setdefault("charset", "8859/1")
    return build(others=others, **kw)


def commented(*others: Obx, **kw) -> bytes:
    """The same message as the product must forward it: the comment NTE right
    after the B12 OBX (set ID 1, source L, type RE)."""
    kw.setdefault("charset", "8859/1")
    return build(others=others, ntes=(("1", DA, "RE"),), **kw)


def assert_commented(others: tuple[Obx, ...], rule: RuleConfig = RULE, **kw) -> None:
    out, decision = process(message(*others, **kw), rule)
    assert decision.reasons == ()
    assert out == commented(*others, **kw)


def assert_silent(others: tuple[Obx, ...], reasons: tuple[str, ...], rule: RuleConfig = RULE, **kw) -> None:
    original = message(*others, **kw)
    out, decision = process(original, rule)
    assert (out, decision.commented, decision.reasons) == (original, False, reasons)


# ---------------------------------------------------------------------------
# Values that are no finding (HL7 v2 OBX-2 value types; clinical-facts:
# "Lines that are no finding at all are not results to judge: dates and
# times, people, addresses and phone numbers").

NO_FINDING = [
    ("DT", "RETURN VISIT DATE", "20240201"),
    ("DTM", "Time of last dose", "202401091200+0100"),
    ("TS", "Specimen received", "20240110091500"),
    ("TM", "Time of sampling", "0830"),
    ("XCN", "Signed by", "1234^Jensen^Hanne^^^Dr"),
    ("XPN", "Mother's name", "Hansen^Mette"),
    ("XAD", "Return address", "Lyngvej 2^^Aarhus^^8000^DK"),
    ("XTN", "Call back", "^WPN^PH^^45^86123456"),
    ("TN", "Telephone", "(45)86123456"),
]


@pytest.mark.parametrize("vtype, name, value", NO_FINDING, ids=[row[0] for row in NO_FINDING])
def test_a_line_that_is_no_finding_never_silences_the_comment(vtype, name, value):
    line = Obx(code=f"X{vtype}^{name}^L", vtype=vtype, value=value, units="", range="")
    assert_commented((line,))
    # beside an abnormal result it changes nothing either
    low = Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")
    assert_silent((line, low), ("other_abnormal",))


def test_an_embedded_report_is_doubt_unless_the_site_lists_it():
    report = Obx(code="PDF^Report^L", vtype="ED", value="LAB^AP^PDF^Base64^JVBERi0=", units="", range="")
    assert_silent((report,), ("context_unreadable",))
    site = dataclasses.replace(RULE, no_finding_types=(*RULE.no_finding_types, "ED"))
    assert_commented((report,), site)


def test_no_finding_types_are_a_setting_with_the_hl7_defaults(tmp_path):
    assert RULE.no_finding_types == ("DT", "DTM", "TS", "TM", "XCN", "XPN", "XAD", "XTN", "TN")
    path = tmp_path / "site.toml"
    path.write_text('[rule]\nno_finding_types = ["DT", "ED"]\n')
    assert load_config(path).rule.no_finding_types == ("DT", "ED")
    path.write_text('[rule]\nno_finding_types = ["NM"]\n')
    with pytest.raises(Exception, match="no_finding_types"):
        load_config(path)  # a number is always a result to judge


# ---------------------------------------------------------------------------
# HL7 escapes (HL7 v2 chapter 2.7: \F\ field, \S\ component, \T\
# subcomponent, \R\ repetition, \E\ escape, \Xhh..\ hexadecimal data) are
# text: read a value, a unit or a range only after decoding them.

PLATELETS_ESCAPED = Obx(code="777-3^Platelets^LN", value="250", units="10\\S\\9/l", range="145-390 10\\S\\9/l")


def test_an_escaped_unit_and_range_are_read():
    assert_commented((PLATELETS_ESCAPED,))
    low = dataclasses.replace(PLATELETS_ESCAPED, value="30")  # no flag: outside the range read from it
    assert_silent((low,), ("other_abnormal",))


def test_escapes_are_decoded_with_the_messages_own_delimiters():
    # The same platelet count in a message whose escape character is `!`
    # and component separator `*` (the builder writes \ as ! and ^ as *).
    kw = dict(fs="|", enc="*~!&")
    assert_commented((PLATELETS_ESCAPED,), **kw)
    assert_silent((dataclasses.replace(PLATELETS_ESCAPED, value="30"),), ("other_abnormal",), **kw)


@pytest.mark.parametrize(
    "value, charset",
    [
        ("Ikke p\\XE5\\vist", "8859/1"),  # å in ISO 8859-1
        ("Ikke p\\XC3A5\\vist", "UNICODE UTF-8"),  # å in UTF-8
        ("Ingen v\\XE6\\kst", "8859/1"),
        ("\\X4E\\egativ", "8859/1"),
    ],
)
def test_hexadecimal_escapes_are_read_in_the_messages_character_set(value, charset):
    answer = Obx(code="X1^Culture^L", vtype="ST", value=value, units="", range="")
    original = build(others=(answer,), charset=charset)
    out, decision = process(original, RULE)
    assert decision.reasons == ()
    assert out == build(others=(answer,), charset=charset, ntes=(("1", DA, "RE"),))


def test_a_decoded_escape_is_text_never_a_delimiter():
    # `10\T\20` is the text "10&20", not a subcomponent: no range this
    # grammar knows, so the result cannot be judged.
    odd = Obx(code="X2^Odd^L", value="15", units="U/L", range="10\\T\\20")
    assert_silent((odd,), ("context_unreadable",))
    # `\E\` is one backslash: "Normal\" is not "Normal"
    assert_silent((Obx(code="X3^T^L", vtype="ST", value="Normal\\E\\", units="", range=""),), ("context_unreadable",))


# ---------------------------------------------------------------------------
# Normal answers (LOINC answer lists; Danish forms). Negative LA6577-6 and
# Not detected LA11883-8 are LOINC answer codes (e.g. the answer lists of
# SARS-CoV-2 and HIV tests); the other answers are listed by their text.

NORMAL_ANSWERS = [
    ("CWE", "LA6577-6^Negative^LN"),
    ("CWE", "LA11883-8^Not detected^LN"),
    ("CE", "NEG^Negative^L"),
    ("ST", "Negative"),
    ("ST", "Not detected"),
    ("ST", "No growth"),
    ("ST", "Nonreactive"),
    ("ST", "Non-reactive"),
    ("ST", "None seen"),
    ("ST", "Specimen acceptable"),
    ("ST", "Negativ"),
    ("ST", "Ikke påvist"),
    ("ST", "Ingen vækst"),
    ("ST", "INGEN VÆKST."),
]


@pytest.mark.parametrize("vtype, value", NORMAL_ANSWERS)
def test_a_normal_answer_is_a_normal_result(vtype, value):
    answer = Obx(code="600-7^Bacteria identified^LN", vtype=vtype, value=value, units="", range="")
    assert_commented((answer,))


@pytest.mark.parametrize("value", ["Positive", "Detected", "Growth", "Reactive", "Påvist", "Vækst"])
def test_a_finding_is_never_a_normal_answer(value):
    answer = Obx(code="600-7^Bacteria identified^LN", vtype="ST", value=value, units="", range="")
    assert_silent((answer,), ("context_unreadable",))


# ---------------------------------------------------------------------------
# The lab's silence: an unflagged number without a range.

UNRANGED = Obx(code="2345-7^Glucose^LN", value="5.2", units="mmol/L", range="")


def test_the_labs_silence_is_normal_by_default_and_counted():
    assert RULE.unflagged_unranged == "normal"
    assert_commented((UNRANGED,))
    _, decision = process(message(UNRANGED), RULE)
    assert decision.results[0].unflagged_unranged == (2,)  # the glucose is OBX 2, judged normal by silence
    _, decision = process(message(Obx()), RULE)  # a ranged sodium relies on nothing
    assert decision.results[0].unflagged_unranged == ()


def test_a_site_may_make_the_labs_silence_doubt(tmp_path):
    doubt = dataclasses.replace(RULE, unflagged_unranged="doubt")
    assert_silent((UNRANGED,), ("context_unreadable",), doubt)
    assert_commented((Obx(),), doubt)  # a number with a range is still judged by it
    assert_commented((dataclasses.replace(UNRANGED, flags="N"),), doubt)  # the lab said normal
    path = tmp_path / "site.toml"
    path.write_text('[rule]\nunflagged_unranged = "doubt"\n')
    assert load_config(path).rule.unflagged_unranged == "doubt"
    path.write_text('[rule]\nunflagged_unranged = "maybe"\n')
    with pytest.raises(Exception, match="unflagged_unranged"):
        load_config(path)


def test_the_replay_report_counts_the_comments_that_relied_on_the_labs_silence(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "silent.hl7").write_bytes(message(UNRANGED, control_id="S1"))
    (src / "ranged.hl7").write_bytes(message(Obx(), control_id="S2"))
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", "--dry-run", "--quiet", str(src)]
        + ["--report", str(report), "--html", str(html)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    totals = json.loads(report.read_text())
    assert (totals["paediatric_b12_commented"], totals["paediatric_b12_commented_unflagged_unranged"]) == (2, 1)
    assert "relied on the lab&#x27;s silence" in html.read_text()


# ---------------------------------------------------------------------------
# A requisition is its patient's (placer order numbers are unique only within
# the placer's own system; GP systems number their own): the same number
# under two patients is two requisitions, and a namespace given with the
# number (ORC-4 / OBR-2 as EI: number ^ namespace) tells two systems apart.

LOW_PLATELETS = Obx(code="777-3^Platelets^LN", value="30", units="10*9/L", range="150-400", flags="L")
PATIENT_A, PATIENT_B = "0101169999^^^CPR", "0202029999^^^CPR"


def _in_context(messages: list[bytes], mode: str):
    from b12comment.context import ContextStore
    from b12comment.core.chain import decide

    store = ContextStore(":memory:", bytes(range(32)))
    outcome = None
    for seq, m in enumerate(messages, start=1):
        outcome = decide(store, seq, m, RULE, mode, 30.0)
    assert outcome is not None
    return outcome


def _count(patient: str, orc4: str) -> bytes:
    return build(
        with_b12=False,
        others=(LOW_PLATELETS,),
        patient_id=patient,
        orc4=orc4,
        placer="ORD0",
        filler="FIL0",
        control_id="CBC",
        service="CBC^Blood count^L",
    )


@pytest.mark.parametrize("mode", ["requisition", "patient"])
def test_two_patients_sharing_a_placer_number_never_veto_each_other(mode):
    b12_of_a = message(patient_id=PATIENT_A, orc4="REQ1", control_id="B12")
    outcome = _in_context([_count(PATIENT_B, "REQ1"), b12_of_a], mode)
    assert (outcome.decision.reasons, outcome.output) == (
        (),
        commented(patient_id=PATIENT_A, orc4="REQ1", control_id="B12"),
    )
    # the same patient's requisition still vetoes
    outcome = _in_context([_count(PATIENT_A, "REQ1"), b12_of_a], mode)
    assert (outcome.decision.reasons, outcome.output) == (("other_abnormal_recent",), b12_of_a)


def test_a_placer_number_of_another_namespace_is_another_requisition():
    b12_of_a = message(patient_id=PATIENT_A, orc4="REQ1^GPSYS1", control_id="B12")
    outcome = _in_context([_count(PATIENT_A, "REQ1^GPSYS2"), b12_of_a], "requisition")
    assert outcome.decision.reasons == ()
    outcome = _in_context([_count(PATIENT_A, "REQ1^GPSYS1"), b12_of_a], "requisition")
    assert outcome.decision.reasons == ("other_abnormal_recent",)


# ---------------------------------------------------------------------------
# Reasons say what happened, and the Decision names what kept the comment
# away: for each blocking result its OBX number, code (system, display
# text), value type, verdict and, from the look-back, its time and message.
# Never a patient field; never a free-text value.

UNREADABLE_TEXT = Obx(code="5778-6^Color of Urine^LN", vtype="ST", value="Lysegul", units="", range="")
PENDING_ALT = Obx(code="1742-6^ALT^LN", value="", units="U/L", range="10-45", status="P")
LOW_HB = Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")


def _earlier(result: Obx, **kw) -> bytes:
    """Another requisition of patient A, three days before the B12."""
    return build(
        with_b12=False,
        others=(result,),
        patient_id=PATIENT_A,
        orc4="REQ0",
        placer="ORD0",
        filler="FIL0",
        control_id="EARLIER",
        service="X^Other^L",
        collected="20240107083000",
        **kw,
    )


@pytest.mark.parametrize(
    "result, reason",
    [
        (LOW_HB, "other_abnormal_recent"),
        (UNREADABLE_TEXT, "context_unreadable_recent"),
        (PENDING_ALT, "context_pending_recent"),
    ],
)
def test_an_earlier_result_gives_the_reason_of_what_it_is(result, reason):
    b12_of_a = message(patient_id=PATIENT_A, orc4="REQ1", control_id="B12")
    outcome = _in_context([_earlier(result), b12_of_a], "patient")
    assert (outcome.decision.reasons, outcome.output) == ((reason,), b12_of_a)


def _blockers(decision) -> list[dict]:
    return [dict(b) for b in decision.as_dict()["results"][0]["blockers"]]


def test_the_decision_names_the_results_of_the_message_that_kept_the_comment_away():
    free_text = Obx(code="X9^Comment^L", vtype="TX", value="Patient Hansen seen", units="", range="")
    _, decision = process(message(LOW_HB, UNREADABLE_TEXT, PENDING_ALT, free_text, Obx()), RULE)
    assert decision.reasons == ("other_abnormal", "context_unreadable", "context_pending")
    common = dict(source="message", collected="", control_id="")
    assert _blockers(decision) == [
        dict(common, obx=2, code="718-7", system="LN", display="Hemoglobin", value_type="NM", verdict="abnormal")
        | {"value": "6.1"},
        dict(common, obx=3, code="5778-6", system="LN", display="Color of Urine", value_type="ST")
        | {"verdict": "cannot be judged", "value": "Lysegul"},
        dict(common, obx=4, code="1742-6", system="LN", display="ALT", value_type="NM", verdict="pending", value=""),
        dict(common, obx=5, code="X9", system="L", display="Comment", value_type="TX")
        | {"verdict": "cannot be judged", "value": ""},  # free text: never its value
    ]
    assert "Hansen" not in str(decision.as_dict()) and "Testesen" not in str(decision.as_dict())


def test_the_decision_names_the_earlier_result_and_its_time():
    b12_of_a = message(patient_id=PATIENT_A, orc4="REQ1", control_id="B12")
    outcome = _in_context([_earlier(LOW_HB), b12_of_a], "patient")
    assert _blockers(outcome.decision) == [
        dict(source="look-back", obx=1, code="718-7", system="LN", display="Hemoglobin", value_type="NM")
        | dict(verdict="abnormal", value="", collected="20240107083000", control_id="EARLIER")
    ]


def test_preview_shows_what_kept_the_comment_away(tmp_path):
    path = tmp_path / "m.hl7"
    path.write_bytes(message(LOW_HB))
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "preview", str(path)], capture_output=True, timeout=60, check=True
    )
    text = proc.stdout.decode()
    assert "kept away by: OBX 2, 718-7 (LN, Hemoglobin), NM, abnormal, value 6.1" in text
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "preview", "--json", str(path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    record = json.loads(proc.stdout.decode().splitlines()[0])
    assert record["results"][0]["blockers"][0]["display"] == "Hemoglobin"


def test_a_store_of_an_earlier_version_gains_the_columns_that_name_a_blocker(tmp_path):
    import sqlite3

    from b12comment.context import ContextStore
    from b12comment.core.chain import decide

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE results (seq INTEGER NOT NULL, row_index INTEGER NOT NULL, patient BLOB NOT NULL, "
        "requisition BLOB NOT NULL, kind TEXT NOT NULL, analyte TEXT NOT NULL, is_b12 INTEGER NOT NULL, "
        "verdict TEXT NOT NULL, status TEXT NOT NULL, order_status TEXT NOT NULL, collected TEXT NOT NULL, "
        "control_id TEXT NOT NULL, stored_at REAL NOT NULL, PRIMARY KEY (seq, row_index, patient)) WITHOUT ROWID"
    )
    db.commit()
    db.close()
    store = ContextStore(path, bytes(range(32)))
    decide(store, 1, _earlier(LOW_HB), RULE, "patient", 30.0)
    outcome = decide(store, 2, message(patient_id=PATIENT_A, orc4="REQ1", control_id="B12"), RULE, "patient", 30.0)
    store.close()
    assert [b["display"] for b in _blockers(outcome.decision)] == ["Hemoglobin"]


# ---------------------------------------------------------------------------
# The calibration table: what kept comments away, per code, and lines a lab
# pastes into its configuration. Never free text, never a patient field.

QUESTION = Obx(code="Q1^Pregnant^L", vtype="CWE", value="N^No^HL70136", units="", range="")
NOTE = Obx(code="X9^Comment^L", vtype="TX", value="Seen by Hansen", units="", range="")


def test_the_replay_report_names_what_kept_comments_away_and_what_to_configure(tmp_path):
    import tomllib

    src = tmp_path / "in"
    src.mkdir()
    for n in range(4):
        (src / f"a{n}.hl7").write_bytes(message(QUESTION, control_id=f"A{n}"))
    (src / "b.hl7").write_bytes(message(QUESTION, NOTE, control_id="B"))
    (src / "c.hl7").write_bytes(message(LOW_HB, control_id="C"))
    (src / "d.hl7").write_bytes(message(LOW_HB, value="500", control_id="D"))  # not elevated: nothing kept away
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", "--dry-run", "--quiet", str(src)]
        + ["--report", str(report), "--html", str(html)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    table = json.loads(report.read_text())["what_kept_comments_away"]
    assert table["rows"] == [
        dict(system="L", code="Q1", display="Pregnant", value_type="CWE", verdict="cannot be judged")
        | dict(blocked=5, values={"N^No": 5}),
        dict(system="L", code="X9", display="Comment", value_type="TX", verdict="cannot be judged")
        | dict(blocked=1, values={}),  # free text: never a value
        dict(system="LN", code="718-7", display="Hemoglobin", value_type="NM", verdict="abnormal")
        | dict(blocked=1, values={"(values seen fewer than 5 times)": 1}),  # rare values: counted, not shown
    ]
    defaults = [
        "Normal",
        "Negative",
        "LA6577-6",
        "Not detected",
        "LA11883-8",
        "No growth",
        "Nonreactive",
        "Non-reactive",
        "None seen",
        "Specimen acceptable",
        "Negativ",
        "Ikke påvist",
        "Ingen vækst",
    ]
    assert table["ignored_codes"] == (
        "ignored_codes = [\n"
        '    # "Q1",  # Pregnant (CWE, L): kept 5 comments away; values N^No (5)\n'
        '    # "X9",  # Comment (TX, L): kept 1 comment away\n'
        "]"
    )
    assert table["normal_texts"] == (
        "normal_texts = [\n"
        + "".join(f'    "{t}",\n' for t in defaults)
        + '    # "N",  # N^No of Q1 Pregnant (CWE): 5 times\n'
        "]"
    )
    # pasted as they are, they change nothing: the suggestions are commented out
    pasted = tomllib.loads(table["ignored_codes"] + "\n" + table["normal_texts"])
    assert pasted == {"ignored_codes": [], "normal_texts": defaults}
    page = html.read_text()
    assert "What kept comments away" in page and "# &quot;Q1&quot;," in page
    for private in ("Hansen", "Testesen", "0101169999"):
        assert private not in report.read_text() and private not in page


def test_the_decision_names_an_order_of_the_message_not_finished():
    # A liver panel ordered with the B12, not finished (OBR-25 P, no results yet): it is named.
    _, decision = process(message(extra_orders=("P",)), RULE)
    assert decision.reasons == ("context_pending",)
    assert _blockers(decision) == [
        dict(source="message", obx=0, code="LIV", system="L", display="Liver panel", value_type="OBR")
        | dict(verdict="pending", value="", collected="", control_id="")
    ]
