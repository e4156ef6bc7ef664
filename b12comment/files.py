"""Durable file writes: a reader never sees half a file, and a file that is
in place survives a power cut. The one atomic write the folder drop, replay's
outputs and its reports share: write a temporary name beside the target,
fsync it, rename it into place, fsync the folder. And the one lock file that
keeps a journal or a context store to one process."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; `holder` is " (process N)" where the
    lock file names it, else ""."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def take_lock(path: Path) -> int:
    """Open `path` (made 0600, with its folders) and take its exclusive lock,
    writing this process's id into it; the lock lasts until the returned file
    descriptor is closed. Raises OSError when the file cannot be made, and
    LockHeld when another process holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (process {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise LockHeld(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def create_private(path: str | Path) -> None:
    """Create the file `path` empty, readable by its owner only (0600), with
    its folders, when it is missing (SQLite then gives its -wal and -shm files
    the same permissions). Only then: closing any descriptor of a file drops
    every POSIX lock this process holds on it, also those of the SQLite
    connections open here to it, and SQLite would no longer see them when
    another process closes its own last connection: it would take itself for
    the last one and delete the write-ahead log under them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def fsync_dir(folder: str | Path) -> None:
    """Make the renames and creations in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, dst: str | Path) -> None:
    """fsync the finished temporary file `tmp`, rename it to `dst`, fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    fsync_dir(Path(dst).parent)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name in the same folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
