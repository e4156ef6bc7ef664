"""A what-if copy of an HL7 archive: every ORU^R01 made a 10-year-old's with an
elevated total B12 beside the lab's other results.

    python bench/whatif_corpus.py SOURCE_DIR OUT_DIR

For each result message (MSH-9 ORU^R01) of each file under SOURCE_DIR:
every PID-7 becomes the date 10 years before the collection (the first
OBR-7, else MSH-7), and one OBX is added after the last OBX of the first
order (after the OBR when it has none): LOINC 14685-2, 1350 pmol/L, flagged
H, final, collected at that time. Everything else stays as it was, so what
keeps the comment away is the lab's own other results. Other messages and
files are copied unchanged. The copy is made at run time, in a folder of
your choice: it holds the source's patient data, so keep it where the
source is kept, and delete it after.

Then, for the calibration table:

    b12comment replay --dry-run --report R.json --html R.html OUT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from b12comment.core.segments import read_header
from b12comment.wire.split import iter_chunks, iter_pieces

B12 = "14685-2^Cobalamin (Vitamin B12)^LN"
_SEP = re.compile(rb"(\r\n|\r|\n)")


def whatif(message: bytes) -> bytes:
    try:
        header = read_header(message)
    except Exception:
        return message
    if f"{header.message_code.upper()}^{header.trigger_event.upper()}" != "ORU^R01":
        return message
    d = header.delimiters
    fs, cs = d.field, d.component or b"^"
    parts = _SEP.split(message)
    lines, seps = parts[0::2], parts[1::2] + [b""]
    collected = b""
    for line in lines:
        if line[:3] == b"OBR":
            fields = line.split(fs)
            collected = fields[7].split(cs)[0] if len(fields) > 7 else b""
            if collected:
                break
    if not collected:
        collected = header.field(7).split(cs)[0]
    if len(collected) < 8 or not collected[:8].isdigit():
        return message
    birth = b"%04d" % (int(collected[:4]) - 10) + collected[4:8]
    if birth[4:8] == b"0229":
        birth = birth[:4] + b"0228"
    out_lines = []
    for line in lines:
        if line[:3] == b"PID":
            fields = line.split(fs)
            while len(fields) < 8:
                fields.append(b"")
            fields[7] = birth
            line = fs.join(fields)
        out_lines.append(line)
    after = _insertion(lines)
    if after == -1:
        return message
    c = cs.decode("latin-1")
    obx = f"OBX|99|NM|{B12}||1350|pmol/L||H|||F|||".replace("^", c).replace("|", fs.decode("latin-1"))
    new = obx.encode("latin-1") + collected
    sep = next((s for s in seps if s), b"\r")
    out = b""
    for i, line in enumerate(out_lines):
        out += line
        if i == after:
            out += (sep + new) if not seps[i] else (seps[i] + new)
        out += seps[i]
    return out


def _insertion(lines: list[bytes]) -> int:
    """The line after which the B12 goes: the last OBX of the first order, or
    the last NTE under it (notes after an OBX belong to it); the OBR itself
    when the order has no OBX; -1 without an OBR."""
    first = next((i for i, line in enumerate(lines) if line[:3] == b"OBR"), -1)
    if first == -1:
        return -1
    after, in_obx = first, False
    for j in range(first + 1, len(lines)):
        name = lines[j][:3]
        if name in (b"OBR", b"ORC", b"PID"):
            break
        if name == b"OBX":
            after, in_obx = j, True
        elif name == b"NTE" and in_obx:
            after = j
        else:
            in_obx = False
    return after


def main(source: str, target: str) -> int:
    src, dst = Path(source), Path(target)
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            data = b"".join(whatif(p.data) if p.kind == "message" else p.data for p in iter_pieces(iter_chunks(f)))
        out.write_bytes(data)
        count += 1
    print(f"{count} files written to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
