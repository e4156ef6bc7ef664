"""The pure core: message bytes and plain data in, bytes and a Decision out.

No I/O, no clock, no globals. Modules here import only each other, the
standard library, hl7apy and dateutil (tests/test_architecture.py holds that).
The one entry point is `process(message, rule) -> (bytes, Decision)`.
"""

from b12comment.core.engine import process

__all__ = ["process"]
