"""Criteria on hand-made records: every figure, and each bound able to fail."""

from __future__ import annotations

import math

from bpcontrol.records import (
    EventKind,
    EventRecord,
    PlanRecord,
    PlanStatus,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.supervisor import SetpointLimits
from hil.criteria import CriterionSpec, evaluate, measure

LIMITS = {"F": SetpointLimits(0.0, 0.5, 0.2)}


def _records(fallback_at: float, resume_at: float | None) -> list[object]:
    recs: list[object] = []
    for k in range(12):  # one setpoint per 10 min over 2 h, 0.01 L/h steps: within rate
        t = k / 6
        source = SetpointSource.NMPC
        if t >= fallback_at and (resume_at is None or t < resume_at):
            source = SetpointSource.FALLBACK
        recs.append(SetpointRecord(t, {"F": 0.01 * k}, source))
        recs.append(PlanRecord(t, PlanStatus.SOLVED, 0.01 * (k + 1)))
    recs.append(EventRecord(fallback_at, EventKind.FALLBACK, "controller raised", "supervisor"))
    return recs


def _measure(recs: list[object], **kw: object) -> dict[str, float]:
    args: dict[str, object] = {
        "kpis": {"final_product": 3.0, "do_min_percent": 25.0},
        "records": recs,
        "limits": LIMITS,
        "records_emitted": len(recs),
        "fault_start_h": 0.5,
        "fault_end_h": 0.9,
    }
    args.update(kw)
    return measure(**args)  # type: ignore[arg-type]


def test_fallback_entered_left_and_recovery() -> None:
    m = _measure(_records(0.5, 1.0))
    assert m["fallback_entered"] == 1
    assert m["fallback_left"] == 1
    assert math.isclose(m["recovery_time_h"], 1.0 - 0.9)  # first nmpc setpoint after 0.9 h
    assert m["setpoints_outside_clamps"] == 0 and m["records_lost"] == 0
    assert math.isclose(m["solve_time_p99_s"], 0.12 - 0.01 * 0.11, rel_tol=1e-9)


def test_never_left_fallback_fails_both_criteria() -> None:
    m = _measure(_records(0.5, None))
    assert m["fallback_left"] == 0 and m["recovery_time_h"] == math.inf
    results = evaluate(
        [CriterionSpec(name="fallback_left", min=1), CriterionSpec(name="recovery_time_h", max=1)],
        m,
        {},
    )
    assert [r.passed for r in results] == [False, False]
    assert "fallback_left = 0" in results[0].message


def test_outside_limits_and_rate_counted_against_given_limits() -> None:
    recs = _records(0.5, 1.0)
    recs.append(SetpointRecord(2.0, {"F": 0.7}, SetpointSource.NMPC))  # above 0.5 and a jump
    m = _measure(recs)
    assert m["setpoints_outside_clamps"] == 2


def test_records_lost_and_unmeasured_fail() -> None:
    recs = _records(0.5, 1.0)
    m = _measure(recs, records_emitted=len(recs) + 3, fault_end_h=None)
    assert m["records_lost"] == 3 and math.isnan(m["recovery_time_h"])
    results = evaluate(
        [
            CriterionSpec(name="records_lost", max=0),
            CriterionSpec(name="recovery_time_h", max=1),
            CriterionSpec(name="do_min_percent", min=30),
            CriterionSpec(name="product", min=2, max=4),
            CriterionSpec(name="kpi.final_product", min=3),
        ],
        m,
        {"final_product": 3.0},
    )
    assert [r.passed for r in results] == [False, False, False, True, True]
    assert "not measured" in results[1].message
