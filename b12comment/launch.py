"""The program's entry point (`b12comment`, `python -m b12comment`), kept
light so that it runs first.

`serve` is stopped with SIGTERM (systemd, a container runtime) or SIGINT.
Its own handlers are installed once its modules are imported and its event
loop runs, about half a second after start; until then Python's defaults
would kill it (exit 143 on SIGTERM) or raise KeyboardInterrupt. So the
first thing done for `serve`, before any import, is to catch both and only
note them: serve then stops at once, cleanly, and exits 0 whenever the
signal came.
"""

from __future__ import annotations

import signal
import sys

_received: list[int] = []
_caught: list[bool] = []


def _note(signum: int, frame: object) -> None:
    _received.append(signum)


def catch_stop_signals() -> None:
    """Note SIGTERM and SIGINT instead of dying; `stop_requested()` tells."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)
    _caught.append(True)


def catch_again() -> None:
    """After asyncio gave the signals back to Python's defaults: note them
    again, if they were caught at launch (serve ending must still exit 0)."""
    if _caught:
        catch_stop_signals()


def stop_requested() -> bool:
    """Whether SIGTERM or SIGINT came while only noted."""
    return bool(_received)


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        catch_stop_signals()
    from b12comment.cli import main as cli_main

    return cli_main()
