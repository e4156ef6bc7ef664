"""The replay report as one self-contained HTML page, for a clinical
biochemist presenting to colleagues or a lab manager reading it on a phone.

No external assets and no JavaScript: the histograms are inline SVG drawn
here, the reason charts plain HTML bars. Every figure says what it counts
(messages, or B12 results: one message may hold several results). The page
fits a 420 px screen without sideways scrolling (the SVG scales with its
viewBox; tables wrap), and prints to A4 (print CSS: no cut charts, colours
kept). The SVG writes its labels in separate rows above and below the plot,
never on the bars, so no text overlaps at any width.
"""

from __future__ import annotations

from html import escape

from b12comment.core.decision import REASONS
from b12comment.core.rule_config import RuleConfig
from b12comment.replay.tally import BIN_PMOL_L, TOP_BIN_PMOL_L, band_name

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;padding:0 1.5rem;color:#222;
max-width:70rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(11rem,1fr));gap:.8rem;margin:1rem 0}
.fig{background:#f4f6f8;border-radius:6px;padding:.7rem 1rem}
.fig b{display:block;font-size:1.8rem;font-variant-numeric:tabular-nums} .fig span{color:#444;font-size:.85rem}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,24rem),1fr));gap:1rem}
.chart svg{width:100%;height:auto;display:block}
svg text{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:12px;fill:#333}
svg text.title{font-weight:bold} svg text.limit{fill:#c0392b}
.bars{display:grid;grid-template-columns:minmax(6rem,max-content) 1fr;gap:.3rem .6rem;align-items:center;margin:.5rem 0}
.bars .name{font-size:.9rem;overflow-wrap:anywhere}
.bars .track{display:flex;align-items:center;gap:.4rem;min-width:0}
.bars .bar{background:#e08e45;height:1rem;border-radius:2px;flex:none}
.bars .n{font-variant-numeric:tabular-nums;font-size:.9rem;white-space:nowrap}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f6f8;padding:.5rem;border-radius:4px}
table{border-collapse:collapse;margin:.5rem 0;max-width:100%}
td,th{border-bottom:1px solid #eee;padding:.25rem .6rem;text-align:left;overflow-wrap:break-word;vertical-align:top}
td.long{overflow-wrap:anywhere}
td.n{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#555;font-size:.9rem}
.bars .name code{display:block;font-size:.75rem;color:#555}
@media (max-width:40rem){body{margin:1rem auto;padding:0 .8rem} h1{font-size:1.3rem} .fig b{font-size:1.5rem}
table,tbody,tr,td{display:block;width:100%} tr.head{display:none} tr{border-bottom:1px solid #ddd;padding:.3rem 0}
td{border:0;padding:.1rem 0} td.n{text-align:left}
td[data-label]::before{content:attr(data-label) ": ";color:#555;font-size:.85rem}}
@page{size:A4;margin:15mm}
@media print{
body{margin:0;padding:0;max-width:none;font-size:10.5pt}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
h2{break-after:avoid} .fig,.chart,.bars,tr{break-inside:avoid}
.charts{grid-template-columns:repeat(2,1fr)}
}
"""


def _fig(value, label: str) -> str:
    return f'<div class="fig"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def _table(rows, headers) -> str:
    """A table; on a narrow screen each row becomes a block of "header: value"
    lines, so no cell is squeezed until its words break in the middle. Only a
    token too long for any line (a path, a digest) may break anywhere."""
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)

    def cell(value, header: str) -> str:
        label = f' data-label="{escape(header)}"' if header else ""
        if isinstance(value, (int, float)):
            return f'<td class="n"{label}>{escape(str(value))}</td>'
        text = str(value)
        long = ' class="long"' if any(len(word) > LONG_WORD for word in text.split()) else ""
        return f"<td{long}{label}>{escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(c, h) for c, h in zip(row, headers, strict=False)) + "</tr>" for row in rows)
    return f'<table><tr class="head">{head}</tr>{body}</table>'


LONG_WORD = 20  # characters: a longer token (a path, a digest) may break anywhere; no shorter word ever does


def band_label(band: str) -> str:
    """How an age band reads: the youngest, "0 y", is "under 1 y"."""
    return "under 1 y" if band == "0 y" else band


def reason_label(code: str) -> str:
    """A reason code as words ("other_abnormal_recent" -> "Other abnormal recent")."""
    return code.replace("_", " ").capitalize()


def _s(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def histogram_svg(band: str, bins: dict, limit: float | None, width=400, height=230) -> str:
    """Bars of result counts per 100 pmol/L, with the band's fallback limit as a
    red line. Rows, top to bottom: title, limit label, plot, axis labels."""
    left, right = 44, 12
    title_y, label_y, top = 14, 32, 40
    bottom = 36
    n_bins = TOP_BIN_PMOL_L // BIN_PMOL_L + 1
    plot_w, plot_h = width - left - right, height - bottom - top
    peak = max(bins.values(), default=0) or 1
    total = sum(bins.values())
    bar_w = plot_w / n_bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="B12 results of patients aged {escape(band_label(band))}, count per 100 pmol/L">',
        f'<text class="title" x="0" y="{title_y}">{escape(band_label(band))}: {_s(total, "B12 result")}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for lower, count in sorted(bins.items()):
        i = lower // BIN_PMOL_L
        h = plot_h * count / peak
        parts.append(
            f'<rect class="bar" x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4a7ab5">'
            f"<title>{lower}-{lower + BIN_PMOL_L} pmol/L: {_s(count, 'result')}</title></rect>"
        )
    for tick in range(0, TOP_BIN_PMOL_L + 1, 1000):
        x = left + tick / BIN_PMOL_L * bar_w
        label = f"{tick}+" if tick == TOP_BIN_PMOL_L else str(tick)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 3}" text-anchor="end">B12, pmol/L</text>')
    if limit is not None:
        x = left + min(limit, TOP_BIN_PMOL_L) / BIN_PMOL_L * bar_w
        anchor = "end" if x > left + plot_w * 0.6 else "start"
        tx = x - 4 if anchor == "end" else x + 4
        parts.append(
            f'<line class="limit" x1="{x:.1f}" y1="{label_y - 10}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="#c0392b" stroke-width="2" stroke-dasharray="4 2"/>'
            f'<text class="limit" x="{tx:.1f}" y="{label_y}" text-anchor="{anchor}">'
            f"age-band limit {limit:g} pmol/L</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bars_html(counts: dict, unit: str) -> str:
    """One row per reason: its name, an HTML bar and the count with its unit."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return '<p class="muted">none</p>'
    peak = max(v for _, v in items) or 1
    rows = []
    for name, count in items:
        share = max(count / peak, 0.005)  # the longest bar leaves room for its count beside it
        rows.append(
            f'<span class="name" title="{escape(REASONS.get(name, name))}">{escape(reason_label(name))}'
            f"<code>{escape(name)}</code></span>"
            f'<span class="track"><span class="bar" style="width:calc((100% - 8rem) * {share:.3f})"></span>'
            f'<span class="n">{escape(_s(count, unit))}</span></span>'
        )
    return '<div class="bars">' + "".join(rows) + "</div>"


def render(report: dict, rule: RuleConfig) -> str:
    limits = {}
    for band in rule.age_bands:
        limits[band_name(band.below_years - 1, rule)] = band.upper_limit_pmol_l
    histograms = report["paediatric_b12_histogram_pmol_l"]
    band_order = [band_name(b.below_years - 1, rule) for b in rule.age_bands]
    charts = "".join(
        '<div class="chart">'
        + histogram_svg(band, {int(k): v for k, v in histograms.get(band, {}).items()}, limits.get(band))
        + "</div>"
        for band in band_order
    )
    paed = report["paediatric_b12_results"]
    elevated, commented = report["paediatric_b12_elevated"], report["paediatric_b12_commented"]
    share = f"{100 * elevated / paed:.1f}%" if paed else "-"
    messages = report["messages"]
    html = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>b12comment replay report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Vitamin B12 in children: replay report</h1>",
        f'<p class="muted">{_s(report["files"], "file")}, {_s(messages, "message")}, replayed in '
        f"{report['elapsed_s']} s. Rule: an elevated B12 that is the only abnormal result of a patient "
        "under 18 gets a comment that it needs no further investigation. A message may hold more than "
        "one B12 result.</p>",
        '<div class="figures">',
        _fig(f"{paed:,}", "B12 results of patients under 18"),
        _fig(f"{elevated:,}", f"of those results elevated ({share})"),
        _fig(f"{commented:,}", "of those results commented"),
        _fig(
            f"{report.get('paediatric_b12_commented_unflagged_unranged', 0):,}",
            "of those comments relied on the lab's silence (a number beside it with neither flag nor range)",
        ),
        _fig(f"{report['commented']:,}", f"messages commented, of {messages:,} messages"),
        _fig(f"{report['malformed']:,}", "messages not readable as HL7 (malformed)"),
        "</div>",
        "<h2>B12 results of patients under 18, by age band</h2>",
        '<p class="muted">Each bar counts results in a 100 pmol/L step (3000 and above in the last bar); the '
        "red line is the age band's fallback upper limit (the lab's own flag or range comes first where it "
        "gives one).</p>",
        f'<div class="charts">{charts}</div>',
        "<h2>Why B12 results of patients under 18 got no comment</h2>",
        '<p class="muted">Counted in results; one result may have several reasons.</p>',
        bars_html(report["paediatric_b12_not_commented_by_reason"], "result"),
        "<h2>What kept comments away</h2>",
        '<p class="muted">Each result of another code that kept the comment from an elevated B12 of a '
        "patient under 18 (counted once per B12 result and code), with its verdict and, where it is coded "
        "or short and seen at least 5 times, its values (never free text). The blocks to paste into [rule] "
        "hold the site's own lists, then, commented out, every code and value that could not be judged: "
        "uncomment only codes that are truly no finding (ignored_codes) and values that are a normal "
        "answer (normal_texts); never a code whose result can be abnormal without a flag.</p>",
        _table(
            [
                (
                    r["blocked"],
                    f"{r['code']} ({r['system']})" if r["system"] else r["code"],
                    r["display"],
                    r["value_type"],
                    r["verdict"],
                    "; ".join(f"{v} ({n})" for v, n in r["values"].items()),
                )
                for r in report["what_kept_comments_away"]["rows"]
            ],
            ["B12 comments kept away", "code", "text", "type", "verdict", "values"],
        ),
        f"<pre>{escape(report['what_kept_comments_away']['ignored_codes'])}\n"
        f"{escape(report['what_kept_comments_away']['normal_texts'])}</pre>",
        "<h2>Messages without the comment, by first reason</h2>",
        '<p class="muted">Counted in messages; each message under its first reason only.</p>',
        bars_html(report["not_commented_by_reason"], "message"),
        "<h2>Message types</h2>",
        _table(sorted(report["by_message_type"].items()), ["type", "messages"]),
        "<h2>HL7 versions</h2>",
        _table(sorted(report["by_version"].items()), ["version", "messages"]),
        "<h2>Malformed messages</h2>",
        _table(
            [(m["file"], m["message"], m["detail"]) for m in report["malformed_positions"]],
            ["file", "message number in file", "why"],
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
    prov = report.get("provenance")
    if prov:
        html += [
            "<h2>How this report was made</h2>",
            '<p class="muted">For a rule-change review to file as its evidence: the same configuration digest '
            "means the same settings, whatever the file looked like.</p>",
            _table(
                [
                    ("product", f"b12comment {prov['version']}"),
                    ("rule version", prov["rule_version"]),
                    ("configuration", prov["config"]),
                    ("configuration digest (SHA-256)", prov["config_sha256"]),
                    *(
                        [
                            (
                                "compared with",
                                f"{prov['compare_with']['config']} (rule {prov['compare_with']['rule_version']})",
                            ),
                            ("its digest (SHA-256)", prov["compare_with"]["config_sha256"]),
                        ]
                        if prov.get("compare_with")
                        else []
                    ),
                    ("inputs", ", ".join(prov["inputs"])),
                    ("files read", f"{prov['files_read']:,} ({prov['bytes_read']:,} bytes)"),
                    ("mode", prov["mode"]),
                    ("started", prov["started_at"]),
                    ("ended", prov["ended_at"]),
                ],
                ["", ""],
            ),
        ]
    if report.get("rule_differences"):
        html += [
            "<h2>Where the new rule decides differently</h2>",
            f'<p class="muted">{_s(report["rule_differences"], "message")}; the first 1000 are listed.</p>',
            _table(
                [
                    (
                        d["file"],
                        d["message"],
                        d["control_id"],
                        f"{'comment' if d['old']['commented'] else 'no comment'} {', '.join(d['old']['reasons'])}",
                        f"{'comment' if d['new']['commented'] else 'no comment'} {', '.join(d['new']['reasons'])}",
                    )
                    for d in report["rule_difference_list"]
                ],
                ["file", "message", "control ID", "old rule", "new rule"],
            ),
        ]
    html.append("</body></html>\n")
    return "\n".join(html)
