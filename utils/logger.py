"""Logging for training runs: a rank-aware logger, running meters, throughput/ETA and TensorBoard.

Named logger.py, not logging.py, so that running a script from utils/ cannot shadow the stdlib module.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

LOGGER_NAME = "magface"


def setup_logger(log_file: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Console (rank 0 only, others at WARNING) plus an optional file; idempotent.

    Its handlers are marked (``run_handlers``) so that handlers others attach to the logger (a test runner's
    capture handler, say) are neither removed here nor taken for a set-up run by ``utils.cli``.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for h in run_handlers(logger):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(level if rank == 0 else logging.WARNING)
    handlers = [console]
    if log_file is not None and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_RunFile(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h.magface_run = True
        logger.addHandler(h)
    return logger


class _RunFile(logging.FileHandler):
    """The run's log file; when it can no longer be written (a full disk) it says so once, in one line, and leaves
    the logger: logging's default prints a 10-line traceback for every record instead."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        logging.getLogger(LOGGER_NAME).removeHandler(self)
        print(f"warning: cannot write the log file {self.baseFilename} ({error}); the log goes on on the console "
              "only", file=sys.stderr, flush=True)
        try:
            self.close()
        except OSError:
            pass


def run_handlers(logger: logging.Logger | None = None) -> list[logging.Handler]:
    """The handlers ``setup_logger`` attached (console and file of a run), none of anyone else's."""
    logger = logger or get_logger()
    return [h for h in logger.handlers if getattr(h, "magface_run", False)]


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class Throughput:
    """Images/s over the last window and the ETA for the remaining steps."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.images = 0

    def update(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.t0, 1e-9)

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.images = 0

    def skip(self, seconds: float) -> None:
        """Leave ``seconds`` spent on something other than training (validation) out of the rate."""
        self.t0 += seconds


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


class TensorBoard:
    """A SummaryWriter on rank 0; every call is a no-op elsewhere or when tensorboard is absent."""

    def __init__(self, log_dir: str | Path | None, enabled: bool = True) -> None:
        self.writer = None
        if enabled and log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                get_logger().warning("tensorboard is not installed: no TensorBoard logs")
                return
            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure as an image (TensorBoard's Images tab)."""
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
