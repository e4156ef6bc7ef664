"""Command line: serve, replay, preview, queue.

Exit codes scripts can rely on:
  0  done, every input read and every output written
  1  some input could not be read or some output not written (said on stderr)
  2  usage or configuration error (said on stderr, nothing ran)
"""

from __future__ import annotations

import argparse
import os
import sys

from b12comment import __version__
from b12comment.config import ConfigError, load_config

EXIT_OK, EXIT_IO, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="b12comment",
        description=(
            "Adds an interpretive NTE comment to isolated elevated vitamin B12 results "
            "of patients under 18 in HL7 v2 ORU^R01 messages, changing no other byte."
        ),
        epilog="Run 'b12comment COMMAND --help' for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"b12comment {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp):
        sp.add_argument(
            "--config",
            metavar="PATH",
            help="configuration file (TOML); default: the built-in defaults, "
            "which are what the shipped config.toml holds",
        )
        return sp

    sp = with_config(
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

    sp = with_config(
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
    sp.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files whose relative path or name matches (repeatable)",
    )
    sp.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files whose relative path or name matches (repeatable)",
    )
    sp.add_argument(
        "--resume",
        action="store_true",
        help="skip the files an interrupted run with the same inputs and --out completed",
    )
    sp.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: the number of cores); output is the same for any N",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress line")
    sp.add_argument("--report", metavar="PATH", help="write the JSON report here")
    sp.add_argument("--html", metavar="PATH", help="write a self-contained HTML report here")
    sp.add_argument(
        "--compare-with",
        metavar="OLD_CONFIG",
        help="also run the rule of OLD_CONFIG and report every message where the two differ",
    )

    sp = with_config(
        sub.add_parser(
            "serve",
            help="run the MLLP listener and forwarder",
            description="Listen for MLLP, journal and ACK each message, add the comment where due "
            "and forward to [downstream] url. Stops cleanly on SIGTERM or SIGINT.",
        )
    )

    sp = with_config(
        sub.add_parser(
            "queue",
            help="inspect the journal: status, dead letters, retry",
            description="Inspect and steer the service's journal ([journal] path).",
        )
    )
    qsub = sp.add_subparsers(dest="queue_command", metavar="ACTION")
    for name, text in (
        ("status", "counts by state and the age of the oldest undelivered message"),
        ("dead", "dead-lettered messages: control IDs, times, reasons"),
    ):
        qsub.add_parser(name, help=text).add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    qr = qsub.add_parser("retry", help="put dead-lettered messages back in the queue")
    qr.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    qr.add_argument("control_id", nargs="?", metavar="CONTROL_ID")
    qr.add_argument("--all", action="store_true", help="retry every dead-lettered message")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"b12comment: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "preview":
        from b12comment.preview import run_preview

        return run_preview(config, args.file, as_json=args.json)
    if args.command == "replay":
        from b12comment.replay.run import Options, run_replay

        if args.workers < 1:
            parser.error("--workers must be 1 or more")
        if args.resume and not (args.out or args.forward):
            parser.error("--resume needs --out or --forward")
        if args.journal and not args.forward:
            parser.error("--journal goes with --forward")
        try:
            old = load_config(args.compare_with) if args.compare_with else None
        except ConfigError as exc:
            print(f"b12comment: configuration error (--compare-with): {exc}", file=sys.stderr)
            return EXIT_USAGE
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
                report=args.report,
                html=args.html,
                old_config=old,
            ),
        )
    if args.command == "serve":
        from b12comment.serve.service import run_serve

        return run_serve(config)
    if args.command == "queue":
        if not args.queue_command:
            parser.parse_args(["queue", "--help"])
        from b12comment.serve.queue_cli import run_queue

        return run_queue(config, args)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
