"""The loop with real parts: operator writes through the command queue, and 1x wall time.

Real components: the simulated E. coli plant (hil.plant), the embedded SQLite historian,
the EKF, the supervisor and a paced clock; no controller (recipe only) so the runs are short.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from bpcontrol.adapters import LoopEstimator
from bpcontrol.clock import PacedClock
from bpcontrol.kpis import setpoint_violations
from bpcontrol.loop import ControlLoop, LoopSnapshot
from bpcontrol.recipe import default_recipe_path, load_recipe, parse_recipe
from bpcontrol.records import AuditRecord, EventKind, SetpointRecord, SetpointSource
from bpcontrol.runspec import resolve, spec_for
from bpcontrol.supervisor import Mode, Supervisor, SupervisorConfig
from estimators import ExtendedKalmanFilter, OnlineEstimator, default_ekf_config
from hil.plant import ecoli_plant
from hil.runner import run_batch
from models import load_model
from services.historian import EmbeddedHistorian, read_records

MODEL = load_model("ecoli_fedbatch")
RECIPE = load_recipe(default_recipe_path(MODEL.name), MODEL)


def _loop(tmp_path: Path, progress: Any) -> tuple[ControlLoop, EmbeddedHistorian]:
    ekf = ExtendedKalmanFilter(MODEL, default_ekf_config(MODEL))
    historian = EmbeddedHistorian(tmp_path / "records.sqlite")
    loop = ControlLoop(
        recipe=RECIPE,
        plant=ecoli_plant(MODEL, seed=3),
        estimator=LoopEstimator(OnlineEstimator(ekf), RECIPE.initial_state(MODEL)),
        controller=None,
        supervisor=Supervisor(
            SupervisorConfig(MODEL.input_names, RECIPE.limits, RECIPE.fallback, 1.0)
        ),
        historian=historian,
        clock=PacedClock(math.inf),
        controller_deadline_s=1.0,
        progress=progress,
    )
    return loop, historian


def test_operator_writes_go_through_the_supervisor_with_audit(tmp_path: Path) -> None:
    answers: dict[str, Future[AuditRecord]] = {}
    snapshots: list[LoopSnapshot] = []

    def operator(snap: LoopSnapshot) -> None:  # plays the live API, between ticks
        snapshots.append(snap)
        if abs(snap.t_h - 0.5) < 1e-9:
            answers["manual"] = loop.submit_mode("manual", who="ana", why="feed test")
        if abs(snap.t_h - 0.6) < 1e-9:
            answers["too_high"] = loop.submit_setpoint("F", 0.9, who="ana", why="typo")
            answers["feed"] = loop.submit_setpoint("F", 0.1, who="ana", why="start feed")
            answers["no_who"] = loop.submit_mode("hold", who="", why="?")

    loop, historian = _loop(tmp_path, operator)
    loop.run(duration_h=2.0)
    historian.close()
    audits = {k: f.result(timeout=1) for k, f in answers.items()}
    assert audits["manual"].accepted and audits["manual"].action == "mode FALLBACK -> MANUAL"
    assert not audits["too_high"].accepted and "outside the limits" in audits["too_high"].reason
    assert audits["feed"].accepted
    assert not audits["no_who"].accepted and "who is required" in audits["no_who"].reason
    assert snapshots[-1].mode is Mode.MANUAL and snapshots[-1].done is False
    assert loop.snapshot().done

    records = read_records(tmp_path / "records.sqlite")
    assert len([r for r in records if isinstance(r, AuditRecord)]) == 4
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    # the operator's feed is reached at the F rate limit (0.2 L/h per h), never jumped to
    manual = [s for s in setpoints if s.source is SetpointSource.OPERATOR]
    assert manual and manual[-1].values["F"] == pytest.approx(0.1)
    assert manual[0].values["F"] < 0.1
    assert setpoint_violations(setpoints, RECIPE.limits) == []


def test_wall_clock_keeps_its_period_at_1x(tmp_path: Path) -> None:
    doc = tomllib.loads(default_recipe_path(MODEL.name).read_text(encoding="utf-8"))
    doc.update(measurement_period_min=1 / 60, control_period_min=5 / 60, duration_h=12 / 3600)
    doc["phases"] = doc["phases"][:1]
    recipe = parse_recipe(doc, MODEL)  # 1 s measurements, 5 s control, 12 s batch
    run = dataclasses.replace(resolve(spec_for(MODEL.name, controller="recipe")), recipe=recipe)
    result = run_batch(
        run,
        run_dir=tmp_path,
        speed_up=1.0,
        report=False,
    )
    s = result.summary
    assert s.ticks == 13
    assert 12.0 <= s.wall_s < 13.5  # 12 s of process time take 12 s
    jitter = s.jitter()
    print(jitter)
    assert jitter["median_ms"] < 50.0  # woke on time (generous for a shared CI machine)
    assert result.kpis["jitter_max_ms"] == pytest.approx(jitter["max_ms"])


def test_estimator_failure_is_an_event_and_the_batch_goes_on(tmp_path: Path) -> None:
    loop, historian = _loop(tmp_path, None)
    real_step = loop.estimator.step

    def failing_step(t_h: float, u: Any, readings: Any) -> Any:  # injected fault
        if 0.5 <= t_h < 0.55:
            raise FloatingPointError("injected estimator fault")
        return real_step(t_h, u, readings)

    loop.estimator.step = failing_step  # type: ignore[method-assign]
    summary = loop.run(duration_h=1.0)
    historian.close()
    assert summary.t_end_h == pytest.approx(1.0)
    events = [r for r in read_records(tmp_path / "records.sqlite", kind="event")]
    failed = [e for e in events if e.kind is EventKind.ESTIMATOR_FAILED]
    assert len(failed) == 3  # 0.5, 0.5167, 0.5333 h
    assert "injected estimator fault" in failed[0].message
    assert loop.snapshot().estimate is not None and loop.snapshot().estimate.t_h == 1.0
