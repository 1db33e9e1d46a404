"""The loop's clock: process time in hours, paced against wall time by a speed-up factor.

``PacedClock(speed_up=1)`` is the live wall clock (one process second per wall second);
``PacedClock(speed_up=1800)`` runs 30 h in 60 s of wall time; ``speed_up=inf`` runs as
fast as the work allows (a simulated clock: ``sleep_until`` jumps). The same loop code runs
on all of them, which is what lets an accelerated HIL run prove the live loop.

:class:`SteppedClock` is the other side of a simulated loop clock: process time that moves
only when whoever drives it steps it (a HIL device in lockstep with the loop under test).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["PacedClock", "SteppedClock"]

_S_PER_H = 3600.0
_MAX_SLEEP_S = 0.25  # a wait is sliced so that an interrupt ends it within this (wall s)


class PacedClock:
    """Process time ``t0_h + (wall elapsed) * speed_up``; jumps ahead when ``speed_up`` is inf.

    Args:
        speed_up: process seconds per wall second (>= 1e-3; ``math.inf`` for a simulated
            clock that never waits).
        t0_h: process time (h) at start.
        wall: the monotonic wall clock in seconds (injectable for tests).
        sleep: the sleep function in seconds (injectable for tests).
    """

    def __init__(
        self,
        speed_up: float = math.inf,
        *,
        t0_h: float = 0.0,
        wall: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if math.isnan(speed_up) or speed_up < 1e-3:
            raise ValueError(f"speed_up must be >= 0.001 (or inf), got {speed_up}")
        if not math.isfinite(t0_h):
            raise ValueError(f"t0_h must be finite, got {t0_h}")
        self.speed_up = float(speed_up)
        self._wall = wall
        self._sleep = sleep
        self._t0_h = float(t0_h)
        self._wall0 = wall()
        self._t_sim = float(t0_h)  # used when speed_up is inf
        self._interrupted = threading.Event()

    def restart(self, t0_h: float | None = None) -> None:
        """Start process time ``t0_h`` (default: the clock's own) now (call after set-up,
        before the loop runs, so that compiling and warming up do not eat into the first
        periods; a resumed run starts where its device's process time is)."""
        if t0_h is not None:
            if not math.isfinite(t0_h):
                raise ValueError(f"t0_h must be finite, got {t0_h}")
            self._t0_h = float(t0_h)
        self._wall0 = self._wall()
        self._t_sim = self._t0_h
        self._interrupted.clear()

    def interrupt(self) -> None:
        """Cut the current and every later wait short (a stop was requested; safe from any
        thread and from a signal handler). :meth:`restart` clears it."""
        self._interrupted.set()

    @property
    def simulated(self) -> bool:
        """True when the clock never waits (speed_up is infinite)."""
        return math.isinf(self.speed_up)

    def now(self) -> float:
        """The current process time (h)."""
        if self.simulated:
            return self._t_sim
        return self._t0_h + (self._wall() - self._wall0) * self.speed_up / _S_PER_H

    def wall_at(self, t_h: float) -> float:
        """The wall time (monotonic s) at which process time ``t_h`` is due."""
        return self._wall0 + (t_h - self._t0_h) * _S_PER_H / self.speed_up

    def sleep_until(self, t_h: float) -> float:
        """Wait until process time ``t_h`` (h); return how late it woke, in wall seconds.

        A simulated clock jumps to ``t_h`` (never backwards) and returns 0. A paced clock
        returns ``>= 0``: the lateness is the loop's jitter (it is > 0 when the work before
        overran the period, or by the operating system's wake-up latency).
        """
        if self.simulated:
            self._t_sim = max(self._t_sim, float(t_h))
            return 0.0
        due = self.wall_at(t_h)
        while True:
            remaining = due - self._wall()
            if remaining <= 0:
                return -remaining
            if self._interrupted.is_set():
                return 0.0
            self._sleep(min(remaining, _MAX_SLEEP_S))


class SteppedClock:
    """Process time (h) that moves only by :meth:`step_to`, never backwards.

    A HIL device in lockstep with a loop on a simulated clock runs on one: the loop steps
    it to each tick's time before it reads, so the device samples exactly what it would
    have sampled by then at any speed, and a slow solve cannot make it skip samples.
    """

    def __init__(self, t0_h: float = 0.0) -> None:
        if not math.isfinite(t0_h):
            raise ValueError(f"t0_h must be finite, got {t0_h}")
        self._t_h = float(t0_h)
        self._lock = threading.Lock()

    def now(self) -> float:
        """The process time it was last stepped to (h)."""
        return self._t_h

    def step_to(self, t_h: float) -> float:
        """Move process time to ``t_h`` (h; an earlier time leaves it where it is); returns
        the process time now. Raises ValueError for a non-finite ``t_h``."""
        if not math.isfinite(t_h):
            raise ValueError(f"a stepped clock needs a finite time, got {t_h}")
        with self._lock:
            self._t_h = max(self._t_h, float(t_h))
            return self._t_h

    def sleep_until(self, t_h: float) -> float:
        """Step to ``t_h`` at once (nothing waits on a stepped clock); returns 0 s late."""
        self.step_to(t_h)
        return 0.0
