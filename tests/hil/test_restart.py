"""The controller crash and restart: a run killed mid-batch resumes from its historian with
nothing lost and bumplessly; and the resume point a historian's records give."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bpcontrol.records import (
    EstimateRecord,
    EventKind,
    EventRecord,
    Mode,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.resume import resume_point
from bpcontrol.runspec import resolve, spec_for
from hil.runner import run_batch
from hil.suite import SuiteError, parse_suite

STATES, INPUTS, TRACKED = ("X", "S"), ("F",), ("mu_max",)


def estimate(t_h: float, x: float, *, healthy: bool = True) -> EstimateRecord:
    return EstimateRecord(
        t_h,
        {"X": x, "S": 1.0},
        {"X": 0.1, "S": 0.2},
        {"mu_max": 0.3},
        {"mu_max": 0.01},
        healthy=healthy,
    )


def test_the_resume_point_is_the_last_healthy_estimate_and_the_last_setpoints() -> None:
    records = [
        estimate(1.0, 5.0),
        SetpointRecord(1.0, {"F": 0.1}, SetpointSource.NMPC),
        estimate(2.0, 6.0),
        estimate(3.0, 99.0, healthy=False),  # a broken estimate is never resumed from
        SetpointRecord(2.5, {"F": 0.2}, SetpointSource.OPERATOR),
        EventRecord(3.2, EventKind.PHASE, "phase", "loop"),
    ]
    point = resume_point(records, state_names=STATES, input_names=INPUTS, tracked=TRACKED)
    assert point.t_h == 3.2 and point.estimate_t_h == 2.0
    assert point.x0(STATES).tolist() == [6.0, 1.0]
    assert point.p0_diag(STATES, TRACKED) == pytest.approx([0.01, 0.04, 1e-4])
    assert point.u0(INPUTS).tolist() == [0.2] and point.mode is Mode.MANUAL


def test_a_supervisors_fallback_may_return_by_itself_an_operators_never() -> None:
    base = [estimate(1.0, 5.0), SetpointRecord(2.0, {"F": 0.0}, SetpointSource.FALLBACK)]
    by_sup = [*base, EventRecord(1.5, EventKind.FALLBACK, "AUTO -> FALLBACK", "supervisor")]
    by_op = [*by_sup, EventRecord(1.8, EventKind.MODE_CHANGE, "by alice", "operator")]
    sup = resume_point(by_sup, state_names=STATES, input_names=INPUTS, tracked=TRACKED)
    op = resume_point(by_op, state_names=STATES, input_names=INPUTS, tracked=TRACKED)
    assert sup.mode is op.mode is Mode.FALLBACK
    assert "supervisor's FALLBACK of 1.500 h" in sup.fallback_cause and op.fallback_cause == ""


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([SetpointRecord(1.0, {"F": 0.1}, SetpointSource.NMPC)], "no healthy estimate"),
        ([estimate(1.0, 5.0)], "no applied setpoints"),
        ([estimate(1.0, math.nan), SetpointRecord(1.0, {"F": 0.1}, SetpointSource.NMPC)], "no h"),
    ],
)
def test_records_without_a_state_to_resume_from_are_refused(records: list, match: str) -> None:
    with pytest.raises(ValueError, match=f"^runs/r1/records.sqlite: {match}"):
        resume_point(
            records,
            state_names=STATES,
            input_names=INPUTS,
            tracked=TRACKED,
            source="runs/r1/records.sqlite",
        )


def test_a_crash_restart_needs_its_restart_time_and_comes_once() -> None:
    crash = {"kind": "crash_restart", "start_h": 3.5}
    with pytest.raises(SuiteError, match=r"fault\[0\]: end_h: crash_restart needs end_h"):
        parse_suite({"scenario": [{"name": "c", "pack": "yeast_fedbatch", "fault": [crash]}]},
                    source="s.toml")  # fmt: skip
    two = [crash | {"end_h": 3.6}, crash | {"start_h": 4.0, "end_h": 4.1}]
    with pytest.raises(SuiteError, match=r"fault\[1\]: one crash_restart per scenario"):
        parse_suite({"scenario": [{"name": "c", "pack": "yeast_fedbatch", "fault": two}]},
                    source="s.toml")  # fmt: skip


def _rows(run_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "records.sqlite") as db:
        return db.execute(sql).fetchall()


def test_a_crashed_controller_resumes_from_the_historian_bumplessly_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The yeast pack, NMPC from 3 h: killed at 3.5 h, restarted at 3.75 h, against the same
    run uninterrupted (same plant, seed and noise)."""
    run = resolve(spec_for("yeast_fedbatch", seed=7))
    plain = run_batch(run, run_dir=tmp_path / "plain", duration_h=4.5, report=False)
    crashed = run_batch(
        run, run_dir=tmp_path / "crash", duration_h=4.5, report=False, crash=(3.5, 0.25)
    )
    assert crashed.state == "completed" and crashed.kpis["restarts"] == 1
    assert crashed.kpis["restart_resumed_h"] == pytest.approx(3.75)
    # every sample the plant took reached the historian, the downtime's too (read late)
    count = "select count(*) from measurement"
    assert _rows(crashed.run_dir, count) == _rows(plain.run_dir, count)
    assert crashed.kpis["setpoints_outside_limits_or_rates"] == 0
    events = _rows(crashed.run_dir, "select t_h, message from event where kind = 'resumed'")
    assert len(events) == 1 and events[0][0] == pytest.approx(3.75)
    # bumpless: the first setpoints after the restart are those held before the crash
    sps = _rows(crashed.run_dir, "select t_h, `values` from setpoint order by t_h, seq")
    before = [json.loads(v) for t, v in sps if t < 3.5]
    after = [json.loads(v) for t, v in sps if t >= 3.75]
    assert after[0] == before[-1]
    # the filter resumed from its last estimate and covariance: after fusing the downtime's
    # readings its biomass error is inside its own 3-sigma band (a consistent filter's
    # ~99.7 %), as the uninterrupted filter's is
    est = "select x, x_sigma from estimate where t_h > 3.74 and t_h < 3.76"
    truth = float(np.interp(3.75, plain.truth_t, plain.truth_x[:, run.model.index("X")]))
    for run_dir in (plain.run_dir, crashed.run_dir):
        x, sigma = (json.loads(v)["X"] for v in _rows(run_dir, est)[0])
        assert abs(x - truth) <= 3 * sigma, (run_dir.name, x, sigma, truth)
    assert crashed.kpis["final_product"] == pytest.approx(plain.kpis["final_product"], rel=0.02)
