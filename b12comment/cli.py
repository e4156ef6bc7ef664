"""Command line: serve, send, preview, replay, queue, context.

Each sub-command's parser names its handler with `set_defaults(func=...)`;
`main` parses, loads the configuration and calls it. A handler returns an
exit code or raises `B12Error` (errors.py), which `main` turns into one line
on stderr and that error's exit code. The codes are defined once, in errors.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from b12comment import __version__
from b12comment.config import Config, load_config
from b12comment.errors import (
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_USAGE,
    B12Error,
    UsageError,
    describe_os_error,
)

# replay: each worker holds about 30 MB (its interpreter, hl7apy's tables, its
# connection to the run's context store, one message) beside the main
# process's 36 MB (bench/README.md: 126 MB with 3 workers, 147-159 MB with 4),
# so three keep a run with the default under 150 MB on any machine.
MAX_DEFAULT_WORKERS = 3


def default_workers() -> int:
    """replay's --workers when none is given: the number of cores, at most three."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def _with_config(sp: argparse.ArgumentParser, default=None) -> argparse.ArgumentParser:
    sp.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="configuration file (TOML); default: the built-in defaults, which are what the shipped config.toml holds",
    )
    return sp


STATES_CHOICES = ("received", "processed", "forwarded", "dead", "invalid")

# --------------------------------------------------------------------------
# Handlers: (config, args) -> exit code


def _preview(config: Config, args: argparse.Namespace) -> int:
    from b12comment.preview import run_preview

    return run_preview(config, args.file, as_json=args.json)


def _replay(config: Config, args: argparse.Namespace) -> int:
    from b12comment.replay.run import Options, run_replay

    if args.workers < 1:
        raise UsageError("replay: --workers must be 1 or more")
    if args.resume and not (args.out or args.forward):
        raise UsageError("replay: --resume needs --out or --forward")
    if args.journal and not args.forward:
        raise UsageError("replay: --journal goes with --forward")
    window = args.context_window_days
    if window is not None and not (window > 0 and window < float("inf")):
        raise UsageError("replay: --context-window-days must be a number of days above 0")
    old = None
    if args.compare_with:
        try:
            old = load_config(args.compare_with)
        except B12Error as exc:
            raise UsageError(f"configuration error (--compare-with): {exc}") from None
    return run_replay(
        config,
        args.inputs,
        Options(
            out=args.out,
            forward=args.forward,
            journal=args.journal,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            resume=args.resume,
            workers=args.workers,
            quiet=args.quiet,
            log_file=args.log_file,
            skip_non_hl7=args.skip_non_hl7,
            report=args.report,
            html=args.html,
            old_config=old,
            context_window_days=args.context_window_days,
            audit=args.audit,
        ),
    )


def _serve(config: Config, args: argparse.Namespace) -> int:
    from b12comment.serve.service import run_serve

    return run_serve(config)


def _send(config: Config, args: argparse.Namespace) -> int:
    from b12comment.send import SendOptions, parse_address, run_send

    if args.count is not None and args.count < 1:
        raise UsageError("send: --count must be 1 or more")
    if args.rate < 0:
        raise UsageError("send: --rate must be 0 (no limit) or more")
    host, port = parse_address(args.to)
    return run_send(
        args.files,
        SendOptions(
            host=host,
            port=port,
            timeout_s=args.timeout,
            count=args.count,
            rate=args.rate,
            tls=args.tls,
            tls_ca=args.tls_ca or "",
            tls_cert=args.tls_cert or "",
            tls_key=args.tls_key or "",
        ),
    )


def _check_config(config: Config, args: argparse.Namespace) -> int:
    """Like `nginx -t`: the file was read and checked by main (exit 2 on an
    error, naming the file and the key); the TLS files it names are loaded too."""
    from b12comment.wire.tls import client_context, server_context

    for name, section in (("listener", config.listener), ("http", config.http)):
        if section.tls_cert and (name == "listener" or config.http.enabled):
            server_context(section.tls_cert, section.tls_key, section.tls_client_ca)
    ds = config.downstream
    if ds.url.startswith("mllps://"):
        client_context(ds.tls_ca, ds.tls_cert, ds.tls_key)
    lis = config.listener
    listening = f"MLLP on {lis.host}:{lis.port}" if lis.enabled else "no MLLP listener"
    http = f"HTTP on {config.http.host}:{config.http.port}" if config.http.enabled else "no HTTP endpoint"
    print(f"configuration ok: {args.config}: {listening}, {http}, downstream {ds.url}, rule {config.rule.rule_version}")
    return EXIT_OK


