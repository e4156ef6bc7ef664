"""Replay with the context: a first pass over the whole input builds it.

An archive holds the patient's earlier and later messages, so before any
message is decided, the input is read and the rows that can matter go into
a temporary context store on disk (a SQLite file beside the resume record,
or the journal with --forward): memory stays flat for an archive of any
size. Then every message is decided with that store, from any number of
worker processes (readers only), so a B12 is vetoed by an abnormal result of
the same patient that comes later in the archive too (within the window, by
collection time).

Which rows can matter: a message's context is looked up only when the
message alone would get the comment, so it holds a B12 code (the engine's
own byte pre-check): such a message is a *candidate*. Its context is the
rows of the other messages that share one of its keys (a PID-3 identifier
with its authority, or a requisition). So:

1. The first pass reads every result message's keys (`possible_keys`: byte
   searches, no result read) and writes them, hashed, with the message's
   place and whether it is a candidate, to a scratch file; three bit sets
   (keys seen, seen twice, a candidate's) mark the keys that may be shared
   with a candidate.
2. Reading the scratch file, those keys are counted exactly: a key of a
   candidate found in two messages or more is *shared*, and each message
   with a shared key is *kept*. (Memory is bounded: past MAX_COUNTED keys
   to count, the bit sets' maybes are taken as they are; past MAX_KEPT
   messages to keep, every message's rows are kept.)
3. Only the files that hold a kept message are read again, and only the
   kept messages' rows go into the store (an adult's message by its own
   birth dates as its ADULT_ROW rows, as in serve: a patient is their
   identifiers).
4. Deciding, a message that would get the comment is decided again with
   its context only if its rows are in the store: if they are not, no
   other message shares a key with it and its context would be empty.

A 64-bit keyed hash stands for a key (Python's own string hash, keyed at
random per process; blake2b with the run's key when PYTHONHASHSEED fixes
that hash): two keys with one hash only make more messages kept, never
fewer, and the scratch file (mode 0600) holds no identifier. A message
whose keys cannot be found makes the run keep every message's rows.

The store's key is made for the run and lives only in memory and in the
jobs given to the workers; the store and the scratch file are deleted when
the run ends. A resumed run makes its passes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from b12comment.context import ContextStore
from b12comment.core.chain import Outcome, decide
from b12comment.core.context import Context, contradiction
from b12comment.core.keys import possible_keys
from b12comment.core.rows import Extract, extract
from b12comment.core.rule_config import RuleConfig
from b12comment.replay.resume import CONTEXT_NAME
from b12comment.wire.split import is_gzip, open_input, read_pieces

NAME = CONTEXT_NAME
COMMIT_EVERY = 2000
CANDIDATE = 1 << 62  # flag beside a message's place in the scratch file
_RECORDS = 1 << 16  # (hash, place) pairs buffered before they are written
MAX_COUNTED = 300_000  # keys counted exactly (a dict entry each, about 100 bytes)
MAX_KEPT = 500_000  # places of kept messages held (a set entry each, about 60 bytes)


@dataclass(frozen=True)
class FirstPass:
    """What a worker needs to decide with the first pass's store."""

    path: str
    key: bytes
    mode: str
    lookback_days: float
    rows_rule: RuleConfig | None = None  # the rule the store's rows were made with


def place_of(file_index: int, position: int) -> int:
    """A message's place in the whole input: files in plan order, then position."""
    return ((file_index + 1) << 32) | position


def build(
    path: Path,
    files: list[str],
    rules: Iterable[RuleConfig],
    mode: str,
    lookback_days: float,
    *,
    every_message: bool = False,
) -> FirstPass:
    """The passes that fill a new store at `path` for deciding with `rules`
    (the rule, and the old rule of --compare-config; the rows are the first
    rule's, as in serve). `every_message`: keep every message's rows (what
    the narrowing must decide the same as; tests compare the two). A file
    that cannot be read is skipped here (the deciding pass reports it)."""
    rules = list(rules)
    remove(path)
    key = secrets.token_bytes(32)
    store = ContextStore(path, key, durable=False)
    scratch = Path(f"{path}-keys")  # the first pass's (hash, place) pairs
    try:
        kept = None if every_message else _kept(files, rules, scratch, _key_hash(key))
        count = 0
        for index, position, message in _messages(files, None if kept is None else {s >> 32 for s in kept}):
            s = place_of(index, position)
            if kept is not None and s not in kept:
                continue
            ex = extract(message, rules[0], lookback_days)  # an adult's message: its ADULT_ROW rows, as in serve
            if ex is not None and ex.rows:
                store.add(s, ex, now=0.0)
                why = contradiction(ex, rules[0])
                if why:  # the review list: a comment on an earlier message of its patient is contradicted
                    store.add_review(s, ex, why)
                count += 1
                if count % COMMIT_EVERY == 0:
                    store.commit()
        store.commit()
    finally:
        store.close()
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    return FirstPass(str(path), key, mode, lookback_days, rules[0])


