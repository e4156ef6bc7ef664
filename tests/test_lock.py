"""requirements.lock is what a hospital installs with `pip install
--require-hashes`: it must hold every runtime dependency of pyproject.toml
at the same pinned version, each with its hashes. A dependency added or
moved in pyproject.toml fails here until the lock is remade
(deploy/refresh-lock)."""

from __future__ import annotations

import re
import tomllib

from paths import REPO

LOCK = REPO / "requirements.lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = {}
    for dep in deps:
        found = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^;\s]+)\s*(;.*)?", dep)
        assert found, f"{dep!r} is not pinned exactly (name==version)"
        pins[canonical(found.group(1))] = found.group(2)
    return pins


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of each requirement in the lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"an option line in the lock: {line!r} (no index URLs: pip's settings apply)"
        found = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line)
        assert found, f"unpinned line in the lock: {line!r}"
        entries[canonical(found.group(1))] = (found.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return entries


def test_every_runtime_dependency_is_locked_at_its_pinned_version():
    lock = locked()
    for name, version in runtime_pins().items():
        assert name in lock, f"{name} is in pyproject.toml but not in requirements.lock: run deploy/refresh-lock"
        assert lock[name][0] == version, (
            f"{name}: pyproject.toml pins {version}, requirements.lock {lock[name][0]}: run deploy/refresh-lock"
        )


def test_every_locked_requirement_has_hashes():
    for name, (version, hashes) in locked().items():
        assert hashes, f"{name}=={version} has no --hash: pip install --require-hashes would refuse the lock"


def test_ci_installs_the_lock_with_hashes_before_the_wheel():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    lock = ci.index("--require-hashes -r requirements.lock")
    assert lock < ci.index('--no-deps "${wheel}"'), "CI must install the locked dependencies, then the wheel alone"
