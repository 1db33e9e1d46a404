"""The real-time loop: measure, estimate, plan, supervise, actuate, record — on a clock.

Every measurement period (e.g. 1 min) the loop reads the plant, steps the estimator and
records both; every control period (e.g. 10 min) it also runs the controller in a worker
thread under a wall-time deadline, passes the plan through the supervisor (the only path to
the actuators) and applies the supervised setpoints. Every record goes to the historian,
stamped with the run's identity (:class:`bpcontrol.records.RunIdentity`) when the loop has
one. The clock decides what a period is: a :class:`bpcontrol.clock.PacedClock` at 1x is
live, an accelerated or simulated one runs the same code for HIL and the default job.

One tick writes, in this order: the measurements (or a ``plant-read-failed`` event), the
estimate and the estimator's events (or an ``estimator-failed`` event), the audits and
events of the operator commands carried out; on a control tick, a ``phase`` event when a
recipe phase begins, the plan record, the setpoint record, the supervisor's audits and
events, and a ``setpoint-write-failed`` or ``setpoint-not-held`` event when the plant did
not confirm; on the last tick, a ``batch-end`` event.

Faults never stop the batch: a plant read or write that fails, a controller that raises,
hangs past its deadline or returns garbage, an unhealthy estimate — each becomes an event
and, for the controller, a switch to FALLBACK within that control step; so does a lost
link to the device (:class:`bpcontrol.interfaces.PlantLinkLostError` from a read or write
since the last control step, cause ``plant link lost``). The return to AUTO is the
supervisor's rule (``SupervisorConfig.auto_resume_after``) or an operator's request.

A recipe phase whose ``auto`` is false ("recipe only") keeps the controller's hands off the
plant: the supervisor applies the recipe profile (source ``"recipe"``) while the controller
still plans in the shadow (so its warm start is ready); the next phase that allows it takes
over at the rate limits.

Operator commands (:mod:`bpcontrol.commands`) may come from other threads (the live API):
:meth:`ControlLoop.submit` queues one, the next tick carries it out through the supervisor,
and the Future gives the :class:`AuditRecord` (accepted or refused; a malformed command is
refused, never fatal). Modes, setpoints and limits are the supervisor's; alarms are the
loop's own (:mod:`bpcontrol.alarms`): every event of an alarm kind it writes raises one,
and :class:`bpcontrol.commands.AcknowledgeAlarm` acknowledges it. A command submitted after
the run ended (or still queued when it ended) is carried out at once, at the last tick's
time: an acknowledgement is carried out (the last alarms still need one), the other
commands are refused (nothing is driven any more).

:meth:`ControlLoop.snapshot` is the public read of the loop's state for other threads:
mode, limits and operator setpoints in force, the last supervised setpoints with their
source, the plan, the estimate and the alarms. It is refreshed after every tick and after
every command carried out (before the command's Future is answered), so a caller that got
an answer reads a snapshot that already shows it.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

import numpy as np

from bpcontrol.adapters import plan_record
from bpcontrol.alarms import AlarmBook
from bpcontrol.commands import (
    AcknowledgeAlarm,
    Command,
    SetLimits,
    SetMode,
    SetSetpoint,
    SupervisorCommand,
    describe,
)
from bpcontrol.interfaces import (
    Clock,
    Controller,
    Estimator,
    Historian,
    InputLimitsAware,
    Plant,
    PlantLinkLostError,
)
from bpcontrol.nmpc import Plan, StateEstimate
from bpcontrol.recipe import Recipe
from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventKind,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    PlanStatus,
    Record,
    RunIdentity,
    SetpointRecord,
    SetpointSource,
    storable_text,
)
from bpcontrol.supervisor import (
    CommandOutcome,
    Mode,
    SetpointLimits,
    Supervisor,
    SupervisorState,
)
from estimators import Reading

__all__ = ["ControlLoop", "LoopSnapshot", "RunSummary"]

_R = TypeVar("_R", bound=Record)

_LOOP = "loop"
"""``source`` of the loop's own events."""


