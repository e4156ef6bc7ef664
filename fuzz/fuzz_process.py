"""Coverage-guided fuzzing of the pure core: process(data, RuleConfig()).

For every input the fuzzer makes, this harness checks:

1. process() returns (bytes, Decision) and raises nothing;
2. it finishes within a CPU-time budget (B12_FUZZ_TIMEOUT_S, default 10 s);
3. the output is the input itself, or the input with NTE segments inserted
   and nothing else changed: each inserted segment is an NTE carrying the
   configured comment (NTE-2 "L", NTE-4 "RE"), sits right after an OBX or an
   NTE, and uses the message's own segment terminator; `commented` is true
   exactly when the output differs;
4. process(output) returns output unchanged (idempotence).

The checker below (`check`) is written independently of b12comment: it splits
segments, unescapes HL7 text and transliterates the comment itself.

Run it (see fuzz/README.md):

    .venv/bin/python fuzz/fuzz_process.py [CORPUS_DIR] [libFuzzer flags]

Seeds (never copied into the repository): every message of
../shared/corpus/messages/*.hl7 and sample_messages/*.hl7, written into a
temporary seed folder that libFuzzer reads; new inputs go to CORPUS_DIR (a
temporary folder when none is given). Crashing inputs are written as
crash-<sha1> files (or timeout-/oom-) in the current folder or -artifact_prefix.

Importing this module does not need atheris: tests use `check` directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_DIRS = (
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages",
    REPO / "sample_messages",
)
try:  # the installed package (PYTHONPATH may name it); else this checkout's
    import b12comment  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

TIMEOUT_S = float(os.environ.get("B12_FUZZ_TIMEOUT_S", "10"))
PRECHECK = os.environ.get("B12_FUZZ_PRECHECK", "") == "1"  # also compare with process(precheck=False)

# Tokens for libFuzzer's dictionary: HL7 structure and the values the rule reads.
DICTIONARY = [
    "MSH|^~\\&|",
    "MSH|^~\\&#|",
    "|",
    "^",
    "~",
    "\\",
    "&",
    "#",
    "\r",
    "\n",
    "\r\n",
    "ORU^R01",
    "ORU^R01^ORU_R01",
    "ADT^A01",
    "PID|",
    "PV1|",
    "ORC|",
    "OBR|",
    "OBX|",
    "NTE|",
    "SPM|",
    "ZLB|",
    "14685-2",
    "2132-9",
    "NPU01700",
    "LN",
    "IUPP",
    "NPU",
    "14685-2^Cobalamin^LN",
    "NPU01700^B12^IUPP",
    "NM",
    "SN",
    "ST",
    "TX",
    "pmol/L",
    "pg/mL",
    "ng/L",
    ">^1476",
    ">1476",
    "1476,0",
    "1500",
    "200-600",
    "H",
    "HH",
    "N",
    "L",
    "A",
    "F",
    "C",
    "P",
    "D",
    "2.3",
    "2.5.1",
    "2.7",
    "2.9",
    "8859/1",
    "UNICODE UTF-8",
    "20160315",
    "2016",
    "20240110083000",
    "\\F\\",
    "\\S\\",
    "\\T\\",
    "\\R\\",
    "\\E\\",
    "\\.br\\",
    "\\X00\\",
    "\xc3\xb8",
    "\xf8",
]


# --------------------------------------------------------------------------
# The independent checker

_BREAK = re.compile(rb"\r\n|\r|\n")
_SKIP = b" \t\r\n\x00\xef\xbb\xbf"
_TRANSLIT = {"æ": "ae", "ø": "oe", "å": "aa", "Æ": "Ae", "Ø": "Oe", "Å": "Aa"}


class PropertyFailed(AssertionError):
    """The output breaks a promise of process()."""


def _tokens(message: bytes) -> list[bytes]:
    """Segments with their terminators; empty lines are tokens of their own."""
    out, pos = [], 0
    for m in _BREAK.finditer(message):
        out.append(message[pos : m.end()])
        pos = m.end()
    if pos < len(message):
        out.append(message[pos:])
    return out


def _content(token: bytes) -> bytes:
    return token.rstrip(b"\r\n")


def _ends_with_break(message: bytes) -> bool:
    return message.endswith((b"\r", b"\n"))


def _delims(message: bytes) -> tuple[bytes, bytes] | None:
    """(field separator, MSH-2) read the simple way, or None."""
    i = 0
    while i < len(message) and message[i] in _SKIP:
        i += 1
    if message[i : i + 3] != b"MSH" or len(message) < i + 5:
        return None
    fs = message[i + 3 : i + 4]
    line = _content(_tokens(message[i:])[0])
    parts = line.split(fs)
    return fs, (parts[1] if len(parts) > 1 else b"")


def _unescape(raw: bytes, fs: bytes, enc: bytes) -> bytes:
    """HL7 text escapes back to bytes (only the ones a comment can hold)."""
    if len(enc) < 3:
        return raw
    esc = enc[2:3]
    names = {
        b"F": fs,
        b"S": enc[0:1],
        b"R": enc[1:2],
        b"E": esc,
        b"T": enc[3:4] or b"&",
        b"P": enc[4:5] or b"#",
        b".br": b"\n",
    }
    out, i = b"", 0
    while i < len(raw):
        if raw[i : i + 1] == esc:
            j = raw.find(esc, i + 1)
            if j > i and raw[i + 1 : j] in names:
                out += names[raw[i + 1 : j]]
                i = j + 1
                continue
        out += raw[i : i + 1]
        i += 1
    return out


def _ascii_form(text: str) -> str:
    out = []
    for ch in text:
        if ord(ch) < 128:
            out.append(ch)
        else:
            out.append(_TRANSLIT.get(ch) or unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode() or "?")
    return "".join(out)


def _is_comment(raw: bytes, texts: tuple[str, ...], fs: bytes, enc: bytes) -> bool:
    """Is NTE-3 `raw` one of the comment texts, in some charset, escaped?"""
    plain = _unescape(raw, fs, enc)
    spaced = None
    if len(enc) < 3:  # no escape character: the product blanks special characters
        spaced = plain
    for text in texts:
        forms = {text.encode("utf-8"), text.encode("latin-1", "replace"), _ascii_form(text).encode("ascii")}
        for codec in ("iso8859-2", "iso8859-4", "iso8859-9", "iso8859-15"):
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(text.encode(codec))
        if plain in forms:
            return True
        if spaced is not None:
            specials = set(fs + enc)
            for form in forms:
                if bytes(b" "[0] if b in specials else b for b in form) == spaced:
                    return True
    return False


def check_output(data: bytes, out: bytes, commented: bool, texts: tuple[str, ...]) -> int:
    """Raise PropertyFailed unless `out` is `data`, or `data` plus comment
    NTEs only. Returns the number of inserted segments."""
    if not isinstance(out, bytes):
        raise PropertyFailed(f"output is {type(out).__name__}, not bytes")
    if out == data:
        if commented:
            raise PropertyFailed("commented is true but the output is the input")
        return 0
    if not commented:
        raise PropertyFailed("output differs from the input but commented is false")
    head = _delims(data)
    if head is None:
        raise PropertyFailed("a message without an MSH segment was changed")
    fs, enc = head
    if _ends_with_break(out) != _ends_with_break(data):
        raise PropertyFailed("the output gained or lost a final segment terminator")
    pad = b""
    if not _ends_with_break(data):
        first = _BREAK.search(data)
        pad = first.group() if first else b"\r"
    have, want = _tokens(out + pad), _tokens(data + pad)
    j, inserted = 0, 0
    previous = None
    for tok in have:
        if j < len(want) and tok == want[j]:
            j += 1
        else:
            body = _content(tok)
            fields = body.split(fs)
            if not body.startswith(b"NTE" + fs) or len(fields) < 4:
                raise PropertyFailed(f"output holds a segment that is not in the input: {tok[:80]!r}")
            if not _is_comment(fields[3], texts, fs, enc):
                raise PropertyFailed(f"inserted NTE does not carry the comment text: {tok[:120]!r}")
            if not fields[1].isdigit() or fields[2] != b"L" or fields[4:] != [b"RE"]:
                raise PropertyFailed(f"inserted NTE-1/2/4 are not <n>, L, RE: {tok[:40]!r}...{tok[-10:]!r}")
            if previous is None or _content(previous)[:3] not in (b"OBX", b"NTE"):
                raise PropertyFailed(f"inserted NTE does not follow an OBX or NTE: after {previous!r:.60}")
            term = tok[len(body) :]
            if term != previous[len(_content(previous)) :]:
                raise PropertyFailed(f"inserted NTE ends with {term!r}, the segment before with another")
            inserted += 1
        previous = tok
    if j != len(want):
        raise PropertyFailed(f"input segment {j + 1} is missing or changed in the output: {want[j][:80]!r}")
    if inserted == 0:
        raise PropertyFailed("output differs from the input but no segment was inserted")
    return inserted


def check(data: bytes, process, rule, precheck_agrees: bool = False) -> bytes:
    """All four properties for one input; returns the output. With
    `precheck_agrees`, also: the full path (precheck=False) gives the same
    output and the same decision as the cheap pre-check path."""
    from b12comment.core.decision import Decision

    out, decision = process(data, rule)
    if precheck_agrees:
        full_out, full = process(data, rule, precheck=False)
        if full_out != out or (full.commented, full.reasons) != (decision.commented, decision.reasons):
            raise PropertyFailed(f"pre-check path {decision.reasons} and full path {full.reasons} disagree")
    if not isinstance(decision, Decision):
        raise PropertyFailed(f"decision is {type(decision).__name__}")
    texts = rule.all_comment_texts()
    inserted = check_output(data, out, decision.commented, texts)
    if inserted and inserted != sum(1 for r in decision.results if r.commented):
        raise PropertyFailed(
            f"{inserted} NTEs inserted, but {sum(r.commented for r in decision.results)} B12 results say commented"
        )
    again, second = process(out, rule)
    if again != out:
        raise PropertyFailed("process(output) changed the output again (not idempotent)")
    if second.commented:
        raise PropertyFailed("process(output) says commented again")
    return out


# --------------------------------------------------------------------------
# Per-input CPU-time limit


class Hang(BaseException):
    """Raised from the timer signal; BaseException so that process()'s own
    `except Exception` cannot swallow it."""


def _on_timer(signum, frame):
    raise Hang(f"process() ran for more than {TIMEOUT_S} s of CPU time on one input")


def _broken(kind: str, process):
    """A deliberately broken process(), so tests can prove the harness fails."""
    import time

    def changed(data, rule, **kw):
        out, decision = process(data, rule, **kw)
        return out.replace(b"|F", b"|X", 1) if b"OBX" in out else out, decision

    def raising(data, rule, **kw):
        if b"OBX" in data:
            raise ValueError("planted failure")
        return process(data, rule, **kw)

    def hanging(data, rule, **kw):
        if b"OBX" in data:
            end = time.process_time() + 3600
            while time.process_time() < end:
                pass
        return process(data, rule, **kw)

    return {"change": changed, "raise": raising, "hang": hanging}[kind]


# --------------------------------------------------------------------------
# Seeds


def split_messages(blob: bytes) -> list[bytes]:
    """A file's messages: each starts at a line that starts with MSH."""
    starts = [m.start() for m in re.finditer(rb"(?:^|(?<=[\r\n]))MSH", blob)]
    return [blob[a:b] for a, b in zip(starts, starts[1:] + [len(blob)], strict=False)]


