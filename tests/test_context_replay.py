"""The context through `replay`: a first pass over the whole archive, then
every message decided with it (subprocesses, real files, real SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from service_helpers import subprocess_env
from test_context import ALT_HIGH, b12_message, other_message
from test_context_serve import CASES, _case_messages

from b12comment.replay.resume import RESUME_NAME

pytestmark = pytest.mark.slow


def replay(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", *args],
        capture_output=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=120,
    )


def split(data: bytes) -> dict[str, bytes]:
    """control ID -> message of an output file (one message per line block)."""
    out = {}
    for block in data.split(b"MSH|")[1:]:
        message = b"MSH|" + block
        out[message.split(b"|")[9].decode()] = message
    return out


def commented(message: bytes) -> bool:
    return b"\rNTE|1|L|" in message


def archive(tmp_path):
    """The cornerstone cases over three files, and a B12 vetoed by an ALT later in the archive."""
    src = tmp_path / "in"
    src.mkdir()
    expect: dict[str, bool] = {}
    first, second = [], []
    for index, (name, before, want) in enumerate(CASES, start=1):
        messages, b12 = _case_messages(index, name, before)
        first.extend(messages)
        second.append(b12)
        expect[f"B12-{name}"] = want
    second.append(b12_message(orc4="REQ-Z", control_id="B12-Z", patient_id="0101169997^^^CPR"))
    expect["B12-Z"] = False  # the ALT in the next file, a day later: the whole archive is the context
    third = [
        other_message(
            ALT_HIGH, orc4="REQ-W", control_id="ALT-Z", patient_id="0101169997^^^CPR", collected="20240111083000"
        )
    ]
    second.append(b12_message(orc4="REQ-Y", control_id="B12-Y", patient_id="0101169998^^^CPR"))
    expect["B12-Y"] = True
    for name, messages in (("a.hl7", first), ("b.hl7", second), ("c.hl7", third)):
        (src / name).write_bytes(b"".join(messages))
    return src, expect


def outputs(folder) -> dict[str, bytes]:
    found = {}
    for name in ("a.hl7", "b.hl7", "c.hl7"):
        found.update(split((folder / name).read_bytes()))
    return found


def test_replay_decides_with_the_whole_archive_any_workers_and_resume(tmp_path):
    src, expect = archive(tmp_path)
    out1, report = tmp_path / "out1", tmp_path / "report.json"
    done = replay(str(src), "--out", str(out1), "--workers", "1", "--report", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = outputs(out1)
    for control_id, want in expect.items():
        assert commented(got[control_id]) is want, control_id
    totals = json.loads(report.read_text())
    assert totals["context_vetoes_by_reason"] == {
        "other_abnormal_recent": 3,
        "context_unreadable_recent": 1,
        "requisition_pending": 1,
    }
    assert b"comments the patient's other results took away" in done.stderr
    assert not list(out1.glob(".b12comment-context*"))  # the first pass's store is gone
    out2 = tmp_path / "out2"
    two = replay(str(src), "--out", str(out2), "--workers", "2", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert outputs(out2) == got
    # An interrupted run: the progress record says a.hl7 was done; --resume does the rest the same.
    (out2 / "b.hl7").unlink()
    (out2 / "c.hl7").unlink()
    progress = (out2 / RESUME_NAME).read_text().splitlines()
    (out2 / RESUME_NAME).write_text("\n".join(progress[:2]) + "\n")
    resumed = replay(str(src), "--out", str(out2), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(out2) == got


def test_context_window_days_and_message_mode(tmp_path):
    src, expect = archive(tmp_path)
    wide = tmp_path / "wide"
    done = replay(str(src), "--out", str(wide), "--context-window-days", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not commented(outputs(wide)["B12-other_requisition_40_days_before"])
    cfg = tmp_path / "message.toml"
    cfg.write_text('[context]\nmode = "message"\n')
    alone = tmp_path / "alone"
    done = replay(str(src), "--out", str(alone), "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(commented(m) for cid, m in outputs(alone).items() if cid.startswith("B12-"))
    bad = replay(str(src), "--dry-run", "--context-window-days", "0", cwd=tmp_path)
    assert bad.returncode == 2
    assert b"--context-window-days must be a number of days above 0" in bad.stderr


def test_replay_forward_with_context(tmp_path):
    src, expect = archive(tmp_path)
    drop = tmp_path / "drop"
    done = replay(str(src), "--forward", f"dir:{drop}", "--journal", str(tmp_path / "j.sqlite3"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    delivered = {}
    for f in drop.iterdir():
        if not f.name.startswith("."):
            delivered.update(split(f.read_bytes()))
    for control_id, want in expect.items():
        assert commented(delivered[control_id]) is want, control_id


def test_replay_takes_the_comment_away_when_the_message_cannot_be_read_for_its_context(tmp_path, monkeypatch):
    """As in serve: a message that would get the comment, whose context must
    be looked up (another message shares its keys), but whose rows cannot be
    read (extract gives None: it never should), gets no comment."""
    import b12comment.core.chain as chain
    import b12comment.replay.first_pass as replay_context
    from b12comment.core.rule_config import RuleConfig

    rule = RuleConfig()
    src = tmp_path / "a.hl7"
    b12 = b12_message()
    src.write_bytes(other_message(orc4="REQ-OTHER", collected="20231101083000") + b12)
    ctx = replay_context.build(tmp_path / "ctx.sqlite3", [str(src)], [rule], "patient", 30.0)
    reader = replay_context.Reader(ctx)
    try:
        assert reader.decide(0, 2, b12, rule).decision.commented  # 40 days before: a comment
        monkeypatch.setattr(chain, "extract", lambda *a, **k: None)
        outcome = reader.decide(0, 2, b12, rule)
    finally:
        reader.close()
    assert not outcome.decision.commented
    assert outcome.decision.reasons == ("context_unavailable",)
    assert outcome.output == b12
