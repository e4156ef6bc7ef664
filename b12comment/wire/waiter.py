"""Waiting for the ACK of a message sent over MLLP, without the socket.

In the style of h11: the protocol is a small state machine fed with bytes,
and the caller owns the connection. One `AckWaiter` per connection:

    waiter.expect(control_id)        # a message went out
    reply = waiter.feed(data)        # for every read; None until an answer ends the wait

The answer is an `Ack` (MSA-1, MSA-2, the ERR code) or `Unreadable` (a frame
that is not an ACK). By default the wait ends only with the ACK whose MSA-2
is the message's MSH-10; ACKs for another control ID are noted in `others`
(the first ten) and skipped, so a late answer to an earlier message is never
taken for this one's. With `first_answer=True` (the `send` tool, which
shows what came back) the first ACK ends the wait whatever it names, and
`Ack.accepted_for` tells whether it accepts this message.

How an answer is classified, once for every sender of messages:
`Ack.accepted` (AA or CA: delivered), `Ack.rejected` (AR or CR: the
downstream will not take it; do not send it again), anything else (AE, CE,
an unknown code) is an error worth another try.
"""

from __future__ import annotations

from dataclasses import dataclass

from b12comment.core.segments import Malformed
from b12comment.wire.ack import ack_text, read_ack
from b12comment.wire.mllp import DEFAULT_MAX_MESSAGE_BYTES, Decoder, Frame

ACCEPTED_CODES = frozenset(("AA", "CA"))
REJECTED_CODES = frozenset(("AR", "CR"))
KEEP_OTHERS = 10  # control IDs of other ACKs kept for the error text


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1, upper case
    acked: str  # MSA-2: the control ID it answers
    error: str = ""  # the HL7 error code from ERR, if any
    text: str = ""  # ERR-8 (or MSA-3) for a person at a terminal; never logged (it may name a patient)

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED_CODES

    @property
    def rejected(self) -> bool:
        return self.code in REJECTED_CODES

    def accepted_for(self, control_id: str) -> bool:
        """AA or CA, and MSA-2 names this message."""
        return self.accepted and self.acked == control_id

    @property
    def detail(self) -> str:
        return f"{self.code}, error code {self.error}" if self.error else self.code


@dataclass(frozen=True)
class Unreadable:
    why: str


Reply = Ack | Unreadable


class AckWaiter:
    """The ACK side of one MLLP connection to a receiver."""

    def __init__(self, max_ack_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, first_answer: bool = False):
        self.max_ack_bytes = max_ack_bytes
        self.first_answer = first_answer
        self._decoder = Decoder(max_ack_bytes)
        self.control_id = ""
        self.heard = 0  # bytes received since expect()
        self.others: list[str] = []  # MSA-2 of skipped ACKs since expect()
        self._first = b""  # the first bytes received since expect()
        self._framed = False  # whether a whole frame came since expect()

    def reset(self) -> None:
        """A new connection: nothing half-read from the old one counts."""
        self._decoder = Decoder(self.max_ack_bytes)

    def expect(self, control_id: str) -> None:
        """A message with this MSH-10 was sent: wait for its answer."""
        self.control_id = control_id
        self.heard = 0
        self.others = []
        self._first, self._framed = b"", False

    def no_answer(self, default: str) -> str:
        """Why no answer came, for the error text: a receiver that answered an
        HL7 message without MLLP framing is named as such, else `default`."""
        if self.heard and not self._framed and self._first.lstrip(b"\r\n\x00 ").startswith(b"MSH"):
            return (
                "the receiver answered without MLLP framing (an HL7 message not inside 0x0B ... 0x1C 0x0D): "
                "turn on its MLLP (LLP) framing"
            )
        return default

    def feed(self, data: bytes) -> Reply | None:
        """Bytes the receiver sent; the reply that ends the wait, or None.
        (Frames after that reply in the same bytes are dropped: an answer
        comes only after its message, so they answer nothing still waiting.)"""
        if len(self._first) < 16:
            self._first += data[: 16 - len(self._first)]
        self.heard += len(data)
        for event in self._decoder.feed(data):
            if not isinstance(event, Frame):
                continue  # junk, or an ACK over max_ack_bytes: not an answer
            self._framed = True
            try:
                code, acked, error = read_ack(event.payload)
            except Malformed as exc:
                return Unreadable(f"unreadable answer: {exc}")
            if self.first_answer or acked == self.control_id:
                return Ack(code, acked, error, ack_text(event.payload) if self.first_answer else "")
            if len(self.others) < KEEP_OTHERS:
                self.others.append(acked)
        return None
