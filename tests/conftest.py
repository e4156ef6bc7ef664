"""Shared fixtures. Shared helpers live in modules of their own (paths,
builders, service_helpers, soak_helpers), never imported from here."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import CORPUS
from pg_helpers import PostgresServer, unavailable

# Whole-process checks of how the commands speak to an operator: one clear line
# for each bad environment or file, the queue console, health, TLS set-up,
# start and stop, enhanced acknowledgement, the audit on PostgreSQL, send's,
# replay's and the diagnostics' options and messages. Each starts a Python
# process or a server (0.2 to 3 s apiece), so they run in the whole suite, not
# in the fast lane, except the tests marked `promise`, which guard a promise
# and stay in the fast lane.
OPERATOR_MODULES = {
    "test_audit_postgres.py",
    "test_bad_env.py",
    "test_cli_errors.py",
    "test_diagnostics.py",
    "test_enhanced_ack.py",
    "test_health.py",
    "test_queue_cli.py",
    "test_queue_console.py",
    "test_replay_archive.py",
    "test_replay_cli.py",
    "test_send.py",
    "test_serve_start_stop.py",
    "test_tls.py",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in OPERATOR_MODULES and item.get_closest_marker("promise") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (it sits beside the checkout in CI)")
    return CORPUS


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server the suite starts itself (see pg_helpers.py), once."""
    server = PostgresServer()
    why = server.start()
    try:
        if why is not None:
            unavailable(why)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh database of its own on the suite's PostgreSQL."""
    return postgres_server.new_database()
