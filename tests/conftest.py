"""Shared fixtures: the real-face data beside the checkout (``../shared/data``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from utils.logger import get_logger, run_handlers

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


@pytest.fixture(autouse=True)
def fresh_magface_logger():
    """Each test starts without a run's log handlers, as a new process does. A trainer run by an earlier test
    leaves its console and file handlers behind, and ``utils.cli`` would then send later tests' one-line errors
    to that logger instead of stderr, so tests would pass or fail by their order. (pytest's own capture
    handlers on the logger are left alone.)"""
    log = get_logger()
    for handler in run_handlers(log):
        log.removeHandler(handler)
        handler.close()
    yield
    for handler in run_handlers(log):
        log.removeHandler(handler)
        handler.close()
