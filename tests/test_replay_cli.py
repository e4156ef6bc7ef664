"""`b12comment replay` and `preview` as real subprocesses on real files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from paths import SAMPLES, corpus_files

from b12comment.wire.split import iter_pieces, split_messages


def run(*args, input=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "b12comment", *args], capture_output=True, input=input, timeout=120, cwd=cwd
    )


@pytest.mark.promise
def test_replay_corpus_byte_identical_and_malformed_counted(corpus_dir, tmp_path):
    out, report, log_file = tmp_path / "out", tmp_path / "report.json", tmp_path / "decisions.jsonl"
    proc = run("replay", str(corpus_dir), "--out", str(out), "--report", str(report), "--log-file", str(log_file))
    assert proc.returncode == 0, proc.stderr.decode()
    for src in corpus_files():  # the file with no MSH at all is copied through too
        assert (out / src.name).read_bytes() == src.read_bytes(), src.name
    totals = json.loads(report.read_text())
    assert totals["files"] == 139
    expected_messages = sum(1 for f in corpus_files() for p in split_messages(f.read_bytes()) if p.kind == "message")
    assert totals["messages"] == expected_messages
    assert totals["commented"] == 0
    assert totals["malformed"] == len(totals["malformed_positions"]) >= 4
    assert sum(totals["not_commented_by_reason"].values()) == expected_messages
    assert totals["files_without_hl7"] == ["pythonhl7_7.hl7"]  # the file with no MSH at all
    assert totals["files_without_hl7_output"] == "copied unchanged"
    # the terminal gets no decision records; the log file one per message, no patient data in them
    assert '"decision"' not in proc.stderr.decode("utf-8", "replace")
    records = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert len(records) == expected_messages
    assert set(records[0]) == {
        "event",
        "file",
        "message",
        "control_id",
        "message_type",
        "commented",
        "reasons",
        "rule_version",
    }
    assert sorted((r["file"], r["message"]) for r in records) == sorted(
        (f.name, i + 1)
        for f in corpus_files()
        for i in range(sum(1 for p in split_messages(f.read_bytes()) if p.kind == "message"))
    )
    # control IDs (MSH-10) belong in the log; some test senders reuse a patient ID as one
    log = re.sub(r'"(control_id|timestamp)": "[^"]*"', "", log_file.read_text(encoding="utf-8"))
    identifiers = patient_identifiers(corpus_files())
    assert len(identifiers) > 50
    leaked = sorted(i for i in identifiers if i in log)
    assert leaked == [], leaked


def patient_identifiers(paths) -> set[str]:
    """Family names, given names, patient IDs and birth dates of every PID."""
    found = set()
    for path in paths:
        for line in path.read_bytes().decode("latin-1").replace("\n", "\r").split("\r"):
            if not line.startswith("PID") or len(line) < 4:
                continue
            fields = line.split(line[3])
            for n, comps in ((3, (0,)), (5, (0, 1)), (7, (0,))):
                if len(fields) > n:
                    parts = fields[n].split("~")[0].split("^")
                    for k in comps:
                        if k < len(parts) and len(parts[k].strip()) >= 5:
                            found.add(parts[k].strip())
    return found


def test_replay_samples_layout_and_report(tmp_path):
    src = tmp_path / "in"
    (src / "night").mkdir(parents=True)
    for f in SAMPLES.glob("*.hl7"):
        (src / "night" / f.name).write_bytes(f.read_bytes())
    lf = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes().replace(b"\r", b"\n")
    (src / "lf.hl7").write_bytes(lf)
    out, report = tmp_path / "out", tmp_path / "r.json"
    proc = run("replay", str(src), "--out", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr.decode()
    totals = json.loads(report.read_text())
    assert totals["files"] == 9
    assert totals["paediatric_b12_results"] == 9 and totals["paediatric_b12_commented"] == 6
    assert totals["commented"] == 6  # 4 single samples + 1 in the batch + the LF copy
    assert totals["not_commented_by_reason"] == {
        "adult": 1,
        "not_elevated": 1,
        "not_oru": 1,
        "other_abnormal": 1,
        "status_not_final": 1,
    }
    # LF file: the inserted NTE ends with \n like its neighbours, and nothing else changed
    got = (out / "lf.hl7").read_bytes()
    assert b"\r" not in got
    nte = [line for line in got.split(b"\n") if line.startswith(b"NTE|")]
    assert len(nte) == 1
    assert got.replace(nte[0] + b"\n", b"") == lf
    # batch file: header and trailer kept, CRLF kept
    batch_in = (SAMPLES / "night_batch_crlf.hl7").read_bytes()
    batch_out = (out / "night" / "night_batch_crlf.hl7").read_bytes()
    assert batch_out.startswith(b"FHS|") and batch_out.endswith(b"BTS|3\r\nFTS|1\r\n")
    added = [line for line in batch_out.split(b"\r\n") if line.startswith(b"NTE|")]
    assert len(added) == 1
    assert batch_out.replace(added[0] + b"\r\n", b"") == batch_in


@pytest.mark.promise
def test_replay_is_idempotent(tmp_path):
    first, second = tmp_path / "1", tmp_path / "2"
    assert run("replay", str(SAMPLES), "--out", str(first)).returncode == 0
    assert run("replay", str(first), "--out", str(second)).returncode == 0
    once = {f.relative_to(first): f.read_bytes() for f in first.rglob("*.hl7")}
    twice = {f.relative_to(second): f.read_bytes() for f in second.rglob("*.hl7")}
    assert once and twice == once
    # the first run did comment something: the second had a comment to keep
    assert any(data != (SAMPLES / rel).read_bytes() for rel, data in once.items())


def test_replay_single_file_and_missing_input(tmp_path):
    sample = SAMPLES / "adult_high_b12.hl7"
    proc = run("replay", str(sample), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0
    assert (tmp_path / "o" / "adult_high_b12.hl7").read_bytes() == sample.read_bytes()
    proc = run("replay", str(tmp_path / "missing.hl7"), "--out", str(tmp_path / "o2"))
    assert proc.returncode == 2
    assert b"input not found" in proc.stderr and b"Traceback" not in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_replay_unwritable_output_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run("replay", str(SAMPLES / "adult_high_b12.hl7"), "--out", str(blocker))
    assert proc.returncode == 1
    assert b"Traceback" not in proc.stderr
    assert str(blocker).encode() in proc.stderr  # the line names what could not be written
    assert blocker.read_text() == "not a folder"  # and nothing was written over it


def test_preview_text_explains_and_shows_diff():
    proc = run("preview", str(SAMPLES / "child_isolated_high_b12.hl7"))
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "decision: COMMENT" in text
    assert "age 11 y, value 1350 pmol/L, limit 900 pmol/L (range), decided by flag -> comment" in text
    assert "+NTE|1|L|Isoleret forhøjet B12" in text
    assert "--- original" in text and "+++ processed" in text


def test_preview_json_from_stdin_with_reasons():
    data = (SAMPLES / "night_batch_crlf.hl7").read_bytes()
    proc = run("preview", "-", "--json", input=data)
    assert proc.returncode == 0
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [(r["control_id"], r["commented"], r["reasons"]) for r in records] == [
        ("S010", True, []),
        ("S011", False, ["not_elevated"]),
        ("S012", False, ["status_not_final"]),
    ]
    assert "NTE|1|L|" in records[0]["output"] and "NTE|" not in records[1]["output"]


def test_preview_reports_input_without_messages(tmp_path):
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"just text\n")
    proc = run("preview", str(empty))
    assert proc.returncode == 1
    assert b"no HL7 message" in proc.stderr


def test_stream_pieces_rejoin_exactly_across_chunk_edges():
    data = (SAMPLES / "night_batch_crlf.hl7").read_bytes() + b"\n\ntrailing junk\r"
    for size in (1, 2, 3, 7, 64):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        pieces = list(iter_pieces(chunks))
        assert b"".join(p.data for p in pieces) == data
        assert [p.kind for p in pieces].count("message") == 3


def test_default_workers_is_the_cores_capped_at_three():
    """The default stays under 150 MB: about 30 MB per worker beside the main
    process's 36 MB (bench/README.md), so at most three by default."""
    import os

    from b12comment.cli import MAX_DEFAULT_WORKERS, _parser, default_workers

    assert MAX_DEFAULT_WORKERS == 3
    assert default_workers() == max(1, min(os.cpu_count() or 1, 3))
    args = _parser().parse_args(["replay", "in", "--out", "out"])
    assert args.workers == default_workers()


def test_replay_without_audit_loads_no_audit_store_nor_worker_pool(tmp_path):
    """Start-up: a replay without --audit (one worker) never imports the audit
    store or multiprocessing (the audit tests run replay with --audit), nor
    structlog (only --forward logs)."""
    script = (
        "import sys\n"
        "from b12comment.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, 'b12comment.audit' in sys.modules, 'multiprocessing' in sys.modules, "
        "'structlog' in sys.modules)\n"
    )
    src = SAMPLES / "child_b12_pg_per_ml_latin1.hl7"
    got = subprocess.run(
        [sys.executable, "-c", script, "replay", "--quiet", str(src), "--out", str(tmp_path / "out")],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    # structlog neither: nothing in a replay to files logs (so nothing can log unscrubbed)
    assert got.stdout.split()[-4:] == ["0", "False", "False", "False"], got.stdout
    assert (tmp_path / "out" / src.name).read_bytes().startswith(src.read_bytes()[:8])
