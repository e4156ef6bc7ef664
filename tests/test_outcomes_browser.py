"""The outcomes page in a real headless Chromium, as the replay report is
checked: at 1200 px and at a phone's 420 px nothing scrolls sideways, no
text overlaps other text or a bar, and the charts draw both cohorts."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from test_report_browser import chromium, count_colour, layout, needs_chromium, overlap, read_png

from b12comment.audit.outcomes import outcomes
from b12comment.audit.report_html import render
from b12comment.audit.rows import AuditRow

pytestmark = pytest.mark.slow


def rows() -> list[AuditRow]:
    """Twelve months of comments and shadow decisions, some repeated, some cells small."""
    out = []
    start = date(2025, 1, 15)
    for month in range(12):
        for child in range(10 + month):
            day = start + timedelta(days=30 * month)
            person = f"p{month}-{child}"
            source = "shadow" if month < 4 else "replay"
            for d, commented in ((day, True), (day + timedelta(days=20 + (child % 4) * 10), False))[: 1 + child % 2]:
                out.append(
                    AuditRow(
                        0.0,
                        source,
                        "C",
                        "LAB",
                        "b12-paed-2",
                        "0" * 16,
                        1,
                        "1-11 y",
                        1500.0,
                        "",
                        1200.0,
                        "age_band",
                        commented,
                        (),
                        (),
                        "",
                        d.isoformat(),
                        (person,),
                        "r",
                    )
                )
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    report = outcomes(rows(), as_of=date(2027, 1, 1))
    assert json.dumps(report)
    path = tmp_path_factory.mktemp("outcomes") / "outcomes.html"
    path.write_text(render(report), encoding="utf-8")
    return path


@needs_chromium
@pytest.mark.parametrize("width", [1200, 420])
def test_the_outcomes_page_fits_and_nothing_overlaps(tmp_path, page, width):
    got = layout(tmp_path, page, width)
    assert got["scrollWidth"] <= width, f"the page scrolls sideways at {width} px: {got['wide']}"
    assert len(got["svgs"]) == 2 and len(got["bars"]) > 10
    boxes = [(t[0], t[1:5], t[5], t[6]) for t in got["texts"]]
    clashes = [
        (a[2], b[2]) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a[0] != b[0] and overlap(a[1], b[1])
    ]
    assert clashes == [], f"text overlaps text at {width} px: {clashes[:5]}"
    on_bars = [t[2] for t in boxes if t[3] for bar in got["bars"] if overlap(t[1], bar)]
    assert on_bars == [], f"chart labels on bars at {width} px: {on_bars[:5]}"


@needs_chromium
def test_the_outcomes_page_draws_both_cohorts(tmp_path, page):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri())
    _, bpp, pixels = read_png(shot)
    assert count_colour(pixels, bpp, (0x4A, 0x7A, 0xB5)) > 500, "no bars of the comments drawn"
    assert count_colour(pixels, bpp, (0xE0, 0x8E, 0x45)) > 500, "no bars of the shadow decisions drawn"
