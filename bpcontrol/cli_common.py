"""What every command of the CLI shares: exit codes, the error line, the progress bar.

Light on purpose (typer, rich and the standard library only), so that ``bpcontrol
--version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "PROGRESS_MIN_STEPS",
    "fail",
    "parse_speed_up",
    "progress_bar",
    "user_errors",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
PROGRESS_MIN_STEPS = 50
"""Runs with more output steps than this show a progress bar (when stderr is a terminal)."""


def progress_bar(label: str, console: Console) -> Progress:
    """A transient progress bar on ``console``: ``label``, bar, percent, elapsed time."""
    columns = (TextColumn(label), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def fail(exc: BaseException, code: int) -> NoReturn:
    """Print ``exc`` as one ``error:`` line on stderr and exit with ``code``."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one ``error:`` line and an exit status, no traceback."""
    try:
        yield
    except ValueError as exc:  # ModelError, RecipeError, PackError ...: all ValueErrors
        fail(exc, EXIT_USAGE)
    except RuntimeError as exc:
        if "models" in sys.modules:  # no SimulationError can come from an unloaded models
            from models import SimulationError

            if isinstance(exc, SimulationError):
                fail(exc, EXIT_FAILURE)
        raise


def parse_speed_up(text: str) -> float:
    """``--speed-up``: process seconds per wall second (1 = live), or 'max' (flat out)."""
    if text.strip().lower() in ("max", "inf"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"--speed-up must be a number (1 for live) or 'max', got {text!r}"
        ) from None
    if not (value >= 1e-3 and math.isfinite(value)):
        raise ValueError(f"--speed-up must be >= 0.001 (1 for live) or 'max', got {text!r}")
    return value
