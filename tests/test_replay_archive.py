"""Replay at archive scale: gzip, MLLP captures, batches, bad files, resume
after SIGKILL, workers, rule shadowing, memory. Real files, real processes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import SAMPLES

CHILD = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
ADULT = (SAMPLES / "adult_high_b12.hl7").read_bytes()
ADT = (SAMPLES / "adt_a01_child.hl7").read_bytes()
TIMING = ("elapsed_s", "messages_per_s", "provenance")  # when and how fast it ran, and where it wrote


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", *map(str, args)], capture_output=True, timeout=timeout
    )


def numbered(message: bytes, n: int) -> bytes:
    """The message with its control ID made unique."""
    fields = message.split(b"|", 10)
    fields[9] = f"{fields[9].decode()}-{n}".encode()
    return b"|".join(fields)


def untimed(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMING}


def strip_comments(data: bytes, terminator: bytes = b"\r") -> bytes:
    return (
        b"".join(seg + terminator for seg in data.split(terminator)[:-1] if not seg.startswith(b"NTE|1|L|Isoleret"))
        + data.split(terminator)[-1]
    )


def test_gzip_in_gzip_out(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    plain = CHILD + ADULT + ADT
    (src / "night.hl7.gz").write_bytes(gzip.compress(plain))
    proc = cli(src, "--out", tmp_path / "out", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr.decode()
    out = (tmp_path / "out" / "night.hl7.gz").read_bytes()
    assert out[:2] == b"\x1f\x8b"
    text = gzip.decompress(out)
    assert text.count(b"NTE|1|L|") == 1
    assert strip_comments(text) == plain
    # deterministic: the same input gives the same compressed bytes
    assert cli(src, "--out", tmp_path / "out2").returncode == 0
    assert (tmp_path / "out2" / "night.hl7.gz").read_bytes() == out


@pytest.mark.slow
def test_files_without_a_message_are_copied_unchanged_and_counted(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "cut.hl7.gz").write_bytes(gzip.compress(CHILD * 50)[:-30])
    others = {
        "empty.hl7": b"",
        "binary.dat": bytes(range(256)) * 40,
        "blank.hl7": b"\r\n\r\n\n",
        "batch_shell.hl7": b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\rBTS|0\rFTS|1\r",
        "notes.txt.gz": gzip.compress(b"a text file, not HL7\n", mtime=12345),
    }
    for name, data in others.items():
        (src / name).write_bytes(data)
    (src / "good.hl7").write_bytes(CHILD)
    out = tmp_path / "out"
    proc = cli(src, "--out", out, "--report", tmp_path / "r.json")
    assert proc.returncode == 1  # the truncated file could not be read
    report = json.loads((tmp_path / "r.json").read_text())
    assert [e["file"] for e in report["errors"]] == ["cut.hl7.gz"]
    assert "truncated" in report["errors"][0]["error"]
    assert sorted(report["files_without_hl7"]) == sorted(others)
    assert report["files"] == 7 and report["messages"] == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([*others, "good.hl7"])
    for name, data in others.items():
        assert (out / name).read_bytes() == data, name  # byte for byte, gzip too
    assert not list(out.glob(".*.partial"))
    assert b"cut.hl7.gz" in proc.stderr and b"Traceback" not in proc.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", str(src), "--out", str(tmp_path / "loud")],
        capture_output=True,
        timeout=120,
    )
    assert b"warning: empty.hl7: no HL7 message; copied unchanged" in loud.stderr
    # the old behaviour, for sites that want it
    skip = tmp_path / "skip"
    proc = cli(src, "--out", skip, "--skip-non-hl7", "--report", tmp_path / "s.json")
    assert proc.returncode == 1
    assert sorted(p.name for p in skip.iterdir() if not p.name.startswith(".")) == ["good.hl7"]
    assert json.loads((tmp_path / "s.json").read_text())["files_without_hl7_output"] == "none"
    # --quiet: errors and the summary only
    quiet = cli(src, "--dry-run", "--quiet")
    assert b"warning" not in quiet.stderr and b"cut.hl7.gz" in quiet.stderr and b"replayed 7 files" in quiet.stderr
    assert cli(src, "--dry-run", "--report", tmp_path / "d.json").returncode == 1  # the cut gzip
    assert json.loads((tmp_path / "d.json").read_text())["files_without_hl7_output"] == "none"


def test_replaying_an_output_folder_again_skips_replays_own_files(tmp_path):
    make_archive(tmp_path / "in", files=3, per_file=4)
    assert cli(tmp_path / "in", "--out", tmp_path / "once").returncode == 0
    assert (tmp_path / "once" / ".b12comment-resume.jsonl").exists()
    (tmp_path / "once" / ".left.hl7.partial").write_bytes(CHILD)  # a killed run's unfinished output
    proc = cli(tmp_path / "once", "--out", tmp_path / "twice", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["files"] == 3 and report["files_without_hl7"] == []
    assert tree(tmp_path / "twice") == tree(tmp_path / "once")  # already commented: nothing changes


def test_mllp_capture_keeps_its_framing(tmp_path):
    frames = b"".join(b"\x0b" + m + b"\x1c\x0d" for m in (CHILD, ADT, ADULT))
    src = tmp_path / "capture.mllp"
    src.write_bytes(frames + b"\x0b" + b"MSH|^~\\&|cut off")  # an unterminated last frame
    proc = cli(src, "--out", tmp_path / "out", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr.decode()
    out = (tmp_path / "out" / "capture.mllp").read_bytes()
    assert out.count(b"\x0b") == 4 and out.count(b"\x1c\x0d") == 3
    assert out.count(b"NTE|1|L|") == 1
    assert strip_comments(out) == src.read_bytes()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["messages"] == 3 and report["commented"] == 1


def test_batch_with_wrong_count_is_reported_and_processed(tmp_path):
    batch = (
        b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r"
        + numbered(CHILD, 1)
        + numbered(CHILD, 2)
        + b"BTS|3\rZNOTE|after the trailer\rFTS|1\r"
    )
    src = tmp_path / "batch.hl7"
    src.write_bytes(batch)
    proc = cli(src, "--out", tmp_path / "out", "--report", tmp_path / "r.json")
    assert proc.returncode == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["batch_count_mismatches"] == [{"file": "batch.hl7", "segment": "BTS", "declared": "3", "counted": 2}]
    out = (tmp_path / "out" / "batch.hl7").read_bytes()
    assert out.count(b"NTE|1|L|") == 2
    assert out.startswith(b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\rMSH") and out.endswith(
        b"BTS|3\rZNOTE|after the trailer\rFTS|1\r"
    )


def test_include_exclude_and_dry_run(tmp_path):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.hl7").write_bytes(CHILD)
    (src / "a" / "two.txt").write_bytes(CHILD)
    (src / "skip.hl7").write_bytes(CHILD)
    proc = cli(
        src, "--out", tmp_path / "out", "--include", "*.hl7", "--exclude", "skip*", "--report", tmp_path / "r.json"
    )
    assert proc.returncode == 0
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert written == ["a/one.hl7"]
    proc = cli(src, "--dry-run", "--report", tmp_path / "d.json")
    assert proc.returncode == 0
    assert json.loads((tmp_path / "d.json").read_text())["commented"] == 3
    assert not (tmp_path / "in" / ".b12comment-resume.jsonl").exists()


def make_archive(root: Path, files: int, per_file: int, fast: bool = False) -> None:
    """Files of numbered messages; `fast`: mostly messages without B12, as in a real night."""
    kinds = [CHILD, ADULT, ADT, (SAMPLES / "child_b12_with_other_abnormal.hl7").read_bytes()]
    if fast:
        kinds = [CHILD] + [ADT] * 9
    for f in range(files):
        folder = root / f"day{f % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{f:04d}.hl7").write_bytes(
            b"".join(numbered(kinds[(f + i) % len(kinds)], f * per_file + i) for i in range(per_file))
        )


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.mark.slow
def test_workers_give_identical_output_and_report(tmp_path):
    make_archive(tmp_path / "in", files=12, per_file=40)
    assert (
        cli(tmp_path / "in", "--out", tmp_path / "w1", "--workers", 1, "--report", tmp_path / "1.json").returncode == 0
    )
    assert (
        cli(tmp_path / "in", "--out", tmp_path / "w2", "--workers", 2, "--report", tmp_path / "2.json").returncode == 0
    )
    assert tree(tmp_path / "w1") == tree(tmp_path / "w2")
    r1, r2 = (json.loads((tmp_path / n).read_text()) for n in ("1.json", "2.json"))
    assert untimed(r1) == untimed(r2)
    assert r1["messages"] == 480 and r1["commented"] == 120


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_output(tmp_path):
    make_archive(tmp_path / "in", files=200, per_file=60, fast=True)
    assert (
        cli(
            tmp_path / "in", "--out", tmp_path / "clean", "--workers", 1, "--report", tmp_path / "clean.json"
        ).returncode
        == 0
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "b12comment",
            "replay",
            "--quiet",
            "--workers",
            "1",
            str(tmp_path / "in"),
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    progress = out / ".b12comment-resume.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and progress.read_text().count("\n") > 3:
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed, "the replay finished before it could be interrupted; make the archive larger"
    done_before = progress.read_text().count("\n") - 1
    assert 0 < done_before < 200
    resumed = cli(tmp_path / "in", "--out", out, "--resume", "--workers", 2, "--report", tmp_path / "r.json")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert tree(out) == tree(tmp_path / "clean")
    assert not list(out.rglob(".*.partial"))
    report, clean = json.loads((tmp_path / "r.json").read_text()), json.loads((tmp_path / "clean.json").read_text())
    assert report["resumed_files"] >= done_before
    assert {k: v for k, v in untimed(report).items() if k != "resumed_files"} == {
        k: v for k, v in untimed(clean).items() if k != "resumed_files"
    }


def test_resume_refuses_a_changed_rule(tmp_path):
    make_archive(tmp_path / "in", files=2, per_file=2)
    assert cli(tmp_path / "in", "--out", tmp_path / "out").returncode == 0
    other = tmp_path / "other.toml"
    other.write_text('[rule]\nlanguage = "en"\n')
    proc = cli(tmp_path / "in", "--out", tmp_path / "out", "--resume", "--config", other)
    assert proc.returncode == 2
    assert b"cannot --resume" in proc.stderr


def test_compare_with_reports_every_difference(tmp_path):
    make_archive(tmp_path / "in", files=2, per_file=8)
    old = tmp_path / "old.toml"  # an old rule that only knew the LOINC codes
    old.write_text('[[rule.codes]]\ncode = "14685-2"\nsystems = ["LN"]\n')
    proc = cli(tmp_path / "in", "--dry-run", "--compare-with", old, "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    # the child sample uses NPU01700: commented by the new rule, not by the old one
    assert report["rule_differences"] == report["commented"] == 4
    first = report["rule_difference_list"][0]
    assert first["new"] == {"commented": True, "reasons": []}
    assert first["old"] == {"commented": False, "reasons": ["no_b12"]}
    assert first["control_id"].startswith("S0001-")


def peak_rss_kb(args) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss


@pytest.mark.slow
def test_memory_does_not_grow_with_message_count(tmp_path):
    small, large = tmp_path / "small.hl7", tmp_path / "large.hl7"
    body = [numbered(m, i) for i, m in enumerate([CHILD, ADULT] + [ADT] * 598)]
    small.write_bytes(b"".join(body))
    large.write_bytes(b"".join(body) * 100)  # 60,000 messages, 36 MB, in one file
    rss_small = peak_rss_kb([small, "--out", tmp_path / "o1", "--workers", 1])
    rss_large = peak_rss_kb([large, "--out", tmp_path / "o2", "--workers", 1])
    assert rss_large < rss_small + 20_000, (rss_small, rss_large)


def test_html_report_is_self_contained(tmp_path):
    make_archive(tmp_path / "in", files=3, per_file=12)
    html = tmp_path / "r.html"
    assert cli(tmp_path / "in", "--dry-run", "--html", html).returncode == 0
    page = html.read_text()
    assert page.count("<svg") == 3  # three age bands (the reason charts are HTML bars)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script" not in page
    assert "limit 1200" in page and "other_abnormal" in page


def run_on_terminal(args) -> bytes:
    """Run replay with stderr on a pseudo-terminal; return what the terminal showed."""
    import pty

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "replay", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=child,
        stdin=subprocess.DEVNULL,
    )
    os.close(child)
    shown = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    proc.wait(timeout=120)
    os.close(main)
    return shown


@pytest.mark.slow
def test_progress_line_on_a_terminal_only(tmp_path):
    make_archive(tmp_path / "in", files=3, per_file=5)
    shown = run_on_terminal([tmp_path / "in", "--dry-run", "--workers", 1])
    assert b"\r\x1b[K3 files, 15 messages" in shown and b"msg/s, ETA" in shown
    assert b"replayed 3 files, 15 messages" in shown  # the closing summary
    quiet = run_on_terminal([tmp_path / "in", "--dry-run", "--workers", 1, "--quiet"])
    assert b"msg/s, ETA" not in quiet
    piped = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", str(tmp_path / "in"), "--dry-run"],
        capture_output=True,
        timeout=120,
    )
    assert b"ETA" not in piped.stderr and b"replayed 3 files" in piped.stderr


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for_files_done(proc: subprocess.Popen, resume: Path, lines: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if resume.exists() and resume.read_text().count("\n") > lines:
            return
        time.sleep(0.01)
    raise AssertionError("the replay finished (or stalled) before it could be interrupted; make the archive larger")


@pytest.mark.slow
def test_sigkill_of_the_main_process_ends_its_workers(tmp_path):
    make_archive(tmp_path / "in", files=300, per_file=60, fast=True)
    out = tmp_path / "out"
    proc = _start([tmp_path / "in", "--out", out, "--workers", 2])
    _wait_for_files_done(proc, out / ".b12comment-resume.jsonl", 3)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = time.monotonic()
    deadline = killed + 20
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.005)
    assert not any(_alive(w) for w in workers), "workers outlived the main process"
    gone_ms = 1000 * (time.monotonic() - killed)
    print(f"REPLAY SIGKILL FIGURES: {len(workers)} workers gone {gone_ms:.0f} ms after the kill")
    resumed = cli(tmp_path / "in", "--out", out, "--resume", "--workers", 2, "--report", tmp_path / "r.json")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads((tmp_path / "r.json").read_text())["files"] == 300
    assert not list(out.rglob(".*.partial"))


@pytest.mark.slow
def test_a_second_replay_into_the_same_output_is_refused(tmp_path):
    make_archive(tmp_path / "in", files=80, per_file=60, fast=True)
    out = tmp_path / "out"
    first = _start([tmp_path / "in", "--out", out, "--workers", 1])
    try:
        _wait_for_files_done(first, out / ".b12comment-resume.jsonl", 1)
        second = cli(tmp_path / "in", "--out", out, "--resume")
        alive = first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=30)
    assert alive, "the first replay ended before the second started; make the archive larger"
    assert second.returncode == 2, second.stderr
    err = second.stderr.decode()
    assert f"another replay is writing to {out} (pid {first.pid})" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # the lock goes with the process that held it, however it ended
    assert cli(tmp_path / "in", "--out", out, "--resume").returncode == 0


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_exit_130_then_resume_completes(tmp_path):
    make_archive(tmp_path / "in", files=200, per_file=60, fast=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "replay", str(tmp_path / "in"), "--out", str(out), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _wait_for_files_done(proc, out / ".b12comment-resume.jsonl", 3)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip().splitlines() == ["b12comment: interrupted"]
    resumed = cli(tmp_path / "in", "--out", out, "--resume", "--report", tmp_path / "r.json")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads((tmp_path / "r.json").read_text())["files"] == 200