@dataclass(frozen=True)
class LoopSnapshot:
    """The loop's latest state, safe to read from another thread (the live API).

    Attributes:
        t_h: process time (h) of the last tick.
        phase: the recipe phase of the last control step ("" before the first).
        mode: the supervisor's mode in force.
        applied: the setpoints the plant confirmed, per input (input units).
        estimate: the last estimate (None before the first).
        plan: the last control step's plan record (None before the first).
        done: whether the run has ended.
        run: the run's identity (None when the loop has none).
        limits: the supervisor's limits in force per input (input units; changed by
            :class:`bpcontrol.commands.SetLimits`).
        operator: the operator setpoints per input, applied in MANUAL (input units).
        setpoint: the last supervised setpoints with their source (``"nmpc"``,
            ``"operator"``, ...) and the clamped inputs (None before the first control
            step).
        alarms: the loop's alarms and who acknowledged them (:mod:`bpcontrol.alarms`).
    """

    t_h: float
    phase: str
    mode: Mode
    applied: Mapping[str, float]
    estimate: EstimateRecord | None
    plan: PlanRecord | None
    done: bool = False
    run: RunIdentity | None = None
    limits: Mapping[str, SetpointLimits] = field(default_factory=dict)
    operator: Mapping[str, float] = field(default_factory=dict)
    setpoint: SetpointRecord | None = None
    alarms: AlarmBook = field(default_factory=AlarmBook)


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
    plant_reads_failed: int = 0
    readings: int = 0
    stopped: str | None = None  # why the run ended before the batch end (None: it did not)

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


@dataclass(frozen=True)
class _PlanResult:
    """What one control step got from the controller, for the supervisor."""

    plan: Plan | None = None
    solve_time_s: float | None = None
    record: PlanRecord | None = None
    usable: bool = False


