"""Repeated warnings and errors are rate-limited, with a count of those
dropped; info records always pass."""

from __future__ import annotations

import pytest
import structlog

from b12comment.logs import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def passes(limit: RateLimit, **record) -> dict | None:
    try:
        return limit(None, record.get("level", "error"), dict(record))
    except structlog.DropEvent:
        return None


def test_a_burst_passes_then_one_per_interval_with_the_count_dropped():
    clock = Clock()
    limit = RateLimit(burst=3, every_s=10.0, clock=clock)
    record = dict(event="journal_unavailable", level="error", stage="listener", error="disk full")
    assert all(passes(limit, **record) for _ in range(3))
    assert [passes(limit, **record) for _ in range(50)] == [None] * 50
    clock.now = 10.0
    again = passes(limit, **record)
    assert again is not None and again["suppressed"] == 50
    assert passes(limit, **record) is None  # the next one waits for the next interval
    clock.now = 20.0
    assert passes(limit, **record)["suppressed"] == 1


def test_kinds_are_counted_apart_and_info_is_never_dropped():
    limit = RateLimit(burst=1, every_s=10.0, clock=Clock())
    assert passes(limit, event="ack", level="warning", ack_code="AR", reason="not an HL7 message")
    assert passes(limit, event="ack", level="warning", ack_code="AR", reason="not an HL7 message") is None
    assert passes(limit, event="ack", level="warning", ack_code="AE")  # another kind
    assert passes(limit, event="ack", level="warning", ack_code="AR", reason="too large")  # another reason
    assert all(passes(limit, event="ack", level="info", ack_code="AA") for _ in range(1000))


@pytest.mark.parametrize("peer", ["127.0.0.1:1", "127.0.0.1:2"])
def test_who_sent_it_does_not_make_a_new_kind(peer):
    limit = RateLimit(burst=1, every_s=10.0, clock=Clock())
    assert passes(limit, event="junk_skipped", level="warning", peer="10.0.0.1:5")
    assert passes(limit, event="junk_skipped", level="warning", peer=peer) is None
