"""Replay with the context: a first pass over the whole input builds it.

An archive holds the patient's earlier and later messages, so before any
message is decided, the input is read once and the rows of every message
of a patient who could be a child go into a temporary context store on disk (a SQLite file beside the resume
record, or the journal with --forward): memory stays flat for an archive of
any size. Then every message is decided with that store, from any number of
worker processes (readers only), so a B12 is vetoed by an abnormal result of
the same patient that comes later in the archive too (within the window, by
collection time).

The store's key is made for the run and lives only in memory and in the
jobs given to the workers; the file is deleted when the run ends. A resumed
run makes its first pass again.
"""

from __future__ import annotations

import contextlib
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

from b12comment.context import ContextStore, Outcome, decide
from b12comment.core.context import extract
from b12comment.core.rule_config import RuleConfig
from b12comment.replay.inputs import open_input, read_pieces
from b12comment.replay.resume import CONTEXT_NAME

NAME = CONTEXT_NAME
COMMIT_EVERY = 2000


@dataclass(frozen=True)
class ReplayContext:
    """What a worker needs to decide with the first pass's store."""

    path: str
    key: bytes
    mode: str
    lookback_days: float


def seq(file_index: int, position: int) -> int:
    """A message's place in the whole input: files in plan order, then position."""
    return ((file_index + 1) << 32) | position


def build(path: Path, files: list[str], rule: RuleConfig, mode: str, lookback_days: float) -> ReplayContext:
    """The first pass: one read of the input, the rows of every message into
    a new store at `path`. An adult's message gives no rows (its results can
    veto nothing) and costs a byte search; a child's is read in full. A file
    that cannot be read is skipped here (the second pass reports it)."""
    remove(path)
    key = secrets.token_bytes(32)
    store = ContextStore(path, key)
    try:
        count = 0
        for index, position, message in _messages(files):
            ex = extract(message, rule, lookback_days)
            if ex is not None and ex.rows:
                store.add(seq(index, position), ex, now=0.0)
                count += 1
                if count % COMMIT_EVERY == 0:
                    store.commit()
        store.commit()
    finally:
        store.close()
    return ReplayContext(str(path), key, mode, lookback_days)


def _messages(files: list[str]):
    """(file index, position, message) of every message of every readable file."""
    for index, src in enumerate(files):
        position = 0
        try:
            with open_input(src) as fin:
                for piece in read_pieces(fin):
                    if piece.kind == "message":
                        position += 1
                        yield index, position, piece.data
        except (OSError, EOFError, ValueError, zlib.error):
            continue


class Reader:
    """A worker's read-only use of the first pass's store."""

    def __init__(self, ctx: ReplayContext):
        self.ctx = ctx
        self.store = ContextStore(ctx.path, ctx.key)

    def decide(self, file_index: int, position: int, message: bytes, rule: RuleConfig) -> Outcome:
        return decide(
            self.store,
            seq(file_index, position),
            message,
            rule,
            self.ctx.mode,
            self.ctx.lookback_days,
            record=False,
            watch=False,
        )

    def close(self) -> None:
        self.store.close()


def remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
