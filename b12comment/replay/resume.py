"""Resuming an interrupted replay, and keeping two replays off one output folder.

The resume file (`OUT/.b12comment-resume.jsonl`) starts with a fingerprint of
the rule and the input list, then holds one line per completed file with its
tally, fsynced as each file is done. `--resume` skips the files it lists; a
changed rule or input list is refused. (The serve journal is another thing:
this is a plain file, not a queue.)

The lock file (`OUT/.b12comment-replay.lock`) is held with flock for the whole
run, by the main process and its workers, so a second replay into the same
folder is refused while any of them lives.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import TextIO

from b12comment.config import Config
from b12comment.errors import UsageError
from b12comment.replay.tally import Tally

RESUME_NAME = ".b12comment-resume.jsonl"
LOCK_NAME = ".b12comment-replay.lock"
CONTEXT_NAME = ".b12comment-context.sqlite3"  # the first pass's store (replay/first_pass.py)
OWN_FILES = frozenset(
    {RESUME_NAME, LOCK_NAME, CONTEXT_NAME, CONTEXT_NAME + "-wal", CONTEXT_NAME + "-shm", CONTEXT_NAME + "-keys"}
)  # never read as inputs


def fingerprint(config: Config, old: Config | None, pairs, window_days: float | None = None) -> str:
    context = (config.context.mode, window_days or config.context.lookback_days)
    h = hashlib.sha256(repr((config.rule, old.rule if old else None, context)).encode())
    for src, rel in pairs:
        h.update(f"{src}\0{rel}\0".encode())
    return h.hexdigest()


def load_done(path: Path, fp: str) -> dict[str, Tally]:
    """The files an interrupted run completed, with their tallies."""
    done: dict[str, Tally] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return done
    if not lines:
        return done
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return done
    if header.get("fingerprint") != fp:
        raise UsageError(
            "replay: cannot --resume: the inputs or the rule differ from the interrupted run "
            f"(see {path}); run without --resume to start again"
        )
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the last line may have been cut by the interruption
        done[record["rel"]] = Tally.from_json(record["tally"])
    return done


class ResumeFile:
    """Appends one fsynced line per completed file."""

    def __init__(self, path: Path, fp: str, resumed: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: TextIO = open(path, "a" if resumed else "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        if not resumed or self.file.tell() == 0:
            self.file.write(json.dumps({"fingerprint": fp}) + "\n")
            self.file.flush()

    def record(self, rel: str, tally: Tally) -> None:
        if tally.errors:
            return  # redone on --resume
        self.file.write(json.dumps({"rel": rel, "tally": tally.to_json()}) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def lock_output(out_dir: Path) -> int:
    """Take the output folder's lock (the fd; it is released when every process
    holding it is gone). Raises UsageError if another replay holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise UsageError(
                f"replay: another replay is writing to {out_dir}"
                + (f" (pid {holder})" if holder else "")
                + "; wait for it to finish, or give another --out"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
