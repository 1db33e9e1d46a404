"""The controller process crash and restart fault: the loop dies mid-tick, the plant runs on
with what it held, and a new loop resumes from the historian's last state.

:class:`CrashingPlant` raises :class:`ControllerCrash` (a ``BaseException``, so none of the
loop's ``except Exception`` survival paths catch it: it ends ``ControlLoop.run`` as a
killed process would, in the middle of its tick, before that tick's records) at the
first read at or after ``at_h``. :func:`hil.runner.run_batch` then lets the plant run
``down_h`` hours with the setpoints it held (the records it sampled meanwhile are read by
the new loop as late samples, nothing lost), reads the run's records back from its
historian file, and builds a new loop with :func:`bpcontrol.resume.resume_point` of
them (:func:`bpcontrol.assembly.build_loop` ``resume=``): the estimate, its covariance,
the applied setpoints and the mode carry over, the supervisor's rate limits move on from
the applied values (bumpless). The historian is the same store across the crash (the
run's file in a separate writer, as a site historian is a separate service).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bpcontrol.interfaces import Plant
from bpcontrol.loop import RunSummary
from estimators import Reading

__all__ = ["ControllerCrash", "CrashingPlant", "merge_summaries"]


class ControllerCrash(BaseException):
    """The injected crash of the controller process (at process time ``t_h``)."""

    def __init__(self, t_h: float) -> None:
        super().__init__(f"controller process crashed at {t_h:.3f} h (HIL fault)")
        self.t_h = t_h


@dataclass
class CrashingPlant:
    """``inner``, whose first read at or after ``at_h`` (h) kills the loop that called it;
    every other call passes through (a restarted loop reads on)."""

    inner: Plant
    at_h: float
    crashed_at_h: float = field(default=math.nan)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The wrapped plant's inputs."""
        return tuple(self.inner.input_names)

    def read(self, t_h: float) -> Sequence[Reading]:
        """The wrapped readings; raises :class:`ControllerCrash` once, at ``at_h``."""
        if math.isnan(self.crashed_at_h) and t_h >= self.at_h - 1e-9:
            self.crashed_at_h = t_h
            raise ControllerCrash(t_h)
        return self.inner.read(t_h)

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Pass through."""
        return self.inner.apply(t_h, setpoints)

    def __getattr__(self, name: str) -> object:  # period_h, close, ... of the inner plant
        return getattr(self.inner, name)


def merge_summaries(before: RunSummary, after: RunSummary) -> RunSummary:
    """One summary of a run that restarted: the counts added, the lists joined."""
    modes = dict(before.mode_steps)
    for mode, n in after.mode_steps.items():
        modes[mode] = modes.get(mode, 0) + n
    return RunSummary(
        t_end_h=after.t_end_h,
        wall_s=before.wall_s + after.wall_s,
        ticks=before.ticks + after.ticks,
        control_steps=before.control_steps + after.control_steps,
        plans_used=before.plans_used + after.plans_used,
        records=before.records + after.records,
        events=before.events + after.events,
        mode_steps=modes,
        lateness_s=[*before.lateness_s, *after.lateness_s],
        controller_time_s=[*before.controller_time_s, *after.controller_time_s],
        plant_reads_failed=before.plant_reads_failed + after.plant_reads_failed,
        readings=before.readings + after.readings,
        stopped=after.stopped,
    )
