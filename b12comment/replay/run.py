"""Replay archived messages: files and folders in, the same layout out.

Each input file is streamed piece by piece (wire/split.py) through the deciding chain (core/chain.py);
its output holds the same pieces in the same order, messages processed,
everything else byte for byte. Outputs are written under a temporary name and
renamed when complete, so a reader never sees half a file. A file that holds
no HL7 message is copied unchanged (or, with `--skip-non-hl7`, gets no output).

Files are independent, so they are spread over worker processes; results are
merged in input order, so the output and the report are the same whatever
the number of workers. Workers die with the main process. The resume file
(resume.py) makes an interrupted run resumable file by file; the lock file
keeps a second replay out of the same output folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from b12comment import __version__
from b12comment.config import Config, config_digest
from b12comment.context import ContextError
from b12comment.core import chain
from b12comment.core.decision import Decision
from b12comment.core.rule_config import RuleConfig
from b12comment.errors import EXIT_IO, EXIT_OK, B12Error, UsageError
from b12comment.files import replace_durably, write_atomically
from b12comment.replay.first_pass import NAME as CONTEXT_NAME
from b12comment.replay.first_pass import FirstPass, Reader, close_readers, reader_for
from b12comment.replay.first_pass import build as build_first_pass
from b12comment.replay.first_pass import remove as remove_first_pass
from b12comment.replay.progress import Progress, plural
from b12comment.replay.resume import OWN_FILES, RESUME_NAME, ResumeFile, fingerprint, load_done, lock_output
from b12comment.replay.tally import Tally, calibration
from b12comment.wire.split import is_gzip, open_input, open_output, read_pieces

if TYPE_CHECKING:  # imported where used: a replay without --audit never loads the audit store
    from b12comment.audit.recorder import AuditSpec


@dataclass(frozen=True)
class Job:
    src: str
    rel: str
    out_dir: str | None  # None: dry run
    rule: RuleConfig
    old_rule: RuleConfig | None
    log_file: str | None = None
    skip_non_hl7: bool = False
    context: FirstPass | None = None  # the first pass's store (None: each message alone)
    file_index: int = 0  # the file's place in the plan (orders the context)
    audit: AuditSpec | None = None  # --audit: record the decisions on children's B12 results


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
    log_file: str | None = None  # the per-message decision records
    skip_non_hl7: bool = False
    report: str | None = None
    html: str | None = None
    old_config: Config | None = None
    context_window_days: float | None = None  # overrides [context] lookback_days
    audit: bool = False  # record every decision on a child's B12 in the audit store (--dry-run: as shadow)


# --------------------------------------------------------------------------
# Which files


def _selected(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]

    def hit(patterns):
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    return (not include or hit(include)) and not hit(exclude)


def _own_file(name: str) -> bool:
    """A resume file, lock file or unfinished output of an earlier replay."""
    return name in OWN_FILES or (name.startswith(".") and name.endswith(".partial"))


def _unreadable_folder(exc: OSError) -> None:
    # os.walk would skip it silently: an archive must never be half-read unnoticed
    raise B12Error(f"replay: cannot read the folder {exc.filename}: {exc.strerror or exc}")


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
                    if not _own_file(name) and _selected(rel, include, exclude):
                        pairs.append((f, rel))
        else:
            raise UsageError(f"replay: input not found: {item}")
    seen: dict[str, Path] = {}
    for f, rel in pairs:
        if rel in seen:
            raise UsageError(f"replay: two inputs would write the same output {rel}: {seen[rel]} and {f}")
        seen[rel] = f
        if out_dir is not None and f.resolve() == (out_dir / rel).resolve():
            raise UsageError(f"replay: output would overwrite its input: {f}")
    return pairs


# --------------------------------------------------------------------------
# One file


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


class WriteFailed(Exception):
    """An output (or the log file) could not be written; names which."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(f"cannot write {path}: {_describe(cause)}")


class Output:
    """One output file, written under `.NAME.partial` and renamed when complete."""

    def __init__(self, dst: Path, compressed: bool):
        self.dst, self.tmp = dst, dst.with_name(f".{dst.name}.partial")
        try:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.stream, self.raw = open_output(self.tmp, compressed)
        except OSError as exc:
            raise WriteFailed(dst, exc) from None

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except OSError as exc:
            raise WriteFailed(self.dst, exc) from None

    def _close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.raw.close()

    def commit(self, copy_of: str | None = None) -> None:
        """Make it the output; `copy_of`: the output is that file's bytes, unchanged."""
        try:
            self._close()
            if copy_of is not None:
                shutil.copyfile(copy_of, self.tmp)
            replace_durably(self.tmp, self.dst)
        except OSError as exc:
            self.abort()
            raise WriteFailed(self.dst, exc) from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