def _queue(config: Config, args: argparse.Namespace) -> int:
    from b12comment.serve.queue_cli import run_queue

    return run_queue(config, args)


def _context(config: Config, args: argparse.Namespace) -> int:
    from b12comment.context.rebuild import run_rebuild

    return run_rebuild(config)


def _audit(config: Config, args: argparse.Namespace) -> int:
    from b12comment.audit.commands import run_export, run_purge

    if args.audit_command == "purge":
        return run_purge(config)
    return run_export(config, args.first, args.last, "json" if args.json else "csv")


def _outcomes(config: Config, args: argparse.Namespace) -> int:
    from b12comment.audit.commands import run_outcomes

    return run_outcomes(
        config, as_json=args.json, html=args.html, days=args.days, as_of=args.as_of, min_cell=args.min_cell
    )


# --------------------------------------------------------------------------
# Parsers


def _add_preview(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "preview",
            help="show what each message would get, and why",
            description="For each message in FILE (or stdin with '-'), print the decision, its "
            "reasons and figures, and the exact change as a unified diff.",
        )
    )
    sp.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    sp.add_argument(
        "--json", action="store_true", help="one JSON object per message (control_id, commented, reasons, output, ...)"
    )
    sp.set_defaults(func=_preview)


def _add_replay(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "replay",
            help="process archived messages from files and folders",
            description="Process every message of every INPUT (a file or a folder, read recursively; "
            "plain or gzip; HL7 text, batch files or MLLP captures). With --out, each input "
            "file gets an output at the same relative path, same layout byte for byte.",
        )
    )
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    mode = sp.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="DIR", help="folder for the output files")
    mode.add_argument("--dry-run", action="store_true", help="write no output, only report")
    mode.add_argument(
        "--forward",
        metavar="URL",
        help="send every processed message downstream (mllp://, mllps:// or dir:) "
        "through a journal and the service's forwarder",
    )
    sp.add_argument(
        "--journal",
        metavar="PATH",
        help="with --forward: the journal to queue in (default: [journal] path with "
        "'-replay' added to its name, never the one serve uses)",
    )
    for name, text in (
        ("--include", "only files whose relative path or name matches (repeatable)"),
        ("--exclude", "skip files whose relative path or name matches (repeatable)"),
    ):
        sp.add_argument(name, action="append", default=[], metavar="GLOB", help=text)
    sp.add_argument(
        "--resume",
        action="store_true",
        help="skip the files an interrupted run with the same inputs and --out completed",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help=f"worker processes (default: the number of cores, at most {MAX_DEFAULT_WORKERS}); "
        "output is the same for any N",
    )
    sp.add_argument(
        "--skip-non-hl7",
        action="store_true",
        help="give a file that holds no HL7 message no output (by default it is copied unchanged)",
    )
    sp.add_argument(
        "--quiet", action="store_true", help="print only errors and the closing summary (no progress line, no warnings)"
    )
    sp.add_argument(
        "--log-file",
        metavar="PATH",
        help="write one JSON decision record per message here (control ID, type, commented, reasons; no patient data)",
    )
    sp.add_argument("--report", metavar="PATH", help="write the JSON report here")
    sp.add_argument("--html", metavar="PATH", help="write a self-contained HTML report here")
    sp.add_argument(
        "--compare-with",
        metavar="OLD_CONFIG",
        help="also run the rule of OLD_CONFIG and report every message where the two differ",
    )
    sp.add_argument(
        "--context-window-days",
        type=float,
        metavar="DAYS",
        help="the patient's other results collected within DAYS of a B12 count (default: [context] lookback_days)",
    )
    sp.add_argument(
        "--audit",
        action="store_true",
        help="record every decision on a B12 result of a patient under 18 in the audit store ([audit] path); "
        "with --dry-run, as shadow decisions (the baseline of outcomes)",
    )
    sp.set_defaults(func=_replay)


def _add_serve(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "serve",
            help="run the MLLP listener and forwarder",
            description="Listen for MLLP, journal and ACK each message, add the comment where due "
            "and forward to [downstream] url. Stops cleanly on SIGTERM or SIGINT.",
        )
    )
    sp.set_defaults(func=_serve)


