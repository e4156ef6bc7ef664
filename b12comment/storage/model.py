"""What every journal backend stores and answers: the states of a message,
the rows, what intake, processing and `replay --forward` hand in, and the
errors. Plain data only; the backends (sqlite/, postgres/) and the callers
share it.

States of a row::

    received --process--> processed --forward--> forwarded
                                      \\-------> dead  --queue retry--> processed
    invalid    (a frame answered AR: not an HL7 message, or over the size limit;
                kept for inspection; not to be confused with a message the
                downstream rejected, which is dead)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from b12comment.errors import EXIT_IO, B12Error

RECEIVED, PROCESSED, FORWARDED, DEAD, INVALID = "received", "processed", "forwarded", "dead", "invalid"
STATES = (RECEIVED, PROCESSED, FORWARDED, DEAD, INVALID)
UNDELIVERED = (RECEIVED, PROCESSED)

BATCH_BYTES = 8 * 1024 * 1024  # the message bytes one batch of rows may hold (processing, forwarding)
LARGE_BYTES = 256 * 1024  # larger message bytes are kept out of their row (see the backends)


class JournalError(B12Error):
    """The journal cannot be opened, read or written (exit 1)."""

    exit_code = EXIT_IO


class JournalFault(JournalError):
    """The journal can no longer be trusted with a new message: nothing is
    ACKed AA again until serve is restarted on a sound journal."""


class JournalGone(JournalFault):
    """The journal's file was deleted or replaced while open: what is
    committed now would be lost at the next start."""


class JournalCorrupt(JournalFault):
    """The database found the journal damaged (malformed, not a database)."""


class NotLeader(JournalFault):
    """This instance no longer holds the journal's lease (another may have
    taken over): nothing is ACKed AA or forwarded from here again."""


@dataclass(frozen=True)
class Receipt:
    id: int
    duplicate: bool  # a retransmission of a message already journaled
    reused: bool = False  # a new message under a control ID already journaled within the window


# A retransmission is the same control ID within the window and the same
# bytes but for what ends the message: senders that strip the final segment
# terminator (python-hl7's `mllp_send --loose`) or add a newline resend the
# same message. Both backends compare the bytes without these at the end.
TRAILING = "\r\n\t "


@dataclass(frozen=True)
class NewMessage:
    """Intake: a frame that is an HL7 message, to be journaled before its AA."""

    raw: bytes
    control_id: str
    message_type: str
    peer: str = ""
    conn_seq: int = 0
    retransmit_window_s: float = 0.0
    now: float | None = None


@dataclass(frozen=True)
class InvalidFrame:
    """Intake: a frame answered AR (not an HL7 message, or too large), kept for inspection."""

    raw: bytes
    reason: str
    peer: str = ""
    conn_seq: int = 0
    control_id: str = ""
    message_type: str = ""
    now: float | None = None


Arrival = NewMessage | InvalidFrame


@dataclass(frozen=True)
class Replayed:
    """A message `replay --forward` has processed, from `position` in its file."""

    raw: bytes
    processed: bytes
    control_id: str
    message_type: str
    commented: bool
    reasons: tuple[str, ...]
    position: int


@dataclass(frozen=True)
class Processed:
    """What the processing stage made of one journaled message (`processed`
    None: the received bytes, unchanged)."""

    id: int
    processed: bytes | None
    commented: bool
    reasons: tuple[str, ...] | list[str]


@dataclass(frozen=True)
class Row:
    id: int
    received_at: float
    updated_at: float
    peer: str
    conn_seq: int
    source: str
    position: int
    control_id: str
    message_type: str
    raw: bytes
    processed: bytes | None
    state: str
    attempts: int
    last_error: str | None
    commented: bool | None
    reasons: tuple[str, ...]


def batch_full(rows: Sequence[Row], limit: int, max_bytes: int = BATCH_BYTES) -> bool:
    """Whether a batch read with `limit` (and `max_bytes`) may have left rows
    behind: the caller reads again at once rather than waiting for news."""
    if len(rows) >= limit:
        return True
    held = 0
    for row in rows:
        held += len(row.raw)
        if row.processed is not None and row.processed is not row.raw:
            held += len(row.processed)
    return held >= max_bytes


def discard_record(
    id: int,
    control_id: str,
    message_type: str,
    received_at: float,
    dead_since: float,
    attempts: int,
    last_error: str | None,
    reason: str,
    by: str,
    now: float,
) -> str:
    """The record a discarded dead letter leaves (JSON): what it was, why it
    died, why it was discarded and by whom. No message bytes."""
    return json.dumps(
        {
            "journal_id": id,
            "control_id": control_id,
            "message_type": message_type,
            "received_at": received_at,
            "dead_since": dead_since,
            "tries": attempts,
            "last_error": last_error,
            "discarded_at": now,
            "reason": reason,
            "by": by,
        },
        sort_keys=True,
    )
