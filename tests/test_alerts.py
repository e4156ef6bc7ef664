"""The shipped alert rules (docs/alerts.yml): Prometheus's own promtool
checks them (`check rules`) and runs their unit tests (`test rules`,
docs/alerts_test.yml: each alert fires when it should, not before, with its
text); every b12comment metric they name is one the service exposes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from paths import REPO

from b12comment.serve.metrics import Metrics

DOCS = REPO / "docs"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    return subprocess.run([PROMTOOL, *args], cwd=DOCS, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_promtool_test_rules():
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_metric_the_alerts_name_is_exposed():
    rules = (DOCS / "alerts.yml").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(b12comment_[a-z_]+)\b", rules))
    exposed = Metrics().render(queue_depth=0, oldest_undelivered_s=0.0, ready=True)
    missing = {name for name in named if not re.search(rf"(?m)^{name}(\{{| )", exposed)}
    assert named and not missing, f"alerts.yml names metrics serve does not expose: {sorted(missing)}"
