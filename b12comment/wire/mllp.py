"""MLLP framing as a pure codec: bytes in, events out, no I/O.

A frame is ``0x0B payload 0x1C 0x0D``. Feed the `Decoder` whatever a socket
read returned and it gives back events, in the order they happened:

- `Frame(payload)`: a complete message.
- `Junk(size)`: bytes that were not inside a frame and were skipped (before a
  start block, or an unfinished frame abandoned by a new start block).
- `Oversize(size, head)`: a frame longer than `max_message_bytes`. Its bytes
  were discarded while streaming; only its first `head_bytes` are kept, so the
  caller can still read MSH and answer with a NAK.
- `Incomplete(size)` (only from `close()`): the stream ended inside a frame.

The end block is 0x1C; the 0x0D after it is expected and swallowed, but a
sender that leaves it out still gets its frame (nothing waits for the 0x0D).
In the style of h11: the protocol is a small state machine, and the socket
handling lives elsewhere (listener and forwarder).
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_HEAD_BYTES = 4096


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class Junk:
    size: int


@dataclass(frozen=True)
class Oversize:
    size: int  # payload bytes seen (start and end blocks not counted)
    head: bytes  # the first bytes of the payload


@dataclass(frozen=True)
class Incomplete:
    size: int


Event = Frame | Junk | Oversize | Incomplete

_OUTSIDE, _INSIDE, _DISCARDING = "outside", "inside", "discarding"


def check(payload: bytes) -> None:
    """Raise ValueError if the payload cannot be framed (it holds a block byte)."""
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("payload holds an MLLP start or end block byte (0x0B or 0x1C)")


def encode(payload: bytes) -> bytes:
    """Wrap one message in an MLLP frame."""
    check(payload)
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


def pieces(payload: bytes, size: int) -> list[bytes | memoryview]:
    """The frame of a payload as pieces of about `size` bytes, to be written
    one after another: a large message is sent without a framed copy of it
    (the pieces between the blocks are views of the payload). A small one
    is one piece. Raises ValueError as `encode` does."""
    if len(payload) <= size:
        return [encode(payload)]
    check(payload)
    view = memoryview(payload)
    return [START_BLOCK, *(view[i : i + size] for i in range(0, len(view), size)), END_BLOCK + CARRIAGE_RETURN]


class Decoder:
    """Turns a byte stream into MLLP events; never holds more than one
    frame of at most `max_message_bytes`."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, head_bytes: int = DEFAULT_HEAD_BYTES):
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self.head_bytes = head_bytes
        self._reset()

    def _reset(self) -> None:
        self._state = _OUTSIDE
        self._junk = 0
        self._buffer = bytearray()
        self._size = 0
        self._head = b""
        self._skip_cr = False
        self._rest = b""  # bytes fed but not yet read: feed() stopped at its limit

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not yet ended."""
        return self._state != _OUTSIDE

    @property
    def pending(self) -> bool:
        """True when feed() stopped at its limit: `feed(b"", limit)` goes on."""
        return bool(self._rest)

    def feed(self, data: bytes, limit: int = 0) -> list[Event]:
        """The events of the bytes fed so far. With `limit`, stops after that
        many frames (Frame or Oversize) and keeps the rest for the next call:
        a read of thousands of tiny frames costs the caller only what it takes."""
        if self._rest:
            data, self._rest = self._rest + data, b""
        events: list[Event] = []
        frames = 0
        pos, n = 0, len(data)
        while pos < n:
            if limit and frames >= limit:
                self._rest = data[pos:]
                break
            if self._skip_cr:
                self._skip_cr = False
                if data[pos : pos + 1] == CARRIAGE_RETURN:
                    pos += 1
                    continue
            if self._state == _OUTSIDE:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self._junk += n - pos
                    break
                self._junk += start - pos
                if self._junk:
                    events.append(Junk(self._junk))
                    self._junk = 0
                self._begin()
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos, end if end >= 0 else n)
            if restart >= 0:
                # A new start block before the end: the unfinished frame is abandoned.
                events.append(Junk(1 + self._size + (restart - pos)))
                self._begin()
                pos = restart + 1
                continue
            if end < 0:
                self._take(data[pos:])
                break
            self._take(data[pos:end])
            events.append(self._finish())
            frames += 1
            pos = end + 1
        return events

    def close(self) -> list[Event]:
        """End of stream: report what was left over, and reset."""
        events: list[Event] = self.feed(b"") if self._rest else []
        if self._state != _OUTSIDE:
            events.append(Incomplete(self._size))
        elif self._junk:
            events.append(Junk(self._junk))
        self._reset()
        return events

    # -- internals

    def _begin(self) -> None:
        self._state = _INSIDE
        self._buffer = bytearray()
        self._size = 0
        self._head = b""

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._state == _INSIDE and self._size + len(chunk) > self.max_message_bytes:
            self._state = _DISCARDING
            self._head = bytes((self._buffer + chunk[: self.head_bytes])[: self.head_bytes])
            self._buffer = bytearray()
        elif self._state == _INSIDE:
            self._buffer += chunk
        self._size += len(chunk)

    def _finish(self) -> Event:
        if self._state == _DISCARDING:
            event: Event = Oversize(self._size, self._head)
        else:
            event = Frame(bytes(self._buffer))
        self._state = _OUTSIDE
        self._buffer = bytearray()
        self._size = 0
        self._head = b""
        self._skip_cr = True
        return event
