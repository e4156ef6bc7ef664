"""Replay archived messages: files and folders in, the same layout out.

Each input file is streamed piece by piece (sources.py) through process();
its output holds the same pieces in the same order, messages processed,
everything else byte for byte. Outputs are written under a temporary name and
renamed when complete, so a reader never sees half a file, and a file that
holds no HL7 message gets no output at all.

Files are independent, so they are spread over worker processes; results are
merged in input order, so the output and the report are the same whatever
the number of workers. A progress journal in the output folder makes an
interrupted run resumable file by file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from b12comment.config import Config
from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig
from b12comment.files import replace_durably, write_atomically
from b12comment.logs import configure, get_logger
from b12comment.replay.inputs import is_gzip, open_input, open_output, read_pieces
from b12comment.replay.tally import Tally

PROGRESS_NAME = ".b12comment-replay.jsonl"


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class Job:
    src: str
    rel: str
    out_dir: str | None  # None: dry run
    rule: RuleConfig
    old_rule: RuleConfig | None


@dataclass(frozen=True)
class Options:
    out: str | None = None  # neither out nor forward: a dry run
    forward: str | None = None  # a downstream URL
    journal: str | None = None  # with forward: the journal to queue in
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    resume: bool = False
    workers: int = 1
    quiet: bool = False
    report: str | None = None
    html: str | None = None
    old_config: Config | None = None


def _selected(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]

    def hit(patterns):
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return (not include or hit(include)) and not hit(exclude)


def _unreadable_folder(exc: OSError) -> None:
    raise exc  # os.walk would skip it silently: an archive must never be half-read unnoticed


def plan(inputs: list[str], out_dir: Path | None, include=(), exclude=()) -> list[tuple[Path, str]]:
    """(input file, relative output path) for every input; raises UsageError."""
    skip = out_dir.resolve() if out_dir is not None else None
    pairs: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            pairs.append((p, p.name))
        elif p.is_dir():
            for root, dirs, files in os.walk(p, onerror=_unreadable_folder):
                dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() != skip)
                for name in sorted(files):
                    f = Path(root) / name
                    rel = f.relative_to(p).as_posix()
                    if _selected(rel, include, exclude):
                        pairs.append((f, rel))
        else:
            raise UsageError(f"input not found: {item}")
    seen: dict[str, Path] = {}
    for f, rel in pairs:
        if rel in seen:
            raise UsageError(f"two inputs would write the same output {rel}: {seen[rel]} and {f}")
        seen[rel] = f
        if out_dir is not None and f.resolve() == (out_dir / rel).resolve():
            raise UsageError(f"output would overwrite its input: {f}")
    return pairs


class BatchCheck:
    """Counts messages per batch and batches per file; compares BTS-1 and FTS-1."""

    def __init__(self, rel: str):
        self.rel = rel
        self.in_batch = 0
        self.batches = 0
        self.mismatches: list[dict] = []

    def message(self) -> None:
        self.in_batch += 1

    def line(self, data: bytes) -> None:
        seg = re.split(rb"[\r\n]", data.lstrip(b"\xef\xbb\xbf \t\x00"), maxsplit=1)[0]
        name = seg[:3]
        if name == b"BHS":
            self.batches += 1
            self.in_batch = 0
        elif name in (b"BTS", b"FTS") and len(seg) > 3:
            declared = seg.split(seg[3:4])[1:2]
            counted = self.in_batch if name == b"BTS" else self.batches
            text = declared[0].decode("latin-1").strip() if declared else ""
            if text and (not text.isdigit() or int(text) != counted):
                self.mismatches.append(
                    {"file": self.rel, "segment": name.decode(), "declared": text, "counted": counted}
                )


def replay_file(job: Job) -> Tally:
    """Process one file; returns its tally. Never raises for bad content."""
    log = get_logger("b12comment.replay")
    tally = Tally(files=1)
    dst = Path(job.out_dir) / job.rel if job.out_dir is not None else None
    tmp = dst.with_name(f".{dst.name}.partial") if dst is not None else None
    position = 0
    check = BatchCheck(job.rel)
    try:
        with open_input(job.src) as fin:
            fout: BinaryIO | None = None
            raw: BinaryIO | None = None
            if tmp is not None:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                fout, raw = open_output(tmp, is_gzip(job.src))
            try:
                for piece in read_pieces(fin):
                    if piece.kind != "message":
                        check.line(piece.data)
                        if fout is not None:
                            fout.write(piece.data)
                        continue
                    position += 1
                    check.message()
                    output, decision = process(piece.data, job.rule)
                    if fout is not None:
                        fout.write(output)
                    tally.add(decision, job.rel, position, job.rule)
                    if job.old_rule is not None:
                        _, old = process(piece.data, job.old_rule)
                        if (old.commented, old.reasons) != (decision.commented, decision.reasons):
                            tally.add_difference(job.rel, position, decision, old)
                    log.info("decision", file=job.rel, position=position, **decision.log_fields())
            finally:
                if fout is not None:
                    fout.close()
                if raw is not None and raw is not fout:
                    raw.close()
        if tmp is not None and dst is not None:
            if position:
                replace_durably(tmp, dst)
            else:
                tmp.unlink()
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # unreadable, cut or corrupt gzip, no space...
        if tmp is not None and tmp.exists():
            tmp.unlink()
        tally.errors.append({"file": job.rel, "error": _describe(exc)})
        return tally
    if position == 0:
        tally.not_hl7.append(job.rel)
    tally.batch_mismatches.extend(check.mismatches)
    return tally


def _describe(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "compressed file ends early (truncated gzip)"
    if isinstance(exc, zlib.error):
        return f"compressed data is corrupt (gzip): {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# Resume


def _fingerprint(config: Config, old: Config | None, pairs) -> str:
    h = hashlib.sha256(repr((config.rule, old.rule if old else None)).encode())
    for src, rel in pairs:
        h.update(f"{src}\0{rel}\0".encode())
    return h.hexdigest()


def _load_progress(path: Path, fingerprint: str) -> dict[str, Tally]:
    done: dict[str, Tally] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return done
    if not lines:
        return done
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return done
    if header.get("fingerprint") != fingerprint:
        raise UsageError(
            "cannot --resume: the inputs or the rule differ from the interrupted run "
            f"(see {path}); run without --resume to start again"
        )
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the last line may have been cut by the interruption
        done[record["rel"]] = Tally.from_json(record["tally"])
    return done


class Progress:
    """The journal of completed files, and the live line on a terminal."""

    def __init__(self, path: Path | None, fingerprint: str, resumed: bool, total_bytes: int, show: bool):
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if resumed else "w", encoding="utf-8")  # noqa: SIM115 - open for the run
            if not resumed or self.file.tell() == 0:
                self.file.write(json.dumps({"fingerprint": fingerprint}) + "\n")
                self.file.flush()
        self.total_bytes, self.done_bytes = max(total_bytes, 1), 0
        self.files = self.messages = 0
        self.show = show
        self.started = time.monotonic()

    def record(self, rel: str, tally: Tally, size: int) -> None:
        if self.file is not None and not tally.errors:
            self.file.write(json.dumps({"rel": rel, "tally": tally.to_json()}) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
        self.files += 1
        self.messages += tally.messages
        self.done_bytes += size
        if self.show:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.messages / elapsed
            eta = elapsed * (self.total_bytes - self.done_bytes) / max(self.done_bytes, 1)
            sys.stderr.write(
                f"\r{self.files} files, {self.messages} messages, {rate:,.0f} msg/s, "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}   "
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.show:
            sys.stderr.write("\n")
        if self.file is not None:
            self.file.close()


# --------------------------------------------------------------------------


def run_replay(config: Config, inputs: list[str], opts: Options) -> int:
    configure(config.logging.level, config.logging.format, config.logging.patient_data)
    out_dir = Path(opts.out) if opts.out else None
    started = time.monotonic()
    try:
        pairs = plan(inputs, out_dir, opts.include, opts.exclude)
        if opts.forward:
            tallies, extra = _forward(config, pairs, opts)
        else:
            tallies, extra = _to_files(config, pairs, out_dir, opts)
    except UsageError as exc:
        print(f"b12comment replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"b12comment replay: {_describe(exc)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    total = Tally()
    for _, rel in pairs:
        total.merge(tallies[rel])
    report = total.to_json()
    report["elapsed_s"] = round(elapsed, 3)
    report["messages_per_s"] = round(total.messages / elapsed, 1) if elapsed > 0 else None
    report.update(extra)
    status = 1 if total.errors else 0
    if opts.report:
        status = max(status, _write(opts.report, json.dumps(report, indent=2) + "\n"))
    if opts.html:
        from b12comment.replay.report_html import render

        status = max(status, _write(opts.html, render(report, config.rule)))
    for err in total.errors:
        print(f"b12comment replay: {err['file']}: {err['error']}", file=sys.stderr)
    print(summary(report), file=sys.stderr)
    return status


def _to_files(config: Config, pairs, out_dir: Path | None, opts: Options) -> tuple[dict, dict]:
    """--out or --dry-run: files processed in worker processes, resumable."""
    fingerprint = _fingerprint(config, opts.old_config, pairs)
    progress_path = out_dir / PROGRESS_NAME if out_dir is not None else None
    done = _load_progress(progress_path, fingerprint) if opts.resume and progress_path else {}
    old_rule = opts.old_config.rule if opts.old_config else None
    jobs = [
        Job(str(src), rel, str(out_dir) if out_dir else None, config.rule, old_rule)
        for src, rel in pairs
        if rel not in done
    ]
    sizes = {rel: _size(src) for src, rel in pairs}
    try:
        progress = Progress(
            progress_path,
            fingerprint,
            bool(done) or opts.resume,
            sum(sizes[j.rel] for j in jobs),
            not opts.quiet and sys.stderr.isatty(),
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write to {out_dir}: {_describe(exc)}") from None
    tallies: dict[str, Tally] = dict(done)
    try:
        for job, tally in zip(jobs, _run_jobs(jobs, opts.workers), strict=False):
            tallies[job.rel] = tally
            progress.record(job.rel, tally, sizes[job.rel])
    finally:
        progress.close()
    return tallies, {"resumed_files": len(done)}


def _forward(config: Config, pairs, opts: Options) -> tuple[dict, dict]:
    """--forward: journal every processed message, then deliver them all."""
    import asyncio

    from b12comment.replay.forward import SOURCE_PREFIX, drain, enqueue_file, journal_path_for
    from b12comment.serve.journal import Journal, JournalError

    path = journal_path_for(config, opts.journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    tallies: dict[str, Tally] = {}
    sizes = {rel: _size(src) for src, rel in pairs}
    progress = Progress(None, "", False, sum(sizes.values()), not opts.quiet and sys.stderr.isatty())
    try:
        journal = Journal(path)
        try:
            if not opts.resume:
                seen = [rel for _, rel in pairs if journal.last_position(SOURCE_PREFIX + rel)]
                if seen:
                    raise UsageError(
                        f"{seen[0]} was already queued in {path}: add --resume to go on "
                        "with that replay, or give another --journal to send it again"
                    )
            for src, rel in pairs:
                try:
                    tallies[rel] = enqueue_file(journal, str(src), rel, config, opts.resume)
                except (OSError, EOFError, ValueError, zlib.error) as exc:
                    tallies[rel] = Tally(files=1, errors=[{"file": rel, "error": _describe(exc)}])
                progress.record(rel, tallies[rel], sizes[rel])
        finally:
            journal.close()
        assert opts.forward is not None  # run_forward is only called with --forward
        counts = asyncio.run(drain(path, config, opts.forward))
    except JournalError as exc:
        raise OSError(0, str(exc)) from None
    finally:
        progress.close()
    return tallies, {
        "journal": str(path),
        "forwarded": counts.get("forwarded", 0),
        "dead_lettered": counts.get("dead", 0),
    }


def _run_jobs(jobs: list[Job], workers: int):
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield replay_file(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(replay_file, jobs, chunksize=1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write(path: str, text: str) -> int:
    try:
        write_atomically(path, text.encode("utf-8"))
        return 0
    except OSError as exc:
        print(f"b12comment replay: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def summary(r: dict) -> str:
    lines = [
        f"replayed {r['files']} files, {r['messages']} messages in {r['elapsed_s']} s "
        f"({r['messages_per_s'] or 0:,.0f} msg/s)",
        f"  commented: {r['commented']}; paediatric B12 results: {r['paediatric_b12_results']}, "
        f"elevated {r['paediatric_b12_elevated']}, commented {r['paediatric_b12_commented']}",
        f"  malformed messages: {r['malformed']}; files without HL7: {len(r['files_without_hl7'])}; "
        f"batch count mismatches: {len(r['batch_count_mismatches'])}; errors: {len(r['errors'])}",
    ]
    if "forwarded" in r:
        lines.append(f"  forwarded: {r['forwarded']}; dead-lettered: {r['dead_lettered']} (journal {r['journal']})")
    if r["rule_differences"]:
        lines.append(f"  messages where the two rules differ: {r['rule_differences']}")
    return "\n".join(lines)
