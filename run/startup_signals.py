"""A preemption signal outside the training loop (start-up, shut-down) ends the process with status 75 too.

``run.preempt.PreemptWatch`` turns SIGTERM / SIGUSR1 into "save, then exit 75" while the loop runs. Before it is
installed (imports, reading the data lists, resuming) and after it is removed, Python's default would end the
process with 143 (killed by SIGTERM), which a scheduler reads as a failure rather than "run me again". No step
is in progress then and every file is written atomically, so there is nothing to save: the handler says so in
one line and exits 75 at once.

Torch-free and tiny on purpose: the trainers install it on their first lines, before ``import torch`` (about
1.5 s on a cold start), so that even a signal during the imports gets 75.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_STATUS = 75  # run.preempt.PREEMPT_EXIT (sysexits.h EX_TEMPFAIL), not imported from there: that imports torch
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # the default of --preempt-signals


def _stop(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"stopped by {name} outside the training loop (start-up or shut-down): no step was in progress "
                f"and nothing written is lost; exit status {EXIT_STATUS} (requeue the job; --resume auto "
                "continues)\n".encode())
    os._exit(EXIT_STATUS)


def install(signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> dict[signal.Signals, object]:
    """Exit 75 on ``signals`` from now until a PreemptWatch takes them over; the other default preemption signals
    go back to Python's defaults (``--preempt-signals`` may name fewer, or none). Returns the previous handlers."""
    previous = {}
    for sig in (*DEFAULT_SIGNALS, *signals):
        previous.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _stop if sig in signals else signal.SIG_DFL)
    return previous


@contextlib.contextmanager
def installed(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """``install(signals)`` for the length of the block (a training run), the previous handlers back after it;
    nothing outside the main thread, where Python allows no handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = install(signals)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