def _add_send(sub) -> None:
    sp = sub.add_parser(
        "send",
        help="send messages to an MLLP listener and show each ACK",
        description="Send every message of every FILE (any segment terminator, batch files, MLLP "
        "captures, gzip) in its own MLLP frame, wait for its ACK, and print one line per message: "
        "control ID, ACK code, whether MSA-2 matches, round trip. Exits 3 if any message was not "
        "answered AA.",
    )
    sp.add_argument("files", nargs="+", metavar="FILE", help="a file of messages, or - for standard input")
    sp.add_argument("--to", required=True, metavar="HOST:PORT", help="the listener, such as 127.0.0.1:2575")
    sp.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for each ACK (10)")
    sp.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="a load run: send N messages, the files' messages in turn (repeats get -2, -3, ... on MSH-10), "
        "print only those not AA and a summary",
    )
    sp.add_argument("--rate", type=float, default=0.0, metavar="R", help="at most R messages a second (0: no limit)")
    sp.add_argument("--tls", action="store_true", help="MLLP over TLS, the server checked against the system store")
    sp.add_argument("--tls-ca", metavar="PATH", help="TLS, the server checked against this CA")
    sp.add_argument("--tls-cert", metavar="PATH", help="TLS client certificate")
    sp.add_argument("--tls-key", metavar="PATH", help="its key")
    sp.set_defaults(func=_send, config=None)


def _add_queue(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "queue",
            help="inspect the journal: status, dead letters, retry",
            description="Inspect and steer the service's journal ([journal] path).",
        )
    )
    qsub = sp.add_subparsers(dest="queue_command", metavar="ACTION")

    def action(name: str, text: str, description: str | None = None) -> argparse.ArgumentParser:
        ap = _with_config(qsub.add_parser(name, help=text, description=description), argparse.SUPPRESS)
        ap.add_argument("--json", action="store_true", help="print JSON instead of text")
        return ap

    action("status", "counts by state and the age of the oldest undelivered message")
    action("dead", "dead-lettered messages: control IDs, times, tries, reasons")
    action("review", "comments a later result of the same patient contradicts, to follow up")
    qs = action(
        "show",
        "one message by its control ID: state, times, tries, decision and reasons",
        "Every journal row with this control ID (and the record of a discarded one). The message's bytes "
        "hold patient data: they are printed only with --message.",
    )
    qs.add_argument("control_id", metavar="CONTROL_ID")
    qs.add_argument("--message", action="store_true", help="also print the message (patient data)")
    ql = action("list", "list messages by state, time, control ID and peer")
    ql.add_argument("--state", choices=STATES_CHOICES, help="only messages in this state")
    ql.add_argument("--since", metavar="TIME", help="received at or after TIME (2026-12-01 or 2026-12-01T08:30, UTC)")
    ql.add_argument("--until", metavar="TIME", help="received before TIME")
    ql.add_argument("--control-id", metavar="TEXT", help="control IDs that contain TEXT")
    ql.add_argument("--peer", metavar="ADDRESS", help="sent from this address")
    ql.add_argument("--limit", type=int, default=100, metavar="N", help="the last N that match (default 100; 0: all)")
    qr = action("retry", "put dead-lettered messages back in the queue")
    qr.add_argument("control_id", nargs="?", metavar="CONTROL_ID")
    qr.add_argument("--all", action="store_true", help="retry every dead-lettered message")
    qd = action(
        "discard",
        "give up a dead-lettered message for good, with a reason that is recorded",
        "Remove the dead letters with this control ID from the journal. What they were (control ID, type, "
        "times, tries, why they died), the reason given and who gave it stay recorded: queue show lists them.",
    )
    qd.add_argument("control_id", metavar="CONTROL_ID")
    qd.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded)")
    qe = action(
        "export",
        "save the undelivered messages (or with --dead the dead letters) as files",
        "Write every undelivered message that can still be read as DIR/<journal id>_<control id>.hl7 "
        "(processed bytes where processed); read-only on the journal. With --dead: the dead letters.",
    )
    qe.add_argument("dir", metavar="DIR")
    qe.add_argument("--dead", action="store_true", help="export the dead-lettered messages instead")
    sp.set_defaults(func=_queue, queue_parser=sp)


