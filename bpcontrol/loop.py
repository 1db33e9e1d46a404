"""The real-time loop: measure, estimate, plan, supervise, actuate, record — on a clock.

Every measurement period (e.g. 1 min) the loop reads the plant, steps the estimator and
records both; every control period (e.g. 10 min) it also runs the controller in a worker
thread under a wall-time deadline, passes the plan through the supervisor (the only path to
the actuators) and applies the supervised setpoints. Every record goes to the historian.
The clock decides what a period is: a :class:`bpcontrol.clock.PacedClock` at 1x is live, an
accelerated or simulated one runs the same code for HIL and the default job.

Faults never stop the batch: a plant read or write that fails, a controller that raises,
hangs past its deadline or returns garbage, an unhealthy estimate — each becomes an event
and, for the controller, a switch to FALLBACK within that control step.

Operator writes (mode, setpoints, limits) may come from other threads (the live API): they
are queued with :meth:`ControlLoop.submit_mode` and friends, carried out at the next tick
through the supervisor, and answered with the :class:`AuditRecord` through a Future.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bpcontrol.adapters import LoopEstimator, plan_record
from bpcontrol.interfaces import Clock, Controller, Historian, Plant
from bpcontrol.nmpc import Plan, StateEstimate
from bpcontrol.recipe import Recipe
from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
)
from bpcontrol.supervisor import Mode, Supervisor, SupervisorState
from estimators import Reading

__all__ = ["ControlLoop", "LoopSnapshot", "RunSummary"]


@dataclass(frozen=True)
class LoopSnapshot:
    """The loop's latest state, safe to read from another thread (the live API).

    ``applied`` are the setpoints the plant confirmed (input units).
    """

    t_h: float
    phase: str
    mode: Mode
    applied: Mapping[str, float]
    estimate: EstimateRecord | None
    plan: PlanRecord | None
    done: bool = False


@dataclass
class RunSummary:
    """What happened in one run (for KPIs and the report)."""

    t_end_h: float = 0.0
    wall_s: float = 0.0
    ticks: int = 0
    control_steps: int = 0
    plans_used: int = 0
    records: int = 0
    events: int = 0
    mode_steps: dict[str, int] = field(default_factory=dict)
    lateness_s: list[float] = field(default_factory=list)
    controller_time_s: list[float] = field(default_factory=list)

    def jitter(self) -> dict[str, float]:
        """Median, 99th percentile and maximum of the wake-up lateness (ms of wall time)."""
        if not self.lateness_s:
            return {"median_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        late = np.asarray(self.lateness_s) * 1e3
        return {
            "median_ms": float(np.median(late)),
            "p99_ms": float(np.percentile(late, 99)),
            "max_ms": float(late.max()),
        }


class _Call:
    """One controller call on a daemon thread (a hung call never blocks shutdown)."""

    def __init__(self, fn: Callable[[], Plan]) -> None:
        self.future: Future[Plan] = Future()
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Plan]) -> None:
        try:
            self.future.set_result(fn())
        except BaseException as exc:  # reported to the loop, never raised in the thread
            self.future.set_exception(exc)


class ControlLoop:
    """One reactor's loop over a recipe (see the module docstring).

    Args:
        recipe: periods, duration, phases and the fallback profiles.
        plant: where readings come from and setpoints go.
        estimator: the stateful estimator (started at the recipe's initial state).
        controller: the planner, or None to run the recipe only (FALLBACK throughout).
        supervisor: limits, rate clamps and modes; its config's fallback is the recipe's.
        historian: receives every record.
        clock: process time; its pace makes the run live or accelerated.
        controller_deadline_s: wall time a solve may take before the loop falls back.
        auto_resume_after: after the supervisor fell back by itself, return to AUTO once
            the controller (still solving in the shadow) gave this many usable plans in a
            row on a healthy estimate; ``None`` leaves the return to an operator. The return
            is requested as ``who="loop"`` with an audit record, and is bumpless.
        progress: called after every tick with the snapshot (for a progress bar).
    """

    def __init__(
        self,
        *,
        recipe: Recipe,
        plant: Plant,
        estimator: LoopEstimator,
        controller: Controller | None,
        supervisor: Supervisor,
        historian: Historian,
        clock: Clock,
        controller_deadline_s: float,
        auto_resume_after: int | None = None,
        progress: Callable[[LoopSnapshot], None] | None = None,
        t0_h: float = 0.0,
    ) -> None:
        if tuple(plant.input_names) != recipe.input_names:
            raise ValueError(
                f"plant inputs {tuple(plant.input_names)} differ from the recipe's "
                f"{recipe.input_names}"
            )
        if not (math.isfinite(controller_deadline_s) and controller_deadline_s > 0):
            raise ValueError(f"controller_deadline_s must be > 0, got {controller_deadline_s}")
        self.recipe = recipe
        self.plant = plant
        self.estimator = estimator
        self.controller = controller
        self.supervisor = supervisor
        self.historian = historian
        self.clock = clock
        self.deadline_s = float(controller_deadline_s)
        if auto_resume_after is not None and auto_resume_after < 1:
            raise ValueError(f"auto_resume_after must be >= 1 or None, got {auto_resume_after}")
        self.auto_resume_after = auto_resume_after
        self._good_plans = 0
        self.progress = progress
        self.t0_h = float(t0_h)
        self.summary = RunSummary()
        self._commands: queue.SimpleQueue[tuple[Callable[..., Any], dict[str, Any], Future[Any]]]
        self._commands = queue.SimpleQueue()
        self._call: _Call | None = None
        mode = Mode.AUTO if controller is not None else Mode.FALLBACK
        self._sup: SupervisorState = supervisor.init(recipe.fallback(t0_h), t0_h, mode)
        self._applied = self._sup.u  # what the plant holds (confirmed)
        self._phase = ""
        self._last_estimate: EstimateRecord | None = None
        self._estimate: StateEstimate | None = None
        self._healthy_since_control = True
        self._snapshot = LoopSnapshot(
            self.t0_h, "", mode, self._named(self._applied), None, None, False
        )

    # ------------------------------------------------------------------ operator writes

    def submit_mode(self, mode: Mode | str, *, who: str, why: str) -> Future[AuditRecord]:
        """Queue a mode change; the Future gives the audit record after the next tick."""
        return self._submit(self.supervisor.request_mode, mode=mode, who=who, why=why)

    def submit_setpoint(
        self, name: str, value: float, *, who: str, why: str
    ) -> Future[AuditRecord]:
        """Queue an operator setpoint (MANUAL only); answered after the next tick."""
        return self._submit(
            self.supervisor.set_operator_setpoint, name=name, value=value, who=who, why=why
        )

    def submit_limits(
        self, name: str, *, lower: float, upper: float, rate_per_h: float, who: str, why: str
    ) -> Future[AuditRecord]:
        """Queue new limits for one input; answered after the next tick."""
        return self._submit(
            self.supervisor.set_limits,
            name=name,
            lower=lower,
            upper=upper,
            rate_per_h=rate_per_h,
            who=who,
            why=why,
        )

    def _submit(self, fn: Callable[..., Any], **kwargs: Any) -> Future[AuditRecord]:
        future: Future[AuditRecord] = Future()
        self._commands.put((fn, kwargs, future))
        return future

    def snapshot(self) -> LoopSnapshot:
        """The latest state (an immutable value; safe from any thread)."""
        return self._snapshot

    # ------------------------------------------------------------------ the loop

    def run(self, duration_h: float | None = None) -> RunSummary:
        """Run from ``t0_h`` to the batch end (or ``duration_h`` hours); return the summary."""
        recipe = self.recipe
        duration = recipe.duration_h if duration_h is None else float(duration_h)
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration_h must be > 0, got {duration}")
        n = round(duration / recipe.measurement_period_h)
        spc = recipe.steps_per_control
        wall0 = time.perf_counter()
        self._apply(self.t0_h, self._applied)
        try:
            for k in range(n + 1):
                t = self.t0_h + k * recipe.measurement_period_h
                if k > 0:
                    self.summary.lateness_s.append(self.clock.sleep_until(t))
                self._tick(t, control=(k % spc == 0 and k < n), last=(k == n))
        finally:
            self.summary.wall_s = time.perf_counter() - wall0
            self._snapshot = LoopSnapshot(
                self._snapshot.t_h,
                self._snapshot.phase,
                self._snapshot.mode,
                self._snapshot.applied,
                self._snapshot.estimate,
                self._snapshot.plan,
                True,
            )
        return self.summary

    def _tick(self, t: float, *, control: bool, last: bool) -> None:
        s = self.summary
        s.ticks += 1
        s.t_end_h = t
        readings = self._read(t)
        try:
            out = self.estimator.step(t, self._applied, readings)
        except Exception as exc:  # keep the last estimate, mark it unhealthy, go on
            self._healthy_since_control = False
            self._write(
                EventRecord(
                    t,
                    "estimator-failed",
                    f"the estimator failed ({type(exc).__name__}: {exc}); the controller "
                    "will not use its estimate until it recovers",
                    "loop",
                )
            )
        else:
            self._estimate = out.estimate
            self._last_estimate = out.record
            self._healthy_since_control &= out.healthy
            self._write(out.record)
            for e in out.events:
                self._write(e)
        self._run_commands(t)
        plan_rec: PlanRecord | None = self._snapshot.plan
        if control:
            self._phase_event(t)
            plan_rec = self._control(t)
        if last:
            self._write(
                EventRecord(t, "batch-end", f"batch ended at {t:.3f} h", "loop"),
            )
        s.mode_steps[self._sup.mode.value] = s.mode_steps.get(self._sup.mode.value, 0) + 1
        self._snapshot = LoopSnapshot(
            t,
            self._phase,
            self._sup.mode,
            self._named(self._applied),
            self._last_estimate,
            plan_rec,
            False,
        )
        if self.progress is not None:
            self.progress(self._snapshot)

    def _read(self, t: float) -> list[Reading]:
        try:
            readings = list(self.plant.read(t))
        except Exception as exc:  # a device fault must not stop the batch
            self._write(
                EventRecord(
                    t,
                    "plant-read-failed",
                    f"reading the plant failed ({type(exc).__name__}: {exc}); "
                    "estimating without measurements this step",
                    "loop",
                )
            )
            return []
        for r in readings:
            ts = t if r.t_sample is None else float(r.t_sample)
            value = float(r.value) if isinstance(r.value, (int, float)) else math.nan
            self._write(MeasurementRecord(t, r.sensor, value, ts if math.isfinite(ts) else t))
        return readings

    def _phase_event(self, t: float) -> None:
        phase = self.recipe.phase_at(t).name
        if phase != self._phase:
            self._write(EventRecord(t, "phase", f"phase {phase!r} begins at {t:.3f} h", "loop"))
            self._phase = phase

    def _control(self, t: float) -> PlanRecord | None:
        s = self.summary
        s.control_steps += 1
        plan, solve_time, record = self._plan(t)
        sup = self.supervisor
        self._sup, sp, events = sup.step(
            self._sup,
            t,
            plan_u=None if plan is None else plan.u_next,
            plan_ok=plan is not None and plan.status.usable,
            solve_time_s=solve_time,
            estimate_ok=self._healthy_since_control,
        )
        self._count_good_plan(t, plan, solve_time)
        self._healthy_since_control = True
        if sp.source == "nmpc":
            s.plans_used += 1
        self._write(sp)
        for e in events:
            self._write(e)
        self._apply(t, np.array([sp.values[n] for n in self.recipe.input_names]))
        return record

    def _count_good_plan(self, t: float, plan: Plan | None, solve_time: float | None) -> None:
        """Auto-resume: request AUTO after enough good shadow plans following a fallback."""
        good = plan is not None and not self.supervisor.plan_problems(
            plan.u_next, plan.status.usable, solve_time, self._healthy_since_control
        )
        self._good_plans = self._good_plans + 1 if good else 0
        n = self.auto_resume_after
        sup = self._sup
        if n is None or sup.mode is not Mode.FALLBACK or not sup.fallback_cause:
            return
        if self._good_plans >= n:
            why = f"controller healthy again: {n} usable plans in a row in the shadow"
            self._sup, audit, events = self.supervisor.request_mode(
                sup, Mode.AUTO, who="loop", why=why, t_h=t
            )
            self._write(audit)
            for e in events:
                self._write(e)
            self._good_plans = 0

    def _plan(self, t: float) -> tuple[Plan | None, float | None, PlanRecord | None]:
        """Run the controller under the deadline: (plan or None, solve time s, record)."""
        if self.controller is None or self._sup.mode not in (Mode.AUTO, Mode.FALLBACK):
            return None, None, None
        if self._call is not None and not self._call.future.done():
            busy = time.perf_counter() - self._call.started
            rec = PlanRecord(
                t, "busy", math.nan, message=f"previous solve still running after {busy:.1f} s"
            )
            self._write(rec)
            return None, busy, rec
        estimate = self._estimate
        if estimate is None:  # the estimator has not produced one yet
            rec = PlanRecord(t, "no-estimate", math.nan, message="no estimate yet")
            self._write(rec)
            return None, None, rec
        controller, u = self.controller, self._applied.copy()
        self._call = call = _Call(lambda: controller.plan(estimate, t, u))
        try:
            plan = call.future.result(timeout=self.deadline_s)
        except FutureTimeout:
            elapsed = time.perf_counter() - call.started
            rec = PlanRecord(
                t,
                "late",
                math.nan,
                message=f"no plan within the {self.deadline_s:g} s deadline ({elapsed:.2f} s)",
            )
            self._write(rec)
            return None, elapsed, rec
        except Exception as exc:
            elapsed = time.perf_counter() - call.started
            rec = PlanRecord(t, "raised", elapsed, message=f"{type(exc).__name__}: {exc}")
            self._write(rec)
            self.summary.controller_time_s.append(elapsed)
            return None, elapsed, rec
        elapsed = time.perf_counter() - call.started
        self.summary.controller_time_s.append(elapsed)
        if not isinstance(plan, Plan):
            rec = PlanRecord(t, "garbage", elapsed, message=f"controller returned {plan!r:.80}")
            self._write(rec)
            return None, elapsed, rec
        try:
            rec = plan_record(self.estimator.model, plan)
        except (ValueError, TypeError, IndexError) as exc:
            rec = PlanRecord(t, "garbage", elapsed, message=f"unreadable plan: {exc}")
            self._write(rec)
            return None, elapsed, rec
        self._write(rec)
        return plan, elapsed, rec

    def _apply(self, t: float, u: np.ndarray) -> None:
        names = self.recipe.input_names
        asked = self._named(u)
        try:
            confirmed = self.plant.apply(t, asked)
            held = np.array([float(confirmed[n]) for n in names])
        except Exception as exc:  # the device keeps what it held
            self._write(
                EventRecord(
                    t,
                    "setpoint-write-failed",
                    f"applying setpoints failed ({type(exc).__name__}: {exc}); the plant "
                    f"keeps {self._named(self._applied)}",
                    "loop",
                )
            )
            return
        if not np.allclose(held, u, rtol=1e-9, atol=1e-12):
            self._write(
                EventRecord(
                    t,
                    "setpoint-not-held",
                    f"the plant holds {self._named(held)} instead of {asked}",
                    "loop",
                )
            )
        self._applied = held

    def _run_commands(self, t: float) -> None:
        while True:
            try:
                fn, kwargs, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._sup, audit, events = fn(self._sup, t_h=t, **kwargs)
            except Exception as exc:  # a malformed command is refused, never fatal
                audit = AuditRecord(
                    t,
                    str(kwargs.get("who", "")),
                    str(kwargs.get("why", "")),
                    getattr(fn, "__name__", "command"),
                    False,
                    f"{type(exc).__name__}: {exc}",
                )
                events = []
            self._write(audit)
            for e in events:
                self._write(e)
            future.set_result(audit)

    def _write(self, record: Record) -> None:
        self.summary.records += 1
        if isinstance(record, EventRecord):
            self.summary.events += 1
        self.historian.write(record)

    def _named(self, u: np.ndarray) -> dict[str, float]:
        return dict(zip(self.recipe.input_names, map(float, u), strict=True))
