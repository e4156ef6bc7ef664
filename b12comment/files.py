"""Durable file writes: a reader never sees half a file, and a file that is
in place survives a power cut. The one atomic write the folder drop, replay's
outputs and its reports share: write a temporary name beside the target,
fsync it, rename it into place, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path


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