def _add_check_config(sub) -> None:
    sp = sub.add_parser(
        "check-config",
        help="check a configuration file and the TLS files it names, then exit (0 ok, 2 not)",
        description="Read and check the configuration file as serve would (every key and value, and "
        "the TLS certificate, key and CA files it names), print one line, and exit: 0 when it is "
        "good, 2 with the file and the key named when it is not. Nothing is started.",
    )
    sp.add_argument("--config", metavar="PATH", required=True, help="the configuration file (TOML) to check")
    sp.set_defaults(func=_check_config)


def _add_context(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "context",
            help="the context store: rebuild it from the journal",
            description="The context store ([context] store) is derived data: rebuild makes it again "
            "from the messages in the journal ([journal] path). Stop serve first.",
        )
    )
    csub = sp.add_subparsers(dest="context_command", metavar="ACTION")
    _with_config(csub.add_parser("rebuild", help="make the store again from the journal"), default=argparse.SUPPRESS)
    sp.set_defaults(func=_context, context_parser=sp)


def _add_audit(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "audit",
            help="the audit store: export the decisions, purge old ones",
            description="The audit store ([audit] path) holds every decision on a B12 result of a patient "
            "under 18, with keyed hashes only.",
        )
    )
    asub = sp.add_subparsers(dest="audit_command", metavar="ACTION")
    ex = _with_config(
        asub.add_parser(
            "export",
            help="the decisions made from --from to --to (UTC days, both included), for a governance committee",
            description="One row per decision: time, source, control ID, sending facility, rule version, "
            "configuration digest, age band, value, limit and its source, commented, reasons, the control IDs "
            "of the messages that vetoed, the results that kept the comment away (where, OBX, code, verdict), "
            "collection time. No keyed hashes, no patient data.",
        ),
        default=argparse.SUPPRESS,
    )
    ex.add_argument("--from", dest="first", metavar="DATE", help="first day (YYYY-MM-DD)")
    ex.add_argument("--to", dest="last", metavar="DATE", help="last day (YYYY-MM-DD)")
    fmt = ex.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line (the default)")
    _with_config(
        asub.add_parser("purge", help="delete what is older than [audit] retention_days"), default=argparse.SUPPRESS
    )
    sp.set_defaults(func=_audit, audit_parser=sp)


def _add_outcomes(sub) -> None:
    sp = _with_config(
        sub.add_parser(
            "outcomes",
            help="did the comment work: repeat B12 within N days, against the shadow decisions",
            description="From the audit store: of the children whose elevated B12 got the comment, how many "
            "had another B12 within N days, and the same for shadow decisions (the baseline), by month, with "
            "a safety line. Aggregates only; small cells suppressed.",
        )
    )
    sp.add_argument("--json", action="store_true", help="print the figures as JSON")
    sp.add_argument("--html", metavar="PATH", help="write a self-contained HTML report here")
    sp.add_argument("--days", default="56,180,365", metavar="N,N,...", help="the windows in days (56,180,365)")
    sp.add_argument("--as-of", metavar="DATE", help="count the windows that have passed by this day (default: today)")
    sp.add_argument("--min-cell", type=int, metavar="K", help="suppress counts from 1 to K-1 ([audit] min_cell)")
    sp.set_defaults(func=_outcomes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="b12comment",
        description=(
            "Adds an interpretive NTE comment to isolated elevated vitamin B12 results "
            "of patients under 18 in HL7 v2 ORU^R01 messages, changing no other byte."
        ),
        epilog="Run 'b12comment COMMAND --help' for the options of one command. "
        "Exit codes: 0 done, 1 an input could not be read or an output not written, "
        "2 usage or configuration error, 3 send: a message was not answered AA.",
    )
    p.add_argument("--version", action="version", version=f"b12comment {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_serve,
        _add_send,
        _add_preview,
        _add_replay,
        _add_queue,
        _add_context,
        _add_audit,
        _add_outcomes,
        _add_check_config,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "queue" and not args.queue_command:
        args.queue_parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "context" and not args.context_command:
        args.context_parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "audit" and not args.audit_command:
        args.audit_parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args)
    except BrokenPipeError:
        # the reader went away (`| head`): end quietly, as Unix tools do
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print("b12comment: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except B12Error as exc:
        print(f"b12comment: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        return args.func(config, args)
    except B12Error as exc:
        print(f"b12comment: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        raise
    except OSError as exc:  # a path nobody foresaw: still one line, never a traceback
        print(f"b12comment: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_IO


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
