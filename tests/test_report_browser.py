"""The HTML replay report rendered by a real headless Chromium, at 1200 px
and at a phone's 420 px: the page draws and its charts show (bar and limit
colours are on the screenshots), no text overlaps other text or a bar (the
bounding boxes Chromium lays out, read by a script in a wrapper page, never
in the report), nothing scrolls sideways, and it prints to PDF."""

from __future__ import annotations

import html as htmllib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from paths import CORPUS, SAMPLES

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit PNG (enough for Chromium's screenshots)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def count_colour(rows, bpp, rgb, tolerance=12) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), bpp):
            if all(abs(row[i + k] - rgb[k]) <= tolerance for k in range(3)):
                n += 1
    return n


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)"
)


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a replay of the samples (and the corpus where it is: malformed rows, long details)."""
    tmp = tmp_path_factory.mktemp("report")
    src = tmp / "in"
    src.mkdir()
    for f in SAMPLES.glob("*.hl7"):
        (src / f.name).write_bytes(f.read_bytes())
    inputs = [str(src)] + ([str(CORPUS)] if CORPUS.is_dir() else [])
    page = tmp / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", "--quiet", "--dry-run", *inputs, "--html", str(page)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return page


MEASURE = """
window.addEventListener('load', () => {
  const frame = document.getElementById('report');
  const doc = frame.contentDocument, win = frame.contentWindow;
  frame.style.height = (doc.documentElement.scrollHeight + 50) + 'px';
  const texts = [];
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  let node, index = 0;
  while ((node = walker.nextNode())) {
    const text = node.textContent.trim();
    if (!text) continue;
    const range = doc.createRange();
    range.selectNodeContents(node);
    const inSvg = !!node.parentElement.closest('svg');
    for (const b of range.getClientRects()) {
      if (b.width > 0 && b.height > 0) texts.push([index, b.left, b.top, b.right, b.bottom, text.slice(0, 60), inSvg]);
    }
    index++;
  }
  const box = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  const bars = [...doc.querySelectorAll('svg rect.bar')].map(box);
  const svgs = [...doc.querySelectorAll('svg')].map(box);
  const wide = [...doc.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > win.innerWidth + 0.5)
    .slice(0, 5).map((e) => e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 40));
  document.body.setAttribute('data-layout', JSON.stringify({
    width: win.innerWidth, scrollWidth: doc.documentElement.scrollWidth, texts, bars, svgs, wide}));
});
"""


def layout(tmp_path: Path, page: Path, width: int) -> dict:
    """Chromium's layout of the report in a frame `width` px wide."""
    wrapper = tmp_path / f"measure-{width}.html"
    wrapper.write_text(
        '<!DOCTYPE html><html><body style="margin:0">'
        f'<iframe id="report" style="width:{width}px;height:2000px;border:0" '
        f'srcdoc="{htmllib.escape(page.read_text(encoding="utf-8"), quote=True)}"></iframe>'
        f"<script>{MEASURE}</script></body></html>",
        encoding="utf-8",
    )
    proc = chromium(tmp_path, "--window-size=1400,2000", "--virtual-time-budget=5000", "--dump-dom", wrapper.as_uri())
    dom = proc.stdout.decode("utf-8", "replace")
    found = dom.split('data-layout="', 1)
    assert len(found) == 2, "the measuring script did not run:\n" + proc.stderr.decode()[-2000:]
    return json.loads(htmllib.unescape(found[1].split('"', 1)[0]))


