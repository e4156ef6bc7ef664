"""Where the test data is: the invented samples in the repository and the
shared corpus of real public messages beside the checkout."""

from __future__ import annotations

from pathlib import Path

import b12comment

REPO = Path(__file__).resolve().parents[1]
# The folder that holds the package under test: site-packages when the suite
# runs against the installed wheel (as CI does), the checkout in a dev loop.
# Child processes get this folder, never the checkout by default.
PACKAGE_ROOT = Path(b12comment.__file__).resolve().parents[1]
SAMPLES = REPO / "sample_messages"
CORPUS = REPO.parent / "shared" / "corpus" / "messages"


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.hl7")) if CORPUS.is_dir() else []


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.hl7"))
