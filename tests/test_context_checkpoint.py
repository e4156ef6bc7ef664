"""serve's context store moves its WAL into the file on a thread of its own:
a commit (and so an HTTP answer, or a processing batch) never waits for a
checkpoint, and the rows still reach the database file while the store is
open, the WAL is started again, and closing stops the thread."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

from builders import Obx, build

from b12comment.config import ContextConfig
from b12comment.core.chain import decide
from b12comment.core.rule_config import RuleConfig
from b12comment.serve.processing import open_context

RULE = RuleConfig()
NORMAL = Obx(code="777-3^Platelets^LN", value="250", units="10*9/L", range="150-400")


def message(n: int) -> bytes:
    return build(control_id=f"M{n}", orc4=f"REQ-{n}", others=(NORMAL,))


def stage(tmp_path: Path, every_s: float | None = None):
    cx = open_context(ContextConfig(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")))
    assert cx.store is not None
    if every_s is not None:  # (a quicker beat than serve's, so that the test waits less)
        cx.store.checkpointer.every_s = every_s
    return cx


def decide_and_commit(cx, first: int, count: int) -> None:
    for n in range(first, first + count):
        outcome = decide(cx.store, n, message(n), RULE, cx.mode, cx.settings.lookback_days)
        assert outcome.store_error is None
        assert cx.commit() is None


def wait_until_checkpointed(cx) -> None:
    """Until a checkpoint after the last commit caught up (on its own beat)."""
    deadline = time.monotonic() + 10
    while not cx.store.checkpointer.settled():
        assert time.monotonic() < deadline, "the WAL not checkpointed within 10 s"
        time.sleep(0.01)


def rows_in_the_file_alone(tmp_path: Path) -> int:
    """The rows a copy of the database file holds without its WAL."""
    copy = tmp_path / "copy.sqlite3"
    shutil.copyfile(tmp_path / "context.sqlite3", copy)
    db = sqlite3.connect(copy)
    try:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    finally:
        db.close()


def test_rows_reach_the_database_file_while_the_store_is_open(tmp_path):
    # A few messages: far below the WAL size at which SQLite's commit would
    # checkpoint by itself, so only the background checkpoint moves them.
    cx = stage(tmp_path, every_s=0.01)
    try:
        decide_and_commit(cx, 1, 5)
        wait_until_checkpointed(cx)
        assert cx.store.checkpointer.checkpoints > 0
        assert rows_in_the_file_alone(tmp_path) == cx.store.count() > 0
    finally:
        cx.close()


def test_the_wal_is_started_again_once_a_checkpoint_caught_up(tmp_path):
    cx = stage(tmp_path, every_s=0.01)
    wal = tmp_path / "context.sqlite3-wal"
    try:
        decide_and_commit(cx, 1, 40)
        wait_until_checkpointed(cx)
        first = wal.stat().st_size
        for round_ in range(1, 4):  # as much again, three times, a checkpoint between
            decide_and_commit(cx, 1 + 40 * round_, 40)
            wait_until_checkpointed(cx)
        # Written from its beginning again each time: not four times the size.
        assert wal.stat().st_size < 2 * first
        assert rows_in_the_file_alone(tmp_path) == cx.store.count()
    finally:
        cx.close()


def test_closing_the_store_stops_its_checkpoint_thread_and_keeps_every_row(tmp_path):
    cx = stage(tmp_path)
    decide_and_commit(cx, 1, 10)
    count = cx.store.count()
    thread = cx.store.checkpointer
    assert thread.is_alive()
    cx.close()
    assert not thread.is_alive()
    assert "context-checkpoint" not in {t.name for t in threading.enumerate()}
    assert rows_in_the_file_alone(tmp_path) == count > 0  # (the last connection's close checkpoints the rest)
    assert not (tmp_path / "context.sqlite3-wal").exists()


def test_a_failing_checkpoint_never_fails_a_commit(tmp_path):
    cx = stage(tmp_path, every_s=0.01)
    try:
        cx.store.checkpointer._db.close()  # its connection gone: every checkpoint fails
        decide_and_commit(cx, 1, 5)
        deadline = time.monotonic() + 10
        while cx.store.checkpointer.error is None:
            assert time.monotonic() < deadline, "the checkpoint did not run"
            time.sleep(0.01)
        decide_and_commit(cx, 6, 5)  # commits go on
        assert cx.store.count() > 0
    finally:
        cx.close()
