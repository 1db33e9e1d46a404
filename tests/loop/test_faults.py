"""Controller faults: raising, hanging past the deadline, NaN plans -> FALLBACK in the same
control step, the batch goes on, events are recorded, and the return to AUTO is bumpless.

Runs the real loop (EKF + NMPC + supervisor) against the simulated E. coli plant (the
E. coli pack's run) with the embedded historian, for 6 h of process time with the fault in
[1.0, 1.5) h, on a clock paced at 1800x (the default job's speed): a call hanging 2 s of
wall time against a 1.5 s deadline stays busy for many control periods (the loop catches
up the 1.5 s it waited); the loop must report it busy, not start a second solve, and the
supervisor must return to AUTO after two usable plans. The first solves after the hang
start from a warm start hours old and may be late too, so the resume comes at about 4 h on
a loaded machine: 6 h leave room.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bpcontrol.interfaces import Controller
from bpcontrol.kpis import setpoint_violations
from bpcontrol.nmpc import StateEstimate
from bpcontrol.records import (
    AuditRecord,
    EventKind,
    EventRecord,
    Mode,
    PlanRecord,
    PlanStatus,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.runspec import ResolvedRun, resolve, spec_for
from hil.faults import ControllerFault, FaultyController
from hil.runner import run_batch
from services.historian import read_records

FAULT_START_H, FAULT_END_H = 1.0, 1.5
CONTROL_PERIOD_H = 1 / 6
DURATION_H = 6.0


def _run(deadline_s: float, auto_resume_after: int) -> ResolvedRun:
    """The E. coli pack's run with this solve deadline (s) and auto-resume setting."""
    run = resolve(spec_for("ecoli_fedbatch"))
    assert run.nmpc is not None
    nmpc = dataclasses.replace(run.nmpc, time_limit_s=deadline_s)
    return dataclasses.replace(
        run, nmpc=nmpc, deadline_s=deadline_s, auto_resume_after=auto_resume_after
    )


@pytest.mark.parametrize(
    ("kind", "plan_status", "cause"),
    [
        (ControllerFault.RAISE, {PlanStatus.RAISED}, "controller failed"),
        (ControllerFault.HANG, {PlanStatus.LATE}, "controller late"),
        # garbage that claims to be a solution: the status is the solver's own
        (ControllerFault.NAN, {s for s in PlanStatus if s.usable}, "plan not finite"),
    ],
)
def test_fault_falls_back_within_one_period_and_returns_bumpless(
    tmp_path: Path, kind: ControllerFault, plan_status: set[PlanStatus], cause: str
) -> None:
    faulty: list[FaultyController] = []
    run = _run(deadline_s=1.5, auto_resume_after=2)

    def wrap(inner: Controller) -> Controller:
        # one solve before the clock starts (as a live loop would warm up): the first solve
        # of a fresh NMPC can take over a second on a loaded machine, and would be late
        x0, u0 = run.recipe.initial_state(run.model), run.recipe.fallback(0.0)
        inner.plan(StateEstimate(x0, run.model.p0.copy()), 0.0, u0)
        faulty.append(FaultyController(inner, kind, FAULT_START_H, FAULT_END_H, hang_s=2.0))
        return faulty[0]

    result = run_batch(
        run,
        run_dir=tmp_path,
        duration_h=DURATION_H,
        speed_up=1800.0,
        wrap_controller=wrap,
        report=False,
    )
    assert faulty[0].calls_in_window >= 1
    records = read_records(tmp_path / "records.sqlite")
    events = [r for r in records if isinstance(r, EventRecord)]
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    plans = {round(r.t_h, 6): r for r in records if isinstance(r, PlanRecord)}

    # FALLBACK in the very control step the fault first hit (within one control period)
    fallbacks = [e for e in events if e.kind is EventKind.FALLBACK]
    assert fallbacks, "no fallback event"
    assert FAULT_START_H <= fallbacks[0].t_h < FAULT_START_H + CONTROL_PERIOD_H
    assert cause in fallbacks[0].message
    assert plans[round(fallbacks[0].t_h, 6)].status in plan_status
    at_fault = next(s for s in setpoints if s.t_h == fallbacks[0].t_h)
    assert at_fault.source is SetpointSource.FALLBACK
    assert all(s.source is SetpointSource.NMPC for s in setpoints if 0 < s.t_h < FAULT_START_H)

    # the batch went on to its end
    assert result.summary.t_end_h == pytest.approx(DURATION_H)
    assert any(e.kind is EventKind.BATCH_END for e in events)

    # back to AUTO (decided by the supervisor, audited) and bumpless: no setpoint ever broke a
    # limit or a rate clamp, across both switches
    resumed = [a for a in records if isinstance(a, AuditRecord) and a.who == "supervisor"]
    assert resumed and resumed[0].accepted and resumed[0].t_h >= FAULT_END_H
    assert resumed[0].action == f"mode {Mode.FALLBACK.name} -> {Mode.AUTO.name}"
    assert any(s.source is SetpointSource.NMPC for s in setpoints if s.t_h >= resumed[0].t_h)
    assert setpoint_violations(setpoints, run.recipe.limits) == []
    # every record carries the run's identity
    assert all(r.run == run.spec.identity for r in records)