@lru_cache(maxsize=4096)
def _json_text(value: str) -> str:
    return json.dumps(value)


@lru_cache(maxsize=4096)
def _json_list(values: tuple[str, ...]) -> str:
    return json.dumps(list(values))


class DecisionLog:
    """`--log-file`: one JSON line per message, rendered cheaply and written in
    blocks with O_APPEND (workers share the file; each block is whole lines).
    The same fields as serve's decision record: no patient data."""

    BLOCK = 1 << 16

    def __init__(self, path: str, rel: str):
        self.path = path
        self.prefix = '{"event": "decision", "file": ' + json.dumps(rel) + ', "message": '
        self.lines: list[str] = []
        self.size = 0
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise WriteFailed(path, exc) from None

    def write(self, position: int, d: Decision) -> None:
        line = (
            f"{self.prefix}{position}, "
            f'"control_id": {json.dumps(d.control_id)}, "message_type": {_json_text(d.message_type)}, '
            f'"commented": {"true" if d.commented else "false"}, "reasons": {_json_list(tuple(d.reasons))}, '
            f'"rule_version": {_json_text(d.rule_version)}}}\n'
        )
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.BLOCK:
            self.flush()

    def flush(self) -> None:
        data = "".join(self.lines).encode("utf-8")
        self.lines, self.size = [], 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as exc:
            raise WriteFailed(self.path, exc) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self.fd)


def replay_file(job: Job) -> Tally:
    """Process one file; returns its tally. Never raises for bad content or
    a failed write: a file that could not be read or written counts nothing
    but itself and its error."""
    _exit_if_orphaned()
    out: Output | None = None
    log: DecisionLog | None = None
    try:
        if job.out_dir is not None:
            out = Output(Path(job.out_dir) / job.rel, is_gzip(job.src))
        log = DecisionLog(job.log_file, job.rel) if job.log_file else None
        reader = reader_for(job.context) if job.context is not None else None
        tally = _replay_pieces(job, out, log, reader)
        if log is not None:
            log.flush()
        if out is not None:
            if tally.messages or not job.skip_non_hl7:
                out.commit(copy_of=None if tally.messages else job.src)
            else:
                out.abort()
        return tally
    except (WriteFailed, OSError, EOFError, ValueError, zlib.error, ContextError) as exc:  # unreadable, no space...
        if out is not None:
            out.abort()
        return Tally(files=1, errors=[{"file": job.rel, "error": _describe(exc)}])
    finally:
        if log is not None:
            with contextlib.suppress(WriteFailed, OSError):
                log.close()


def _replay_pieces(job: Job, out: Output | None, log: DecisionLog | None, reader: Reader | None = None) -> Tally:
    tally = Tally(files=1)

    def decide(data: bytes, rule: RuleConfig, position: int) -> tuple[bytes, Decision]:
        if reader is None:
            outcome = chain.decide(None, 0, data, rule)
        else:
            outcome = reader.decide(job.file_index, position, data, rule)
        return outcome.output, outcome.decision

    recorder = None
    if job.audit is not None:
        from b12comment.audit.recorder import recorder_for

        recorder = recorder_for(job.audit)
    check = BatchCheck(job.rel)
    position = 0
    with open_input(job.src) as fin:
        for piece in read_pieces(fin):
            if piece.kind != "message":
                check.line(piece.data)
                if out is not None:
                    out.write(piece.data)
                continue
            position += 1
            check.message()
            output, decision = decide(piece.data, job.rule, position)
            if reader is not None and decision.commented:
                for later, why in reader.contradicting(job.file_index, position, piece.data, job.rule):
                    tally.add_contradiction(job.rel, position, decision.control_id, later, why)
            if out is not None:
                out.write(output)
            tally.add(decision, job.rel, position, job.rule)
            if job.old_rule is not None:
                _, old = decide(piece.data, job.old_rule, position)
                if (old.commented, old.reasons) != (decision.commented, decision.reasons):
                    tally.add_difference(job.rel, position, decision, old)
            if log is not None:
                log.write(position, decision)
            if recorder is not None:
                recorder.record(piece.data, decision)
    if recorder is not None:
        recorder.flush()
    if position == 0:
        tally.files_without_hl7.append(job.rel)
    tally.batch_count_mismatches.extend(check.mismatches)
    return tally


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (WriteFailed, ContextError)):
        return str(exc)
    if isinstance(exc, EOFError):
        return "compressed file ends early (truncated gzip)"
    if isinstance(exc, zlib.error):
        return f"compressed data is corrupt (gzip): {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# Workers die with the main process