def _bits_for(files: list[str]) -> int:
    """log2 of the bit sets' size: 8 bits per 256 bytes of input (a gzip
    file counted 8 times its size; a message of 1.6 KB has two or three
    keys, so about 20 bits a key, and a set about 5% full), from 64 Kbit to
    128 Mbit (16 MB)."""
    size = 0
    for f in files:
        with contextlib.suppress(OSError):
            size += Path(f).stat().st_size * (8 if is_gzip(f) else 1)
    return min(max((size // 256 * 8).bit_length(), 16), 27)


def _result_line(rules: list[RuleConfig]) -> Callable[[bytes], bool]:
    """A test that is true for every message whose type one of the rules
    looks at (and for some others): its MSH line, upper-cased, holds the
    message code. Bytes are upper-cased as the engine's str.upper() does
    for ASCII; a line with a byte that str.upper() makes ASCII of (latin-1
    sharp s: SS), or a code that is not ASCII, is read as text."""
    codes = tuple(dict.fromkeys(t.split("^", 1)[0].strip().upper() for rule in rules for t in rule.message_types))
    ascii_codes = tuple(c.encode("ascii") for c in codes) if all(c.isascii() for c in codes) else None

    def may_be(message: bytes) -> bool:
        end = message.find(b"\r")
        if end == -1:
            end = len(message)
        lf = message.find(b"\n", 0, end)
        raw = message[: end if lf == -1 else lf]
        if ascii_codes is not None and b"\xdf" not in raw:
            upper = raw.upper()
            return any(code in upper for code in ascii_codes)
        line = raw.decode("latin-1").upper()
        return any(code in line for code in codes)

    return may_be


def _key_hash(key: bytes) -> Callable[[bytes], int]:
    """A 64-bit hash keyed with a secret: Python's hash() (SipHash, keyed at
    random per process) unless PYTHONHASHSEED makes that key known."""
    if os.environ.get("PYTHONHASHSEED", "random") == "random":
        return hash

    def keyed(k: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(k, digest_size=8, key=key).digest(), "little", signed=True)

    return keyed


def _kept(files: list[str], rules: list[RuleConfig], scratch: Path, hash_of=hash) -> set[int] | None:
    """The places of the messages whose rows can matter; None if a
    message's keys could not be found or too many messages are kept (then
    every message's rows are kept)."""
    codes = tuple(dict.fromkeys(cm.code.encode("ascii") for rule in rules for cm in rule.codes))
    may_be = _result_line(rules)
    bits = _bits_for(files)
    mask = (1 << bits) - 1
    # One bit a key (the low bits of its hash) in each set: "maybe" for about
    # as many unseen keys as the set has bits set, counted exactly below.
    seen, shared, candidate = bytearray(1 << (bits - 3)), bytearray(1 << (bits - 3)), bytearray(1 << (bits - 3))
    bit = [1 << i for i in range(8)]
    records = array("q")
    append = records.append
    with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        for index, position, message in _messages(files):
            if not may_be(message):
                continue
            found = possible_keys(message)
            if found is None:
                return None
            if not found:
                continue
            place = place_of(index, position)
            is_candidate = any(code in message for code in codes)  # as the engine's pre-check
            if is_candidate:
                place |= CANDIDATE
            for k in found:
                h = hash_of(k)
                i = (h & mask) >> 3
                m = bit[h & 7]
                if seen[i] & m:
                    shared[i] |= m
                else:
                    seen[i] |= m
                if is_candidate:
                    candidate[i] |= m
                append(h)
                append(place)
            if len(records) >= _RECORDS:
                records.tofile(out)
                del records[:]
        records.tofile(out)
    del seen

    # The bit sets' "maybe", counted exactly: a candidate's key in two messages
    # or more. Memory is bounded: past MAX_COUNTED keys the maybes are taken
    # as they are, past MAX_KEPT messages every message's rows are kept.
    count: dict[int, int] | None = {}
    has_candidate: set[int] = set()
    for h, place in _read_records(scratch):
        i, m = (h & mask) >> 3, bit[h & 7]
        if count is not None and shared[i] & m and candidate[i] & m:
            count[h] = count.get(h, 0) + 1
            if place & CANDIDATE:
                has_candidate.add(h)
            if len(count) > MAX_COUNTED:
                count = None
                has_candidate.clear()
                break
    keys: set[int] | None = None
    if count is not None:
        keys = {h for h in has_candidate if count[h] > 1}
        del count, has_candidate
        if not keys:
            return set()
    kept: set[int] = set()
    for h, place in _read_records(scratch):
        if keys is not None:
            if h not in keys:
                continue
        else:
            i, m = (h & mask) >> 3, bit[h & 7]
            if not (shared[i] & m and candidate[i] & m):
                continue
        kept.add(place & ~CANDIDATE)
        if len(kept) > MAX_KEPT:
            return None
    return kept


def _read_records(scratch: Path) -> Iterator[tuple[int, int]]:
    with open(scratch, "rb") as f:
        while True:
            block = array("q")
            with contextlib.suppress(EOFError):  # the last, shorter block (fromfile keeps what it read)
                block.fromfile(f, _RECORDS)
            if not block:
                return
            it = iter(block)
            yield from zip(it, it, strict=True)


def _messages(files: list[str], only: set[int] | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(file index, position, message) of every message of every readable
    file (`only`: of the files whose place's high part is in it)."""
    for index, src in enumerate(files):
        if only is not None and index + 1 not in only:
            continue
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
    """A worker's read-only use of the first pass's store, as the deciding
    chain's Store: a message that would get the comment is finished with
    what the store knows of its requisition and patient. Its context is
    empty (nothing is read) when the store does not hold its rows: no other
    message shares a key with it. Under another rule than the rows' (the old
    rule of --compare-with), every such message is looked up: it may be one
    the rows' rule does not read."""

    def __init__(self, ctx: FirstPass):
        self.ctx = ctx
        self.store = ContextStore(ctx.path, ctx.key)
        self._rule: RuleConfig | None = None
        # The rows of the message last looked up (its place, the rule, its rows):
        # `contradicting` of the same message reads them again otherwise.
        self._last: tuple[int, RuleConfig, Extract] | None = None

    def decide(self, file_index: int, position: int, message: bytes, rule: RuleConfig) -> Outcome:
        """The deciding chain (core/chain.py) with this store, nothing
        recorded; a store that fails raises (the file is reported)."""
        self._rule = rule
        self._last = None
        cx = self.ctx
        outcome = decide(
            self, place_of(file_index, position), message, rule, cx.mode, cx.lookback_days, record=False, watch=False
        )
        if outcome.store_error is not None:
            raise outcome.store_error
        return outcome

    def contradicting(self, file_index: int, position: int, message: bytes, rule: RuleConfig) -> list[tuple[str, str]]:
        """(control ID, why) of the later messages of the archive that
        contradict a comment on this message (serve's review alert, for
        replay's report)."""
        if self.ctx.mode == "message":
            return []
        s = place_of(file_index, position)
        last = self._last
        if last is not None and last[0] == s and last[1] is rule:
            ex: Extract | None = last[2]  # the rows the deciding chain read of this very message
        else:
            ex = extract(message, rule, self.ctx.lookback_days)
        if ex is None:
            return []
        return self.store.later_reviews(s, ex)

    # -- the chain's Store (read only: the chain records nothing here)

    def context(self, s: int, extract: Extract, mode: str, lookback_days: float) -> Context:
        assert self._rule is not None  # (set by decide)
        self._last = (s, self._rule, extract)
        if self._rule == self.ctx.rows_rule and not self.store.has(s):
            return Context(arrival=s, lookback_days=lookback_days)
        return self.store.context(s, extract, mode, lookback_days)

    def add(self, s: int, extract: Extract) -> None:
        raise TypeError("replay's store is read only")

    add_comment = add

    def contradicted(self, s: int, extract: Extract, why: str) -> list[str]:
        raise TypeError("replay's store is read only")

    def close(self) -> None:
        self.store.close()


_READERS: dict[tuple[str, bytes], Reader] = {}


def reader_for(ctx: FirstPass) -> Reader:
    """This process's reader of the store: opened once per process and run,
    not once per file (an open costs about 0.4 ms, more than deciding a
    message, and an archive often holds a message per file)."""
    found = _READERS.get((ctx.path, ctx.key))
    if found is None:
        found = _READERS[(ctx.path, ctx.key)] = Reader(ctx)
    return found


def close_readers() -> None:
    """Close this process's readers (the store is about to be removed)."""
    while _READERS:
        _, reader = _READERS.popitem()
        with contextlib.suppress(Exception):
            reader.close()


def remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-keys")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
