"""What keeps one journal to one `serve`, and a lost journal from being
replaced silently by an empty one.

- The lock file `.<journal>.lock`: `serve` holds an exclusive lock on it for as
  long as it runs, so a second `serve` on the same journal is refused at start.
- The marker `.<journal>.marker` (hidden, so `rm journal.sqlite3*` leaves
  it): which journal `serve` last used (its journal id) and, after a clean
  stop, how many messages it still held undelivered.
  While `serve` runs the count is unknown (null). At start, a journal that is
  missing, or another one than the marker names, is refused unless the marker
  says the previous one was stopped cleanly with nothing undelivered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from b12comment.errors import B12Error
from b12comment.files import LockHeld, take_lock, write_atomically


class GuardError(B12Error):
    """serve must not start on this journal; the message is the one line to
    print (exit 1: the journal cannot be used as it is)."""


def lock_path(journal: Path) -> Path:
    return journal.with_name(f".{journal.name}.lock")


def marker_path(journal: Path) -> Path:
    return journal.with_name(f".{journal.name}.marker")


class JournalLock:
    """An exclusive lock on `<journal>.lock`, held until release()."""

    def __init__(self, journal: Path):
        self.path = lock_path(journal)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self._fd = take_lock(self.path)
        except LockHeld as held:
            raise GuardError(
                f"another serve is using the journal {journal_of(self.path)}{held.holder}: "
                f"one journal serves one listener (lock file {self.path})"
            ) from None
        except OSError as exc:
            raise GuardError(
                f"cannot use the journal path {journal_of(self.path)}: {exc.strerror or exc} "
                f"(creating its lock file {self.path.name} beside it)"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def journal_of(lock: Path) -> Path:
    return lock.with_name(lock.name.removeprefix(".").removesuffix(".lock"))


@dataclass(frozen=True)
class Marker:
    journal_id: str
    undelivered: int | None  # None: in use, or not stopped cleanly


def read_marker(journal: Path) -> Marker | None:
    path = marker_path(journal)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Marker(str(data["journal_id"]), data.get("undelivered"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GuardError(f"cannot read the journal marker {path}: {exc}") from None


def write_marker(journal: Path, marker: Marker) -> None:
    data = json.dumps({"journal_id": marker.journal_id, "undelivered": marker.undelivered}) + "\n"
    write_atomically(marker_path(journal), data.encode())


def check_before_open(journal: Path) -> Marker | None:
    """Refuse (GuardError) a missing journal the marker says held messages."""
    marker = read_marker(journal)
    if marker is None or journal.exists() or marker.undelivered == 0:
        return marker
    raise GuardError(f"journal {journal} is missing, but {_previous(journal, marker)}")


def check_after_open(journal: Path, journal_id: str, marker: Marker | None) -> None:
    """Refuse (GuardError) a journal other than the one the marker names, unless that one was empty."""
    if marker is None or marker.journal_id == journal_id or marker.undelivered == 0:
        return
    raise GuardError(
        f"journal {journal} is damaged or replaced (not the one serve last used): {_previous(journal, marker)}"
    )


def _previous(journal: Path, marker: Marker) -> str:
    held = (
        "did not stop cleanly"
        if marker.undelivered is None
        else f"held {marker.undelivered} undelivered message{'s' if marker.undelivered != 1 else ''}"
    )
    return (
        f"the previous journal (id {marker.journal_id}) {held}, so messages may be lost: put it back, "
        f"or remove {marker_path(journal)} to start with this one"
    )
