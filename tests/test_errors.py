"""One error base, as click has: every error a user can meet is a `B12Error`
that carries its exit code, and nothing catches one only to raise it again
as another with the same text."""

from __future__ import annotations

import pytest

from b12comment.context.store import ContextError
from b12comment.errors import EXIT_IO, EXIT_USAGE, B12Error
from b12comment.serve.journal_guard import GuardError
from b12comment.wire.tls import TlsError, client_context


@pytest.mark.parametrize(
    "error, code",
    [(TlsError, EXIT_USAGE), (GuardError, EXIT_IO), (ContextError, EXIT_IO)],
)
def test_each_error_is_a_b12error_with_its_exit_code(error, code):
    assert issubclass(error, B12Error)
    assert error("x").exit_code == code


def test_a_tls_file_that_cannot_be_loaded_exits_as_a_usage_error(tmp_path):
    with pytest.raises(B12Error) as caught:
        client_context(str(tmp_path / "missing-ca.pem"))
    assert caught.value.exit_code == EXIT_USAGE and "missing-ca.pem" in str(caught.value)
