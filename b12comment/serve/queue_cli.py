"""`b12comment queue status|dead|retry`: look into the journal, and put
dead-lettered messages back in the queue. Prints no patient data: control
IDs, message types, times, states and reasons only.

Safe while `serve` runs: SQLite in WAL mode lets readers and one writer
share the file, and the forwarder picks up retried messages within a second.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from b12comment.config import Config
from b12comment.context.store import read_contradictions
from b12comment.delivery.transports import safe_name
from b12comment.errors import EXIT_OK, B12Error, UsageError, describe_os_error
from b12comment.files import write_atomically
from b12comment.serve.acked import listing_path
from b12comment.storage import STATES, JournalStore, Row, is_url, open_journal, open_journal_for_reading


def run_queue(config: Config, args) -> int:
    as_json = getattr(args, "json", False)
    if args.queue_command == "review":
        return _review(config, as_json)
    if args.queue_command == "retry" and bool(args.control_id) == bool(getattr(args, "all", False)):
        raise UsageError("queue retry needs a CONTROL_ID or --all (not both)")
    if args.queue_command == "discard" and not args.reason.strip():
        raise UsageError("queue discard needs --reason TEXT: why the message is given up (it is recorded)")
    location: str | Path = config.journal.path  # a postgresql:// URL is opened as it is
    if not is_url(location):
        location = _journal_file(config)
    if args.queue_command == "export":
        return _export(location, Path(args.dir), args.dead, as_json)
    if args.queue_command == "list":
        since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")
    journal = open_journal(location, _instance(config))  # JournalError (a B12Error): one line, exit 1
    try:
        if args.queue_command == "status":
            return _status(journal, _instance(config), as_json)
        if args.queue_command == "dead":
            return _dead(journal, as_json)
        if args.queue_command == "show":
            return _show(journal, args.control_id, args.message, as_json)
        if args.queue_command == "list":
            return _list(journal, args.state, since, until, args.control_id, args.peer, args.limit, as_json)
        if args.queue_command == "discard":
            return _discard(journal, args.control_id, args.reason.strip(), as_json)
        return _retry(journal, None if args.all else args.control_id, as_json)
    finally:
        journal.close()


def _emit(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))


def _time_arg(text: str | None, option: str) -> float | None:
    """A time given as YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"queue list: {option} wants a time such as 2026-12-01 or 2026-12-01T08:30, not {text}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tries(r: Row) -> int:
    return r.attempts


def _row_data(r: Row, with_message: bool = False) -> dict:
    data = {
        "journal_id": r.id,
        "control_id": r.control_id,
        "message_type": r.message_type,
        "state": r.state,
        "received_at": _iso(r.received_at),
        "updated_at": _iso(r.updated_at),
        "tries": _tries(r),
        "last_error": r.last_error,
        "peer": r.peer or None,
        "source": r.source or None,
        "commented": r.commented,
        "reasons": list(r.reasons),
        "bytes": len(r.raw),
    }
    if with_message:
        data["message"] = (r.processed if r.processed is not None else r.raw).decode("latin-1")
    return data


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


def _export(path: str | Path, folder: Path, dead: bool, as_json: bool) -> int:
    """The undelivered messages, or with --dead the dead letters, as files."""
    journal = open_journal_for_reading(path)
    try:
        items: list[Row | int] = list(journal.rows("dead")) if dead else list(journal.salvage_undelivered())
    finally:
        journal.close()
    try:
        written, unreadable = export_messages(items, folder)
    except OSError as exc:
        raise B12Error(f"cannot write to {folder}: {describe_os_error(exc)}") from None
    what = "dead-lettered" if dead else "undelivered"
    if as_json:
        _emit({"exported": written, "what": what, "folder": str(folder), "unreadable": unreadable})
    else:
        s = "" if written == 1 else "s"
        print(f"exported {written} {what} message{s} to {folder}")
    listing = None if dead or is_url(str(path)) else listing_path(Path(path))
    lost = len(listing.read_text().splitlines()) if listing is not None and listing.is_file() else 0
    if unreadable or lost:
        rows = "row" if unreadable == 1 else "rows"
        said = [f"{unreadable} {what} {rows} could not be read (damaged journal pages)"] if unreadable else []
        if lost:
            said.append(
                f"serve found {lost} message{'' if lost == 1 else 's'} it had ACKed and not delivered unreadable "
                f"when the journal was damaged: listed in {listing} (control ID, sender, time of the ACK)"
            )
        raise B12Error("; ".join(said))
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


def _status(journal: JournalStore, instance: str, as_json: bool = False) -> int:
    counts = journal.counts()
    if as_json:
        oldest = journal.oldest_undelivered()
        holds = [until for _, until in journal.held()]
        _emit(
            {
                "journal": str(journal.location),
                "counts": counts,
                "undelivered": counts["received"] + counts["processed"],
                "oldest_undelivered_at": _iso(oldest),
                "oldest_undelivered_age_s": None if oldest is None else round(time.time() - oldest, 1),
                "held": len(holds),
                "next_hold_ends_at": _iso(min(holds)) if holds else None,
                "discarded": len(journal.discarded()),
            }
        )
        return EXIT_OK
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


def _dead(journal: JournalStore, as_json: bool = False) -> int:
    rows = journal.rows("dead")
    if as_json:
        _emit([_row_data(r) for r in rows])
        return EXIT_OK
    if not rows:
        print("no dead-lettered messages")
        return EXIT_OK
    print(f"{'id':>8}  {'control ID':<24} {'type':<10} {'received':<23} {'dead since':<23} {'tries':>5}  reason")
    for r in rows:
        print(
            f"{r.id:>8}  {r.control_id or '-':<24} {r.message_type or '-':<10} {_when(r.received_at):<23} "
            f"{_when(r.updated_at):<23} {_tries(r):>5}  {r.last_error or ''}"
        )
    print(f"{len(rows)} dead-lettered; put back with: b12comment queue retry CONTROL_ID|--all")
    return EXIT_OK


