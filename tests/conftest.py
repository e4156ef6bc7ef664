"""Shared fixtures. Shared helpers live in modules of their own (paths,
builders, service_helpers, soak_helpers), never imported from here."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import CORPUS


@pytest.fixture
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS} (it sits beside the checkout in CI)")
    return CORPUS
