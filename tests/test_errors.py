"""One error base, as click has: every error a user can meet is a `B12Error`
that carries its exit code, and nothing catches one only to raise it again
as another with the same text."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from b12comment.context.store import ContextError
from b12comment.errors import EXIT_IO, EXIT_USAGE, B12Error
from b12comment.serve.journal_guard import GuardError
from b12comment.storage.model import JournalCorrupt, JournalError
from b12comment.wire.tls import TlsError, client_context

PACKAGE = Path(__file__).resolve().parents[1] / "b12comment"


@pytest.mark.parametrize(
    "error, code",
    [
        (TlsError, EXIT_USAGE),
        (GuardError, EXIT_IO),
        (ContextError, EXIT_IO),
        (JournalError, EXIT_IO),
        (JournalCorrupt, EXIT_IO),
    ],
)
def test_each_error_is_a_b12error_with_its_exit_code(error, code):
    assert issubclass(error, B12Error)
    assert error("x").exit_code == code


def test_a_tls_file_that_cannot_be_loaded_exits_as_a_usage_error(tmp_path):
    with pytest.raises(B12Error) as caught:
        client_context(str(tmp_path / "missing-ca.pem"))
    assert caught.value.exit_code == EXIT_USAGE and "missing-ca.pem" in str(caught.value)


def rewraps(tree: ast.AST) -> list[int]:
    """Lines of `except E as exc: raise Other(str(exc))`: the same text under another type."""
    found = []
    for handler in ast.walk(tree):
        if not (isinstance(handler, ast.ExceptHandler) and handler.name):
            continue
        for node in ast.walk(handler):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.exc, ast.Call)
                and node.exc.args
                and isinstance(first := node.exc.args[0], ast.Call)
                and isinstance(first.func, ast.Name)
                and first.func.id == "str"
                and len(first.args) == 1
                and isinstance(first.args[0], ast.Name)
                and first.args[0].id == handler.name
            ):
                found.append(node.lineno)
    return found


def test_no_module_rewraps_an_error_with_the_same_text():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in rewraps(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, "catch-and-raise of the same text (raise the B12Error itself):\n" + "\n".join(found)


def test_the_rewrap_check_finds_a_planted_one():
    planted = "try:\n    f()\nexcept TlsError as exc:\n    raise UsageError(str(exc)) from None\n"
    assert rewraps(ast.parse(planted)) == [4]
    assert rewraps(ast.parse("try:\n    f()\nexcept E as exc:\n    raise B(f'{exc}; more')\n")) == []
