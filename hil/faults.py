"""Controller faults for HIL tests: wrap a controller so it raises, hangs or talks nonsense.

Each wrapper implements :class:`bpcontrol.interfaces.Controller` and misbehaves only while
the process time lies in ``[start_h, end_h)``; outside that window it passes the call to
the wrapped controller, so a test sees the loop fall back *and* come back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from bpcontrol.interfaces import Controller
from bpcontrol.nmpc import Plan, StateEstimate

__all__ = ["FaultyController", "InjectedControllerError"]


class InjectedControllerError(RuntimeError):
    """The error a raising fault raises (so tests can tell it from real failures)."""


@dataclass
class FaultyController:
    """``inner`` with a fault of ``kind`` in the window ``[start_h, end_h)``.

    Kinds: ``"raise"`` (raises :class:`InjectedControllerError`), ``"hang"`` (sleeps ``hang_s`` of
    wall time, then answers normally: late), ``"nan"`` (returns the plan with NaN setpoints
    and predictions, status unchanged: garbage that looks like a solution).
    ``calls_in_window`` counts the faulty calls.
    """

    inner: Controller
    kind: str
    start_h: float
    end_h: float
    hang_s: float = 5.0
    calls_in_window: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("raise", "hang", "nan"):
            raise ValueError(f"kind must be raise, hang or nan, got {self.kind!r}")
        if not (math.isfinite(self.start_h) and self.end_h > self.start_h):
            raise ValueError(f"need start_h < end_h, got [{self.start_h}, {self.end_h})")

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """Misbehave in the window, else delegate."""
        if not self.start_h <= t_h < self.end_h:
            return self.inner.plan(estimate, t_h, u_applied)
        self.calls_in_window += 1
        if self.kind == "raise":
            raise InjectedControllerError(f"injected controller fault at {t_h:.3f} h")
        if self.kind == "hang":
            time.sleep(self.hang_s)
            return self.inner.plan(estimate, t_h, u_applied)
        plan = self.inner.plan(estimate, t_h, u_applied)
        return replace(
            plan,
            u_next=np.full_like(plan.u_next, np.nan),
            X=np.full_like(plan.X, np.nan),
            U=np.full_like(plan.U, np.nan),
        )
