"""Where the test data is: the invented samples in the repository and the
shared corpus of real public messages beside the checkout."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_messages"
CORPUS = REPO.parent / "shared" / "corpus" / "messages"


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.hl7")) if CORPUS.is_dir() else []


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.hl7"))
