"""Resume a run from its historian: the state a restarted controller starts from.

A controller process that crashed (a signal, a host reboot) must not start the batch again:
the plant kept running and the historian holds what the loop knew. :func:`resume_point`
reads the last estimate (states, tracked parameters and their standard deviations), the
setpoints last applied and the mode they were applied in out of a run's records;
:func:`bpcontrol.assembly.assemble` (``resume=``) starts the estimator there (covariance
``diag(sigma^2)``: the correlations are not stored and start again at zero), the
supervisor from the applied setpoints in the same mode, so the first setpoint after the
restart moves from them at the rate limits (bumpless), and the loop's clock at the
restart time. What is not carried over, by design: an interlock's cap (the interlock sees
the next reading anyway), the plan's warm start (the NMPC solves once before the clock
starts, as at any start) and operator setpoints other than the applied ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from bpcontrol.records import (
    EstimateRecord,
    EventKind,
    EventRecord,
    Mode,
    SetpointRecord,
    SetpointSource,
)

__all__ = ["ResumePoint", "resume_point"]

_MODE_OF_SOURCE: Mapping[SetpointSource, Mode] = MappingProxyType(
    {
        SetpointSource.NMPC: Mode.AUTO,
        SetpointSource.RECIPE: Mode.AUTO,
        SetpointSource.INTERLOCK: Mode.AUTO,
        SetpointSource.FALLBACK: Mode.FALLBACK,
        SetpointSource.OPERATOR: Mode.MANUAL,
        SetpointSource.HOLD: Mode.HOLD,
    }
)
"""The mode a setpoint's source was applied in (an interlock acts in any mode: AUTO is the
mode the controller resumes in, the supervisor's rules take it from there)."""


_MODE_EVENTS = frozenset({EventKind.FALLBACK, EventKind.MODE_CHANGE})


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted loop starts (model units; times in process hours).

    Attributes:
        t_h: the process time of the last record of the run (the crash).
        estimate_t_h: when the last estimate was made.
        x: the last estimate's states.
        x_sigma: their standard deviations.
        parameters: the tracked parameters' last values.
        parameter_sigma: their standard deviations.
        applied: the setpoints last applied, one per input.
        mode: the mode they were applied in.
        fallback_cause: in FALLBACK, the supervisor's own cause (it may return to AUTO by
            itself); empty for an operator's FALLBACK (never left by itself) or another mode.
    """

    t_h: float
    estimate_t_h: float
    x: Mapping[str, float]
    x_sigma: Mapping[str, float]
    parameters: Mapping[str, float]
    parameter_sigma: Mapping[str, float]
    applied: Mapping[str, float]
    mode: Mode
    fallback_cause: str = ""

    def x0(self, state_names: Iterable[str]) -> np.ndarray:
        """The states in model order."""
        return np.array([self.x[n] for n in state_names], dtype=float)

    def p0_diag(self, state_names: Iterable[str], tracked: Iterable[str]) -> np.ndarray:
        """The covariance diagonal (states, then tracked parameters) the filter starts from."""
        sig = [self.x_sigma[n] for n in state_names] + [self.parameter_sigma[n] for n in tracked]
        return np.asarray(sig, dtype=float) ** 2

    def u0(self, input_names: Iterable[str]) -> np.ndarray:
        """The applied setpoints in model order."""
        return np.array([self.applied[n] for n in input_names], dtype=float)

    def describe(self) -> str:
        """One line for the ``resumed`` event."""
        return (
            f"resumed at {self.t_h:.3f} h from the historian's last state: estimate of "
            f"{self.estimate_t_h:.3f} h, setpoints {dict(self.applied)} in {self.mode.name}"
        )


def resume_point(
    records: Iterable[object],
    *,
    state_names: tuple[str, ...],
    input_names: tuple[str, ...],
    tracked: tuple[str, ...] = (),
    source: str = "historian",
) -> ResumePoint:
    """The :class:`ResumePoint` of a run's ``records`` (any order; other kinds ignored).

    Raises ValueError (one line naming ``source``) when the records hold no healthy,
    finite estimate with every state and tracked parameter, or no applied setpoints of
    every input: a run that never estimated or applied anything starts from its recipe.
    """
    estimate: EstimateRecord | None = None
    setpoint: SetpointRecord | None = None
    mode_event: EventRecord | None = None  # the last fallback or mode change
    last_t = -math.inf
    for r in records:
        t = getattr(r, "t_h", None)
        if isinstance(t, (int, float)) and math.isfinite(t):
            last_t = max(last_t, float(t))
        if isinstance(r, EstimateRecord) and _usable(r, state_names, tracked):
            if estimate is None or r.t_h >= estimate.t_h:
                estimate = r
        elif isinstance(r, SetpointRecord) and all(n in r.values for n in input_names):
            if setpoint is None or r.t_h >= setpoint.t_h:
                setpoint = r
        elif (
            isinstance(r, EventRecord)
            and r.kind in _MODE_EVENTS
            and (mode_event is None or r.t_h >= mode_event.t_h)
        ):
            mode_event = r
    if estimate is None:
        raise ValueError(
            f"{source}: no healthy estimate of every state and tracked parameter to resume from"
        )
    if setpoint is None:
        raise ValueError(f"{source}: no applied setpoints of every input to resume from")
    mode = _MODE_OF_SOURCE[SetpointSource(setpoint.source)]
    cause = ""
    if mode is Mode.FALLBACK and mode_event is not None and mode_event.kind is EventKind.FALLBACK:
        cause = f"resumed in the supervisor's FALLBACK of {mode_event.t_h:.3f} h"
    return ResumePoint(
        t_h=last_t,
        estimate_t_h=estimate.t_h,
        x=MappingProxyType({n: float(estimate.x[n]) for n in state_names}),
        x_sigma=MappingProxyType({n: float(estimate.x_sigma[n]) for n in state_names}),
        parameters=MappingProxyType({n: float(estimate.parameters[n]) for n in tracked}),
        parameter_sigma=MappingProxyType({n: float(estimate.parameter_sigma[n]) for n in tracked}),
        applied=MappingProxyType({n: float(setpoint.values[n]) for n in input_names}),
        mode=mode,
        fallback_cause=cause,
    )


def _usable(r: EstimateRecord, states: tuple[str, ...], tracked: tuple[str, ...]) -> bool:
    """A healthy estimate with a finite value and a positive finite sigma for everything."""
    if not r.healthy:
        return False
    pairs = [(r.x, r.x_sigma, n) for n in states] + [
        (r.parameters, r.parameter_sigma, n) for n in tracked
    ]
    for values, sigmas, n in pairs:
        v, s = values.get(n), sigmas.get(n)
        if v is None or s is None or not (math.isfinite(v) and math.isfinite(s) and s > 0):
            return False
    return True
