"""structlog set-up: JSON lines in production, readable on a terminal.

Patient data never reaches a log line unless the operator allows it: the
`scrub` processor drops every key in PATIENT_KEYS unless `patient_data` is on.
Code that logs must still only pass the fields it means to.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import structlog

PATIENT_KEYS = frozenset({"patient_name", "patient_id", "birth_date", "message_text", "segment"})


def _scrubber(allow_patient_data: bool):
    def scrub(logger, method_name, event_dict):
        if not allow_patient_data:
            for key in PATIENT_KEYS & event_dict.keys():
                event_dict[key] = "[withheld]"
        return event_dict

    return scrub


class RateLimit:
    """A processor that lets through at most `burst` records of one kind, then
    one per `every_s` seconds, each of those with `suppressed` = how many of
    its kind were dropped since the last one let through. A kind is the
    event, level and the fields that say what went wrong (not who or which
    message), so one flood of junk, or a disk that stays full, costs a few
    lines instead of one per frame. Info and debug records always pass."""

    KIND_KEYS = ("stage", "error", "reason", "ack_code", "what")
    LEVELS = frozenset({"warning", "error", "critical"})

    def __init__(self, burst: int = 100, every_s: float = 10.0, clock=time.monotonic):
        self.burst, self.every_s, self.clock = burst, every_s, clock
        self._kinds: dict[tuple, list] = {}  # kind -> [records let through, last let through at, suppressed]
        self._lock = threading.Lock()

    def __call__(self, logger, method_name, event_dict):
        level = event_dict.get("level", method_name)
        if level not in self.LEVELS:
            return event_dict
        kind = (event_dict.get("event"), level, *(str(event_dict.get(k, "")) for k in self.KIND_KEYS))
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                if len(self._kinds) >= 10_000:  # bounded: forget the oldest kinds
                    for old in list(self._kinds)[:1000]:
                        del self._kinds[old]
                self._kinds[kind] = [1, now, 0]
                return event_dict
            if state[0] < self.burst or now - state[1] >= self.every_s:
                state[0] += 1
                state[1] = now
                if state[2]:
                    event_dict["suppressed"] = state[2]
                    state[2] = 0
                return event_dict
            state[2] += 1
        raise structlog.DropEvent


class LineLogger:
    """Writes each rendered line with one os.write, so lines from several
    processes sharing stderr never run into each other."""

    def __init__(self, stream):
        self._stream = stream

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._stream.write(message + "\n")
            return
        self._stream.flush()
        while data:
            data = data[os.write(fd, data) :]

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(level: str = "info", fmt: str = "auto", patient_data: bool = False, stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            RateLimit(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrubber(patient_data),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *args: LineLogger(stream),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "b12comment"):
    return structlog.get_logger(name)
