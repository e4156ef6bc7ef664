"""Replay with the context: a first pass over the whole input builds it.

An archive holds the patient's earlier and later messages, so before any
message is decided, the input is read first and the rows of every message
that shares a patient or a requisition with a B12 message go into a
temporary context store on disk (a SQLite file beside the resume
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
from b12comment.core.context import Keys, extract, keys
from b12comment.core.engine import has_b12_code, process
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
    """The first pass, in two reads of the input. (1) Which messages would get
    a comment on their own: only those can be vetoed, so only their patients
    and requisitions are wanted. (2) The rows of every message that may share
    one of them (by PID-3 identifier, or a requisition number it contains):
    the store then matches exactly by keyed hash. No other message's results
    are read or kept. A file that cannot be read is skipped here (the second
    pass reports it)."""
    remove(path)
    key = secrets.token_bytes(32)
    store = ContextStore(path, key)
    try:
        wanted = Wanted(rule)
        for _, _, message in _messages(files):
            if has_b12_code(message, rule) and process(message, rule)[1].commented:
                found = keys(message, rule)
                if found is not None:
                    wanted.add(found)
        if wanted:
            count = 0
            for index, position, message in _messages(files):
                if not wanted.may_share(message):
                    continue
                ex = extract(message, rule, lookback_days)
                if ex is not None:
                    store.add(seq(index, position), ex, now=0.0)
                    count += 1
                    if count % COMMIT_EVERY == 0:
                        store.commit()
        store.commit()
    finally:
        store.close()
    return ReplayContext(str(path), key, mode, lookback_days)


class Wanted:
    """The patients and requisitions of the messages that would get a comment
    (raw, in this process's memory only). `may_share` errs on the side of
    keeping a message: the store's keyed hashes decide exactly."""

    MANY = 64  # more requisition numbers than this: each message's own keys are read

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.ids: set[bytes] = set()
        self.requisitions: set[bytes] = set()

    def __bool__(self) -> bool:
        return bool(self.ids or self.requisitions)

    def add(self, found: Keys) -> None:
        self.ids.update(k.split(b"\x00", 1)[0] for k in found.patients)
        self.requisitions.update(k.split(b"\x00", 1)[1] for k in found.requisitions)

    def may_share(self, message: bytes) -> bool:
        if self.ids and self._pid3_ids(message) & self.ids:
            return True
        if not self.requisitions:
            return False
        if len(self.requisitions) <= self.MANY:
            return any(r in message for r in self.requisitions)
        found = keys(message, self.rule)
        return found is not None and any(k.split(b"\x00", 1)[1] in self.requisitions for k in found.requisitions)

    @staticmethod
    def _pid3_ids(message: bytes) -> set[bytes]:
        """The identifiers (PID-3.1) of the message's PID segments, read cheaply."""
        if len(message) < 8:
            return set()
        fs = message[3:4]
        cs, rs, ss = (c if c != fs else b"" for c in (message[4:5], message[5:6], message[7:8]))
        ids = set()
        for sep in (b"\r", b"\n"):
            i = message.find(sep + b"PID" + fs)
            while i != -1:
                parts = message[i + 1 : i + 4096].split(fs, 4)
                if len(parts) > 3:
                    for rep in parts[3].split(rs) if rs else [parts[3]]:
                        ident = rep.split(b"\r", 1)[0].split(b"\n", 1)[0]
                        ident = ident.split(cs, 1)[0] if cs else ident
                        ident = (ident.split(ss, 1)[0] if ss else ident).strip()
                        if ident:
                            ids.add(ident)
                i = message.find(sep + b"PID" + fs, i + 1)
        return ids


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
