"""Controller faults: raising, hanging past the deadline, NaN plans -> FALLBACK in the same
control step, the batch goes on, events are recorded, and the return to AUTO is bumpless.

Runs the real loop (EKF + NMPC + supervisor) against the simulated E. coli plant with the
embedded historian, for 4 h of process time with the fault in [1.0, 1.5) h, on a clock
paced at 1800x (the default job's speed): a call hanging 2 s of wall time against a 1.5 s
deadline stays busy for a few control periods; the loop must report it busy, not start a
second solve, and resume once it has returned.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bpcontrol.interfaces import Controller
from bpcontrol.kpis import setpoint_violations
from bpcontrol.records import AuditRecord, EventRecord, PlanRecord, SetpointRecord
from hil.faults import FaultyController
from hil.runner import Scenario, run_scenario
from services.historian import read_records

FAULT_START_H, FAULT_END_H = 1.0, 1.5
CONTROL_PERIOD_H = 1 / 6
DURATION_H = 4.0


@pytest.mark.parametrize(
    ("kind", "plan_status", "cause"),
    [
        ("raise", {"raised"}, "controller failed"),
        ("hang", {"late"}, "controller late"),
        # garbage that claims to be a solution: the status is the solver's own
        ("nan", {"solved", "solved-inaccurate", "infeasible-softened"}, "plan not finite"),
    ],
)
def test_fault_falls_back_within_one_period_and_returns_bumpless(
    tmp_path: Path, kind: str, plan_status: set[str], cause: str
) -> None:
    faulty: list[FaultyController] = []

    def wrap(inner: Controller) -> Controller:
        faulty.append(FaultyController(inner, kind, FAULT_START_H, FAULT_END_H, hang_s=2.0))
        return faulty[0]

    scenario = Scenario(controller_deadline_s=1.5, auto_resume_after=2)
    result = run_scenario(
        scenario,
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
    fallbacks = [e for e in events if e.kind == "fallback"]
    assert fallbacks, "no fallback event"
    assert FAULT_START_H <= fallbacks[0].t_h < FAULT_START_H + CONTROL_PERIOD_H
    assert cause in fallbacks[0].message
    assert plans[round(fallbacks[0].t_h, 6)].status in plan_status
    at_fault = next(s for s in setpoints if s.t_h == fallbacks[0].t_h)
    assert at_fault.source == "fallback"
    assert all(s.source == "nmpc" for s in setpoints if 0 < s.t_h < FAULT_START_H)

    # the batch went on to its end
    assert result.summary.t_end_h == pytest.approx(DURATION_H)
    assert any(e.kind == "batch-end" for e in events)

    # back to AUTO (requested by the loop, audited) and bumpless: no setpoint ever broke a
    # limit or a rate clamp, across both switches
    resumed = [a for a in records if isinstance(a, AuditRecord) and a.who == "loop"]
    assert resumed and resumed[0].accepted and resumed[0].t_h >= FAULT_END_H
    assert any(s.source == "nmpc" for s in setpoints if s.t_h > resumed[0].t_h)
    assert setpoint_violations(setpoints, _limits()) == []


def _limits():  # type: ignore[no-untyped-def]
    from bpcontrol.recipe import default_recipe_path, load_recipe
    from models import load_model

    model = load_model("ecoli_fedbatch")
    return load_recipe(default_recipe_path(model.name), model).limits
