"""`serve` stopped by SIGTERM (systemd, a container runtime) or SIGINT
exits 0 whenever the signal comes: while it is still importing its modules,
while it opens its journal, and once it listens. Python's default would
kill it with exit 143 in its first half second."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_helpers import Serve, subprocess_env, wait_until, write_config

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (/proc's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
    )


def start(cfg: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "b12comment", "serve", "--config", str(cfg)],
        cwd=cfg.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    if not Path("/proc/self/status").exists():
        proc.kill()
        pytest.skip("no /proc: cannot see when the process catches SIGTERM")
    assert wait_until(lambda: catches_sigterm(proc.pid) or proc.poll() is not None, timeout=30)
    return proc


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err.decode("utf-8", "replace")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_serve_is_still_starting_exits_0(tmp_path, sig):
    proc = start(config(tmp_path))
    code, err = stop(proc, sig)  # at once: serve is still importing its modules
    assert code == 0, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (tmp_path / "journal.sqlite3").exists(), "serve stopped before it opened its journal"


@pytest.mark.slow
def test_sigterm_at_any_moment_of_the_start_exits_0(tmp_path):
    """From the moment the handler is in place to well after listening."""
    for n, delay in enumerate([0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.2]):
        folder = tmp_path / str(n)
        folder.mkdir()
        proc = start(config(folder))
        time.sleep(delay)
        code, err = stop(proc, signal.SIGTERM)
        assert code == 0, f"SIGTERM {delay} s after the handler was in place: exit {code}: {err[-2000:]}"


def test_sigterm_once_listening_exits_0(tmp_path):
    with Serve(config(tmp_path)) as serve:
        assert serve.stop(signal.SIGTERM) == 0, serve.stderr
        assert serve.records("stopped")


def test_serve_makes_the_missing_folders_of_its_journal_and_starts(tmp_path):
    """An operator points [journal] path at a new folder: serve makes it (as
    mkdir -p would) rather than refusing; a path that cannot be made at all
    is the one-line refusal of test_service (a folder under a regular file)."""
    cfg = config(tmp_path)
    deep = tmp_path / "new" / "state"
    text = cfg.read_text().replace(str(tmp_path / "journal.sqlite3"), str(deep / "journal.sqlite3"))
    cfg.write_text(text)
    with Serve(cfg) as serve:
        assert (deep / "journal.sqlite3").is_file()
        assert serve.stop() == 0, serve.stderr
