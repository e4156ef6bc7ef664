"""`replay --forward`: replayed messages go downstream through a journal and
the service's forwarder; an interrupted replay resumes without sending twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import SAMPLES
from service_helpers import Downstream, free_port, msh10, subprocess_env
from test_replay_archive import make_archive

from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig
from b12comment.wire.split import split_messages

RULE = RuleConfig()


def replay(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", *map(str, args)],
        capture_output=True,
        timeout=timeout,
        env=subprocess_env(),
    )


def expected_in_order(root: Path) -> list[bytes]:
    """process() of every message of every file, in the order replay reads them."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            data = (Path(dirpath) / name).read_bytes()
            out += [process(p.data, RULE)[0] for p in split_messages(data) if p.kind == "message"]
    return out


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


@pytest.mark.slow
def test_forward_delivers_every_message_in_order(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in SAMPLES.glob("*.hl7"):
        (src / f.name).write_bytes(f.read_bytes())
    expected = expected_in_order(src)
    with Downstream() as down:
        proc = replay(src, "--forward", down.url, "--journal", tmp_path / "j.sqlite3", "--report", tmp_path / "r.json")
        assert proc.returncode == 0, proc.stderr.decode()
        assert down.received == expected
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["forwarded"] == len(expected) == report["messages"] == 10
    assert report["dead_lettered"] == 0 and report["commented"] == 5


@pytest.mark.slow
def test_forward_dead_letters_a_rejected_message_and_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.hl7").write_bytes((SAMPLES / "night_batch_crlf.hl7").read_bytes())
    with Downstream(answer=lambda i, payload: "AR" if msh10(payload) == "S011" else "AA") as down:
        proc = replay(src, "--forward", down.url, "--journal", tmp_path / "j.sqlite3", "--report", tmp_path / "r.json")
        assert proc.returncode == 0, proc.stderr.decode()
        assert [msh10(p) for p in down.received] == ["S010", "S011", "S012"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["forwarded"], report["dead_lettered"]) == (2, 1)
    records = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.startswith("{")]
    assert {r["level"] for r in records} == {"error"}  # --quiet: errors (the dead letter) and the summary only
    assert b"dead-lettered: 1" in proc.stderr
    dead = subprocess.run(
        [
            sys.executable,
            "-m",
            "b12comment",
            "queue",
            "--config",
            str(_config(tmp_path, tmp_path / "j.sqlite3")),
            "dead",
        ],
        capture_output=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert b"S011" in dead.stdout


def _config(tmp_path: Path, journal: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[journal]\npath = "{journal}"\n')
    return cfg


@pytest.mark.slow
def test_killed_replay_resumes_without_sending_twice(tmp_path):
    make_archive(tmp_path / "in", files=40, per_file=50, fast=True)
    expected = expected_in_order(tmp_path / "in")
    journal = tmp_path / "j.sqlite3"
    port = free_port()  # the downstream is down while the first run journals and waits
    args = [
        sys.executable,
        "-m",
        "b12comment",
        "replay",
        "--quiet",
        str(tmp_path / "in"),
        "--forward",
        f"mllp://127.0.0.1:{port}",
        "--journal",
        str(journal),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            try:
                if journal_rows(journal) > 0:
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    queued_at_kill = journal_rows(journal)
    assert 0 < queued_at_kill <= len(expected)
    # a rerun without --resume would send the same messages again: refused
    again = replay(tmp_path / "in", "--forward", f"mllp://127.0.0.1:{port}", "--journal", journal)
    assert again.returncode == 2 and b"--resume" in again.stderr
    with Downstream(port=port) as down:
        resumed = replay(
            tmp_path / "in", "--forward", down.url, "--journal", journal, "--resume", "--report", tmp_path / "r.json"
        )
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert down.received == expected  # each message once, in order
    assert json.loads((tmp_path / "r.json").read_text())["forwarded"] == len(expected)
