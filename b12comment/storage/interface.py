"""The journal's interface: every operation serve, the queue commands,
`replay --forward`, `context rebuild` and salvage use, and nothing more.

A backend (SQLite: sqlite/, the default; PostgreSQL: postgres/) implements it
with the same promises:

- every method commits (or fails) before it returns;
- `intake` is durable when it returns (an AA may be sent after it), and raises
  JournalError when the commit fails: then nothing is stored;
- a `JournalFault` means the journal can no longer be trusted with a new
  message (damaged, replaced, or this instance lost its lease);
- the rows' order is the journal's id order, which is the order of arrival.

Backends are synchronous and not thread-safe: serve drives one from a single
thread (storage/writer.py), so the event loop never waits on the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from b12comment.storage.model import BATCH_BYTES, Arrival, JournalError, Processed, Receipt, Replayed, Row


class Fence(Protocol):
    """The lease an instance holds while it leads (storage/postgres/lease.py):
    a journal opened with it writes only while `holds()` and the database
    agree that this instance, at this epoch, leads."""

    instance: str
    epoch: int

    def holds(self) -> bool: ...


class JournalStore(Protocol):
    @property
    def location(self) -> str:
        """Where the journal is, for messages (a path, or a URL without its password)."""
        ...

    @property
    def journal_id(self) -> str:
        """A random name given to this journal when it was created."""
        ...

    def integrity_problems(self) -> list[str]:
        """[] when the journal is sound, else the database's first findings."""
        ...

    def close(self) -> None: ...

    # -- the listener

    def intake(self, arrivals: Sequence[Arrival]) -> list[Receipt | int | JournalError]:
        """Journal frames in one transaction (group commit), in the order
        given: a `Receipt` for each `NewMessage` (a retransmission, same MSH-10
        and same bytes within its window, is found, not stored again), the row
        id of each `InvalidFrame`, or the JournalError of one that failed
        alone. Raises JournalError when the commit fails: nothing is stored."""
        ...

    # -- the processing stage

    def unprocessed(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        """Up to `limit` received messages not held, in journal order, and no
        more than `max_bytes` of them (at least one)."""
        ...

    def mark_processed_many(self, results: Sequence[Processed], now: float | None = None) -> None:
        """Record what processing made of each message (and release its hold), in one transaction."""
        ...

    def hold_many(self, holds: Sequence[tuple[int, float]]) -> None:
        """Keep received messages back until a time each, (id, until)."""
        ...

    def held(self) -> list[tuple[Row, float]]:
        """The messages held, oldest first, each with the time its hold ends."""
        ...

    # -- the forwarder

    def deliverable(self, limit: int = 100, max_bytes: int = BATCH_BYTES) -> list[Row]:
        """The head of the queue: processed messages in journal order, stopping
        before the first one not yet processed; held messages passed over."""
        ...

    def mark_forwarded_many(self, ids: Sequence[int], now: float | None = None) -> None: ...

    def mark_dead(self, id: int, reason: str, now: float | None = None) -> None: ...

    def void_many(self, ids: Sequence[int], reason: str, now: float | None = None) -> None:
        """Messages answered AE whose commit landed after the answer: kept
        (state invalid, the reason starting with `void:`), never delivered."""
        ...

    def mark_attempt_failed(self, id: int, error: str, counts: bool = True, now: float | None = None) -> int:
        """Record a failed delivery (counted as an attempt, or only noted); returns the attempts so far."""
        ...

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete forwarded rows and invalid frames older than the retention; returns how many."""
        ...

    # -- replay --forward

    def enqueue_processed(self, source: str, batch: Sequence[Replayed], now: float | None = None) -> None:
        """Journal messages replay has already processed, in one transaction."""
        ...

    def last_position(self, source: str) -> int:
        """The highest position journaled from `source` (0 if none)."""
        ...

    # -- inspection (queue commands, metrics), retry, rebuild, salvage

    def get(self, id: int) -> Row | None: ...

    def rows(self, state: str | None = None) -> list[Row]: ...

    def counts(self) -> dict[str, int]: ...

    def depth(self) -> int:
        """How many messages are not yet forwarded or dead."""
        ...

    def oldest_undelivered(self) -> float | None:
        """received_at of the oldest message not yet forwarded or dead."""
        ...

    def retry(self, control_id: str | None = None, now: float | None = None) -> int:
        """Put dead messages (all, or those with this control ID) back in the queue."""
        ...

    def discard(self, control_id: str, reason: str, by: str = "", now: float | None = None) -> int:
        """Remove the dead letters with this control ID for good, keeping a
        record of each (control ID, type, times, tries, last error, the reason
        given and who gave it) that `discarded()` lists; returns how many."""
        ...

    def discarded(self) -> list[dict]:
        """The records of discarded dead letters, oldest first."""
        ...

    def raw_rows(self) -> Iterator[tuple[int, float, bytes]]:
        """(id, received_at, raw) of every message row (not invalid frames), oldest first."""
        ...

    def salvage_undelivered(self) -> Iterator[Row | int]:
        """Every message not yet delivered or dead, in journal order: a `Row`
        for each that can be read, its id for each that cannot."""
        ...
