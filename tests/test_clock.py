"""utils.clock.process_age counts from the process's start, not from its own import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_process_age_counts_the_time_before_its_import():
    code = "import time; time.sleep(0.4); from utils.clock import process_age; print(process_age())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 0.4 <= float(done.stdout) < 30


def test_without_proc_it_counts_from_its_import(monkeypatch):
    from utils import clock

    monkeypatch.setattr(clock, "_kernel_age", lambda: None)
    assert 0 <= clock.process_age() < clock.time.perf_counter() - clock._IMPORTED + 1e-3
