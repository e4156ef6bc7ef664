"""The README's quick start and its shown `preview` output, taken from README.md itself and run: the
listener on the shipped config.toml, `send` of the samples, preview and
replay. So the test breaks when the README and the product drift apart.

The commands run against this checkout (`python -m b12comment` for
`.venv/bin/b12comment`; the set-up part before `&&` is not repeated), in a
scratch folder holding copies of config.toml and sample_messages/. The
listener's port is swapped for a free one, so parallel runs do not collide.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_helpers import free_port, subprocess_env

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
QUICK_START = README.split("\n## ", 1)[0]


def blocks() -> list[list[str]]:
    return [
        [line for line in b.strip().splitlines() if line and not line.startswith("#")]
        for b in re.findall(r"```sh\n(.*?)```", QUICK_START, re.S)
    ]


def runnable(command: str, port: int) -> str:
    """The README line as this test runs it: the checkout, not .venv; the free port."""
    command = command.split(" && ")[-1]  # the set-up (venv, pip) is this test's own environment
    command = command.replace(".venv/bin/b12comment", "\0 -m b12comment").replace(".venv/bin/python", "\0")
    command = command.replace("\0", shlex.quote(sys.executable))
    return "exec " + command.replace("127.0.0.1:2575", f"127.0.0.1:{port}")


def test_the_first_two_commands_set_up_and_run_the_listener_and_the_tests():
    first = blocks()[0][0]
    assert first == (
        "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/b12comment serve --config config.toml"
    )
    tests = [line for b in blocks() for line in b if "pytest" in line]
    # Not editable: the tests run against the installed package, as a hospital installs it.
    assert tests == ["python3 -m venv .venv && .venv/bin/pip install -q '.[test]' && .venv/bin/pytest"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().endswith("\n.venv/bin/pytest")  # the README says .ci/run runs the same command


@pytest.mark.slow
def test_the_quick_start_runs(tmp_path):
    shutil.copytree(REPO / "sample_messages", tmp_path / "sample_messages")
    config = (REPO / "config.toml").read_text(encoding="utf-8")
    port = free_port()
    assert len(re.findall(r"(?m)^port = 2575$", config)) == 1, "the README speaks of the listener on port 2575"
    (tmp_path / "config.toml").write_text(re.sub(r"(?m)^port = 2575$", f"port = {port}", config), encoding="utf-8")
    serve_cmd, *rest = [line for b in blocks() for line in b if "pytest" not in line]
    assert "serve --config config.toml" in serve_cmd
    env = subprocess_env()
    serve = subprocess.Popen(
        runnable(serve_cmd, port), shell=True, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and serve.poll() is None:
            line = serve.stderr.readline()
            if '"listening"' in line or "listening" in line:
                break
        assert serve.poll() is None, "serve did not start"
        results = {}
        for command in rest:
            proc = subprocess.run(
                runnable(command, port), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr, proc.stderr
            results[command.split()[1]] = proc
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode == 0
    sent = results["send"].stdout.splitlines()
    samples = sent[:-1]
    assert samples and all(" AA  MSA-2 matches " in line for line in samples), sent
    outbox = tmp_path / "var" / "outbox"
    assert len(list(outbox.glob("*.hl7"))) == len(samples)  # the listener dropped every one
    assert "decision: COMMENT" in results["preview"].stdout
    report = json.loads((tmp_path / "var" / "report.json").read_text())
    assert report["files"] == len(list((tmp_path / "sample_messages").glob("*.hl7")))
    assert report["commented"] >= 1
    page = (tmp_path / "var" / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page


def test_the_preview_output_the_readme_shows_is_what_preview_prints():
    shown = re.findall(r"(?m)^\$ b12comment preview (\S+)\n(.*?)(?=^\$ |^```)", README, re.S)
    assert len(shown) >= 2
    for path, text in shown:
        proc = subprocess.run(
            [sys.executable, "-m", "b12comment", "preview", path],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == text.strip(), f"README.md shows another preview of {path} than it prints"


def test_the_send_summary_shown_in_the_readme_counts_the_samples_messages():
    from b12comment.wire.split import split_messages

    shown = re.search(r"`sent (\d+) messages: (\d+) AA, 0 not AA", README)
    assert shown, "the README shows send's summary for the samples"
    samples = sorted((REPO / "sample_messages").glob("*.hl7"))
    count = sum(p.kind == "message" for f in samples for p in split_messages(f.read_bytes()))
    assert int(shown.group(1)) == int(shown.group(2)) == count
