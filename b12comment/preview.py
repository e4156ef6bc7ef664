"""Preview: what each message would get, and why, without sending anything.

Prints to stdout, for the person at the terminal. The messages themselves
are the user's own input, so they are shown; nothing goes to the log.
"""

from __future__ import annotations

import difflib
import json
import secrets
import sys
from pathlib import Path

from b12comment.config import Config
from b12comment.context import ContextStore
from b12comment.context.store import MEMORY
from b12comment.core import charset
from b12comment.core.chain import decide
from b12comment.core.decision import IN_MESSAGE, REASONS, Blocker, Decision
from b12comment.core.segments import read_header
from b12comment.errors import EXIT_OK, B12Error
from b12comment.wire.split import iter_chunks, iter_pieces


def _as_text(message: bytes) -> str:
    try:
        codec = charset.codec_for(read_header(message).charset) or "latin-1"
    except Exception:
        codec = "latin-1"
    return charset.decode(message, codec)


def _segments(text: str) -> list[str]:
    return [s for s in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if s]


def segment_diff(before: bytes, after: bytes) -> str:
    lines = difflib.unified_diff(
        _segments(_as_text(before)), _segments(_as_text(after)), "original", "processed", lineterm="", n=1
    )
    return "\n".join(lines)


def blocker_text(b: Blocker) -> str:
    """One result that kept the comment away, as a line: where it stands, its
    code (system, text), value type and verdict; the value where it may be shown."""
    where = "an order" if not b.obx else f"OBX {b.obx}"
    named = ", ".join(p for p in (b.system, b.display) if p)
    parts = [where, f"{b.code or '(no code)'}" + (f" ({named})" if named else ""), b.value_type or "-", b.verdict]
    if b.value:
        parts.append(f"value {b.value}")
    if b.source != IN_MESSAGE:
        parts.append(f"{b.source}, collected {b.collected or '(unknown)'}, message {b.control_id or '(none)'}")
    return ", ".join(parts)


def describe(index: int, decision: Decision, before: bytes, after: bytes, comment: str) -> str:
    out = [
        f"message {index}: control ID {decision.control_id or '(none)'}, "
        f"type {decision.message_type or '(none)'}, version {decision.version or '(none)'}"
    ]
    out.append(f"  decision: {'COMMENT' if decision.commented else 'no comment'}")
    for reason in decision.reasons:
        out.append(f"  reason: {reason}: {REASONS.get(reason, '')}")
    if decision.vetoed_by:
        out.append(f"  vetoed by the results of: {', '.join(decision.vetoed_by)} (control IDs, earlier in the input)")
    if decision.detail:
        out.append(f"  detail: {decision.detail}")
    for note in decision.notes:
        out.append(f"  note: {note}")
    for r in decision.results:
        value = "?" if r.value_pmol_l is None else f"{r.comparator}{r.value_pmol_l:g} pmol/L"
        limit = "?" if r.limit_pmol_l is None else f"{r.limit_pmol_l:g} pmol/L ({r.limit_source})"
        if r.decided_by:
            limit += f", decided by {r.decided_by}"
        age = "?" if r.age_years is None else f"{r.age_years} y"
        verdict = "comment" if r.commented else "no comment: " + ", ".join(r.reasons)
        out.append(
            f"  B12 result (OBX {r.obx_index}, code {r.code}): age {age}, value {value}, limit {limit} -> {verdict}"
        )
        out.extend(f"    kept away by: {blocker_text(b)}" for b in r.blockers)
    if decision.commented:
        out.append(f"  comment: {comment}")
        out.append("  change:")
        out.extend("    " + line for line in segment_diff(before, after).splitlines())
    return "\n".join(out)


def run_preview(config: Config, file: str, as_json: bool = False) -> int:
    try:
        with sys.stdin.buffer if file == "-" else open(Path(file), "rb") as stream:
            count = _preview_stream(config, stream, as_json)
    except BrokenPipeError:
        raise  # stdout closed (`| head`): cli.main ends quietly
    except OSError as exc:  # cannot open, or a read fails half-way
        raise B12Error(f"preview: cannot read {file}: {exc.strerror or exc}") from None
    if count == 0:
        raise B12Error(f"preview: no HL7 message (no MSH segment) in {file}")
    return EXIT_OK


def _preview_stream(config: Config, stream, as_json: bool) -> int:
    """Print every message's preview; returns how many there were."""
    count = 0
    # The messages of one input share a context, in order, in memory only.
    cx = config.context
    store = ContextStore(MEMORY, secrets.token_bytes(32)) if cx.mode != "message" else None
    for piece in iter_pieces(iter_chunks(stream)):
        if piece.kind != "message":
            continue
        count += 1
        outcome = decide(store, count, piece.data, config.rule, cx.mode, cx.lookback_days, watch=False)
        after, decision = outcome.output, outcome.decision
        if as_json:
            record = {
                "control_id": decision.control_id,
                "commented": decision.commented,
                "reasons": list(decision.reasons),
                "output": _as_text(after),
            }
            record.update({k: v for k, v in decision.as_dict().items() if k not in record})
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(describe(count, decision, piece.data, after, config.rule.comment_text()))
            print()
    return count
