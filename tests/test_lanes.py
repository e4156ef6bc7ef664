"""The fast lane's rule stays true: the operator-experience modules it leaves
to the whole suite exist, and the promise guards among them stay in it."""

from __future__ import annotations

import subprocess
import sys

from conftest import OPERATOR_MODULES
from paths import REPO


def test_every_listed_operator_module_exists():
    missing = sorted(name for name in OPERATOR_MODULES if not (REPO / "tests" / name).is_file())
    assert not missing, f"tests/conftest.py lists modules that are gone: {missing}"


def test_the_fast_lane_keeps_the_promise_guards_and_leaves_the_rest_of_those_modules():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "-m", "not slow"]
        + [str(REPO / "tests" / name) for name in ("test_bad_env.py", "test_send.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected, proc.stdout + proc.stderr
    assert "tests/test_bad_env.py::test_journal_on_a_full_disk_answers_ae_then_recovers" in collected
    assert "tests/test_send.py::test_an_ack_for_another_control_id_is_not_accepted" in collected
    assert not [c for c in collected if c.endswith("test_missing_config")], "an operator check stayed in the fast lane"
