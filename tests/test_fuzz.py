"""The atheris harness (fuzz/fuzz_process.py): its checker, a short
coverage-guided run in CI, and proof that the harness fails when process()
breaks a promise (changes a byte, raises, hangs).

The long run is by hand: see fuzz/README.md and docs/fuzzing.md.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from paths import PACKAGE_ROOT

from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "fuzz" / "fuzz_process.py"
CI_SECONDS = int(os.environ.get("B12_FUZZ_CI_SECONDS", "20"))

_spec = importlib.util.spec_from_file_location("fuzz_process", HARNESS)
fz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fz)  # importing it does not need atheris

RULE = RuleConfig()
TEXTS = RULE.all_comment_texts()

try:
    import atheris  # noqa: F401

    HAVE_ATHERIS = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ATHERIS = False
needs_atheris = pytest.mark.skipif(
    not HAVE_ATHERIS, reason="atheris is not installed (pip install atheris==3.0.0); the checker tests above still run"
)


def seeds(tmp_path) -> list[bytes]:
    n = fz.write_seeds(tmp_path / "seeds")
    assert n > 0
    return [p.read_bytes() for p in sorted((tmp_path / "seeds").iterdir())]


CHILD = (REPO / "sample_messages" / "child_isolated_high_b12.hl7").read_bytes()


# --------------------------------------------------------------------------
# The checker


def test_every_seed_passes_and_some_get_the_comment(tmp_path):
    messages = seeds(tmp_path)
    commented = 0
    for message in messages:
        out = fz.check(message, process, RULE, precheck_agrees=True)
        commented += out != message
    assert len(messages) > 100 if fz.SEED_DIRS[0].is_dir() else len(messages) >= 8
    assert commented >= 3  # the harness starts from commented messages too


def test_checker_accepts_the_real_comment_in_every_terminator_style():
    for term in (b"\r", b"\n", b"\r\n"):
        message = CHILD.replace(b"\r\n", b"\r").replace(b"\n", b"\r").replace(b"\r", term)
        for tail in (b"", term):
            m = message.rstrip(b"\r\n") + tail
            out, decision = process(m, RULE)
            assert decision.commented
            assert fz.check_output(m, out, True, TEXTS) == 1


def _commented():
    out, decision = process(CHILD, RULE)
    assert decision.commented and out != CHILD
    return out


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda out: out.replace(b"|F", b"|X", 1), "not in the input"),
        (lambda out: out.replace(b"\rNTE|", b"\rZZZ|1\rNTE|"), "not in the input"),
        (lambda out: out.replace(b"\rNTE|", b"\rZZZ|"), "not in the input"),
        (lambda out: out.replace(b"klinisk", b"klinsk"), "does not carry the comment"),
        (lambda out: out.replace(b"|RE\r", b"|XX\r"), "NTE-1/2/4"),
        (lambda out: out + b"NTE|9|L|x|RE\r", "does not carry the comment"),
        (lambda out: out.rstrip(b"\r"), "final segment terminator"),
        (lambda out: out[:-1] + b"\r\n", "not in the input"),
    ],
)
def test_checker_rejects_any_other_change(tamper, why):
    out = _commented()
    bad = tamper(out)
    assert bad != out
    with pytest.raises(fz.PropertyFailed, match=why):
        fz.check_output(CHILD, bad, True, TEXTS)


def test_checker_rejects_a_comment_in_the_wrong_place_or_flag():
    out = _commented()
    nte = [s for s in out.split(b"\r") if s.startswith(b"NTE") and b"klinisk" in s][0]
    misplaced = out.replace(b"\r" + nte, b"").replace(b"\rPID|", b"\r" + nte + b"\rPID|", 1)
    assert misplaced != out and len(misplaced) == len(out)
    with pytest.raises(fz.PropertyFailed, match="does not follow an OBX"):
        fz.check_output(CHILD, misplaced, True, TEXTS)
    with pytest.raises(fz.PropertyFailed, match="commented is false"):
        fz.check_output(CHILD, out, False, TEXTS)
    with pytest.raises(fz.PropertyFailed, match="commented is true"):
        fz.check_output(CHILD, CHILD, True, TEXTS)


def test_check_catches_a_non_idempotent_process():
    calls = []

    def flaky(data, rule):
        calls.append(data)
        out, decision = process(data, rule)
        if len(calls) == 2:
            return out + b"x", decision
        return out, decision

    with pytest.raises(fz.PropertyFailed, match="idempotent"):
        fz.check(CHILD, flaky, RULE)


def test_check_catches_a_precheck_that_disagrees_with_the_full_path():
    def lazy_precheck(data, rule, precheck=True):
        if precheck:
            return data, process(b"", rule)[1]  # as if the pre-check missed the B12 code
        return process(data, rule, precheck=False)

    fz.check(CHILD, lambda d, r, precheck=True: process(d, r, precheck=precheck), RULE, precheck_agrees=True)
    with pytest.raises(fz.PropertyFailed, match="disagree"):
        fz.check(CHILD, lazy_precheck, RULE, precheck_agrees=True)


def test_split_messages_keeps_every_byte():
    blob = (REPO / "sample_messages" / "night_batch_crlf.hl7").read_bytes()
    parts = fz.split_messages(blob)
    assert len(parts) > 1 and b"".join(parts) == blob[blob.index(b"MSH") :]


# --------------------------------------------------------------------------
# The harness under atheris


def run_harness(tmp_path, *flags, env=None, timeout=240) -> tuple[subprocess.CompletedProcess, list[Path]]:
    artifacts = tmp_path / "artifacts"
    corpus = tmp_path / "corpus"
    artifacts.mkdir()
    corpus.mkdir()
    full_env = dict(os.environ, B12_FUZZ_WORKDIR=str(tmp_path), PYTHONPATH=str(PACKAGE_ROOT), **(env or {}))
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), f"-artifact_prefix={artifacts}/", *flags],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        timeout=timeout,
    )
    return proc, sorted(artifacts.iterdir())


def _tail(proc) -> str:
    return "\n".join(proc.stderr.decode("utf-8", "replace").splitlines()[-40:])


@needs_atheris
def test_short_fuzz_run_finds_no_crash(tmp_path):
    proc, found = run_harness(
        tmp_path, f"-max_total_time={CI_SECONDS}", "-print_final_stats=1", env={"B12_FUZZ_PRECHECK": "1"}
    )
    details = "".join(f"\n{p.name}: {base64.b64encode(p.read_bytes()[:2000]).decode()}" for p in found)
    assert proc.returncode == 0 and not found, f"the fuzzer found a failing input:{details}\n{_tail(proc)}"
    err = proc.stderr.decode("utf-8", "replace")
    seeds_line = re.search(r"seed corpus: files: (\d+)", err)
    runs = re.search(r"stat::number_of_executed_units: (\d+)", err)
    assert seeds_line and runs, _tail(proc)
    assert int(runs.group(1)) >= int(seeds_line.group(1)) > 0  # every seed ran, then mutations
    cov = re.findall(r"cov: (\d+)", err)[-1]
    print(f"fuzz CI run: {runs.group(1)} executions in {CI_SECONDS} s, {cov} coverage points")


@needs_atheris
@pytest.mark.parametrize(
    "kind, shows",
    [
        ("change", "PropertyFailed: output holds a segment that is not in the input"),
        ("raise", "ValueError: planted failure"),
        ("hang", "Hang: process() ran for more than 1.0 s of CPU time"),
    ],
)
def test_the_harness_fails_when_process_breaks_a_promise(tmp_path, kind, shows):
    proc, found = run_harness(tmp_path, "-runs=2000", env={"B12_FUZZ_BREAK": kind, "B12_FUZZ_TIMEOUT_S": "1"})
    assert proc.returncode != 0, _tail(proc)
    assert shows in (proc.stdout + proc.stderr).decode("utf-8", "replace"), _tail(proc)
    assert [p.name.split("-")[0] for p in found] == ["crash"]
    assert b"OBX" in found[0].read_bytes()  # the planted failure's trigger