_PARENT_PID = 0
PR_SET_PDEATHSIG = 1


def _worker_init(parent_pid: int) -> None:
    """In each worker: be killed when the main process dies (Linux), and
    check the parent before each file everywhere else."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _exit_if_orphaned()  # the parent may have died before prctl took effect


def _exit_if_orphaned() -> None:
    if _PARENT_PID and os.getppid() != _PARENT_PID:
        os._exit(1)


def _run_jobs(jobs: list[Job], workers: int):
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield replay_file(job)
        return
    from concurrent.futures import ProcessPoolExecutor  # (only with workers: multiprocessing costs start-up)

    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        yield from pool.map(replay_file, jobs, chunksize=1)


# --------------------------------------------------------------------------
# The run


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(config: Config, inputs: list[str], pairs, opts: Options, started: float, ended: float) -> dict:
    """How the report was made, for a rule-change review to file it as
    evidence: the product and rule versions, a digest of the effective
    configuration (and of the old one with --compare-with), the inputs as
    given and the files read (their relative paths and sizes; no content),
    what was done, and when."""
    files = []
    total = 0
    for src, rel in pairs:
        try:
            size = src.stat().st_size
        except OSError:
            size = None
        total += size or 0
        files.append({"file": rel, "bytes": size})
    mode = "forward" if opts.forward else "out" if opts.out else "dry-run"
    return {
        "product": "b12comment",
        "version": __version__,
        "rule_version": config.rule.rule_version,
        "config": config.source,
        "config_sha256": config_digest(config),
        "compare_with": (
            {
                "config": opts.old_config.source,
                "config_sha256": config_digest(opts.old_config),
                "rule_version": opts.old_config.rule.rule_version,
            }
            if opts.old_config
            else None
        ),
        "inputs": [str(Path(i).resolve()) for i in inputs],
        "include": list(opts.include),
        "exclude": list(opts.exclude),
        "files_read": len(files),
        "bytes_read": total,
        "files": files,
        "mode": mode,
        "out": str(Path(opts.out).resolve()) if opts.out else None,
        "forward": opts.forward,
        "context_mode": config.context.mode,
        "context_window_days": opts.context_window_days or config.context.lookback_days,
        "python": platform.python_version(),
        "started_at": _utc(started),
        "ended_at": _utc(ended),
    }


def run_replay(config: Config, inputs: list[str], opts: Options) -> int:
    level = config.logging.level
    if opts.quiet and level in ("debug", "info", "warning"):
        level = "error"  # --quiet: errors and the summary only (the forwarder's warnings too)
    if opts.forward:  # the journal and the forwarder log; a replay to files or a dry run logs nothing
        from b12comment.logs import configure  # (structlog and asyncio: 30 ms of start-up otherwise)

        configure(level, config.logging.format, config.logging.patient_data)
    out_dir = Path(opts.out) if opts.out else None
    started = time.monotonic()
    started_at = time.time()
    pairs = plan(inputs, out_dir, opts.include, opts.exclude)
    if opts.log_file and not opts.resume:
        try:
            Path(opts.log_file).write_bytes(b"")
        except OSError as exc:
            raise B12Error(f"replay: cannot write the log file {opts.log_file}: {_describe(exc)}") from None
    if opts.forward:
        tallies, extra = _forward(config, pairs, opts)
    else:
        tallies, extra = _to_files(config, pairs, out_dir, opts)
    elapsed = time.monotonic() - started
    total = Tally()
    for _, rel in pairs:
        total.merge(tallies[rel])
    report = total.to_json()
    report["elapsed_s"] = round(elapsed, 3)
    report["what_kept_comments_away"] = calibration(report.pop("blocking_codes"), config.rule)
    report["messages_per_s"] = round(total.messages / elapsed, 1) if elapsed > 0 else None
    copied = out_dir is not None and not opts.skip_non_hl7  # --dry-run and --forward write no files
    report["files_without_hl7_output"] = "copied unchanged" if copied else "none"
    report.update(extra)
    report["provenance"] = provenance(config, inputs, pairs, opts, started_at, time.time())
    status = EXIT_IO if total.errors else EXIT_OK
    for err in total.errors:
        print(f"b12comment replay: {err['file']}: {err['error']}", file=sys.stderr)
    if opts.report:
        status = max(status, _write(opts.report, json.dumps(report, indent=2) + "\n"))
    if opts.html:
        from b12comment.replay.report_html import render

        status = max(status, _write(opts.html, render(report, config.rule)))
    print(summary(report), file=sys.stderr)
    return status


def _to_files(config: Config, pairs, out_dir: Path | None, opts: Options) -> tuple[dict, dict]:
    """--out or --dry-run: files processed in worker processes, resumable."""
    lock = None
    if out_dir is not None:
        try:
            lock = lock_output(out_dir)
        except OSError as exc:
            raise B12Error(f"replay: cannot write to {out_dir}: {_describe(exc)}") from None
    try:
        return _to_files_locked(config, pairs, out_dir, opts)
    finally:
        if lock is not None:
            os.close(lock)


def _to_files_locked(config: Config, pairs, out_dir: Path | None, opts: Options) -> tuple[dict, dict]:
    fp = fingerprint(config, opts.old_config, pairs, opts.context_window_days)
    resume_path = out_dir / RESUME_NAME if out_dir is not None else None
    done = load_done(resume_path, fp) if opts.resume and resume_path else {}
    old_rule = opts.old_config.rule if opts.old_config else None
    spec = _audit(config, opts, shadow=out_dir is None)
    with _first_pass(config, pairs, out_dir, opts) as ctx:
        jobs = [
            Job(
                str(src),
                rel,
                str(out_dir) if out_dir else None,
                config.rule,
                old_rule,
                opts.log_file,
                opts.skip_non_hl7,
                ctx,
                index,
                spec,
            )
            for index, (src, rel) in enumerate(pairs)
            if rel not in done
        ]
        try:
            return _run_to_files(jobs, pairs, done, resume_path, fp, out_dir, opts)
        finally:
            if spec is not None:
                from b12comment.audit.recorder import close_recorders

                close_recorders()  # (this process's, when the files were decided here)


def _run_to_files(jobs, pairs, done, resume_path, fp, out_dir, opts) -> tuple[dict, dict]:
    sizes = {rel: _size(src) for src, rel in pairs}
    resume = None
    if resume_path is not None:
        try:
            resume = ResumeFile(resume_path, fp, bool(done) or opts.resume)
        except OSError as exc:
            raise B12Error(f"replay: cannot write to {out_dir}: {_describe(exc)}") from None
    non_hl7 = "" if out_dir is None else "no output (--skip-non-hl7)" if opts.skip_non_hl7 else "copied unchanged"
    progress = Progress(sum(sizes[j.rel] for j in jobs), opts.quiet, non_hl7)
    tallies: dict[str, Tally] = dict(done)
    try:
        for job, tally in zip(jobs, _run_jobs(jobs, opts.workers), strict=False):
            tallies[job.rel] = tally
            if resume is not None:
                resume.record(job.rel, tally)
            progress.record(job.rel, tally, sizes[job.rel])
    finally:
        progress.close()
        if resume is not None:
            resume.close()
    return tallies, {"resumed_files": len(done)}


def _audit(config: Config, opts: Options, shadow: bool) -> AuditSpec | None:
    """--audit: the recorder's settings, after the store and key are checked
    (and the store purged) here, before any worker starts. `shadow`: a replay
    that writes no output (its rows are the shadow's, else the replay's)."""
    if not opts.audit:
        return None
    from b12comment.audit.recorder import audit_spec, open_recorder
    from b12comment.audit.rows import REPLAY, SHADOW

    source = SHADOW if shadow else REPLAY
    spec = audit_spec(config.audit, config.rule, config.context, source=source, lookback_days=opts.context_window_days)
    open_recorder(spec).close()
    return spec


@contextlib.contextmanager
def _first_pass(config: Config, pairs, folder: Path | None, opts: Options):
    """The context of the whole input (None in mode "message"), in a
    temporary store in `folder` (else a temporary folder), removed afterwards."""
    cx = config.context
    if cx.mode == "message":
        yield None
        return
    window = opts.context_window_days or cx.lookback_days
    with tempfile.TemporaryDirectory(prefix="b12comment-context-") as scratch:
        path = (folder if folder is not None else Path(scratch)) / CONTEXT_NAME
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            rules = [config.rule] + ([opts.old_config.rule] if opts.old_config else [])
            ctx = build_first_pass(path, [str(src) for src, _ in pairs], rules, cx.mode, window)
        except (ContextError, OSError) as exc:
            remove_first_pass(path)
            raise B12Error(f"replay: the context's first pass: {_describe(exc)}") from None
        try:
            yield ctx
        finally:
            close_readers()  # (this process's, when the files were decided here)
            remove_first_pass(path)


def _forward(config: Config, pairs, opts: Options) -> tuple[dict, dict]:
    """--forward: journal every processed message, then deliver them all."""
    import asyncio

    from b12comment.replay.forward import SOURCE_PREFIX, drain, enqueue_file, journal_path_for
    from b12comment.storage import JournalError, open_journal, shown

    path = journal_path_for(config, opts.journal)
    # The first pass's store goes beside the journal, or beside the context store for a database.
    work = path.parent if isinstance(path, Path) else Path(config.context.store).parent
    tallies: dict[str, Tally] = {}
    sizes = {rel: _size(src) for src, rel in pairs}
    progress = Progress(sum(sizes.values()), opts.quiet, "nothing sent")
    try:
        work.mkdir(parents=True, exist_ok=True)
        journal = open_journal(path)
        try:
            if not opts.resume:
                seen = [rel for _, rel in pairs if journal.last_position(SOURCE_PREFIX + rel)]
                if seen:
                    raise UsageError(
                        f"replay: {seen[0]} was already queued in {shown(path)}: add --resume to go on "
                        "with that replay, or give another --journal to send it again"
                    )
            spec = _audit(config, opts, shadow=False)
            recorder = None
            if spec is not None:
                from b12comment.audit.recorder import open_recorder

                recorder = open_recorder(spec, purge=False, buffered=True)
            with _first_pass(config, pairs, work, opts) as ctx:
                reader = Reader(ctx) if ctx is not None else None
                try:
                    for index, (src, rel) in enumerate(pairs):
                        log = None
                        try:
                            log = DecisionLog(opts.log_file, rel) if opts.log_file else None
                            tallies[rel] = enqueue_file(
                                journal, str(src), rel, config, opts.resume, log, reader, index, recorder
                            )
                        except (WriteFailed, OSError, EOFError, ValueError, zlib.error) as exc:
                            tallies[rel] = Tally(files=1, errors=[{"file": rel, "error": _describe(exc)}])
                        finally:
                            if log is not None:
                                with contextlib.suppress(WriteFailed, OSError):
                                    log.close()
                        progress.record(rel, tallies[rel], sizes[rel])
                finally:
                    if reader is not None:
                        reader.close()
                    if recorder is not None:
                        recorder.close()
        finally:
            journal.close()
        assert opts.forward is not None  # run_forward is only called with --forward
        counts = asyncio.run(drain(path, config, opts.forward))
    except JournalError as exc:
        raise B12Error(f"replay: {exc}") from None
    except OSError as exc:
        raise B12Error(f"replay: cannot use the journal {shown(path)}: {_describe(exc)}") from None
    finally:
        progress.close()
    return tallies, {
        "journal": shown(path),
        "forwarded": counts.get("forwarded", 0),
        "dead_lettered": counts.get("dead", 0),
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write(path: str, text: str) -> int:
    try:
        write_atomically(path, text.encode("utf-8"))
        return EXIT_OK
    except OSError as exc:
        print(f"b12comment replay: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_IO


def summary(r: dict) -> str:
    lines = [
        f"replayed {plural(r['files'], 'file')}, {plural(r['messages'], 'message')} in {r['elapsed_s']} s "
        f"({r['messages_per_s'] or 0:,.0f} msg/s)",
        f"  messages commented: {r['commented']}; paediatric B12 results: {r['paediatric_b12_results']}, "
        f"elevated {r['paediatric_b12_elevated']}, commented {r['paediatric_b12_commented']}",
        f"  malformed messages: {r['malformed']}; files without HL7: {len(r['files_without_hl7'])}; "
        f"batch count mismatches: {len(r['batch_count_mismatches'])}; errors: {len(r['errors'])}",
    ]
    if "forwarded" in r:
        lines.append(f"  forwarded: {r['forwarded']}; dead-lettered: {r['dead_lettered']} (journal {r['journal']})")
    vetoes = r.get("context_vetoes_by_reason") or {}
    if vetoes:
        listed = ", ".join(f"{reason} {count}" for reason, count in vetoes.items())
        lines.append(f"  comments the patient's other results took away: {listed}")
    if r["rule_differences"]:
        lines.append(f"  messages where the two rules differ: {r['rule_differences']}")
    return "\n".join(lines)
