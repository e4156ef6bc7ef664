"""Shared fixtures. Shared helpers live in modules of their own (paths,
builders, service_helpers, soak_helpers), never imported from here."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import CORPUS
from pg_helpers import PostgresServer, unavailable


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
