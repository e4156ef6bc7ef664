"""What replay shows while it runs, on stderr.

- On a terminal: one live line (files, messages, messages/s, ETA), rewritten
  in place, and the warnings (a file with no HL7 message, a batch whose count
  does not match) printed above it as they happen.
- Not on a terminal: the warnings only.
- `--quiet`: nothing; errors and the closing summary are printed by run.py.

The per-message decision records never go here: they go to `--log-file`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from b12comment.replay.tally import Tally

CLEAR_LINE = "\r\x1b[K"


class Progress:
    def __init__(self, total_bytes: int, quiet: bool, non_hl7: str = "", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()
        self.non_hl7 = non_hl7  # what became of a file with no HL7 message, for its warning
        self.total_bytes, self.done_bytes = max(total_bytes, 1), 0
        self.files = self.messages = 0
        self.started = time.monotonic()
        self._shown = False

    def record(self, rel: str, tally: Tally, size: int) -> None:
        self.files += 1
        self.messages += tally.messages
        self.done_bytes += size
        if not self.quiet:
            for warning in warnings(rel, tally, self.non_hl7):
                self._print(f"b12comment replay: warning: {warning}")
        if self.live:
            self._line()

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.messages / elapsed
        eta = elapsed * (self.total_bytes - self.done_bytes) / max(self.done_bytes, 1)
        self.stream.write(
            f"{CLEAR_LINE}{plural(self.files, 'file')}, {plural(self.messages, 'message')}, {rate:,.0f} msg/s, "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        self.stream.flush()
        self._shown = True

    def _print(self, text: str) -> None:
        if self._shown:
            self.stream.write(CLEAR_LINE)
            self._shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def warnings(rel: str, tally: Tally, non_hl7: str) -> list[str]:
    found = []
    if rel in tally.files_without_hl7:
        found.append(f"{rel}: no HL7 message" + (f"; {non_hl7}" if non_hl7 else ""))
    for m in tally.batch_count_mismatches:
        found.append(f"{m['file']}: {m['segment']}-1 says {m['declared']}, counted {m['counted']}")
    return found


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
