"""`b12comment audit export|purge` and `b12comment outcomes`."""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, date, datetime

from b12comment.context.store import load_key
from b12comment.errors import UsageError
from b12comment.files import write_atomically

from .outcomes import outcomes
from .store import open_audit

# What an export holds: the decision and why, never the keyed hashes (the
# control ID finds the message in the laboratory's own system).
EXPORT_FIELDS = (
    "decided_at",
    "source",
    "control_id",
    "sending_facility",
    "rule_version",
    "config_digest",
    "obx_index",
    "age_band",
    "value_pmol_l",
    "comparator",
    "limit_pmol_l",
    "limit_source",
    "commented",
    "reasons",
    "vetoed_by",
    "blocked_by",
    "collected",
)


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} must be a date YYYY-MM-DD, not {text!r}") from None


def run_export(config, first: str | None, last: str | None, fmt: str) -> int:
    first_day = parse_day(first, "--from") if first else None
    last_day = parse_day(last, "--to") if last else None
    if first_day and last_day and last_day < first_day:
        raise UsageError("audit export: --to is before --from")
    store = open_audit(config.audit.path, None, read_only=True)
    try:
        out = sys.stdout
        if fmt == "json":
            out.write("[")
            for i, row in enumerate(store.decisions(first_day, last_day)):
                d = row.as_dict()
                out.write(("," if i else "") + "\n" + json.dumps({k: d[k] for k in EXPORT_FIELDS}, ensure_ascii=False))
            out.write("\n]\n")
        else:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(EXPORT_FIELDS)
            for row in store.decisions(first_day, last_day):
                d = row.as_dict()
                d["reasons"] = " ".join(d["reasons"])
                d["vetoed_by"] = " ".join(d["vetoed_by"])
                d["blocked_by"] = "; ".join(
                    " ".join(
                        str(x)
                        for x in (b["source"], b["control_id"], f"OBX {b['obx']}", b["code"], b["system"], b["verdict"])
                        if x
                    )
                    for b in d["blocked_by"]
                )
                w.writerow(["" if d[k] is None else d[k] for k in EXPORT_FIELDS])
        out.flush()
    finally:
        store.close()
    return 0


def run_purge(config) -> int:
    store = open_audit(config.audit.path, load_key(config.audit.key_file, "audit"))
    try:
        removed = store.purge(config.audit.retention_days)
    finally:
        store.close()
    print(f"purged {removed} decisions older than {config.audit.retention_days:g} days", file=sys.stderr)
    return 0


def parse_windows(text: str) -> tuple[int, ...]:
    try:
        days = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        days = ()
    if not days or any(d < 1 for d in days):
        raise UsageError(f"outcomes: --days must be whole numbers of days above 0, comma-separated, not {text!r}")
    return tuple(dict.fromkeys(days))


def run_outcomes(
    config,
    *,
    as_json: bool,
    html: str | None,
    days: str,
    as_of: str | None,
    min_cell: int | None,
) -> int:
    windows = parse_windows(days)
    today = parse_day(as_of, "--as-of") if as_of else datetime.now(UTC).date()
    k = config.audit.min_cell if min_cell is None else min_cell
    if k < 0:
        raise UsageError("outcomes: --min-cell must be 0 or more")
    store = open_audit(config.audit.path, None, read_only=True)
    try:
        report = outcomes(
            store.decisions(),
            store.followups(),
            as_of=today,
            windows=windows,
            min_cell=k,
            safety=config.context.mode != "message",
        )
    finally:
        store.close()
    if html:
        from .report_html import render

        write_atomically(html, render(report).encode("utf-8"))
    if as_json:
        print(json.dumps(report, indent=2))
    elif not html:
        print(summary(report))
    return 0


def _fmt(c: dict, what: str = "repeated") -> str:
    if c["commented"] is None:
        return "fewer than the smallest cell shown"
    if c[what] is None:
        return f"{c['commented']} results, {what} suppressed (a small cell)"
    share = f"{100 * c['share']:.1f}%" if c["share"] is not None else "-"
    return f"{c['commented']} results, {c[what]} {what} ({share})"


def summary(report: dict) -> str:
    lines = [f"outcomes as of {report['as_of']} (cells under {report['min_cell']} suppressed)"]
    for label, key in (("commented", "windows"), ("shadow (baseline)", "shadow")):
        for c in report[key]:
            lines.append(f"  {label}: another B12 within {c['days']} days: {_fmt(c)}")
    if report["safety"] is not None:
        s = report["safety"]
        lines.append(f"  safety: an abnormal result within {s['days']} days of the comment: {_fmt(s, 'abnormal')}")
    return "\n".join(lines)
