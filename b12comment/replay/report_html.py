"""The replay report as one self-contained HTML page for a lab manager.

No external assets and no JavaScript: the charts are inline SVG drawn here.
The page shows how many children's B12 results were measured, how few were
elevated, and why the others got no comment — the figure the guideline cites.
"""

from __future__ import annotations

from html import escape

from b12comment.core.decision import REASONS
from b12comment.core.rule_config import RuleConfig
from b12comment.replay.tally import BIN_PMOL_L, TOP_BIN_PMOL_L, band_name

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:70rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.figures{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.fig{background:#f4f6f8;border-radius:6px;padding:.8rem 1.2rem;min-width:9rem}
.fig b{display:block;font-size:1.8rem} .fig span{color:#555;font-size:.85rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border-bottom:1px solid #eee;padding:.25rem .8rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#666;font-size:.9rem}
svg text{font-family:inherit;font-size:11px;fill:#333}
"""


def _fig(value, label: str) -> str:
    return f'<div class="fig"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def _table(rows, headers) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(str(c))}</td>' if isinstance(c, (int, float)) else f"<td>{escape(str(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def histogram_svg(band: str, bins: dict, limit: float | None, width=420, height=200) -> str:
    """Bars of value counts per 100 pmol/L, with the band's fallback limit as a red line."""
    left, bottom, top = 40, 30, 24
    n_bins = TOP_BIN_PMOL_L // BIN_PMOL_L + 1
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(bins.values(), default=0) or 1
    total = sum(bins.values())
    bar_w = plot_w / n_bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="B12 values, {escape(band)}">',
        f'<text x="{left}" y="14" font-weight="bold">{escape(band)} ({total} result{"" if total == 1 else "s"})</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for lower, count in sorted(bins.items()):
        i = lower // BIN_PMOL_L
        h = plot_h * count / peak
        parts.append(
            f'<rect class="bar" x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4a7ab5">'
            f"<title>{lower}-{lower + BIN_PMOL_L} pmol/L: {count}</title></rect>"
        )
    for tick in range(0, TOP_BIN_PMOL_L + 1, 500):
        x = left + tick / BIN_PMOL_L * bar_w
        label = f"{tick}+" if tick == TOP_BIN_PMOL_L else str(tick)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 2}" text-anchor="end">pmol/L</text>')
    if limit is not None:
        x = left + limit / BIN_PMOL_L * bar_w
        parts.append(
            f'<line class="limit" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="#c0392b" stroke-width="2" stroke-dasharray="4 2"/>'
            f'<text x="{x + 3:.1f}" y="{top + 6}" fill="#c0392b">limit {limit:g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(counts: dict, width=560) -> str:
    """Horizontal bars, one per reason."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return '<p class="muted">none</p>'
    row, left = 24, 150
    height = row * len(items) + 10
    peak = max(v for _, v in items) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="reasons">'
    ]
    for i, (name, count) in enumerate(items):
        y = 5 + i * row
        w = (width - left - 60) * count / peak
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(name)}</text>'
            f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="#e08e45">'
            f"<title>{escape(REASONS.get(name, name))}</title></rect>"
            f'<text x="{left + w + 4:.1f}" y="{y + 14}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render(report: dict, rule: RuleConfig) -> str:
    limits = {}
    for band in rule.age_bands:
        limits[band_name(band.below_years - 1, rule)] = band.upper_limit_pmol_l
    histograms = report["paediatric_b12_histogram_pmol_l"]
    band_order = [band_name(b.below_years - 1, rule) for b in rule.age_bands]
    charts = "".join(
        histogram_svg(band, {int(k): v for k, v in histograms.get(band, {}).items()}, limits.get(band))
        for band in band_order
    )
    paed = report["paediatric_b12_results"]
    share = f"{100 * report['paediatric_b12_elevated'] / paed:.1f}%" if paed else "-"
    html = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        "<title>b12comment replay report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Vitamin B12 in children: replay report</h1>",
        f'<p class="muted">{report["files"]} files, {report["messages"]} messages, '
        f"{report['elapsed_s']} s. Rule: elevated B12 as the only abnormal result in a patient "
        f"under 18 gets a comment that it needs no further investigation.</p>",
        '<div class="figures">',
        _fig(paed, "paediatric B12 results"),
        _fig(report["paediatric_b12_elevated"], f"elevated ({share})"),
        _fig(report["paediatric_b12_commented"], "commented"),
        _fig(report["commented"], "messages commented"),
        _fig(report["malformed"], "malformed messages"),
        "</div>",
        "<h2>Paediatric B12 values by age band</h2>",
        '<p class="muted">Count of results per 100 pmol/L; the red line is the age band\'s fallback '
        "upper limit (the lab's own flag or range comes first where it gives one).</p>",
        f'<div class="charts">{charts}</div>',
        "<h2>Why paediatric B12 results got no comment</h2>",
        bars_svg(report["paediatric_b12_not_commented_by_reason"]),
        "<h2>Messages not commented, by first reason</h2>",
        bars_svg(report["not_commented_by_reason"]),
        "<h2>Message types</h2>",
        _table(sorted(report["by_message_type"].items()), ["type", "messages"]),
        "<h2>HL7 versions</h2>",
        _table(sorted(report["by_version"].items()), ["version", "messages"]),
        "<h2>Malformed messages</h2>",
        _table(
            [(m["file"], m["message"], m["detail"]) for m in report["malformed_positions"]], ["file", "message", "why"]
        ),
        "<h2>Batch count mismatches</h2>",
        _table(
            [(m["file"], m["segment"], m["declared"], m["counted"]) for m in report["batch_count_mismatches"]],
            ["file", "segment", "declared", "counted"],
        ),
        "<h2>Files without HL7 and errors</h2>",
        _table(
            [(f, "no HL7 message") for f in report["files_without_hl7"]]
            + [(e["file"], e["error"]) for e in report["errors"]],
            ["file", "what"],
        ),
    ]
    if report.get("rule_differences"):
        html += [
            "<h2>Where the new rule decides differently</h2>",
            _table(
                [
                    (
                        d["file"],
                        d["message"],
                        d["control_id"],
                        f"{d['old']['commented']} {','.join(d['old']['reasons'])}",
                        f"{d['new']['commented']} {','.join(d['new']['reasons'])}",
                    )
                    for d in report["rule_difference_list"]
                ],
                ["file", "message", "control ID", "old", "new"],
            ),
        ]
    html.append("</body></html>\n")
    return "\n".join(html)
