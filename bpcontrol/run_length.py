"""How long a run may be: the limits every duration and period is checked against.

A batch lasts at most :data:`MAX_DURATION_H` and takes at most :data:`MAX_TICKS` steps of
its period (measurement periods, filter steps, output steps). Recipes, the simulated
plant's synthetic runs, the estimator's input files and the CLI's options all refuse
what exceeds them through :func:`check_run_length`. Standard library only, so the CLI
can check its options before importing anything heavy.
"""

from __future__ import annotations

__all__ = ["MAX_DURATION_H", "MAX_TICKS", "check_run_length"]

MAX_DURATION_H = 100_000.0
"""Longest batch a recipe may state (h, about 11 years): longer ones are typing errors,
and their times in seconds would overflow."""

MAX_TICKS = 1_000_000
"""Most steps a batch may take (``duration_h`` over the period): a million ticks already
take hours of estimator and controller steps."""


def check_run_length(hours: float, what: str, *, step_h: float, steps: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``hours`` exceeds :data:`MAX_DURATION_H`
    or needs more than :data:`MAX_TICKS` of ``steps`` (what a step is, e.g. "filter steps
    of max_step_h") of ``step_h`` hours each. Positivity is the caller's to check."""
    if hours > MAX_DURATION_H:
        raise ValueError(f"{what} must be at most {MAX_DURATION_H:g} h, got {hours:g}")
    n = hours / step_h
    if n > MAX_TICKS:
        raise ValueError(
            f"{what} {hours:g} h needs {n:.3g} {steps} ({step_h:g} h), "
            f"at most {MAX_TICKS:,} are allowed"
        )
