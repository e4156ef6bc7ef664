"""What serve has ACKed and not yet delivered, kept outside the journal file.

The journal holds the messages; this holds, in serve's memory, only what is
needed to name them if the journal is lost under it: the journal id, the
control ID, the sender's address and the time of the ACK (no message bytes,
nothing of the patient). When the journal is found damaged, serve names
every one of these it can no longer read, in one error line and in a file
beside the journal (`<journal>.unreadable.jsonl`), so that the senders can
send them again. Bounded: past MAX_KEPT the newest are kept and the rest
counted.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from b12comment.files import write_atomically
from b12comment.storage import open_journal_for_reading

MAX_KEPT = 200_000


class AckedLedger:
    """journal id -> (control ID, sender, time of the ACK), in ACK order."""

    def __init__(self, max_kept: int = MAX_KEPT):
        self.max_kept = max_kept
        self._acked: OrderedDict[int, tuple[str, str, float]] = OrderedDict()
        self.forgotten = 0  # ACKed and undelivered, but past max_kept: counted only

    def acked(self, journal_id: int, control_id: str, peer: str) -> None:
        self._acked[journal_id] = (control_id, peer.rsplit(":", 1)[0], time.time())
        if len(self._acked) > self.max_kept:
            self._acked.popitem(last=False)
            self.forgotten += 1

    def settled(self, journal_ids: Iterable[int]) -> None:
        """Delivered or dead-lettered: nothing more to name."""
        for journal_id in journal_ids:
            self._acked.pop(journal_id, None)

    def undelivered(self) -> dict[int, tuple[str, str, float]]:
        return dict(self._acked)


def unreadable(journal: Path, ids: Iterable[int]) -> list[int]:
    """Which of these rows cannot be read from the journal's file any more
    (all of them when the file cannot be opened or read at all)."""
    wanted = sorted(ids)
    readable: set[int] = set()
    try:
        reader = open_journal_for_reading(journal)
    except Exception:
        return wanted
    try:
        for id in wanted:
            try:
                if reader.get(id) is not None:
                    readable.add(id)
            except Exception:
                continue
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    return [id for id in wanted if id not in readable]


def listing_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".unreadable.jsonl")


def name_unreadable(journal: Path, kept: dict[int, tuple[str, str, float]]) -> tuple[list[dict], Path] | None:
    """Of the ACKed, undelivered messages (`AckedLedger.undelivered()`), those
    the journal can no longer give back, written beside it; None when none."""
    lost = unreadable(journal, kept)
    if not lost:
        return None
    named = [
        {
            "journal_id": id,
            "control_id": kept[id][0],
            "peer": kept[id][1],
            "acked_at": datetime.fromtimestamp(kept[id][2]).astimezone().isoformat(timespec="milliseconds"),
        }
        for id in lost
    ]
    path = listing_path(journal)
    write_atomically(path, "".join(json.dumps(m) + "\n" for m in named).encode())
    return named, path
