"""Shared fixtures: the real-face data beside the checkout (``../shared/data``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAGFACE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "lfw112").is_dir():
        pytest.fail(f"real-face test data not found at {SHARED_DATA} (set MAGFACE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lfw_dir(shared_data: Path) -> Path:
    return shared_data / "lfw112"


@pytest.fixture(scope="session")
def celeba_dir(shared_data: Path) -> Path:
    return shared_data / "celeba112"
