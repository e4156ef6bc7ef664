"""Every command on paths it cannot read: one clear line, the documented exit
code, never a traceback. Tests run as root, so the unreadable cases drop the
capabilities that let root read anything (setpriv); they skip where the
machine has no setpriv. Also: a closed stdout ends quietly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import SAMPLES, subprocess_env, write_config

from b12comment.errors import EXIT_CODES, EXIT_IO, EXIT_OK, EXIT_USAGE
from b12comment.storage.sqlite import SqliteJournal

SETPRIV = shutil.which("setpriv")
NO_DAC = "-dac_override,-dac_read_search"


def cli(*args, unprivileged: bool = False, cwd=None, stdin=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "b12comment", *map(str, args)]
    if unprivileged:
        command = [SETPRIV, "--bounding-set", NO_DAC, "--inh-caps", NO_DAC, *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=subprocess_env(), cwd=cwd, stdin=stdin
    )


def one_line(result: subprocess.CompletedProcess, code: int, *says: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("b12comment"), result.stderr
    for text in says:
        assert text in lines[0], lines[0]


@pytest.fixture
def locked(tmp_path):
    """A folder no one but a privileged root may enter, with a journal and a message in it."""
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    folder = tmp_path / "locked"
    folder.mkdir()
    j = SqliteJournal(folder / "journal.sqlite3")
    j.close()
    shutil.copy(SAMPLES / "adult_high_b12.hl7", folder / "m.hl7")
    folder.chmod(0)
    probe = cli("--version", unprivileged=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop capabilities here: {probe.stderr.strip()}")
    yield folder
    folder.chmod(0o700)


@pytest.mark.parametrize("action", ["status", "dead", ["retry", "--all"]])
def test_queue_on_an_unreadable_journal_folder(locked, tmp_path, action):
    cfg = write_config(tmp_path / "config.toml", journal=dict(path=str(locked / "journal.sqlite3")))
    action = action if isinstance(action, list) else [action]
    one_line(cli("queue", "--config", cfg, *action, unprivileged=True), EXIT_IO, "Permission denied", "journal")


def test_preview_of_an_unreadable_file(locked):
    one_line(cli("preview", locked / "m.hl7", unprivileged=True), EXIT_IO, "cannot read", "Permission denied")


def test_send_of_an_unreadable_file(locked):
    one_line(cli("send", locked / "m.hl7", "--to", "127.0.0.1:9", unprivileged=True), EXIT_IO, "Permission denied")


def test_replay_of_an_unreadable_folder(locked, tmp_path):
    result = cli("replay", locked, "--out", tmp_path / "out", unprivileged=True)
    assert result.returncode in (EXIT_IO, EXIT_USAGE), result.stderr
    assert "Traceback" not in result.stderr and "Permission denied" in result.stderr


def test_replay_into_an_unwritable_folder(locked, tmp_path):
    result = cli("replay", SAMPLES / "adult_high_b12.hl7", "--out", locked / "out", unprivileged=True)
    one_line_or_summary(result, EXIT_IO, "Permission denied")


def one_line_or_summary(result, code, text) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and text in result.stderr


def test_config_in_an_unreadable_folder(locked):
    one_line(cli("preview", SAMPLES / "adult_high_b12.hl7", "--config", locked / "c.toml", unprivileged=True), 2)


def test_preview_into_a_closed_pipe_ends_quietly(tmp_path):
    big = b"".join(
        (SAMPLES / "child_isolated_high_b12.hl7").read_bytes().replace(b"S0001", f"P{i}".encode()) for i in range(400)
    )
    (tmp_path / "many.hl7").write_bytes(big)
    command = f"{sys.executable} -m b12comment preview {tmp_path / 'many.hl7'} | head -1; echo rc=${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert result.stdout.splitlines() == ["message 1: control ID P0, type ORU^R01, version 2.5.1", f"rc={EXIT_OK}"]
    assert result.stderr == ""


def test_the_readme_exit_code_table_is_the_code():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [int(r.split("`")[1]) for r in rows] == sorted(EXIT_CODES)
    assert "missing input" in section or "does not exist" in section


@pytest.mark.parametrize("option", ["--report", "--html", "--log-file"])
def test_replay_writing_its_report_or_log_into_an_unreadable_folder(locked, option):
    result = cli("replay", SAMPLES / "adult_high_b12.hl7", "--dry-run", option, locked / "x", unprivileged=True)
    assert result.returncode == EXIT_IO, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "Permission denied" in line]
    assert len(lines) == 1 and str(locked / "x") in lines[0], result.stderr


def test_replay_forward_with_a_journal_in_an_unreadable_folder(locked, tmp_path):
    result = cli(
        "replay",
        SAMPLES / "adult_high_b12.hl7",
        "--forward",
        f"dir:{tmp_path / 'drop'}",
        "--journal",
        locked / "replay.sqlite3",
        unprivileged=True,
    )
    one_line(result, EXIT_IO, "replay.sqlite3")
