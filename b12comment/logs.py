"""structlog set-up: JSON lines in production, readable on a terminal.

Patient data never reaches a log line unless the operator allows it: the
`scrub` processor drops every key in PATIENT_KEYS unless `patient_data` is on.
Code that logs must still only pass the fields it means to.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

PATIENT_KEYS = frozenset({"patient_name", "patient_id", "birth_date", "message_text", "segment"})


def _scrubber(allow_patient_data: bool):
    def scrub(logger, method_name, event_dict):
        if not allow_patient_data:
            for key in PATIENT_KEYS & event_dict.keys():
                event_dict[key] = "[withheld]"
        return event_dict

    return scrub


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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrubber(patient_data),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *args: LineLogger(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "b12comment"):
    return structlog.get_logger(name)