def _retry(journal: JournalStore, control_id: str | None, as_json: bool = False) -> int:
    count = journal.retry(control_id)
    if count == 0 and control_id is not None:
        raise B12Error(f"no dead-lettered message with control ID {control_id!r}")
    if as_json:
        _emit({"requeued": count})
        return EXIT_OK
    if count == 0:
        print("nothing to retry: no dead-lettered messages")
        return EXIT_OK
    print(f"requeued {count} message{'s' if count != 1 else ''}; the running service delivers them in journal order")
    return EXIT_OK


def _review(config: Config, as_json: bool = False) -> int:
    """Comments a later result of the same patient contradicts, for a person to follow up."""
    path: str | Path = config.context.store  # a postgresql:// URL is read as it is
    if not is_url(path):
        path = Path(path)
        if not path.is_file():
            raise B12Error(f"no context store at {path} ([context] store in {config.source})")
    found = read_contradictions(path)  # ContextError: one line, exit 1
    if as_json:
        _emit(
            [
                {"comment_control_id": c, "contradicted_by": cid, "why": why, "found_at": _iso(at)}
                for c, cid, why, at in found
            ]
        )
        return EXIT_OK
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


def _show(journal: JournalStore, control_id: str, with_message: bool, as_json: bool) -> int:
    """One message by its control ID (every row that has it): state, times,
    tries, decision and reasons; the bytes only with --message (patient data)."""
    rows = [r for r in journal.rows() if r.control_id == control_id]
    discarded = [d for d in journal.discarded() if d.get("control_id") == control_id]
    if not rows and not discarded:
        raise B12Error(f"no message with control ID {control_id} in the journal")
    if as_json:
        _emit({"messages": [_row_data(r, with_message) for r in rows], "discarded": discarded})
        return EXIT_OK
    for r in rows:
        decision = "-" if r.commented is None else ("commented" if r.commented else "not commented")
        print(f"control ID   {r.control_id}")
        print(f"journal id   {r.id}")
        print(f"type         {r.message_type or '-'}")
        print(f"state        {r.state}")
        print(f"received     {_when(r.received_at)}" + (f" from {r.peer}" if r.peer else ""))
        print(f"updated      {_when(r.updated_at)}")
        print(f"tries        {_tries(r)}")
        print(f"decision     {decision}" + (f" ({', '.join(r.reasons)})" if r.reasons else ""))
        if r.last_error:
            print(f"last error   {r.last_error}")
        print(f"size         {len(r.raw)} bytes")
        if with_message:
            data = r.processed if r.processed is not None else r.raw
            print("message:")
            print(data.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n").rstrip("\n"))
        print()
    for d in discarded:
        print(
            f"discarded    journal id {d['journal_id']} at {_when(d['discarded_at'])} by {d.get('by') or '-'}: "
            f"{d['reason']} (it had died: {d.get('last_error') or '-'}; tries {d.get('tries')})"
        )
    return EXIT_OK


def _list(
    journal: JournalStore,
    state: str | None,
    since: float | None,
    until: float | None,
    control_id: str | None,
    peer: str | None,
    limit: int,
    as_json: bool,
) -> int:
    """Messages by state, time of arrival, control ID and peer (newest last)."""
    rows = [
        r
        for r in journal.rows(state)
        if (since is None or r.received_at >= since)
        and (until is None or r.received_at < until)
        and (control_id is None or control_id in r.control_id)
        and (peer is None or r.peer == peer or r.peer.startswith(f"{peer}:"))
    ]
    shown = rows[-limit:] if limit else rows
    if as_json:
        _emit([_row_data(r) for r in shown])
        return EXIT_OK
    if not rows:
        print("no messages match")
        return EXIT_OK
    print(f"{'id':>8}  {'control ID':<24} {'type':<10} {'state':<10} {'received':<23} {'tries':>5}  decision")
    for r in shown:
        decision = "-" if r.commented is None else ("commented" if r.commented else ",".join(r.reasons) or "unchanged")
        print(
            f"{r.id:>8}  {r.control_id or '-':<24} {r.message_type or '-':<10} {r.state:<10} "
            f"{_when(r.received_at):<23} {_tries(r):>5}  {decision}"
        )
    more = f" (the last {len(shown)} shown; --limit 0 for all)" if len(shown) < len(rows) else ""
    print(f"{len(rows)} message{'s' if len(rows) != 1 else ''}{more}")
    return EXIT_OK


def _discard(journal: JournalStore, control_id: str, reason: str, as_json: bool) -> int:
    """Give up dead letters for good; the reason (and who) is recorded."""
    by = _operator()
    count = journal.discard(control_id, reason, by)
    if count == 0:
        raise B12Error(f"no dead-lettered message with control ID {control_id} (only dead letters can be discarded)")
    if as_json:
        _emit({"discarded": count, "control_id": control_id, "reason": reason, "by": by})
        return EXIT_OK
    print(
        f"discarded {count} dead-lettered message{'s' if count != 1 else ''} with control ID {control_id}, "
        f"recorded with the reason and {by}: see b12comment queue show {control_id}"
    )
    return EXIT_OK


def _operator() -> str:
    """Who ran the command, as the system knows them (user@host)."""
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = os.environ.get("USER", "?")
    return f"{user}@{socket.gethostname()}"
