"""`b12comment queue status|dead|retry`: look into the journal, and put
dead-lettered messages back in the queue. Prints no patient data: control
IDs, message types, times, states and reasons only.

Safe while `serve` runs: SQLite in WAL mode lets readers and one writer
share the file, and the forwarder picks up retried messages within a second.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from b12comment.config import Config
from b12comment.context.store import read_contradictions
from b12comment.delivery.transports import safe_name
from b12comment.errors import EXIT_OK, B12Error, UsageError, describe_os_error
from b12comment.files import write_atomically
from b12comment.storage import STATES, JournalStore, Row, is_url, open_journal, open_journal_for_reading


def run_queue(config: Config, args) -> int:
    if args.queue_command == "review":
        return _review(config)
    if args.queue_command == "retry" and bool(args.control_id) == bool(getattr(args, "all", False)):
        raise UsageError("queue retry needs a CONTROL_ID or --all (not both)")
    location: str | Path = config.journal.path  # a postgresql:// URL is opened as it is
    if not is_url(location):
        location = _journal_file(config)
    if args.queue_command == "export":
        return _export(location, Path(args.dir))
    journal = open_journal(location, _instance(config))  # JournalError (a B12Error): one line, exit 1
    try:
        if args.queue_command == "status":
            return _status(journal, _instance(config))
        if args.queue_command == "dead":
            return _dead(journal)
        return _retry(journal, None if args.all else args.control_id)
    finally:
        journal.close()


def _instance(config: Config) -> str:
    return config.ha.instance or socket.gethostname()


def _journal_file(config: Config) -> Path:
    """The journal's file, which must exist and be readable."""
    path = Path(config.journal.path)
    try:
        found = path.is_file()
        if found:
            with open(path, "rb"):  # readable? (SQLite would say only "unable to open database file")
                pass
    except OSError as exc:
        raise B12Error(
            f"cannot read the journal ([journal] path in {config.source}): {describe_os_error(exc)}"
        ) from None
    if not found:
        raise B12Error(f"no journal at {path} ([journal] path in {config.source})")
    return path


def export_messages(items: list[Row | int], folder: Path) -> tuple[int, int]:
    """Write each readable message as `<journal id>_<control id>.hl7` in
    `folder` (the processed bytes when processed, else the received ones),
    durably; returns (files written, rows that could not be read)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = unreadable = 0
    for item in items:
        if isinstance(item, int):
            unreadable += 1
            continue
        data = item.processed if item.processed is not None else item.raw
        write_atomically(folder / f"{item.id:012d}_{safe_name(item.control_id)}.hl7", data)
        written += 1
    return written, unreadable


def _export(path: str | Path, folder: Path) -> int:
    journal = open_journal_for_reading(path)
    try:
        items = list(journal.salvage_undelivered())
    finally:
        journal.close()
    try:
        written, unreadable = export_messages(items, folder)
    except OSError as exc:
        raise B12Error(f"cannot write to {folder}: {describe_os_error(exc)}") from None
    s = "" if written == 1 else "s"
    print(f"exported {written} undelivered message{s} to {folder}")
    if unreadable:
        rows = "row" if unreadable == 1 else "rows"
        raise B12Error(f"{unreadable} undelivered {rows} could not be read (damaged journal pages)")
    return EXIT_OK


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _status(journal: JournalStore, instance: str) -> int:
    counts = journal.counts()
    print(f"journal: {journal.location}")
    leader = getattr(journal, "leader", None)  # a journal that instances share (PostgreSQL)
    if leader is not None:
        found = leader()
        if found is None or found[2] < 0:
            print(f"instance {instance}: standby; no instance leads now")
        else:
            holder, epoch, left = found
            role = "leader" if holder == instance else "standby"
            print(f"instance {instance}: {role}; leader {holder} (epoch {epoch}, lease renewed, {left:.1f} s left)")
    for state in STATES:
        print(f"  {state:<10} {counts[state]}")
    void = sum((r.last_error or "").startswith("void:") for r in journal.rows("invalid")) if counts["invalid"] else 0
    if void:
        print(f"  of the invalid, {void} void: answered AE, committed after the answer, never delivered")
    oldest = journal.oldest_undelivered()
    waiting = counts["received"] + counts["processed"]
    if oldest is None:
        print("undelivered: none")
    else:
        print(f"undelivered: {waiting}, oldest received {_when(oldest)} ({_age(time.time() - oldest)} ago)")
    holds = [until for _, until in journal.held()]
    if not holds:
        print("held: none")
    else:
        print(f"held: {len(holds)} (waiting for the rest of the requisition; the next hold ends {_when(min(holds))})")
    return EXIT_OK


def _dead(journal: JournalStore) -> int:
    rows = journal.rows("dead")
    if not rows:
        print("no dead-lettered messages")
        return EXIT_OK
    print(f"{'id':>8}  {'control ID':<24} {'type':<10} {'received':<23} {'dead since':<23} {'tries':>5}  reason")
    for r in rows:
        print(
            f"{r.id:>8}  {r.control_id or '-':<24} {r.message_type or '-':<10} {_when(r.received_at):<23} "
            f"{_when(r.updated_at):<23} {r.attempts:>5}  {r.last_error or ''}"
        )
    print(f"{len(rows)} dead-lettered; put back with: b12comment queue retry CONTROL_ID|--all")
    return EXIT_OK


def _retry(journal: JournalStore, control_id: str | None) -> int:
    count = journal.retry(control_id)
    if count == 0 and control_id is None:
        print("nothing to retry: no dead-lettered messages")
        return EXIT_OK
    if count == 0:
        raise B12Error(f"no dead-lettered message with control ID {control_id!r}")
    print(f"requeued {count} message{'s' if count != 1 else ''}; the running service delivers them in journal order")
    return EXIT_OK


def _review(config: Config) -> int:
    """Comments a later result of the same patient contradicts, for a person to follow up."""
    path: str | Path = config.context.store  # a postgresql:// URL is read as it is
    if not is_url(path):
        path = Path(path)
        if not path.is_file():
            raise B12Error(f"no context store at {path} ([context] store in {config.source})")
    found = read_contradictions(path)  # ContextError: one line, exit 1
    if not found:
        print("no contradicted comments")
        return EXIT_OK
    print(f"{'commented message':<24} {'contradicted by':<24} {'why':<16} found")
    for comment_id, control_id, why, found_at in found:
        print(f"{comment_id or '-':<24} {control_id or '-':<24} {why:<16} {_when(found_at)}")
    print(
        f"{len(found)} comment{'s' if len(found) != 1 else ''} to review: each was given when B12 looked like "
        "the only abnormal finding, and a later result of the same patient says otherwise"
    )
    return EXIT_OK
