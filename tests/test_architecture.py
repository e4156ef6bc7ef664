"""The layout is the architecture: the core stays pure.

Modules under b12comment/core/ import only each other, the standard library's
pure parts, hl7apy and dateutil. No I/O, no clock, no event loop, no config
loading: the shells (serve/, replay/, the CLI) do those and pass plain data in.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "b12comment"
CORE = PACKAGE / "core"

ALLOWED_THIRD_PARTY = {"hl7apy", "dateutil"}
# Standard-library modules that do I/O, read the clock, start threads or
# processes, or talk to the network: never in the core.
FORBIDDEN_STDLIB = {
    "asyncio",
    "sqlite3",
    "socket",
    "ssl",
    "time",
    "os",
    "io",
    "pathlib",
    "shutil",
    "subprocess",
    "threading",
    "multiprocessing",
    "concurrent",
    "selectors",
    "signal",
    "tempfile",
    "glob",
    "logging",
    "random",
    "secrets",
    "uuid",
    "http",
    "urllib",
    "tomllib",
    "gzip",
    "zlib",
    "sys",
    "fcntl",
    "mmap",
    "builtins",
    "importlib",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def core_modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside its package
                found.append((node.lineno, "b12comment.core." + (node.module or "")))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def judge(module: str) -> str | None:
    """Why `module` may not be imported by the core, or None if it may."""
    top = module.split(".")[0]
    if top == "__future__":
        return None
    if top == "b12comment":
        return None if module == "b12comment.core" or module.startswith("b12comment.core.") else "a shell module"
    if top in ALLOWED_THIRD_PARTY:
        return None
    if top in FORBIDDEN_STDLIB:
        return "does I/O, reads the clock or loads configuration"
    if top in sys.stdlib_module_names:
        return None
    return "a third-party package the core may not use"


def test_core_has_the_modules_the_design_names():
    names = {p.stem for p in core_modules()}
    assert {
        "engine",
        "facts",
        "rule",
        "values",
        "dates",
        "splice",
        "charset",
        "decision",
        "segments",
        "rule_config",
    } <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_only_pure_modules(path):
    bad = [f"{path.name}:{line}: {module} ({why})" for line, module in imports_of(path) if (why := judge(module))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_calls_no_io_builtins(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [
        f"{path.name}:{n.lineno}: {n.func.id}()"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in FORBIDDEN_CALLS
    ]
    assert not calls, "\n".join(calls)


@pytest.mark.parametrize(
    "module, verdict",
    [
        ("b12comment.config", "a shell module"),
        ("b12comment.storage.sqlite.journal", "a shell module"),
        ("sqlite3", "does I/O, reads the clock or loads configuration"),
        ("time", "does I/O, reads the clock or loads configuration"),
        ("structlog", "a third-party package the core may not use"),
        ("b12comment.core.values", None),
        ("re", None),
        ("hl7apy.parser", None),
        ("dateutil.relativedelta", None),
    ],
)
def test_the_boundary_check_itself_tells_pure_from_impure(module, verdict):
    assert judge(module) == verdict


def test_the_boundary_check_finds_a_planted_import(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text("import os\nfrom b12comment.config import load_config\nimport re\n")
    found = [(line, m) for line, m in imports_of(planted) if judge(m)]
    assert found == [(1, "os"), (2, "b12comment.config")]


def core_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Each core module -> the core modules it imports, anywhere in it (an
    import inside a function to dodge a cycle is still an edge)."""
    graph: dict[str, set[str]] = {}
    for path in paths:
        edges = graph.setdefault(path.stem, set())
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("b12comment.core")):
                module = (node.module or "") if not node.level else "b12comment.core." + (node.module or "")
                if module.rstrip(".") in ("b12comment.core", "b12comment.core."):  # from b12comment.core import x
                    edges.update(a.name for a in node.names if (path.parent / f"{a.name}.py").exists())
                else:
                    edges.add(module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges.update(a.name.split(".")[2] for a in node.names if a.name.startswith("b12comment.core."))
        edges.discard(path.stem)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle, each once, as the path that closes it."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt) :] + [nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_the_core_has_no_import_cycles():
    graph = core_graph([p for p in core_modules() if p.stem != "__init__"])
    assert not cycles(graph), "\n".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    for name, body in {
        "a": "from b12comment.core.b import x\n",
        "b": "def f():\n    from b12comment.core import c\n",
        "c": "from .a import y\n",
        "d": "import re\n",
    }.items():
        (tmp_path / f"{name}.py").write_text(body)
    graph = core_graph(sorted(tmp_path.glob("*.py")))
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def shell_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CORE not in p.parents)


def test_every_shell_decides_through_the_one_chain():
    """serve, HTTP, preview, replay and the store's rebuild decide with
    core.chain.decide (process -> context veto -> guard); none calls the
    engine itself, so none can skip the veto or the guard."""
    found = []
    for path in shell_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if (
                "b12comment.core.engine" in names
                or module == "b12comment.core.engine"
                or module == "b12comment.core"
                and {"engine", "process"} & set(names)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: the engine")
    assert not found, "\n".join(found)
    users = {
        p.relative_to(PACKAGE).as_posix()
        for p in shell_modules()
        if "b12comment.core.chain" in (text := p.read_text()) or "from b12comment.core import chain" in text
    }
    entry_points = {"serve/processing.py", "serve/http.py", "preview.py", "replay/first_pass.py", "replay/run.py"}
    assert entry_points | {"replay/forward.py", "context/store.py"} <= users


# The shells that share the wire (MLLP codec, ACKs, splitting, TLS) and the
# delivery (transports, forwarder) never import each other: serve and replay
# meet in wire/, delivery/ and storage/, which import neither.
NEVER_IMPORTS = {
    "serve": ("replay", "send"),
    "replay": ("serve", "send"),
    "send": ("serve", "replay"),
    "wire": ("serve", "replay", "send", "delivery", "storage"),
    "delivery": ("serve", "replay", "send"),
    "storage": ("serve", "replay", "send", "delivery"),
}


def part_of(path: Path) -> str:
    """The part of the package a module belongs to: its first folder, or its own name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def crossings(path: Path) -> list[str]:
    part = part_of(path)
    bad = []
    for line, module in imports_of(path):
        names = module.split(".")
        if names[0] == "b12comment" and len(names) > 1 and names[1] in NEVER_IMPORTS.get(part, ()):
            bad.append(f"{path.relative_to(PACKAGE)}:{line}: {part} imports {module}")
    return bad


def test_serve_replay_send_and_the_shared_layers_never_import_each_other():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {"serve", "replay", "send", "wire", "delivery", "storage"} <= {part_of(p) for p in modules}
    bad = [line for path in modules for line in crossings(path)]
    assert not bad, "\n".join(bad)


def test_the_crossing_check_finds_a_planted_import(tmp_path, monkeypatch):
    planted = PACKAGE / "replay" / "planted_for_the_test.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: "from b12comment.serve import listener\n")
    assert crossings(planted) == ["replay/planted_for_the_test.py:1: replay imports b12comment.serve"]