def overlap(a, b, tolerance: float = 0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tolerance and min(a[3], b[3]) - max(a[1], b[1]) > tolerance


@needs_chromium
@pytest.mark.parametrize("width", [1200, 420])
def test_no_text_overlaps_and_nothing_scrolls_sideways(tmp_path, report, width):
    got = layout(tmp_path, report, width)
    assert got["width"] == width
    assert got["scrollWidth"] <= width, (
        f"the page scrolls sideways at {width} px ({got['scrollWidth']} px): {got['wide']}"
    )
    texts = got["texts"]
    assert len(texts) > 100 and len(got["bars"]) > 3 and len(got["svgs"]) == 3
    boxes = [(t[0], t[1:5], t[5], t[6]) for t in texts]
    clashes = [
        (a[2], b[2]) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a[0] != b[0] and overlap(a[1], b[1])
    ]
    assert clashes == [], f"text overlaps text at {width} px: {clashes[:5]}"
    on_bars = [t[2] for t in boxes if t[3] for bar in got["bars"] if overlap(t[1], bar)]
    assert on_bars == [], f"chart labels on bars at {width} px: {on_bars[:5]}"
    for svg in got["svgs"]:
        assert svg[2] <= width + 0.5, f"a chart is wider than the page at {width} px"
    inside = [
        t[2] for t in boxes if t[3] and not any(s[0] - 0.5 <= t[1][0] and t[1][2] <= s[2] + 0.5 for s in got["svgs"])
    ]
    assert inside == [], f"chart labels cut off at the chart's edge at {width} px: {inside[:5]}"


@needs_chromium
@pytest.mark.parametrize("width", [1200, 420])
def test_html_report_renders_with_its_charts(tmp_path, report, width):
    shot = tmp_path / f"shot-{width}.png"
    chromium(tmp_path, f"--window-size={width},2400", f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), "Chromium wrote no screenshot"
    shot_width, bpp, rows = read_png(shot)
    assert shot_width == width
    histogram_bars = count_colour(rows, bpp, (0x4A, 0x7A, 0xB5))
    reason_bars = count_colour(rows, bpp, (0xE0, 0x8E, 0x45))
    limit_lines = count_colour(rows, bpp, (0xC0, 0x39, 0x2B))
    assert histogram_bars > 100, "no B12 value bars drawn"
    assert reason_bars > 100, "no reason bars drawn"
    assert limit_lines > 50, "no age-band limit lines drawn"


@needs_chromium
def test_the_report_prints_to_pdf(tmp_path, report):
    pdf = tmp_path / "report.pdf"
    chromium(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", report.as_uri())
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000
    assert b"/Type /Page" in data or b"/Type/Page" in data
    assert "@media print" in report.read_text(encoding="utf-8")


BROKEN = """
window.addEventListener('load', () => {
  const frame = document.getElementById('report');
  const doc = frame.contentDocument;
  const broken = [];
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  let node, words = 0;
  while ((node = walker.nextNode())) {
    if (node.parentElement.closest('svg, pre')) continue;
    const re = /(?<![A-Za-z0-9])[A-Za-z0-9]{2,20}(?![A-Za-z0-9])/g;
    let m;
    while ((m = re.exec(node.textContent))) {
      words++;
      const range = doc.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
      if (tops.size > 1) broken.push(m[0]);
    }
  }
  const band = [...doc.querySelectorAll('svg text.title')].map((t) => t.textContent);
  document.body.setAttribute('data-words', JSON.stringify({words, broken: broken.slice(0, 20), band}));
});
"""


@needs_chromium
@pytest.mark.parametrize("width", [1280, 420])
def test_no_word_breaks_in_the_middle_and_labels_read_as_words(tmp_path, report, width):
    """At a phone's 420 px and a desktop's 1280 px: no word of up to 20
    letters is split across lines (table cells once broke "segme nt",
    "declare d"); reason codes show as words with the code beside them; the
    youngest age band reads "under 1 y", not "0 y"."""
    wrapper = tmp_path / f"words-{width}.html"
    wrapper.write_text(
        '<!DOCTYPE html><html><body style="margin:0">'
        f'<iframe id="report" style="width:{width}px;height:6000px;border:0" '
        f'srcdoc="{htmllib.escape(report.read_text(encoding="utf-8"), quote=True)}"></iframe>'
        f"<script>{BROKEN}</script></body></html>",
        encoding="utf-8",
    )
    proc = chromium(tmp_path, "--window-size=1400,2000", "--virtual-time-budget=5000", "--dump-dom", wrapper.as_uri())
    dom = proc.stdout.decode("utf-8", "replace")
    found = dom.split('data-words="', 1)
    assert len(found) == 2, "the measuring script did not run:\n" + proc.stderr.decode()[-2000:]
    got = json.loads(htmllib.unescape(found[1].split('"', 1)[0]))
    assert got["words"] > 300
    assert got["broken"] == [], f"words split across lines at {width} px: {got['broken']}"
    assert got["band"][0].startswith("under 1 y:"), got["band"]
    assert not any(b.startswith("0 y") for b in got["band"])
    page = report.read_text(encoding="utf-8")
    assert ">Not elevated<code>not_elevated</code>" in page
