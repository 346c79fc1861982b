"""How every command-line entry point ends on an error: one line, a distinct exit status, no traceback.

``run_cli(main, argv, prog)`` runs ``main(argv)``. Bad input (``ValueError``, ``FileNotFoundError``, whose
messages name the file, line or key at fault) prints ``prog: error: <message>`` and exits 2, like an
argparse error. Anything else is a bug or an environment problem: one line with the exception type, its
message and the innermost file:line it came from, exit 1. Extra ``codes`` map further exception types to
their own statuses (the trainers: diverged 3, distributed failure 4).

On a terminal the ``error:`` label is red (termcolor; not with ``NO_COLOR`` set, nor when stderr is a
file or a pipe, so logs and tests see plain text).

The traceback comes back with ``--debug`` anywhere on the command line (removed before ``main`` parses
it) or with the environment variable ``MAGFACE_DEBUG=1``: then the exception propagates unchanged.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MAGFACE_DEBUG"
INPUT_ERRORS = (ValueError, FileNotFoundError)
INPUT_ERROR_CODE = 2
INTERNAL_ERROR_CODE = 1
INTERRUPTED_CODE = 130

ExitCodes = Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], int]]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, said once: not appended where the help text already says its default
    (``default: 64 on CPU ...``), nor where there is nothing to say (None, False, a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
            return text
        return super()._get_help_string(action)


def keyword_defaults(func: Callable) -> dict[str, Any]:
    """The defaults of ``func``'s parameters, by name: a CLI takes its argparse defaults from the library
    function it calls, so a default lives in one place."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def split_debug(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """(argv without ``--debug``, whether a traceback was asked for by flag or environment)."""
    args = list(sys.argv[1:] if argv is None else argv)
    stop = args.index("--") if "--" in args else len(args)
    flagged = DEBUG_FLAG in args[:stop]
    args = [a for i, a in enumerate(args) if i >= stop or a != DEBUG_FLAG]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return args, flagged or env


def one_line(error: BaseException) -> str:
    """The error's message on one line; a DataLoader worker's re-raised error keeps the worker's own text."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(type(error).__name__ + ":") else last
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__


def origin(error: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``error`` (relative to the cwd when inside it)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{path}:{frame.lineno}"


def error_label(stream=None) -> str:
    """``error:``, in red on a terminal that allows colour."""
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)() or os.environ.get("NO_COLOR"):
        return "error:"
    from termcolor import colored

    return colored("error:", "red", attrs=["bold"], force_color=True)


def _report(prog: str, message: str) -> None:
    from utils.logger import get_logger, run_handlers  # a run set up by setup_logger logs to its file too

    if run_handlers():
        get_logger().error(f"{prog}: error: {message}")
    else:
        print(f"{prog}: {error_label()} {message}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, prog: str | None = None,
            codes: ExitCodes = (), classify: Callable[[BaseException], int | None] | None = None) -> int:
    """``main(argv)`` with the one-line failure rule above; returns the exit status (``main``'s int, else 0).

    ``classify`` (checked first) gives a status for errors no type describes (e.g. a full disk's OSError).
    """
    args, debug = split_debug(argv)
    prog = prog or Path(sys.argv[0]).name
    try:
        result = main(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED_CODE
    except BaseException as error:  # noqa: BLE001 - the point: no traceback for any of them
        if debug:
            raise
        code = classify(error) if classify is not None else None
        if code is None:
            code = next((c for kinds, c in codes if isinstance(error, kinds)), None)
        if code is None and isinstance(error, INPUT_ERRORS):
            code = INPUT_ERROR_CODE
        if code is not None:
            _report(prog, one_line(error))
            return code
        _report(prog, f"{type(error).__name__}: {one_line(error)} (at {origin(error)}; rerun with "
                      f"{DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)")
        return INTERNAL_ERROR_CODE
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