class ControlLoop:
    """One reactor's loop over a recipe (see the module docstring).

    Args:
        recipe: periods, duration, phases and the fallback profiles.
        plant: where readings come from and setpoints go.
        estimator: the stateful estimator (started at the recipe's initial state).
        controller: the planner, or None to run the recipe only (FALLBACK throughout).
        supervisor: limits, rate clamps, modes and auto-resume; its config's fallback is
            the recipe's.
        historian: receives every record.
        clock: process time; its pace makes the run live or accelerated.
        controller_deadline_s: wall time a solve may take before the loop falls back.
        auto_resume_after: kept for callers written before the rule moved into the
            supervisor: when given, the supervisor's ``config.auto_resume_after`` is set to
            it (ValueError when the config already says another number). Prefer
            :attr:`bpcontrol.supervisor.SupervisorConfig.auto_resume_after`.
        progress: called after every tick with the snapshot (for a progress bar).
        t0_h: process time (h) of the first tick.
        u0: the setpoints applied at the first tick (default: the recipe's at ``t0_h``; a
            resumed run's last applied ones, :mod:`bpcontrol.resume`).
        mode: the starting mode (default: AUTO with a controller, else FALLBACK).
        fallback_cause: starting in FALLBACK, the supervisor's own cause (it then returns to
            AUTO by its ``auto_resume_after`` rule); empty: an operator's FALLBACK.
        resumed: the loop continues a run that crashed (:mod:`bpcontrol.resume`): the
            recipe phase in force at ``t0_h`` has begun already (no ``phase`` event).
        identity: the run's identity; every record written is stamped with it (a record
            that already names a run keeps it).
    """

    def __init__(
        self,
        *,
        recipe: Recipe,
        plant: Plant,
        estimator: Estimator,
        controller: Controller | None,
        supervisor: Supervisor,
        historian: Historian,
        clock: Clock,
        controller_deadline_s: float,
        auto_resume_after: int | None = None,
        progress: Callable[[LoopSnapshot], None] | None = None,
        t0_h: float = 0.0,
        identity: RunIdentity | None = None,
        u0: np.ndarray | None = None,
        mode: Mode | None = None,
        fallback_cause: str = "",
        resumed: bool = False,
    ) -> None:
        if tuple(plant.input_names) != recipe.input_names:
            raise ValueError(
                f"plant inputs {tuple(plant.input_names)} differ from the recipe's "
                f"{recipe.input_names}"
            )
        if not (math.isfinite(controller_deadline_s) and controller_deadline_s > 0):
            raise ValueError(f"controller_deadline_s must be > 0, got {controller_deadline_s}")
        if identity is not None and not isinstance(identity, RunIdentity):
            raise TypeError(f"identity must be a RunIdentity or None, got {identity!r}")
        self.recipe = recipe
        self.plant = plant
        self.estimator = estimator
        self.controller = controller
        self.supervisor = _with_auto_resume(supervisor, auto_resume_after)
        self.historian = historian
        self.clock = clock
        self.deadline_s = float(controller_deadline_s)
        self.identity = identity
        self.progress = progress
        self.t0_h = float(t0_h)
        self.summary = RunSummary()
        self._commands: queue.SimpleQueue[tuple[object, Future[AuditRecord]]]
        self._commands = queue.SimpleQueue()
        self._command_lock = threading.Lock()  # the end of the run vs. a late submit
        self._finished = False  # the run ended: submit carries commands out at once
        self._alarms = AlarmBook()
        self._setpoint: SetpointRecord | None = None
        self._call: _Call | None = None
        self._limits_passed: dict[str, tuple[float, float]] | None = None
        self._stop_reason: str | None = None
        self._notes: queue.SimpleQueue[tuple[EventKind, str, str]] = queue.SimpleQueue()
        if mode is None:
            mode = Mode.AUTO if controller is not None else Mode.FALLBACK
        start = recipe.fallback(t0_h) if u0 is None else np.asarray(u0, dtype=float)
        self._sup: SupervisorState = self.supervisor.init(start, t0_h, mode)
        if fallback_cause and mode is Mode.FALLBACK:  # the supervisor's: it may return
            self._sup = replace(self._sup, fallback_cause=fallback_cause)
        self._applied = self._sup.u  # what the plant holds (confirmed)
        self._phase = recipe.phase_at(t0_h).name if resumed else ""
        self._last_estimate: EstimateRecord | None = None
        self._estimate: StateEstimate | None = None
        self._healthy_since_control = True
        self._link_lost_since_control = False  # a PlantLinkLostError since the last control step
        self._snapshot = self._make_snapshot(self.t0_h, None)

    @property
    def auto_resume_after(self) -> int | None:
        """Usable shadow plans in a row before the supervisor returns to AUTO (its config)."""
        return self.supervisor.config.auto_resume_after

    # ------------------------------------------------------------------ operator commands

    def submit(self, command: Command) -> Future[AuditRecord]:
        """Queue an operator command; the Future gives its audit record after the next tick.

        Safe from any thread. Whatever is submitted is answered: a malformed command (an
        unknown mode, a value that is no number, no ``who``) is refused with a reason.
        After the run ended the command is carried out at once, in the caller's thread
        (see the module docstring).
        """
        future: Future[AuditRecord] = Future()
        with self._command_lock:
            if not self._finished:
                self._commands.put((command, future))
                return future
            self._carry_out(self.summary.t_end_h, command, future, ended=True)
        return future

    def submit_ack(
        self, alarm_id: int, *, who: str, why: str, wall_utc: str = ""
    ) -> Future[AuditRecord]:
        """:meth:`submit` an :class:`AcknowledgeAlarm`."""
        return self.submit(AcknowledgeAlarm(alarm_id, who, why, wall_utc))

    def submit_mode(self, mode: Mode | str, *, who: str, why: str) -> Future[AuditRecord]:
        """:meth:`submit` a :class:`SetMode`."""
        return self.submit(SetMode(mode, who, why))

    def submit_setpoint(
        self, name: str, value: float, *, who: str, why: str
    ) -> Future[AuditRecord]:
        """:meth:`submit` a :class:`SetSetpoint` (applies in MANUAL only)."""
        return self.submit(SetSetpoint(name, value, who, why))

    def submit_limits(
        self, name: str, *, lower: float, upper: float, rate_per_h: float, who: str, why: str
    ) -> Future[AuditRecord]:
        """:meth:`submit` a :class:`SetLimits`."""
        return self.submit(SetLimits(name, lower, upper, rate_per_h, who, why))

    def request_stop(self, reason: str) -> None:
        """Stop the run before its next tick (safe from any thread and from a signal
        handler); the first reason wins. A paced clock's wait is cut short."""
        if self._stop_reason is None:
            self._stop_reason = str(reason)
        interrupt = getattr(self.clock, "interrupt", None)
        if callable(interrupt):
            interrupt()

    def note(self, kind: EventKind, message: str, source: str) -> None:
        """Record an event from outside the loop (safe from any thread): it is written at
        the next tick, stamped with that tick's time and the run's identity."""
        self._notes.put((EventKind(kind), str(message), str(source)))

    def _write_notes(self, t: float) -> None:
        while True:
            try:
                kind, message, source = self._notes.get_nowait()
            except queue.Empty:
                return
            self._write(EventRecord(t, kind, message, source))

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
                if k > 0 and self._stop_reason is None:
                    self.summary.lateness_s.append(self.clock.sleep_until(t))
                if self._stop_reason is not None:
                    self._stopped(k)
                    break
                self._tick(t, control=(k % spc == 0 and k < n), last=(k == n))
        finally:
            self._write_notes(self.summary.t_end_h)
            self.summary.wall_s = time.perf_counter() - wall0
            with self._command_lock:  # from now on submit carries commands out itself
                self._finished = True
                self._snapshot = replace(self._snapshot, done=True)
                self._drain_commands(self.summary.t_end_h, ended=True)
        return self.summary

    def _stopped(self, k: int) -> None:
        """Record why the run ends early (after tick ``k - 1``, at ``summary.t_end_h``)."""
        reason = self._stop_reason or "stopped"
        self.summary.stopped = reason
        t = self.summary.t_end_h if k > 0 else self.t0_h
        self._write(EventRecord(t, EventKind.STOPPED, f"run stopped at {t:.3f} h: {reason}", _LOOP))

    def _tick(self, t: float, *, control: bool, last: bool) -> None:
        s = self.summary
        s.ticks += 1
        s.t_end_h = t
        self._write_notes(t)
        readings = self._read(t)
        self._interlocks(t, readings)
        try:
            out = self.estimator.step(t, self._applied, readings)
        except Exception as exc:  # keep the last estimate, mark it unhealthy, go on
            self._healthy_since_control = False
            self._write(
                EventRecord(
                    t,
                    EventKind.ESTIMATOR_FAILED,
                    f"the estimator failed ({type(exc).__name__}: {exc}); the controller "
                    "will not use its estimate until it recovers",
                    _LOOP,
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
            self._write(EventRecord(t, EventKind.BATCH_END, f"batch ended at {t:.3f} h", _LOOP))
        s.mode_steps[self._sup.mode.value] = s.mode_steps.get(self._sup.mode.value, 0) + 1
        self._snapshot = self._make_snapshot(t, plan_rec)
        if self.progress is not None:
            self.progress(self._snapshot)

    def _read(self, t: float) -> list[Reading]:
        try:
            readings = list(self.plant.read(t))
        except Exception as exc:  # a device fault must not stop the batch
            self.summary.plant_reads_failed += 1
            self._link_lost_since_control |= isinstance(exc, PlantLinkLostError)
            self._write(
                EventRecord(
                    t,
                    EventKind.PLANT_READ_FAILED,
                    f"reading the plant failed ({type(exc).__name__}: {exc}); "
                    "estimating without measurements this step",
                    _LOOP,
                )
            )
            return []
        self.summary.readings += len(readings)
        for r in readings:
            ts = t if r.t_sample is None else float(r.t_sample)
            value = float(r.value) if isinstance(r.value, (int, float)) else math.nan
            self._write(MeasurementRecord(t, r.sensor, value, ts if math.isfinite(ts) else t))
        return readings

    def _interlocks(self, t: float, readings: list[Reading]) -> None:
        """Let the supervisor's interlocks see this tick's raw readings; apply a trip now."""
        if not self.supervisor.config.interlocks or not readings:
            return
        latest: dict[str, float] = {}
        for r in readings:
            if isinstance(r.value, (int, float)):
                latest[r.sensor] = float(r.value)
        record, events, self._sup = self.supervisor.watch(self._sup, t, latest)
        for e in events:
            self._write(e)
        if record is not None:
            self._setpoint = self._write(record)
            self._apply(t, np.array([record.values[n] for n in self.recipe.input_names]))

    def _controller_allowed(self, t: float) -> bool:
        """Whether the recipe phase at ``t`` (h) lets the controller act (``Phase.auto``)."""
        return bool(getattr(self.recipe.phase_at(t), "auto", True))

    def _phase_event(self, t: float) -> None:
        phase = self.recipe.phase_at(t).name
        if phase != self._phase:
            note = (
                "" if self._controller_allowed(t) else " (recipe only: the controller may not act)"
            )
            self._write(
                EventRecord(t, EventKind.PHASE, f"phase {phase!r} begins at {t:.3f} h{note}", _LOOP)
            )
            self._phase = phase

    def _control(self, t: float) -> PlanRecord | None:
        s = self.summary
        s.control_steps += 1
        got = self._plan(t)
        out, self._sup = self.supervisor.step(
            self._sup,
            t,
            plan_u=None if got.plan is None else got.plan.u_next,
            plan_ok=got.usable,
            solve_time_s=got.solve_time_s,
            estimate_ok=self._healthy_since_control,
            controller_allowed=self._controller_allowed(t),
            link_ok=not self._link_lost_since_control,
        )
        self._healthy_since_control = True
        self._link_lost_since_control = False
        sp = out.setpoint
        if sp.source is SetpointSource.NMPC:
            s.plans_used += 1
        self._setpoint = self._write(sp)
        for a in out.audits:
            self._write(a)
        for e in out.events:
            self._write(e)
        self._apply(t, np.array([sp.values[n] for n in self.recipe.input_names]))
        return got.record

    def _plan(self, t: float) -> _PlanResult:
        """Run the controller under the deadline (also in the shadow: FALLBACK, recipe phase)."""
        if self.controller is None or self._sup.mode not in (Mode.AUTO, Mode.FALLBACK):
            return _PlanResult()
        if self._call is not None and not self._call.future.done():
            busy = time.perf_counter() - self._call.started
            msg = f"previous solve still running after {busy:.1f} s"
            return _PlanResult(None, busy, self._write_plan(t, PlanStatus.BUSY, math.nan, msg))
        estimate = self._estimate
        if estimate is None:  # the estimator has not produced one yet
            rec = self._write_plan(t, PlanStatus.NO_ESTIMATE, math.nan, "no estimate yet")
            return _PlanResult(record=rec)
        controller, u = self.controller, self._applied.copy()
        self._pass_limits(controller)
        self._call = call = _Call(lambda: controller.plan(estimate, t, u))
        try:
            plan = call.future.result(timeout=self.deadline_s)
        except FutureTimeout:
            elapsed = time.perf_counter() - call.started
            msg = f"no plan within the {self.deadline_s:g} s deadline ({elapsed:.2f} s)"
            return _PlanResult(None, elapsed, self._write_plan(t, PlanStatus.LATE, math.nan, msg))
        except Exception as exc:
            elapsed = time.perf_counter() - call.started
            self.summary.controller_time_s.append(elapsed)
            msg = f"{type(exc).__name__}: {exc}"
            return _PlanResult(None, elapsed, self._write_plan(t, PlanStatus.RAISED, elapsed, msg))
        elapsed = time.perf_counter() - call.started
        self.summary.controller_time_s.append(elapsed)
        if not isinstance(plan, Plan):
            msg = f"controller returned {plan!r:.80}"
            return _PlanResult(None, elapsed, self._write_plan(t, PlanStatus.GARBAGE, elapsed, msg))
        try:
            rec = plan_record(self.estimator.model, plan)
        except Exception as exc:  # a Plan whose fields are not what they say
            msg = f"unreadable plan: {type(exc).__name__}: {exc}"
            return _PlanResult(None, elapsed, self._write_plan(t, PlanStatus.GARBAGE, elapsed, msg))
        self._write(rec)
        return _PlanResult(plan, elapsed, rec, rec.status.usable)

    def _pass_limits(self, controller: Controller) -> None:
        """Hand the supervisor's limits in force to a controller that plans inside them
        (:class:`InputLimitsAware`), when they changed since the last plan."""
        if not isinstance(controller, InputLimitsAware):
            return
        limits = {
            n: (lim.lower, lim.upper)
            for n, lim in zip(self.recipe.input_names, self._sup.limits, strict=True)
        }
        if limits != self._limits_passed:
            controller.set_input_limits(limits)
            self._limits_passed = limits

    def _write_plan(self, t: float, status: PlanStatus, solve_s: float, message: str) -> PlanRecord:
        """Record a control step without a usable plan from the controller."""
        rec = PlanRecord(t, status, solve_s, message=message)
        self._write(rec)
        return rec

    def _apply(self, t: float, u: np.ndarray) -> None:
        names = self.recipe.input_names
        asked = self._named(u)
        try:
            confirmed = self.plant.apply(t, asked)
            held = np.array([float(confirmed[n]) for n in names])
        except Exception as exc:  # the device keeps what it held
            self._link_lost_since_control |= isinstance(exc, PlantLinkLostError)
            self._write(
                EventRecord(
                    t,
                    EventKind.SETPOINT_WRITE_FAILED,
                    f"applying setpoints failed ({type(exc).__name__}: {exc}); the plant "
                    f"keeps {self._named(self._applied)}",
                    _LOOP,
                )
            )
            return
        if not np.allclose(held, u, rtol=1e-9, atol=1e-12):
            self._write(
                EventRecord(
                    t,
                    EventKind.SETPOINT_NOT_HELD,
                    f"the plant holds {self._named(held)} instead of {asked}",
                    _LOOP,
                )
            )
        self._applied = held

    def _run_commands(self, t: float) -> None:
        self._drain_commands(t, ended=False)

    def _drain_commands(self, t: float, *, ended: bool) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            self._carry_out(t, command, future, ended=ended)

    def _carry_out(
        self, t: float, command: object, future: Future[AuditRecord], *, ended: bool
    ) -> None:
        """Carry out one command at ``t`` (h), record its audit and events, refresh the
        snapshot, then answer ``future`` (``ended``: the run is over, see the module)."""
        try:
            if isinstance(command, AcknowledgeAlarm):
                audit, self._alarms = self._alarms.acknowledge(command, t_h=t)
                outcome = CommandOutcome(audit)
            elif ended:
                reason = f"the run has ended (at {t:.3f} h); nothing was changed"
                outcome = CommandOutcome(self._refused(t, command, reason))
            else:
                outcome, self._sup = self.supervisor.command(
                    self._sup, cast(SupervisorCommand, command), t_h=t
                )
        except Exception as exc:  # a fault in carrying it out: refused, never fatal
            outcome = CommandOutcome(self._refused(t, command, f"{type(exc).__name__}: {exc}"))
        audit = self._stamped(outcome.audit)
        try:
            self._write(audit)
            for e in outcome.events:
                self._write(e)
        except Exception:
            if not ended:  # during the run a failing historian is the run's problem
                raise
            # after the run the historian may be closed; the submitter still gets the audit
        self._snapshot = replace(
            self._snapshot,
            mode=self._sup.mode,
            limits=self._limits_now(),
            operator=self._named(np.array(self._sup.operator, dtype=float)),
            alarms=self._alarms,
        )
        # the submitter may have cancelled it; the audit is written all the same
        with contextlib.suppress(InvalidStateError):
            future.set_result(audit)

    def _make_snapshot(self, t: float, plan: PlanRecord | None) -> LoopSnapshot:
        """The snapshot of the state now, at tick time ``t`` (h)."""
        sup = self._sup
        return LoopSnapshot(
            t,
            self._phase,
            sup.mode,
            self._named(self._applied),
            self._last_estimate,
            plan,
            False,
            self.identity,
            limits=self._limits_now(),
            operator=self._named(np.array(sup.operator, dtype=float)),
            setpoint=self._setpoint,
            alarms=self._alarms,
        )

    def _limits_now(self) -> dict[str, SetpointLimits]:
        return dict(zip(self.recipe.input_names, self._sup.limits, strict=True))

    def _refused(self, t: float, command: object, reason: str) -> AuditRecord:
        """The audit of a command refused by the loop itself (its handling raised, or the
        run has ended), built without trusting the command."""

        def field_text(name: str) -> str:
            try:
                return storable_text(getattr(command, name, ""))
            except Exception:
                return ""

        return AuditRecord(
            t,
            field_text("who"),
            field_text("why"),
            storable_text(describe(command, self._sup.mode)),
            False,
            storable_text(reason),
        )

    def _stamped(self, record: _R) -> _R:
        """``record`` with the run's identity (a record that names a run keeps it)."""
        if self.identity is not None and record.run is None:
            return replace(record, run=self.identity)
        return record

    def _write(self, record: _R) -> _R:
        """Stamp ``record`` with the run's identity, raise an alarm for an alarm event, hand
        it to the historian, return it."""
        record = self._stamped(record)
        self.summary.records += 1
        if isinstance(record, EventRecord):
            self.summary.events += 1
            alarms = self._alarms.raised(record)
            if alarms is not self._alarms:
                self._alarms = alarms
                self._snapshot = replace(self._snapshot, alarms=alarms)
        self.historian.write(record)
        return record

    def _named(self, u: np.ndarray) -> dict[str, float]:
        return dict(zip(self.recipe.input_names, map(float, u), strict=True))


def _with_auto_resume(supervisor: Supervisor, n: int | None) -> Supervisor:
    """``supervisor``, with ``config.auto_resume_after = n`` when ``n`` is given."""
    if n is None:
        return supervisor
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"auto_resume_after must be >= 1 or None, got {n}")
    configured = supervisor.config.auto_resume_after
    if configured == n:
        return supervisor
    if configured is not None:
        raise ValueError(
            f"auto_resume_after={n} differs from the supervisor's config ({configured}); "
            "set it in SupervisorConfig only"
        )
    return Supervisor(replace(supervisor.config, auto_resume_after=n))
