"""How long this process has run, for the start-up figure commands report (``inference.assess``).

On Linux the kernel's record of the process start (``/proc/self/stat``, in clock ticks since boot, against
``/proc/uptime``) covers the interpreter and every import; elsewhere the count starts when this module was first
imported, which is early in every command that uses it but after the interpreter's own start.
"""
from __future__ import annotations

import os
import time

_IMPORTED = time.perf_counter()


def _kernel_age() -> float | None:
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def process_age() -> float:
    """Seconds since this process started (10 ms resolution on Linux)."""
    age = _kernel_age()
    return age if age is not None else time.perf_counter() - _IMPORTED
