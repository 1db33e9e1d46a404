"""ControlLoop tick by tick, with in-process fakes on a simulated clock.

No integrator and no solver: the plant returns fixed readings (or fails), the estimator
returns a fixed estimate (or fails), the controller returns a fixed plan (or raises, hangs
past the deadline, returns garbage or NaN), the historian is a list and the clock jumps.
Each test drives one branch of a tick and checks the records written (types, kinds,
statuses, sources, order) and what the plant was asked to hold.

Times are binary fractions (7.5 min measurements, 15 min control) so that they compare
exactly.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from bpcontrol.commands import SetLimits, SetMode, SetSetpoint
from bpcontrol.interfaces import (
    Clock,
    Controller,
    Estimator,
    EstimatorOutput,
    Historian,
    Plant,
    PlantError,
)
from bpcontrol.loop import ControlLoop, LoopSnapshot
from bpcontrol.nmpc import Plan, SolveStatus, StateEstimate
from bpcontrol.recipe import Phase, Recipe
from bpcontrol.records import (
    USABLE_PLAN_STATUSES,
    AuditRecord,
    EstimateRecord,
    EventKind,
    EventRecord,
    MeasurementRecord,
    Mode,
    PlanRecord,
    PlanStatus,
    Record,
    RunIdentity,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.supervisor import SetpointLimits, Supervisor, SupervisorConfig
from estimators import Reading

INPUTS = ("F", "T")
MEAS_H = 0.125  # h between ticks
CONTROL_H = 0.25  # h between control steps
DURATION_H = 1.0  # 9 ticks (0 ... 1 h), control at 0, 0.25, 0.5, 0.75
U_PLAN = (0.3, 32.0)  # what the fake controller plans (L/h, degC)
BATCH = {"F": 0.1, "T": 30.0}  # the recipe's first phase
FED = {"F": 0.2, "T": 30.0}  # its second phase, from 0.5 h
CONTROL_TIMES = (0.0, 0.25, 0.5, 0.75)


# ------------------------------------------------------------------------------ fakes


class FakeModel:
    """What the loop reads of a model: state and input names (for plan records)."""

    state_names = ("X",)
    input_names = INPUTS


class FakePlant:
    """Fixed readings; may fail to read or write at given times, or hold other values."""

    input_names = INPUTS

    def __init__(
        self,
        *,
        fail_read_at: Iterable[float] = (),
        fail_apply_at: Iterable[float] = (),
        holds: Mapping[str, float] | None = None,
    ) -> None:
        self.fail_read_at = set(fail_read_at)
        self.fail_apply_at = set(fail_apply_at)
        self.holds = dict(holds or {})
        self.asked: list[tuple[float, dict[str, float]]] = []  # every apply, in order

    def read(self, t_h: float) -> Sequence[Reading]:
        if t_h in self.fail_read_at:
            raise PlantError(f"gateway timeout at {t_h} h")
        return [Reading("y", 1.0), Reading("X_off", 2.0, t_sample=t_h - 0.5)]

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        self.asked.append((t_h, dict(setpoints)))
        if t_h in self.fail_apply_at:
            raise PlantError(f"write not confirmed at {t_h} h")
        return {**setpoints, **self.holds}

    def asked_at(self, t_h: float) -> dict[str, float]:
        (values,) = [v for t, v in self.asked if t == t_h]
        return values


class FakeEstimator:
    """A fixed estimate; may fail at given times or report filter events."""

    def __init__(
        self,
        *,
        fail_at: Iterable[float] = (),
        filter_events: Mapping[float, Sequence[str]] | None = None,
    ) -> None:
        self.model: Any = FakeModel()
        self.fail_at = set(fail_at)
        self.filter_events = dict(filter_events or {})
        self.calls: list[tuple[float, tuple[float, ...], list[Reading]]] = []

    def step(self, t_h: float, u: np.ndarray, readings: Iterable[Reading]) -> EstimatorOutput:
        self.calls.append((t_h, tuple(float(v) for v in u), list(readings)))
        if t_h in self.fail_at:
            raise FloatingPointError("injected estimator fault")
        events = tuple(
            EventRecord(t_h, EventKind.of_filter_event(k), f"{k} event", "estimator")
            for k in self.filter_events.get(t_h, ())
        )
        record = EstimateRecord(t_h, {"X": 1.0}, {"X": 0.1})
        estimate = StateEstimate(np.array([1.0]), np.array([0.5]))
        return EstimatorOutput(record, events, estimate, True)


def make_plan(t_h: float, u: Sequence[float] = U_PLAN, **kw: Any) -> Plan:
    u_next = np.array(u, dtype=float)
    fields: dict[str, Any] = {
        "t": t_h,
        "u_next": u_next,
        "U": u_next[None, :],
        "X": np.array([[1.0], [1.1]]),
        "t_nodes": np.array([t_h, t_h + CONTROL_H]),
        "status": SolveStatus.SOLVED,
        "iterations": 3,
        "solve_time_s": 0.001,
        "cost": -1.0,
        "slack_max": 0.0,
        "message": "Optimal Solution Found.",
    }
    return Plan(**(fields | kw))


class FakeController:
    """A fixed plan; ``behaviour(t_h)`` names a fault for a call: ``"ok"``, ``"raise"``,
    ``"hang"`` (blocks until :meth:`release`), ``"garbage"``, ``"nan"``, ``"failed"``,
    ``"unreadable"`` (a Plan whose status is not a SolveStatus)."""

    def __init__(self, behaviour: Callable[[float], str] = lambda t: "ok") -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[float, tuple[float, ...]]] = []
        self._release = threading.Event()
        self.returned = threading.Event()

    def release(self) -> None:
        self._release.set()

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        self.calls.append((t_h, tuple(float(v) for v in u_applied)))
        kind = self.behaviour(t_h)
        if kind == "raise":
            raise RuntimeError("solver crashed")
        if kind == "hang":
            self._release.wait(timeout=30.0)
            self.returned.set()
        if kind == "garbage":
            return "not a plan"  # type: ignore[return-value]
        if kind == "nan":
            return make_plan(t_h, (math.nan, 32.0))
        if kind == "failed":
            return make_plan(t_h, status=SolveStatus.FAILED, message="Restoration failed")
        if kind == "unreadable":
            return make_plan(t_h, status="solved")
        return make_plan(t_h)


class ListHistorian:
    """Keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def flush(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


class JumpClock:
    """A simulated clock; ``hooks[t]`` runs when the loop waits for ``t`` (h)."""

    def __init__(self, hooks: Mapping[float, Callable[[], None]] | None = None) -> None:
        self.t = 0.0
        self.hooks = dict(hooks or {})

    def now(self) -> float:
        return self.t

    def sleep_until(self, t_h: float) -> float:
        self.t = max(self.t, t_h)
        if t_h in self.hooks:
            self.hooks[t_h]()
        return 0.0


# ------------------------------------------------------------------------------ helpers


def phase(name: str, start_h: float, values: Mapping[str, float], *, auto: bool = True) -> Phase:
    """A recipe phase holding ``values``; ``auto=False`` forbids the controller."""
    p = Phase(name, start_h, MappingProxyType(dict(values)))
    if auto:
        return p
    if "auto" in {f.name for f in dataclasses.fields(Phase)}:
        return dataclasses.replace(p, auto=False)  # type: ignore[call-arg]
    return _RecipeOnlyPhase(name, start_h, MappingProxyType(dict(values)))


@dataclasses.dataclass(frozen=True)
class _RecipeOnlyPhase(Phase):
    """Stand-in while ``recipe.Phase`` has no ``auto`` field (the loop reads it by name)."""

    auto: bool = False


def make_recipe(*, f_rate_per_h: float = 100.0, first_auto: bool = True) -> Recipe:
    limits = {
        "F": SetpointLimits(0.0, 1.0, f_rate_per_h),  # L/h, L/h per h
        "T": SetpointLimits(20.0, 40.0, 100.0),  # degC, degC per h
    }
    return Recipe(
        name="test",
        model="fake",
        input_names=INPUTS,
        duration_h=DURATION_H,
        measurement_period_h=MEAS_H,
        control_period_h=CONTROL_H,
        initial=MappingProxyType({}),
        limits=MappingProxyType(limits),
        phases=(phase("batch", 0.0, BATCH, auto=first_auto), phase("fed", 0.5, FED)),
    )


def make_loop(
    *,
    plant: FakePlant | None = None,
    estimator: FakeEstimator | None = None,
    controller: FakeController | str | None = "default",
    recipe: Recipe | None = None,
    clock: JumpClock | None = None,
    deadline_s: float = 5.0,
    auto_resume_after: int | None = None,
    identity: RunIdentity | None = None,
    progress: Callable[[LoopSnapshot], None] | None = None,
) -> tuple[ControlLoop, ListHistorian, FakePlant]:
    recipe = recipe or make_recipe()
    plant = plant or FakePlant()
    historian = ListHistorian()
    config = SupervisorConfig(
        INPUTS, recipe.limits, recipe.fallback, deadline_s, auto_resume_after=auto_resume_after
    )
    loop = ControlLoop(
        recipe=recipe,
        plant=plant,
        estimator=estimator or FakeEstimator(),
        controller=FakeController() if controller == "default" else controller,  # type: ignore[arg-type]
        supervisor=Supervisor(config),
        historian=historian,
        clock=clock or JumpClock(),
        controller_deadline_s=deadline_s,
        identity=identity,
        progress=progress,
    )
    return loop, historian, plant


def tag(r: Record) -> str:
    """A short name of a record for order checks: ``M``, ``E``, ``P:solved``, ``S:nmpc``,
    ``ev:fallback``, ``A+``/``A-`` (accepted/refused audit)."""
    if isinstance(r, MeasurementRecord):
        return "M"
    if isinstance(r, EstimateRecord):
        return "E"
    if isinstance(r, PlanRecord):
        return f"P:{r.status.value}"
    if isinstance(r, SetpointRecord):
        return f"S:{r.source.value}"
    if isinstance(r, EventRecord):
        return f"ev:{r.kind.value}"
    assert isinstance(r, AuditRecord)
    return "A+" if r.accepted else "A-"


def at(records: Sequence[Record], t_h: float) -> list[str]:
    return [tag(r) for r in records if r.t_h == t_h and not isinstance(r, MeasurementRecord)]


def of(records: Sequence[Record], kind: type) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


def event(records: Sequence[Record], kind: EventKind) -> EventRecord:
    (found,) = [r for r in records if isinstance(r, EventRecord) and r.kind is kind]
    return found


def vec(values: Mapping[str, float]) -> tuple[float, ...]:
    return tuple(values[n] for n in INPUTS)


# ------------------------------------------------------------------------------ ports


def test_the_fakes_implement_the_ports() -> None:
    _, historian, plant = make_loop()
    assert isinstance(plant, Plant) and isinstance(historian, Historian)
    assert isinstance(FakeEstimator(), Estimator) and isinstance(FakeController(), Controller)
    assert isinstance(JumpClock(), Clock)


def test_plan_statuses_include_every_solve_status_with_the_same_text() -> None:
    for s in SolveStatus:
        assert PlanStatus(s.value).usable is s.usable
    assert {s.value for s in SolveStatus if s.usable} == USABLE_PLAN_STATUSES
    assert "solved" in USABLE_PLAN_STATUSES and "late" not in USABLE_PLAN_STATUSES


# ------------------------------------------------------------------------------ good ticks


def test_a_good_run_writes_every_tick_in_order_and_applies_the_plans() -> None:
    loop, historian, plant = make_loop()
    summary = loop.run()
    records = historian.records
    measured = [r for r in records if isinstance(r, MeasurementRecord) and r.t_h == 0.125]
    assert [(m.sensor, m.value, m.t_sample_h) for m in measured] == [
        ("y", 1.0, 0.125),
        ("X_off", 2.0, -0.375),  # a late sample keeps its sampling time
    ]
    assert [tag(r) for r in records if r.t_h == 0.0] == [
        "M",
        "M",
        "E",
        "ev:phase",
        "P:solved",
        "S:nmpc",
    ]
    assert at(records, 0.125) == ["E"]
    assert at(records, 0.25) == ["E", "P:solved", "S:nmpc"]
    assert at(records, 0.5) == ["E", "ev:phase", "P:solved", "S:nmpc"]
    assert at(records, 1.0) == ["E", "ev:batch-end"]  # the last tick does not control
    assert [r.t_h for r in of(records, PlanRecord)] == list(CONTROL_TIMES)
    # the plant got the recipe before the first tick, then the plan at every control step
    # (at 0 h no time has passed: the rate limits keep the plan at the recipe's values)
    assert plant.asked[:2] == [(0.0, BATCH), (0.0, BATCH)]
    assert [t for t, _ in plant.asked] == [0.0, *CONTROL_TIMES]
    assert all(vec(v) == U_PLAN for _, v in plant.asked[2:])
    first = of(records, SetpointRecord)[0]
    assert first.source is SetpointSource.NMPC and first.clamped == ("F", "T")
    assert summary.ticks == 9 and summary.control_steps == 4 and summary.plans_used == 4
    assert summary.records == len(records) and summary.events == 3
    assert summary.mode_steps == {"auto": 9}
    snap = loop.snapshot()
    assert snap.done and snap.mode is Mode.AUTO and snap.phase == "fed"
    assert vec(snap.applied) == U_PLAN and snap.plan is not None and snap.run is None


def test_the_estimator_gets_what_the_plant_confirmed_and_the_readings() -> None:
    estimator = FakeEstimator()
    loop, _, _ = make_loop(estimator=estimator)
    loop.run()
    t, u, readings = estimator.calls[0]
    assert (t, u) == (0.0, vec(BATCH)) and [r.sensor for r in readings] == ["y", "X_off"]
    assert [(t, u) for t, u, _ in estimator.calls[2:4]] == [(0.25, vec(BATCH)), (0.375, U_PLAN)]


# ------------------------------------------------------------------------------ plant faults


def test_a_failed_read_is_an_event_and_the_estimator_steps_without_readings() -> None:
    estimator = FakeEstimator()
    loop, historian, _ = make_loop(plant=FakePlant(fail_read_at=[0.125]), estimator=estimator)
    summary = loop.run()
    assert [tag(r) for r in historian.records if r.t_h == 0.125] == ["ev:plant-read-failed", "E"]
    e = event(historian.records, EventKind.PLANT_READ_FAILED)
    assert e.source == "loop" and "gateway timeout" in e.message
    assert estimator.calls[1][0] == 0.125 and estimator.calls[1][2] == []
    assert summary.t_end_h == DURATION_H


def test_a_setpoint_the_plant_does_not_hold_is_an_event_and_the_loop_follows_the_device() -> None:
    estimator = FakeEstimator()
    loop, historian, plant = make_loop(plant=FakePlant(holds={"T": 31.0}), estimator=estimator)
    loop.run()
    records = historian.records
    # before the first tick (the recipe's 30 degC) and at every control step
    assert [r.t_h for r in records if tag(r) == "ev:setpoint-not-held"] == [0.0, *CONTROL_TIMES]
    assert at(records, 0.25) == ["E", "P:solved", "S:nmpc", "ev:setpoint-not-held"]
    (not_held,) = [r for r in records if tag(r) == "ev:setpoint-not-held" and r.t_h == 0.25]
    assert "holds {'F': 0.3, 'T': 31.0} instead of {'F': 0.3, 'T': 32.0}" in not_held.message
    assert plant.asked_at(0.25) == {"F": 0.3, "T": 32.0}  # asked the plan ...
    assert estimator.calls[-1][1] == (0.3, 31.0)  # ... and went on with what it holds
    assert loop.snapshot().applied == {"F": 0.3, "T": 31.0}


def test_a_failed_write_is_an_event_and_the_plant_keeps_its_values() -> None:
    estimator = FakeEstimator()
    plant = FakePlant(fail_apply_at=[0.25])
    loop, historian, plant = make_loop(plant=plant, estimator=estimator)
    loop.run(duration_h=0.5)
    records = historian.records
    assert at(records, 0.25) == ["E", "P:solved", "S:nmpc", "ev:setpoint-write-failed"]
    failed = event(records, EventKind.SETPOINT_WRITE_FAILED)
    assert "write not confirmed" in failed.message
    assert "the plant keeps {'F': 0.1, 'T': 30.0}" in failed.message
    assert plant.asked_at(0.25) == {"F": 0.3, "T": 32.0}
    assert estimator.calls[3][:2] == (0.375, vec(BATCH))  # the recipe's values still held


# ------------------------------------------------------------------------------ estimator


def test_an_estimator_failure_is_an_event_and_the_next_control_step_falls_back() -> None:
    loop, historian, plant = make_loop(estimator=FakeEstimator(fail_at=[0.125]))
    loop.run(duration_h=0.5)
    records = historian.records
    assert at(records, 0.125) == ["ev:estimator-failed"]
    failed = event(records, EventKind.ESTIMATOR_FAILED)
    assert "FloatingPointError: injected estimator fault" in failed.message
    assert at(records, 0.25) == ["E", "P:solved", "S:fallback", "ev:fallback"]
    assert "estimate unhealthy" in event(records, EventKind.FALLBACK).message
    assert plant.asked_at(0.25) == BATCH  # the recipe, not the plan
    assert loop.snapshot().mode is Mode.FALLBACK


def test_no_estimate_yet_is_a_plan_record_and_a_fallback() -> None:
    controller = FakeController()
    loop, historian, plant = make_loop(
        estimator=FakeEstimator(fail_at=[0.0]), controller=controller
    )
    loop.run(duration_h=0.25)
    assert at(historian.records, 0.0) == [
        "ev:estimator-failed",
        "ev:phase",
        "P:no-estimate",
        "S:fallback",
        "ev:fallback",
    ]
    assert controller.calls == []  # nothing to plan from
    assert plant.asked == [(0.0, BATCH), (0.0, BATCH)]


def test_filter_events_become_estimator_events_unknown_kinds_included() -> None:
    estimator = FakeEstimator(filter_events={0.125: ["gated", "late_fused", "sparkle"]})
    loop, historian, _ = make_loop(estimator=estimator)
    loop.run(duration_h=0.25)
    assert at(historian.records, 0.125) == [
        "E",
        "ev:estimator-gated",
        "ev:estimator-late_fused",
        "ev:estimator-other",
    ]


# ------------------------------------------------------------------------------ controller


@pytest.mark.parametrize(
    ("behaviour", "status", "cause"),
    [
        ("raise", PlanStatus.RAISED, "controller failed"),
        ("garbage", PlanStatus.GARBAGE, "no plan"),
        ("unreadable", PlanStatus.GARBAGE, "no plan"),
        ("nan", PlanStatus.SOLVED, "plan not finite for ['F']"),
        ("failed", PlanStatus.FAILED, "controller failed"),
    ],
)
def test_a_faulty_controller_falls_back_in_that_control_step(
    behaviour: str, status: PlanStatus, cause: str
) -> None:
    controller = FakeController(lambda t: behaviour if t == 0.25 else "ok")
    loop, historian, plant = make_loop(controller=controller)
    summary = loop.run()
    records = historian.records
    assert at(records, 0.25) == ["E", f"P:{status.value}", "S:fallback", "ev:fallback"]
    (plan,) = [r for r in of(records, PlanRecord) if r.t_h == 0.25]
    if behaviour == "raise":
        assert plan.message == "RuntimeError: solver crashed"
    if behaviour == "garbage":
        assert plan.message == "controller returned 'not a plan'"
    if behaviour == "unreadable":
        assert plan.message.startswith("unreadable plan: AttributeError")
    assert cause in event(records, EventKind.FALLBACK).message
    assert plant.asked_at(0.25) == BATCH
    # no auto-resume configured: FALLBACK to the end, the controller still asked (shadow)
    assert [tag(r) for r in of(records, SetpointRecord)][2:] == ["S:fallback"] * 2
    assert [t for t, _ in controller.calls] == list(CONTROL_TIMES)
    assert summary.plans_used == 1 and summary.t_end_h == DURATION_H


def test_a_hung_controller_is_late_then_busy_and_no_second_solve_starts() -> None:
    controller = FakeController(lambda t: "hang" if t == 0.25 else "ok")

    def release() -> None:  # while the loop waits for 0.625 h
        controller.release()
        assert controller.returned.wait(timeout=10.0)
        threading.Event().wait(0.05)  # let the worker thread hand over its result

    clock = JumpClock({0.625: release})
    loop, historian, plant = make_loop(controller=controller, clock=clock, deadline_s=0.2)
    loop.run()
    records = historian.records
    plans = {r.t_h: r for r in of(records, PlanRecord)}
    assert [plans[t].status for t in CONTROL_TIMES] == [
        PlanStatus.SOLVED,
        PlanStatus.LATE,
        PlanStatus.BUSY,
        PlanStatus.SOLVED,
    ]
    assert "no plan within the 0.2 s deadline" in plans[0.25].message
    assert math.isnan(plans[0.25].solve_time_s) and math.isnan(plans[0.5].solve_time_s)
    assert "previous solve still running" in plans[0.5].message
    assert at(records, 0.25) == ["E", "P:late", "S:fallback", "ev:fallback"]
    assert "controller late" in event(records, EventKind.FALLBACK).message
    assert [t for t, _ in controller.calls] == [0.0, 0.25, 0.75]  # none while busy
    assert plant.asked_at(0.5) == FED  # the recipe of the phase then


# ------------------------------------------------------------------------------ commands


def test_operator_commands_are_carried_out_at_the_next_tick_with_audit_text() -> None:
    answers: dict[str, Future[AuditRecord]] = {}
    controller = FakeController()

    def operator(snap: LoopSnapshot) -> None:  # plays the live API, between ticks
        if snap.t_h == 0.0:
            answers["manual"] = loop.submit(SetMode(Mode.MANUAL, "ana", "feed test"))
            answers["feed"] = loop.submit(SetSetpoint("F", 0.05, "ana", "less feed"))
            answers["too_high"] = loop.submit_setpoint("F", 5.0, who="ana", why="typo")
            answers["turbo"] = loop.submit_mode("turbo", who="ana", why="?")
            answers["no_who"] = loop.submit(SetMode("hold", "", "?"))
            answers["junk"] = loop.submit({"mode": "auto"})  # type: ignore[arg-type]
            answers["nan"] = loop.submit(SetSetpoint("F", math.nan, "ana", "x"))
            answers["limits"] = loop.submit_limits(
                "T", lower=25.0, upper=35.0, rate_per_h=50.0, who="ana", why="cooling"
            )

    loop, historian, plant = make_loop(controller=controller, progress=operator)
    loop.run(duration_h=0.5)
    audits = {k: f.result(timeout=1.0) for k, f in answers.items()}
    assert audits["manual"].accepted and audits["manual"].action == "mode AUTO -> MANUAL"
    assert audits["feed"].accepted and audits["feed"].action == "setpoint F = 0.05"
    assert not audits["too_high"].accepted and "outside the limits" in audits["too_high"].reason
    assert audits["turbo"].action == "mode MANUAL -> turbo" and "unknown mode" in (
        audits["turbo"].reason
    )
    assert not audits["no_who"].accepted and "who is required" in audits["no_who"].reason
    assert audits["junk"].action == "unknown command (dict)" and not audits["junk"].accepted
    assert not audits["nan"].accepted and "finite" in audits["nan"].reason
    assert audits["limits"].action == "limits T = [25.0, 35.0], rate 50.0/h"
    assert all(a.t_h == 0.125 for a in audits.values())
    # the audits, in submission order, then their events, all at the next tick
    assert at(historian.records, 0.125) == [
        "E",
        "A+",
        "ev:mode-change",
        "A+",
        "A-",
        "A-",
        "A-",
        "A-",
        "A-",
        "A+",
        "ev:limits-change",
    ]
    assert [a.action for a in of(historian.records, AuditRecord)] == [
        a.action for a in answers_in_order(answers)
    ]
    # MANUAL: the operator's feed, no more plans
    assert at(historian.records, 0.25) == ["E", "S:operator"]
    assert plant.asked_at(0.25) == {"F": 0.05, "T": 30.0}  # MANUAL from what was applied
    assert [t for t, _ in controller.calls] == [0.0]
    assert loop.snapshot().mode is Mode.MANUAL


def answers_in_order(answers: Mapping[str, Future[AuditRecord]]) -> list[AuditRecord]:
    return [f.result() for f in answers.values()]


def test_a_command_that_fails_while_carried_out_is_refused_not_fatal() -> None:
    class Exploding:
        who, why = "ana", "x"

        def __getattribute__(self, name: str) -> Any:
            if name in ("who", "why"):
                return object.__getattribute__(self, name)
            raise RuntimeError("boom")

    loop, _, _ = make_loop()
    answer = loop.submit(Exploding())  # type: ignore[arg-type]
    loop.run(duration_h=0.25)
    audit = answer.result(timeout=1.0)
    assert not audit.accepted and audit.who == "ana" and audit.t_h == 0.0
    assert audit.action == "unreadable command" and audit.reason == "RuntimeError: boom"


# ------------------------------------------------------------------------------ recipe


def test_phase_changes_are_events_of_control_ticks_with_the_phase_name() -> None:
    loop, historian, _ = make_loop()
    loop.run()
    phases = [r for r in of(historian.records, EventRecord) if r.kind is EventKind.PHASE]
    assert [(e.t_h, e.source) for e in phases] == [(0.0, "loop"), (0.5, "loop")]
    assert phases[0].message == "phase 'batch' begins at 0.000 h"
    assert phases[1].message == "phase 'fed' begins at 0.500 h"


def test_the_batch_end_is_the_last_record() -> None:
    loop, historian, _ = make_loop()
    summary = loop.run(duration_h=0.5)
    last = historian.records[-1]
    assert isinstance(last, EventRecord) and last.kind is EventKind.BATCH_END
    assert last.t_h == 0.5 and last.message == "batch ended at 0.500 h"
    assert summary.control_steps == 2  # 0 and 0.25 h: none at the end


def test_a_recipe_only_phase_follows_the_recipe_in_auto_and_hands_over_bumpless() -> None:
    controller = FakeController()
    recipe = make_recipe(f_rate_per_h=0.4, first_auto=False)  # F moves <= 0.1 L/h per step
    loop, historian, plant = make_loop(controller=controller, recipe=recipe)
    snapshots: list[LoopSnapshot] = []
    loop.progress = snapshots.append
    loop.run()
    records = historian.records
    phase0 = of(records, EventRecord)[0]
    assert phase0.message.endswith("(recipe only: the controller may not act)")
    # the controller plans in the shadow; the recipe drives the plant, in AUTO, no fallback
    assert at(records, 0.0) == ["E", "ev:phase", "P:solved", "S:recipe"]
    assert at(records, 0.25) == ["E", "P:solved", "S:recipe"]
    assert [t for t, _ in controller.calls] == list(CONTROL_TIMES)
    assert plant.asked_at(0.25) == BATCH
    assert all(s.mode is Mode.AUTO for s in snapshots)
    assert not [r for r in of(records, EventRecord) if r.kind is EventKind.FALLBACK]
    # the next phase allows the controller: the plan takes over at the rate limit
    first = next(r for r in of(records, SetpointRecord) if r.t_h == 0.5)
    assert first.source is SetpointSource.NMPC and first.clamped == ("F",)
    assert first.values["F"] == pytest.approx(0.1 + 0.4 * CONTROL_H)
    assert plant.asked_at(0.75)["F"] == pytest.approx(0.3)
    assert loop.summary.plans_used == 2


def test_auto_resume_is_decided_by_the_supervisor_after_good_shadow_plans() -> None:
    faulty = {0.25}
    controller = FakeController(lambda t: "raise" if t in faulty else "ok")
    recipe = make_recipe(f_rate_per_h=0.4)
    loop, historian, plant = make_loop(controller=controller, recipe=recipe, auto_resume_after=2)
    loop.run(duration_h=1.0)
    records = historian.records
    assert at(records, 0.25) == ["E", "P:raised", "S:fallback", "ev:fallback"]
    assert (
        "AUTO returns by itself after 2 usable plans" in event(records, EventKind.FALLBACK).message
    )
    assert at(records, 0.5) == ["E", "ev:phase", "P:solved", "S:fallback"]  # one good plan
    assert at(records, 0.75) == ["E", "P:solved", "S:nmpc", "A+", "ev:mode-change"]
    (audit,) = of(records, AuditRecord)
    assert (audit.who, audit.action, audit.t_h) == ("supervisor", "mode FALLBACK -> AUTO", 0.75)
    resumed = event(records, EventKind.MODE_CHANGE)
    assert resumed.source == "supervisor" and "2 usable plans in a row" in resumed.message
    # bumpless: from the recipe's F (0.2 in the fed phase) toward the plan at the rate limit
    assert plant.asked_at(0.5)["F"] == pytest.approx(0.2)
    assert plant.asked_at(0.75)["F"] == pytest.approx(0.2 + 0.4 * CONTROL_H)
    assert loop.snapshot().mode is Mode.AUTO


def test_the_loops_auto_resume_argument_still_configures_the_supervisor() -> None:
    recipe = make_recipe()
    config = SupervisorConfig(INPUTS, recipe.limits, recipe.fallback, 5.0)
    kwargs: dict[str, Any] = {
        "recipe": recipe,
        "plant": FakePlant(),
        "estimator": FakeEstimator(),
        "controller": FakeController(),
        "historian": ListHistorian(),
        "clock": JumpClock(),
        "controller_deadline_s": 5.0,
    }
    loop = ControlLoop(supervisor=Supervisor(config), auto_resume_after=3, **kwargs)
    assert loop.auto_resume_after == 3 and loop.supervisor.config.auto_resume_after == 3
    two = Supervisor(dataclasses.replace(config, auto_resume_after=2))
    with pytest.raises(ValueError, match="differs from the supervisor's config"):
        ControlLoop(supervisor=two, auto_resume_after=3, **kwargs)
    with pytest.raises(ValueError, match="auto_resume_after must be >= 1"):
        ControlLoop(supervisor=Supervisor(config), auto_resume_after=0, **kwargs)


def test_a_recipe_only_run_without_a_controller_stays_in_fallback_without_plans() -> None:
    loop, historian, plant = make_loop(controller=None)
    loop.run()
    assert of(historian.records, PlanRecord) == []
    assert {r.source for r in of(historian.records, SetpointRecord)} == {SetpointSource.FALLBACK}
    assert not [r for r in of(historian.records, EventRecord) if r.kind is EventKind.FALLBACK]
    assert plant.asked_at(0.75) == FED


# ------------------------------------------------------------------------------ identity


def test_every_record_is_stamped_with_the_run_identity() -> None:
    identity = RunIdentity("basel", "R-101", "B-7", "run-42", "2025-03-01T08:00:00+00:00")
    estimator = FakeEstimator(filter_events={0.125: ["gated"]})
    loop, historian, _ = make_loop(
        identity=identity, estimator=estimator, plant=FakePlant(holds={"T": 31.0})
    )
    answer = loop.submit(SetLimits("F", 0.0, 0.9, 10.0, "ana", "x"))
    loop.run(duration_h=0.5)
    assert answer.result().run == identity
    kinds = {type(r) for r in historian.records}
    assert kinds == {
        MeasurementRecord,
        EstimateRecord,
        PlanRecord,
        SetpointRecord,
        EventRecord,
        AuditRecord,
    }
    assert all(r.run == identity for r in historian.records)
    assert loop.snapshot().run == identity
    with pytest.raises(TypeError, match="identity must be a RunIdentity"):
        make_loop(identity="basel")  # type: ignore[arg-type]
