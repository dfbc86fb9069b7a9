"""Shared pytest fixtures.

``shared/`` (real datasets and chat templates copied from public repositories) sits beside
the repository: CI clones ``main`` with ``shared/`` as its sibling, as on the dev boxes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ``shared/`` folder beside the repository; skips loudly when it is absent."""
    if not (SHARED / "datasets").is_dir():
        pytest.skip(
            f"SHARED DATA MISSING: {SHARED}/datasets not found; clone the shared/ folder "
            "beside the repository to run the real-dataset tests"
        )
    return SHARED


@pytest.fixture(scope="session")
def shared_datasets(shared: Path) -> Path:
    return shared / "datasets"
