"""The deployment the README describes, checked: the shipped systemd unit is
valid (`systemd-analyze verify`), hardened (`systemd-analyze security`
rates its exposure 3.0 or less), allows the open files the default settings
need, and may write only the state folder; the shipped deployment config is
valid and keeps every file the service writes in that folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO

from b12comment.config import load_config
from b12comment.serve.service import FILES_RESERVED

UNIT = REPO / "deploy" / "b12comment.service"
DEPLOY_CONFIG = REPO / "deploy" / "config.toml"
STATE = "/var/lib/b12comment"
EXEC = "/opt/b12comment/venv/bin/b12comment"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 3.0


def settings(unit: Path) -> dict[str, list[str]]:
    """Each key of the unit with its values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def analyze(*args: str) -> subprocess.CompletedProcess:
    """Run systemd-analyze, or skip saying why it cannot run here. Under CI
    (CI=true) a systemd-analyze that is installed but cannot run fails."""
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package; .ci/run installs it)")
    proc = subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)
    broken = "Failed to" in proc.stderr and "not executable" not in proc.stderr
    if broken and os.environ.get("CI") != "true":
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip().splitlines()[0]}")
    return proc


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a b12comment that exists on this
    machine (verify checks that the program is there); nothing else changed."""
    program = Path(sys.executable).with_name("b12comment")
    assert program.exists(), f"{program} is missing: the suite runs with the package installed"
    text = UNIT.read_text(encoding="utf-8")
    assert EXEC in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(EXEC, str(program)), encoding="utf-8")
    return copy


def test_the_unit_verifies(tmp_path):
    proc = analyze("verify", str(runnable_copy(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert UNIT.name not in proc.stderr, f"systemd-analyze verify complains: {proc.stderr}"


def test_the_unit_is_rated_3_or_less_by_systemd_analyze_security(tmp_path):
    proc = analyze("security", "--offline=true", "--no-pager", str(runnable_copy(tmp_path)))
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert found, f"no exposure level in: {proc.stdout[-500:]} {proc.stderr}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n" + "\n".join(
        line for line in proc.stdout.splitlines() if line.startswith("✗")
    )


def test_the_unit_has_the_hardening_a_service_holding_patient_data_needs():
    s = settings(UNIT)
    for key, value in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("User", "b12comment"),
    ]:
        assert s.get(key) == [value], f"{key}={value} expected, found {s.get(key)}"
    assert "@system-service" in s["SystemCallFilter"]
    families = set(" ".join(s["RestrictAddressFamilies"]).split())
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX"}, families
    # The state folder, and nothing else, may be written.
    assert s["ReadWritePaths"] == [STATE]
    assert s["StateDirectory"] == ["b12comment"]
    assert s["WorkingDirectory"] == [STATE]
    # A network service waits for the network, and asks for it.
    assert "network-online.target" in s["After"][0].split()
    assert "network-online.target" in s["Wants"][0].split()
    assert s["ExecStart"][0].startswith(f"{EXEC} serve --config /etc/b12comment/config.toml")


def test_the_open_file_limit_fits_max_connections():
    """serve refuses to start when the open-file limit is below what its
    connections need; the unit's LimitNOFILE covers the shipped settings."""
    cfg = load_config(str(DEPLOY_CONFIG))
    needed = cfg.listener.max_connections + cfg.http.max_connections + FILES_RESERVED
    limit = int(settings(UNIT)["LimitNOFILE"][0])
    assert limit >= needed, f"LimitNOFILE={limit} < {needed} needed by max_connections"


def test_the_deployment_config_keeps_every_file_in_the_state_folder():
    cfg = load_config(str(DEPLOY_CONFIG))
    written = {
        "[journal] path": cfg.journal.path,
        "[context] store": cfg.context.store,
        "[context] key_file": cfg.context.key_file,
    }
    if cfg.downstream.url.startswith("dir:"):
        written["[downstream] url"] = cfg.downstream.url[4:]
    for name, path in written.items():
        assert Path(path).is_absolute(), f"{name} {path} is relative: the deployment writes absolute paths"
        assert Path(path).is_relative_to(STATE), f"{name} {path} is outside {STATE}, which is all the unit may write"


def test_the_readme_points_at_the_shipped_unit_and_embeds_none():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "deploy/b12comment.service" in readme
    assert "deploy/config.toml" in readme
    assert "ExecStart=" not in readme, "the README embeds a unit of its own: it would drift from deploy/"
