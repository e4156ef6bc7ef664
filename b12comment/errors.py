"""One error type for the whole command line, and the exit codes, defined once.

In click's pattern: code that cannot go on raises a `B12Error` (or a subclass)
whose message is the one line to print and whose `exit_code` is the code to
exit with. `cli.main` catches it, prints `b12comment: <message>` on stderr and
returns the code; nothing else prints tracebacks or picks exit codes by hand.
README.md ("Exit codes") documents the same table.
"""

from __future__ import annotations

EXIT_OK = 0
"""Done: every input read, every output written, every message sent got AA."""

EXIT_IO = 1
"""At run time an input could not be read, an output or a journal could not be
written or read, or a downstream or listener could not be reached. Said on
stderr (and, for replay, in the report); what could be done was done."""

EXIT_USAGE = 2
"""Usage or configuration error, found before anything ran: a bad option, a
bad configuration file, an input that does not exist, an output folder that
another replay is using."""

EXIT_NOT_ACCEPTED = 3
"""`send`: every message was sent, but at least one was not answered AA
(AE, AR, an ACK for another control ID, or no ACK in time)."""

EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C (SIGINT) in a command other than serve (which stops
cleanly on SIGINT and exits 0). 128 + 2, as shells report it."""

EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_IO: "an input could not be read or an output not written",
    EXIT_USAGE: "usage or configuration error; nothing ran",
    EXIT_NOT_ACCEPTED: "send: a message was not acknowledged with AA",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class B12Error(Exception):
    """A failure the user can act on: the message is one line, no traceback."""

    exit_code = EXIT_IO

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(B12Error):
    """A bad option, a missing input, a refused combination: nothing ran."""

    exit_code = EXIT_USAGE


def describe_os_error(exc: BaseException) -> str:
    """`Permission denied: var/journal.sqlite3`, not `[Errno 13] ...`."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__
