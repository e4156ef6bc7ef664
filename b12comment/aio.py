"""Two small helpers the asyncio code (serve, the forwarder) shares."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` seconds pass, whichever is first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def describe_error(exc: BaseException) -> str:
    """One short line for an exception: its OS reason, else its message, else its type."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
