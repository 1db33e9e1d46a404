"""Faults for HIL tests: controllers that raise, hang or talk nonsense; flaky plants.

:class:`FaultyController` implements :class:`bpcontrol.interfaces.Controller` and
:class:`FlakyPlant` implements :class:`bpcontrol.interfaces.Plant` around a real one; each
misbehaves only while the process time lies in ``[start_h, end_h)`` and passes calls
through outside it, so a test sees the loop fall back *and* come back.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bpcontrol.interfaces import Controller, InputLimitsAware, Plant, PlantError
from bpcontrol.nmpc import Plan, StateEstimate
from estimators import Reading

__all__ = ["ControllerFault", "FaultyController", "FlakyPlant", "InjectedControllerError"]


class ControllerFault(enum.StrEnum):
    """How a :class:`FaultyController` misbehaves (what the loop must survive)."""

    RAISE = "raise"
    """Raises :class:`InjectedControllerError` (the loop records ``raised``)."""
    HANG = "hang"
    """Sleeps ``hang_s`` of wall time, then answers normally (the loop records ``late``)."""
    NAN = "nan"
    """Returns the plan with NaN setpoints and predictions, status unchanged: garbage that
    looks like a solution (the supervisor finds it not finite)."""


class InjectedControllerError(RuntimeError):
    """The error a raising fault raises (so tests can tell it from real failures)."""


@dataclass
class FaultyController:
    """``inner`` with a fault of ``kind`` in the window ``[start_h, end_h)`` (h).

    ``kind`` is a :class:`ControllerFault` (or its text: ``"raise"``, ``"hang"``, ``"nan"``);
    ``hang_s`` is the wall time (s) a hang sleeps. ``calls_in_window`` counts the faulty
    calls.
    """

    inner: Controller
    kind: ControllerFault
    start_h: float
    end_h: float
    hang_s: float = 5.0
    calls_in_window: int = 0

    def __post_init__(self) -> None:
        try:
            self.kind = ControllerFault(self.kind)
        except ValueError:
            allowed = ", ".join(k.value for k in ControllerFault)
            raise ValueError(f"kind must be one of {allowed}, got {self.kind!r}") from None
        if not (math.isfinite(self.start_h) and self.end_h > self.start_h):
            raise ValueError(f"need start_h < end_h, got [{self.start_h}, {self.end_h})")

    def set_input_limits(self, limits: Mapping[str, tuple[float, float]]) -> None:
        """Pass the limits in force on to the inner controller when it plans inside them."""
        if isinstance(self.inner, InputLimitsAware):
            self.inner.set_input_limits(limits)

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """Misbehave in the window, else delegate."""
        if not self.start_h <= t_h < self.end_h:
            return self.inner.plan(estimate, t_h, u_applied)
        self.calls_in_window += 1
        if self.kind is ControllerFault.RAISE:
            raise InjectedControllerError(f"injected controller fault at {t_h:.3f} h")
        if self.kind is ControllerFault.HANG:
            time.sleep(self.hang_s)
            return self.inner.plan(estimate, t_h, u_applied)
        plan = self.inner.plan(estimate, t_h, u_applied)
        return replace(
            plan,
            u_next=np.full_like(plan.u_next, np.nan),
            X=np.full_like(plan.X, np.nan),
            U=np.full_like(plan.U, np.nan),
        )


@dataclass
class FlakyPlant:
    """A plant (e.g. a gateway) that fails the way field devices do, around a real plant.

    In ``[start_h, end_h)``: ``read`` raises :class:`PlantError` every ``read_fail_every``-th
    call and replaces the value of ``garbage_sensor`` with NaN; ``apply`` raises every
    ``apply_fail_every``-th call; outside the window the calls pass through. Always:
    ``device_max`` caps what the device holds per input (a device-side clamp the loop only
    learns from the confirmation). Counters say how often each fault struck.
    """

    inner: Plant
    start_h: float
    end_h: float
    read_fail_every: int = 3
    apply_fail_every: int = 2
    garbage_sensor: str | None = None
    device_max: Mapping[str, float] = field(default_factory=dict)
    read_failures: int = 0
    apply_failures: int = 0
    _reads: int = 0
    _applies: int = 0

    @property
    def input_names(self) -> tuple[str, ...]:
        """The wrapped plant's inputs."""
        return tuple(self.inner.input_names)

    def _active(self, t_h: float) -> bool:
        return self.start_h <= t_h < self.end_h

    def read(self, t_h: float) -> Sequence[Reading]:
        """The wrapped readings, or a failure / NaN value inside the window."""
        readings = self.inner.read(t_h)  # the plant moves on even when the link fails
        if not self._active(t_h):
            return readings
        self._reads += 1
        if self._reads % self.read_fail_every == 0:
            self.read_failures += 1
            raise PlantError(f"gateway timeout reading at {t_h:.3f} h")
        return [
            replace(r, value=math.nan) if r.sensor == self.garbage_sensor else r for r in readings
        ]

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Apply (capped by ``device_max``), or fail inside the window."""
        if self._active(t_h):
            self._applies += 1
            if self._applies % self.apply_fail_every == 0:
                self.apply_failures += 1
                raise PlantError(f"write not confirmed at {t_h:.3f} h")
        capped = {n: min(v, self.device_max.get(n, math.inf)) for n, v in setpoints.items()}
        return self.inner.apply(t_h, capped)
