"""`replay --forward URL`: replayed messages go downstream through the
service's journal and forwarder, with its ordering, retry and dead-letter rules.

Each input file's messages are processed in order and journaled as already
processed, in batches of one transaction each, under the source name
`replay:<relative path>` with their position in the file. A rerun with
`--resume` journals only the positions not yet journaled, so an interrupted
replay sends nothing twice from its side (delivery itself is at least once,
as in `serve`: a kill between the downstream's AA and the journal update
resends those messages, at most 10, with the same control IDs). Then the forwarder runs
until nothing is left to deliver: every message is delivered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from b12comment.config import Config
from b12comment.core import chain
from b12comment.delivery.forwarder import Forwarder, NoMetrics
from b12comment.delivery.transports import transport_for
from b12comment.errors import UsageError
from b12comment.logs import get_logger
from b12comment.replay.first_pass import Reader
from b12comment.replay.tally import Tally
from b12comment.storage import is_url
from b12comment.storage.interface import JournalStore
from b12comment.storage.model import Replayed
from b12comment.storage.writer import JournalThread
from b12comment.wire.split import open_input, read_pieces

BATCH = 500
SOURCE_PREFIX = "replay:"


def journal_path_for(config: Config, given: str | None) -> str | Path:
    """A journal of its own by default, so a running `serve` never shares it
    (a file beside serve's; with serve's journal in a database, --journal
    must name one: a file, or another database's URL)."""
    if given:
        return given if is_url(given) else Path(given)
    if is_url(config.journal.path):
        raise UsageError(
            "replay --forward: serve's journal is a database, which replay must not share: "
            "give replay a journal of its own with --journal (a file, or another database's URL)"
        )
    serve_journal = Path(config.journal.path)
    return serve_journal.with_name(serve_journal.stem + "-replay" + serve_journal.suffix)


def enqueue_file(
    journal: JournalStore,
    src: str,
    rel: str,
    config: Config,
    resume: bool,
    log=None,
    context: Reader | None = None,
    index: int = 0,
    audit=None,
) -> Tally:
    """Process one file and journal its messages; returns its tally. `log`:
    run.DecisionLog for `--log-file`; `context`: the first pass's store, and
    `index` the file's place in the plan; `audit`: the audit's Recorder."""
    source = SOURCE_PREFIX + rel
    already = journal.last_position(source) if resume else 0
    tally = Tally(files=1)
    batch: list[Replayed] = []
    position = 0
    with open_input(src) as fin:
        for piece in read_pieces(fin):
            if piece.kind != "message":
                continue
            position += 1
            if context is None:
                outcome = chain.decide(None, 0, piece.data, config.rule)
            else:
                outcome = context.decide(index, position, piece.data, config.rule)
            output, decision = outcome.output, outcome.decision
            tally.add(decision, rel, position, config.rule)
            if log is not None:
                log.write(position, decision)
            if position <= already:
                continue
            if audit is not None:
                audit.record(piece.data, decision)
            batch.append(
                Replayed(
                    raw=piece.data,
                    processed=output,
                    control_id=decision.control_id,
                    message_type=decision.message_type,
                    commented=decision.commented,
                    reasons=tuple(decision.reasons),
                    position=position,
                )
            )
            if len(batch) >= BATCH:
                journal.enqueue_processed(source, batch)
                batch = []
    if batch:
        journal.enqueue_processed(source, batch)
    if audit is not None:
        audit.flush()
    if position == 0:
        tally.files_without_hl7.append(rel)
    return tally


async def drain(path: str | Path, config: Config, url: str, poll_s: float = 0.2) -> dict[str, int]:
    """Run the forwarder until no message waits; returns the journal's counts."""
    ds = dataclasses.replace(config.downstream, url=url)
    journal = JournalThread(path)
    stop, wake = asyncio.Event(), asyncio.Event()
    forwarder = Forwarder(
        journal, transport_for(ds), ds, NoMetrics(), get_logger("b12comment.forward"), wake, poll_s=poll_s
    )
    task = asyncio.create_task(forwarder.run(stop))
    try:
        while await journal.depth() and not task.done():
            await asyncio.sleep(poll_s)
    finally:
        stop.set()
        wake.set()
        await task
        counts = await journal.call(lambda j: j.counts())
        await journal.close()
    return counts
