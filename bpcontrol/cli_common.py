"""What every command of the CLI shares: exit codes, the error line, the checks of output
paths and numbers (run before anything is created), the progress bar.

Light on purpose (typer, rich and the standard library only), so that ``bpcontrol
--version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bpcontrol.run_length import MAX_DURATION_H, check_run_length

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "PROGRESS_MIN_STEPS",
    "check_hours",
    "check_output_file",
    "check_output_folder",
    "check_positive",
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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` or ``/`` at the latest)."""
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def check_output_folder(folder: Path, option: str, *, given: Path | None = None) -> None:
    """Refuse a folder a command would create (with its parents) or write into, creating
    nothing: raises ``ValueError`` naming ``option`` and ``given`` (default: ``folder``).

    The folder must be a folder if it exists; otherwise its nearest existing ancestor must
    be a folder. Writability is probed by creating and removing a hidden empty folder in
    that nearest existing folder, since permission bits do not stop root: the probe also
    fails on a read-only or virtual file system (``/proc``) and on a full inode table.
    """
    shown = f"{option} {given if given is not None else folder}"
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{shown}: {folder} exists and is not a folder")
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise ValueError(f"{shown}: {base} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".bpcontrol-write-test-", dir=base)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{shown}: cannot create a folder in {base} ({reason})") from None
    os.rmdir(probe)


def check_output_file(path: Path, option: str) -> None:
    """Refuse a file a command would write (creating its folder if need be), creating
    nothing: an existing folder there, or a folder that cannot be created or written
    (:func:`check_output_folder`), or an existing file that cannot be written. Raises
    ``ValueError`` naming ``option`` and ``path``."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a folder, not a file")
    check_output_folder(path.parent, option, given=path)
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path}: the file exists and cannot be written")


def check_positive(value: float, option: str, unit: str) -> None:
    """Refuse (``ValueError`` naming ``option``) a value that is not finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a finite number > 0 {unit}, got {value:g}")


def check_hours(
    hours: float,
    option: str,
    *,
    step_h: float,
    steps: str,
) -> None:
    """Refuse (``ValueError`` naming ``option``) a duration that is not finite and > 0, or
    longer than a run may be (:func:`bpcontrol.run_length.check_run_length`: ``steps``
    says what a step of ``step_h`` hours is, e.g. "output steps of --dt")."""
    if not (math.isfinite(hours) and 0 < hours <= MAX_DURATION_H):
        raise ValueError(f"{option} must be > 0 and at most {MAX_DURATION_H:g} h, got {hours:g}")
    check_run_length(hours, option, step_h=step_h, steps=steps)


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
