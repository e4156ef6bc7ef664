"""The outcomes report as one self-contained HTML page, with the replay
report's look (its CSS, figures and tables) and inline SVG charts: no
external assets, no JavaScript. Only aggregates reach it; a suppressed cell
is drawn as no bar and written "suppressed"."""

from __future__ import annotations

import math
from html import escape

from b12comment.replay.report_html import CSS, _fig, _table

COMMENTED, SHADOW = "#4a7ab5", "#e08e45"


def _share(c: dict, what: str = "repeated") -> str:
    if c["commented"] is None:
        return "suppressed"
    if c["commented"] == 0:
        return "-"
    if c[what] is None or c["share"] is None:
        return "suppressed"
    return f"{100 * c['share']:.1f}%"


def _figure(c: dict, label: str, what: str = "repeated") -> str:
    share = _share(c, what)
    if share == "suppressed":
        return _fig("–", f"{label} (suppressed: a small cell)")
    return _fig(share, label)


def _n(v) -> str:
    return "suppressed" if v is None else f"{v:,}"


def bars_svg(title: str, groups: list[tuple[str, dict | None, dict | None]], width=420, height=240) -> str:
    """Grouped bars: per group (a window, a month) the share repeated after
    the comment (blue) and in the shadow baseline (orange). Rows, top to
    bottom: title, legend, plot, group labels; never text on a bar."""
    left, right, top, bottom = 40, 10, 46, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(groups), 1)
    slot = plot_w / n
    bar_w = max(min(slot / 2 - 4, 40), 2)
    longest = max((len(label) for label, _, _ in groups), default=1)
    every = max(1, math.ceil((longest * 7.5 + 6) / slot))  # label every n-th group: never two labels touch
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text class="title" x="0" y="14">{escape(title)}</text>',
        f'<rect x="0" y="24" width="10" height="10" fill="{COMMENTED}"/><text x="14" y="33">commented</text>',
        f'<rect x="110" y="24" width="10" height="10" fill="{SHADOW}"/><text x="124" y="33">shadow (baseline)</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">100%</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0%</text>',
    ]
    for i, (label, live, shadow) in enumerate(groups):
        x0 = left + i * slot + slot / 2 - bar_w - 1
        for j, (c, colour) in enumerate(((live, COMMENTED), (shadow, SHADOW))):
            x = x0 + j * (bar_w + 2)
            if c is None or c.get("share") is None:
                continue
            h = plot_h * c["share"]
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour}">'
                f"<title>{escape(label)}: {_share(c)} of {_n(c['commented'])}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def render(report: dict) -> str:
    windows, shadow = report["windows"], report["shadow"]
    first = windows[0]["days"] if windows else 0
    by_window = [(f"{w['days']} d", w, s) for w, s in zip(windows, shadow, strict=True)]
    by_month = [(m["month"][2:], m["windows"][0], m["shadow"][0]) for m in report["by_month"]]
    charts = [
        '<div class="chart">' + bars_svg("Share with another B12 within N days", by_window) + "</div>",
        '<div class="chart">' + bars_svg(f"Within {first} days, by month of the first B12", by_month) + "</div>",
    ]
    figures = [_figure(w, f"commented: another B12 within {w['days']} days") for w in windows[:3]]
    figures += [_figure(s, f"shadow: another B12 within {s['days']} days") for s in shadow[:3]]
    safety = report["safety"]
    if safety is not None:
        figures.append(_figure(safety, f"an abnormal result within {safety['days']} days", "abnormal"))
    rows = []
    for w, s in zip(windows, shadow, strict=True):
        rows.append((f"{w['days']} days", _n(w["commented"]), _n(w["repeated"]), _share(w), "commented"))
        rows.append((f"{s['days']} days", _n(s["commented"]), _n(s["repeated"]), _share(s), "shadow"))
    month_rows = []
    for m in report["by_month"]:
        for w, s in zip(m["windows"], m["shadow"], strict=True):
            month_rows.append(
                (
                    m["month"],
                    f"{w['days']} d",
                    _n(w["commented"]),
                    _n(w["repeated"]),
                    _share(w),
                    _n(s["commented"]),
                    _n(s["repeated"]),
                    _share(s),
                )
            )
    html = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>b12comment outcomes report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Vitamin B12 in children: outcomes report</h1>",
        f'<p class="muted">As of {escape(report["as_of"])}. Of the children whose elevated B12 got the comment, '
        "how many had another B12 of the same child within N days, against the shadow decisions (the rule "
        "decided, no comment was written) as the baseline. A result counts for a window once the window has "
        f"passed. Aggregates only: counts from 1 to {report['min_cell'] - 1} are suppressed, and so is a "
        "count whose complement is.</p>",
        '<div class="figures">',
        *figures,
        "</div>",
        f'<div class="charts">{"".join(charts)}</div>',
        "<h2>Another B12 within N days</h2>",
        _table(rows, ["window", "results", "repeated", "share", "decisions"]),
        "<h2>By month of the first B12</h2>",
        _table(
            month_rows,
            ["month", "window", "commented", "repeated", "share", "shadow", "repeated", "share"],
        ),
        "<h2>Safety</h2>",
    ]
    if safety is None:
        html.append('<p class="muted">The context is off ([context] mode "message"): no safety line.</p>')
    else:
        html.append(
            f'<p class="muted">Children who got the comment, and of them those with an abnormal result within '
            f"{safety['days']} days after it (as seen where the context was on).</p>"
        )
        html.append(
            _table(
                [(_n(safety["commented"]), _n(safety["abnormal"]), _share(safety, "abnormal"))],
                ["commented", "with an abnormal result", "share"],
            )
        )
    html.append("</body></html>\n")
    return "\n".join(html)
