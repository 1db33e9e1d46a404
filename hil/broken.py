"""Deliberately broken controllers, each wrapping the real one: the suite must catch them.

Each misbehaves from ``start_h`` (process h) to the end of the run and delegates before:

- :class:`IgnoresDO`: the real plan with the aeration ``inputs`` at their lower limits
  (the controller forgets the oxygen balance, so DO falls);
- :class:`OutsideClamps`: the real plan with ``input`` jumped to ``factor`` times its
  upper limit at once (a supervisor must clamp it; a permissive one lets it through);
- a controller that never leaves FALLBACK is :class:`hil.faults.FaultyController` raising
  from ``start_h`` on (see :func:`broken_controller`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bpcontrol.interfaces import Controller, InputLimitsAware
from bpcontrol.nmpc import Plan, StateEstimate
from bpcontrol.supervisor import SetpointLimits
from hil.faults import ControllerFault, FaultyController

__all__ = ["IgnoresDO", "OutsideClamps", "broken_controller"]


@dataclass
class IgnoresDO:
    """``inner`` with ``inputs`` (aeration) held at their lower limits from ``start_h``."""

    inner: Controller
    input_names: tuple[str, ...]
    limits: Mapping[str, SetpointLimits]
    inputs: tuple[str, ...]
    start_h: float

    def set_input_limits(self, limits: Mapping[str, tuple[float, float]]) -> None:
        """Pass the limits on to the inner controller."""
        if isinstance(self.inner, InputLimitsAware):
            self.inner.set_input_limits(limits)

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """The inner plan, with the aeration inputs at their lower limits once broken."""
        plan = self.inner.plan(estimate, t_h, u_applied)
        if t_h < self.start_h:
            return plan
        u = np.array(plan.u_next, dtype=float)
        U = np.array(plan.U, dtype=float)
        for name in self.inputs:
            i = self.input_names.index(name)
            u[i] = self.limits[name].lower
            U[:, i] = self.limits[name].lower
        return replace(plan, u_next=u, U=U)


@dataclass
class OutsideClamps:
    """``inner`` with ``input`` at ``factor`` x its upper limit from ``start_h`` on."""

    inner: Controller
    input_names: tuple[str, ...]
    limits: Mapping[str, SetpointLimits]
    input: str
    factor: float
    start_h: float

    def set_input_limits(self, limits: Mapping[str, tuple[float, float]]) -> None:
        """Pass the limits on to the inner controller."""
        if isinstance(self.inner, InputLimitsAware):
            self.inner.set_input_limits(limits)

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """The inner plan, with one input far outside its limit once broken."""
        plan = self.inner.plan(estimate, t_h, u_applied)
        if t_h < self.start_h:
            return plan
        i = self.input_names.index(self.input)
        value = self.limits[self.input].upper * self.factor
        u = np.array(plan.u_next, dtype=float)
        U = np.array(plan.U, dtype=float)
        u[i] = value
        U[:, i] = value
        return replace(plan, u_next=u, U=U)


def broken_controller(
    kind: str,
    options: Mapping[str, object],
    *,
    start_h: float,
    input_names: Sequence[str],
    limits: Mapping[str, SetpointLimits],
) -> Callable[[Controller], Controller]:
    """The ``wrap_controller`` of a broken controller of ``kind`` (see the module)."""
    names = tuple(input_names)

    def wrap(inner: Controller) -> Controller:
        if kind == "ignore_do":
            inputs = tuple(str(n) for n in options["inputs"])  # type: ignore[attr-defined]
            return IgnoresDO(inner, names, limits, inputs, start_h)
        if kind == "outside_clamps":
            factor = float(options["factor"])  # type: ignore[arg-type]
            return OutsideClamps(inner, names, limits, str(options["input"]), factor, start_h)
        if kind == "stuck_fallback":
            return FaultyController(inner, ControllerFault.RAISE, start_h, math.inf)
        raise ValueError(f"unknown broken controller {kind!r}")

    return wrap
