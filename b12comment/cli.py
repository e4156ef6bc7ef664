"""Command line: serve, replay, preview, queue.

Exit codes scripts can rely on:
  0  done, every input read and every output written
  1  some input could not be read or some output not written (said on stderr)
  2  usage or configuration error (said on stderr, nothing ran)
"""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import ConfigError, load_config

EXIT_OK, EXIT_IO, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="b12comment",
        description=(
            "Adds an interpretive NTE comment to isolated elevated vitamin B12 results "
            "of patients under 18 in HL7 v2 ORU^R01 messages, changing no other byte."),
        epilog="Run 'b12comment COMMAND --help' for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"b12comment {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp):
        sp.add_argument("--config", metavar="PATH",
                        help="configuration file (TOML); default: the built-in defaults, "
                             "which are what the shipped config.toml holds")
        return sp

    sp = with_config(sub.add_parser(
        "preview", help="show what each message would get, and why",
        description="For each message in FILE (or stdin with '-'), print the decision, its "
                    "reasons and figures, and the exact change as a unified diff."))
    sp.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    sp.add_argument("--json", action="store_true",
                    help="one JSON object per message (control_id, commented, reasons, output, ...)")

    sp = with_config(sub.add_parser(
        "replay", help="process archived messages from files and folders into --out",
        description="Process every message of every INPUT file (folders are read recursively) "
                    "and write each file's processed messages to the same relative path under "
                    "--out, keeping its layout byte for byte."))
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for the output files")
    sp.add_argument("--report", metavar="PATH", help="write JSON totals here")

    sp = with_config(sub.add_parser(
        "serve", help="run the MLLP listener and forwarder",
        description="Listen for MLLP, journal and ACK each message, add the comment where due "
                    "and forward to [downstream] url. Stops cleanly on SIGTERM or SIGINT."))

    sp = with_config(sub.add_parser(
        "queue", help="inspect the journal: status, dead letters, retry",
        description="Inspect and steer the service's journal ([journal] path)."))
    qsub = sp.add_subparsers(dest="queue_command", metavar="ACTION")
    qsub.add_parser("status", help="counts by state and the age of the oldest undelivered message")
    qsub.add_parser("dead", help="dead-lettered messages: control IDs, times, reasons")
    qr = qsub.add_parser("retry", help="put dead-lettered messages back in the queue")
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
        from .preview import run_preview
        return run_preview(config, args.file, as_json=args.json)
    if args.command == "replay":
        from .replay import run_replay
        return run_replay(config, args.inputs, args.out, report=args.report)
    if args.command == "serve":
        from .service import run_serve
        return run_serve(config)
    if args.command == "queue":
        if not args.queue_command:
            parser.parse_args(["queue", "--help"])
        from .queue_cli import run_queue
        return run_queue(config, args)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
