"""The context store is never used silently with the wrong key, without its
key, missing beside a journal of the look-back, or by two processes at once.
Real SQLite files, real subprocesses (serve, `context rebuild`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from service_helpers import Downstream, MllpConnection, Serve, msa, msh10, subprocess_env, write_config
from test_context import LOW_PLATELETS, b12_message, other_message

from b12comment.context import ContextError, open_store
from b12comment.context.store import ContextStore, lock_path

KEY = b"k" * 32


def store_with_rows(tmp_path):
    path, key_file = tmp_path / "context.sqlite3", tmp_path / "context.key"
    store = open_store(str(path), str(key_file))
    from b12comment.core.rows import extract
    from b12comment.core.rule_config import RuleConfig

    ex = extract(other_message(), RuleConfig())
    assert ex is not None
    store.add(1, ex)
    store.close()
    return path, key_file


def test_a_store_refuses_a_key_other_than_its_own(tmp_path):
    path, key_file = store_with_rows(tmp_path)
    key_file.write_bytes(b"x" * 32)  # replaced
    with pytest.raises(ContextError, match="made with another key"):
        open_store(str(path), str(key_file))
    with pytest.raises(ContextError, match="made with another key"):
        ContextStore(path, b"y" * 32)


def test_a_missing_key_beside_an_existing_store_is_not_made_anew(tmp_path):
    path, key_file = store_with_rows(tmp_path)
    key_file.unlink()
    with pytest.raises(ContextError, match="key file .* is missing"):
        open_store(str(path), str(key_file))
    assert not key_file.exists()  # not made silently


def test_the_same_key_opens_the_store_again(tmp_path):
    path, key_file = store_with_rows(tmp_path)
    store = open_store(str(path), str(key_file))
    assert store.count() > 0
    store.close()


HOLD = textwrap.dedent(
    """
    import sys, time
    from b12comment.context import open_store
    store = open_store(sys.argv[1], sys.argv[2])
    print("held", flush=True)
    time.sleep(60)
    """
)


def holder(path, key_file):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(key_file)], stdout=subprocess.PIPE, env=subprocess_env()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    path, key_file = tmp_path / "context.sqlite3", tmp_path / "context.key"
    proc = holder(path, key_file)
    try:
        with pytest.raises(ContextError, match=rf"another process is using the context store .*\(process {proc.pid}\)"):
            open_store(str(path), str(key_file))
    finally:
        proc.kill()
        proc.wait()
    open_store(str(path), str(key_file)).close()  # free again once the holder is gone
    assert lock_path(path).exists()


def test_one_process_may_open_its_store_twice(tmp_path):
    path, key_file = tmp_path / "context.sqlite3", tmp_path / "context.key"
    first = open_store(str(path), str(key_file))
    second = open_store(str(path), str(key_file))  # serve's processing stage and its HTTP endpoint
    first.close()
    second.close()


def test_context_rebuild_is_refused_while_another_process_holds_the_store(tmp_path):
    path, key_file = tmp_path / "context.sqlite3", tmp_path / "context.key"
    journal = tmp_path / "journal.sqlite3"
    from b12comment.storage import open_journal

    open_journal(journal).close()
    cfg = write_config(
        tmp_path / "config.toml",
        journal=dict(path=str(journal)),
        context=dict(store=str(path), key_file=str(key_file)),
    )
    proc = holder(path, key_file)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "b12comment", "context", "rebuild", "--config", str(cfg)],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=60,
        )
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"(process {proc.pid})" in lines[0], done.stderr


def commented(message: bytes) -> bool:
    return b"\rNTE|1|L|" in message


@pytest.mark.slow
def test_a_replaced_key_or_a_missing_store_never_gives_a_false_comment(tmp_path):
    """The low haemoglobin, then the same child's B12 in another requisition:
    no comment. Then the key is deleted, replaced, or the store deleted:
    serve refuses to start, with one line, until the store is rebuilt."""
    store, key_file, journal = tmp_path / "context.sqlite3", tmp_path / "context.key", tmp_path / "journal.sqlite3"
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            journal=dict(path=str(journal)),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
            context=dict(store=str(store), key_file=str(key_file)),
        )
        low = other_message(LOW_PLATELETS, orc4="REQ-HB", control_id="HB1")
        b12 = b12_message(orc4="REQ-B12", control_id="B12-1")
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                for m in (low, b12):
                    assert msa(conn.send(m)) == ("AA", msh10(m))
            assert down.wait_for(2)
            assert serve.stop() == 0
        assert not commented({msh10(m): m for m in down.received}["B12-1"])

        def refused(match: str) -> None:
            s = Serve(cfg).start(expect_listening=False)
            assert s.wait_exit() == 1
            errors = [line for line in s.lines if line.startswith("b12comment:")]
            assert len(errors) == 1 and match in errors[0], s.stderr

        original = key_file.read_bytes()
        key_file.unlink()
        refused("key file")
        assert not key_file.exists()
        key_file.write_bytes(os.urandom(32))
        refused("made with another key")
        key_file.write_bytes(original)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"context.sqlite3{suffix}").unlink(missing_ok=True)
        refused("context rebuild")
        refused("context rebuild")  # the refused start left no empty store behind
        done = subprocess.run(
            [sys.executable, "-m", "b12comment", "context", "rebuild", "--config", str(cfg)],
            capture_output=True,
            env=subprocess_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with Serve(cfg) as serve:
            again = b12_message(orc4="REQ-B12-2", control_id="B12-2")
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(again)) == ("AA", "B12-2")
            assert down.wait_for(3)
            assert serve.stop() == 0
        assert not commented({msh10(m): m for m in down.received}["B12-2"])
