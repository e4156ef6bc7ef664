"""Cornerstones: an earlier B12 of the same child, and a B12 corrected after
its comment went out. Messages are written out byte for byte; the expected
output is the input itself (no comment) or the input plus the comment line
written out here, so the expected bytes do not come from the product."""

from __future__ import annotations

from b12comment.context import ContextStore
from b12comment.core.chain import decide
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig(language="en")
KEY = b"k" * 32
NTE = (
    b"NTE|1|L|Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    b"significance: when B12 (however high) is the only abnormal biochemical finding, it needs no "
    b"concern and no further investigation, not even a repeat B12 measurement. "
    b"(Automatic comment, b12comment rule b12-paed-2)|RE\r"
)


def b12(control_id: str, req: str, when: str, value: str, flag: str, status: str = "F") -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|{when}||ORU^R01|{control_id}|P|2.5.1\r"
        "PID|1||0101150000^^^CPR||Doe^Kim||20150101|F\r"
        f"ORC|RE|{req}|F{req}||CM\r"
        f"OBR|1|{req}|F{req}|B12^B12^L|||{when}|||||||||||||||||F\r"
        f"OBX|1|NM|NPU01700^P-Cobalamin^IUPP||{value}|pmol/L|250-900|{flag}|||{status}|||{when}\r"
    ).encode("ascii")


def run(*messages: bytes):
    store = ContextStore(":memory:", KEY)
    return [decide(store, i, m, RULE, "patient", 30.0) for i, m in enumerate(messages, start=1)]


def test_an_earlier_low_b12_vetoes_a_later_elevated_one():
    low = b12("LOW1", "REQ-A", "20261101083000", "95", "L")
    high = b12("HIGH1", "REQ-B", "20261122083000", "1350", "H")  # three weeks later
    first, second = run(low, high)
    assert (first.output, second.output) == (low, high)
    assert second.decision.reasons == ("other_abnormal_recent",)
    assert second.decision.vetoed_by == ("LOW1",)


def test_an_earlier_b12_below_its_range_without_a_flag_vetoes_too():
    low = b12("LOW2", "REQ-A", "20261101083000", "180", "")
    high = b12("HIGH2", "REQ-B", "20261122083000", "1350", "H")
    _, second = run(low, high)
    assert (second.output, second.decision.reasons) == (high, ("other_abnormal_recent",))


def test_a_repeat_elevated_b12_does_not_veto():
    earlier = b12("HIGH0", "REQ-A", "20261101083000", "1200", "H")
    high = b12("HIGH3", "REQ-B", "20261122083000", "1350", "H")
    first, second = run(earlier, high)
    assert (first.output, second.output) == (earlier + NTE, high + NTE)


def test_a_low_b12_outside_the_look_back_does_not_veto():
    low = b12("LOW3", "REQ-A", "20260901083000", "95", "L")
    high = b12("HIGH4", "REQ-B", "20261122083000", "1350", "H")
    _, second = run(low, high)
    assert second.output == high + NTE


def test_a_b12_corrected_after_its_comment_raises_the_review_alert():
    high = b12("HIGH5", "REQ-A", "20261101083000", "1350", "H")
    corrected = b12("CORR5", "REQ-A", "20261101083000", "600", "", status="C")
    first, second = run(high, corrected)
    assert first.output == high + NTE
    assert second.output == corrected
    assert (second.contradicts, second.why) == (("HIGH5",), "corrected_b12")


def test_replays_report_lists_a_b12_corrected_after_its_comment(tmp_path):
    """The same two messages as an archive: the comment goes out on the
    first, and the report's review list names it and the correction."""
    import json
    import subprocess
    import sys

    from service_helpers import subprocess_env

    high = b12("HIGH6", "REQ-A", "20261101083000", "1350", "H")
    corrected = b12("CORR6", "REQ-A", "20261101083000", "600", "", status="C")
    other = b12("HIGH7", "REQ-Q", "20261101083000", "1350", "H").replace(b"0101150000", b"0202150000")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.hl7").write_bytes(high + other)
    (src / "b.hl7").write_bytes(corrected)
    config = tmp_path / "config.toml"
    config.write_text('[rule]\nlanguage = "en"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "b12comment",
            "replay",
            str(src),
            "--config",
            str(config),
            "--dry-run",
            "--report",
            str(tmp_path / "report.json"),
            "--quiet",
        ],
        capture_output=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["commented"] == 2
    assert report["comments_contradicted"] == 1
    assert report["contradicted_comments"] == [
        {"file": "a.hl7", "message": 1, "control_id": "HIGH6", "contradicted_by": "CORR6", "why": "corrected_b12"}
    ]
