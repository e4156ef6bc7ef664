"""Replay archived messages: files and folders in, the same layout out.

Each input file is streamed piece by piece (stream.py) through process();
the output file holds the same pieces in the same order, messages processed,
everything else byte for byte. It is written under a temporary name and
renamed when complete, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .decision import MALFORMED, Decision
from .engine import process
from .logs import configure, get_logger
from .stream import iter_chunks, iter_pieces


class UsageError(Exception):
    pass


@dataclass
class Totals:
    files: int = 0
    messages: int = 0
    commented: int = 0
    by_type: Counter = field(default_factory=Counter)
    not_commented: Counter = field(default_factory=Counter)
    malformed: list = field(default_factory=list)  # {"file", "message"} positions only
    files_without_hl7: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def count(self, decision: Decision, rel: str, position: int) -> None:
        self.messages += 1
        self.by_type[decision.message_type or "(none)"] += 1
        if decision.commented:
            self.commented += 1
        elif decision.primary_reason:
            self.not_commented[decision.primary_reason] += 1
        if MALFORMED in decision.reasons:
            self.malformed.append({"file": rel, "message": position, "detail": decision.detail})

    def report(self, elapsed: float) -> dict:
        return {
            "files": self.files,
            "messages": self.messages,
            "by_message_type": dict(sorted(self.by_type.items())),
            "commented": self.commented,
            "not_commented_by_reason": dict(sorted(self.not_commented.items())),
            "malformed": len(self.malformed),
            "malformed_positions": self.malformed,
            "files_without_hl7": self.files_without_hl7,
            "errors": self.errors,
            "elapsed_s": round(elapsed, 3),
        }


def plan(inputs: list[str], out_dir: Path) -> list[tuple[Path, str]]:
    """(input file, relative output path) for every input; raises UsageError."""
    out_resolved = out_dir.resolve()
    pairs: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            pairs.append((p, p.name))
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() != out_resolved)
                for name in sorted(files):
                    f = Path(root) / name
                    pairs.append((f, f.relative_to(p).as_posix()))
        else:
            raise UsageError(f"input not found: {item}")
    seen: dict[str, Path] = {}
    for f, rel in pairs:
        if rel in seen:
            raise UsageError(f"two inputs would write the same output {rel}: {seen[rel]} and {f}")
        seen[rel] = f
        if f.resolve() == (out_dir / rel).resolve():
            raise UsageError(f"output would overwrite its input: {f}")
    return pairs


def replay_file(src: Path, dst: Path, rel: str, config: Config, totals: Totals, log) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    position = 0
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        for piece in iter_pieces(iter_chunks(fin)):
            if piece.kind != "message":
                fout.write(piece.data)
                continue
            position += 1
            output, decision = process(piece.data, config.rule)
            fout.write(output)
            totals.count(decision, rel, position)
            log.info("decision", file=rel, position=position, **decision.log_fields())
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)
    if position == 0:
        totals.files_without_hl7.append(rel)
    totals.files += 1


def run_replay(config: Config, inputs: list[str], out: str, report: str | None = None) -> int:
    configure(config.logging.level, config.logging.format, config.logging.patient_data)
    log = get_logger("b12comment.replay")
    out_dir = Path(out)
    try:
        pairs = plan(inputs, out_dir)
    except UsageError as exc:
        print(f"b12comment replay: {exc}", file=sys.stderr)
        return 2
    totals = Totals()
    started = time.monotonic()
    for src, rel in pairs:
        try:
            replay_file(src, out_dir / rel, rel, config, totals, log)
        except OSError as exc:
            totals.errors.append({"file": rel, "error": f"{type(exc).__name__}: {exc.strerror or exc}"})
            print(f"b12comment replay: {src}: {exc.strerror or exc}", file=sys.stderr)
    summary = totals.report(time.monotonic() - started)
    if report:
        try:
            Path(report).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"b12comment replay: cannot write report {report}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    print(f"replayed {totals.files} files, {totals.messages} messages: {totals.commented} commented, "
          f"{len(totals.malformed)} malformed, {len(totals.errors)} errors", file=sys.stderr)
    return 1 if totals.errors else 0
