"""What a hospital installs is what is tested: the wheel holds every module of
the source tree, and under CI the suite runs against the installed wheel, not
the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from paths import REPO

import b12comment


def source_modules() -> set[str]:
    package = REPO / "b12comment"
    return {str(p.relative_to(REPO)) for p in package.rglob("*.py") if "__pycache__" not in p.parts}


def wheel_modules(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if n.startswith("b12comment/") and n.endswith(".py")}


def built_wheel(tmp_path: Path) -> Path:
    wheel = os.environ.get("B12COMMENT_WHEEL")
    if wheel:  # .ci/run built it with `python -m build`
        return Path(wheel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"could not build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    return next(tmp_path.glob("b12comment-*.whl"))


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path):
    wheel = built_wheel(tmp_path)
    missing = source_modules() - wheel_modules(wheel)
    assert not missing, f"the wheel leaves out {sorted(missing)}: a plain install would fail to import them"


def test_every_package_is_found_by_discovery_not_a_hand_list():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "[tool.setuptools.packages.find]" in text
    assert 'include = ["b12comment*"]' in text
    assert "packages = [" not in text, "a hand list of packages forgets the next new one"


def test_under_ci_the_suite_runs_against_the_installed_wheel():
    if os.environ.get("B12COMMENT_TEST_INSTALLED") != "1":
        pytest.skip("only .ci/run installs the wheel (it sets B12COMMENT_TEST_INSTALLED=1)")
    installed = Path(b12comment.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in installed.parents, f"b12comment was imported from {installed}, not from {site}"
    assert (REPO / "b12comment").resolve() not in installed.parents, "the checkout shadows the installed wheel"
