"""While traffic is light a message is processed at once: the processing
stage lingers for a batch to gather only after a large batch (heavy
traffic). Real journal, real processing stage; the linger is set to an
hour, so a message processed here was not held back by it."""

from __future__ import annotations

import asyncio

import structlog
from journal_helpers import record
from service_helpers import SAMPLES, msh10

from b12comment.core.rule_config import RuleConfig
from b12comment.serve.metrics import Metrics
from b12comment.serve.processing import LINGER_FROM, Processor
from b12comment.storage.writer import JournalThread

HOUR = 3600.0


def _raw(n: int) -> bytes:
    raw = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
    cid = msh10(raw)
    return raw.replace(cid.encode(), f"{cid}-{n}".encode(), 1)


def test_a_message_after_a_quiet_spell_is_processed_without_the_linger(tmp_path):
    async def main() -> list[str]:
        journal = JournalThread(tmp_path / "j.sqlite3")
        stop, wake, processed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        log = structlog.get_logger()
        proc = Processor(journal, RuleConfig(), Metrics(), log, wake, processed, poll_s=HOUR, linger_s=HOUR)
        task = asyncio.create_task(proc.run(stop))
        try:
            for n in range(3):  # each alone: none makes the next one linger
                raw = _raw(n)
                await journal.call(lambda j, raw=raw, n=n: record(j, raw, f"C{n}"))
                processed.clear()
                wake.set()
                await asyncio.wait_for(processed.wait(), 60)  # far less than the hour's linger
            rows = await journal.call(lambda j: j.rows())
            return [r.state for r in rows]
        finally:
            stop.set()
            wake.set()
            await asyncio.wait_for(task, 30)
            await journal.close()

    assert asyncio.run(main()) == ["processed"] * 3
    assert LINGER_FROM > 1