def write_seeds(folder: Path) -> int:
    """Each seed message (and each whole multi-message file) as one file."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for src in SEED_DIRS:
        for path in sorted(src.glob("*.hl7")) if src.is_dir() else []:
            blob = path.read_bytes()
            parts = split_messages(blob)
            for k, message in enumerate(parts if len(parts) > 1 else []):
                (folder / f"{src.name}-{path.stem}-{k}").write_bytes(message)
                count += 1
            (folder / f"{src.name}-{path.stem}").write_bytes(blob)
            count += 1
    return count


def _dict_line(token: str) -> str:
    """One libFuzzer dictionary entry: printable ASCII as is, the rest \\xNN."""
    raw = token.encode("latin-1")
    return '"' + "".join(chr(c) if 32 <= c < 127 and c not in (34, 92) else f"\\x{c:02x}" for c in raw) + '"\n'


def main(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["b12comment", "hl7apy", "dateutil"]):
        from b12comment.core.engine import process
        from b12comment.core.rule_config import RuleConfig
    rule = RuleConfig()
    if os.environ.get("B12_FUZZ_BREAK"):
        process = _broken(os.environ["B12_FUZZ_BREAK"], process)
    signal.signal(signal.SIGVTALRM, _on_timer)

    def test_one_input(data: bytes) -> None:
        signal.setitimer(signal.ITIMER_VIRTUAL, TIMEOUT_S)
        try:
            check(data, process, rule, PRECHECK)
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)

    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if dirs and all(Path(d).is_file() for d in dirs):  # reproduce: run just these inputs
        atheris.Setup([argv[0], *flags, *dirs], test_one_input)
        atheris.Fuzz()
    # libFuzzer ends the process with exit(): no Python clean-up runs, so the
    # seed folder is left behind; B12_FUZZ_WORKDIR puts it somewhere known.
    work = Path(tempfile.mkdtemp(prefix="b12fuzz-", dir=os.environ.get("B12_FUZZ_WORKDIR")))
    if not dirs:
        dirs = [str(work / "corpus")]
        Path(dirs[0]).mkdir()
        print(f"b12fuzz: new inputs go to {dirs[0]}", file=sys.stderr)
    seeds = write_seeds(work / "seeds")
    print(f"b12fuzz: {seeds} seed inputs from {', '.join(str(d) for d in SEED_DIRS)}", file=sys.stderr)
    if not any(f.startswith("-dict=") for f in flags):
        (work / "hl7.dict").write_text("".join(_dict_line(tok) for tok in DICTIONARY), encoding="ascii")
        flags.append(f"-dict={work / 'hl7.dict'}")
    if not any(f.startswith("-timeout=") for f in flags):
        flags.append(f"-timeout={int(TIMEOUT_S * 6) + 30}")  # wall-clock backstop
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append("-max_len=131072")
    atheris.Setup([argv[0], *flags, *dirs, str(work / "seeds")], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
