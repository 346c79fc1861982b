"""Shared fixtures: the real faces, from the full sets beside the checkout (``../shared/data``, or
``$MAGFACE_SHARED_DATA``) when they are there, else from the subsets the repository ships in ``raw/demo_data``.

A clone without the shared data runs every test that only needs some real faces; the few that need the full sets
(all 6,000 LFW pairs, ``lfw112/landmarks.txt``, counts over all 296 photographs) ask for ``shared_data`` and skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from utils.logger import get_logger, run_handlers

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAGFACE_SHARED_DATA") or REPO.parent / "shared" / "data")
DEMO_DATA = REPO / "raw" / "demo_data"
FULL_SETS = {"lfw": "lfw112", "celeba": "celeba112", "photos": "photos"}  # demo subset -> full shared set


def _has_full_data() -> bool:
    return all((SHARED_DATA / name).is_dir() for name in FULL_SETS.values())


@pytest.fixture(scope="session")
def full_data() -> bool:
    """True when the real-face fixtures give the full shared sets, False when they give the shipped subsets."""
    return _has_full_data()


@pytest.fixture(scope="session")
def shared_data(full_data: bool) -> Path:
    """For the tests that need the full sets themselves: on a clone without them they skip and say so."""
    if not full_data:
        pytest.skip(f"needs the full shared data at {SHARED_DATA} (all 6,000 LFW pairs and 13,233 faces of lfw112 "
                    "with its landmarks.txt, celeba112, all 296 photographs); absent in a bare clone, which has "
                    "only the subsets in raw/demo_data")
    return SHARED_DATA


def _real_faces(name: str, full_data: bool) -> Path:
    return SHARED_DATA / FULL_SETS[name] if full_data else DEMO_DATA / name


@pytest.fixture(scope="session")
def lfw_dir(full_data: bool) -> Path:
    """Aligned LFW pairs: ``img.list`` (pair i = lines 2i, 2i+1), ``pair.list`` (``i j label``), ``images/``."""
    return _real_faces("lfw", full_data)


@pytest.fixture(scope="session")
def celeba_dir(full_data: bool) -> Path:
    """Aligned CelebA faces: ``train.list`` (``path 0 label 0``) and ``images/<celeba_id>/``."""
    return _real_faces("celeba", full_data)


@pytest.fixture(scope="session")
def photos_dir(full_data: bool) -> Path:
    """Unaligned photographs: ``lfw/``, ``celeba/``, their ``landmarks.txt`` and ``no_face.txt``."""
    return _real_faces("photos", full_data)


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="session", autouse=True)
def demo_data_untouched():
    """Tests write under tmp_path only: the shipped demo data (which some of them link into their folders) must
    end the session as it began."""
    before = _tree_state(DEMO_DATA)
    yield
    after = _tree_state(DEMO_DATA)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the tests changed {len(changed)} paths under {DEMO_DATA}: {changed[:10]}"


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


@pytest.fixture
def one_thread_and_restore():
    """One intra-op thread (as the subprocess runs use: two spin against each other on a busy 2-core box,
    and results stay bit-comparable across processes); afterwards the thread count and the
    deterministic-algorithms switch (--deterministic sets it) are put back. Training test modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread_and_restore")``."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def fault_injection():
    """The MAGFACE_FAULT_* variables a test sets act on the training runs and atomic writes it makes in this process
    (tests/fault_launch.py installs them from outside the production code)."""
    from tests.fault_launch import training_faults

    with training_faults():
        yield
