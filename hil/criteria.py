"""Pass/fail criteria of HIL scenarios, evaluated on a run's measures.

:func:`measure` turns a finished run (its KPIs, its records read back from the
historian, the loop's count of records it emitted) into named figures; a criterion of a
suite bounds one of them (``{ min = .., max = .. }``, both inclusive) and
:func:`evaluate` gives each its measured value and pass/fail. The figures:

- ``product``: the pack's product KPI at the run's end (its unit), ``product_vs_oracle``:
  that over the whole-batch optimum with the plant's true parameters (needs ``oracle``);
- ``do_min_percent``: the plant's lowest true DO (% air saturation);
- ``time_below_minimum_percent``: % of the run with true DO below the pack's minimum;
- ``setpoints_outside_clamps``: applied setpoints outside the *pack's* limits or rate
  clamps, recomputed from the records (so a supervisor that let one through is caught);
- ``fallback_entered``: FALLBACK events from the first fault on (all, with no fault);
- ``fallback_left``: 1 when the loop applied a controller (``nmpc``) setpoint after its
  last FALLBACK event, else 0 (1 when it never fell back);
- ``records_lost``: records the loop emitted that the run's embedded historian (the run
  folder's ``records.sqlite``) does not hold, with or without an InfluxDB mirror;
- ``historian_points_missing``: with ``historian = "influx"`` (:mod:`hil.historian`): the
  InfluxDB points the embedded store's records make that the run's InfluxDB does not hold
  after the run (counted through its ``/query``; NaN without a mirror);
- ``solve_time_p99_s``: 99th percentile of the controller's solve times (wall s);
- ``recovery_time_h``: process hours from the end of the last fault window to the first
  controller setpoint at or after it (inf: never);
- ``do_recovery_time_h``: process hours from the end of the last fault window until the
  true DO is back at or above the pack's minimum for the rest of the run (0: it never
  fell below after the fault ended; inf: it is below at the run's end);
- ``kpi.NAME``: any number of the run's ``kpis.json`` (the rig's figures among them:
  ``rig_T_max_error``, ``rig_F_delivered_fraction``, ... see :mod:`hil.rig`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpcontrol.kpis import setpoint_violations
from bpcontrol.records import EventKind, EventRecord, PlanRecord, Record, SetpointRecord
from bpcontrol.supervisor import SetpointLimits

__all__ = ["CRITERIA", "CriterionResult", "CriterionSpec", "evaluate", "measure"]

CRITERIA: dict[str, str] = {
    "product": "product at the run's end (the pack's product unit)",
    "product_vs_oracle": "product / whole-batch optimum with the true parameters (-)",
    "do_min_percent": "lowest true DO (% air saturation)",
    "time_below_minimum_percent": "time with true DO below the pack's minimum (%)",
    "setpoints_outside_clamps": "applied setpoints outside the pack's limits or rates (count)",
    "fallback_entered": "FALLBACK events from the first fault on (count)",
    "fallback_left": "controller setpoints applied after the last FALLBACK (1 yes, 0 no)",
    "records_lost": "records emitted but not in the embedded historian (count)",
    "historian_points_missing": "points of the embedded records not in InfluxDB (count)",
    "solve_time_p99_s": "99th percentile of the controller's solve times (wall s)",
    "recovery_time_h": "process h from the last fault's end to a controller setpoint",
    "do_recovery_time_h": "process h from the last fault's end to true DO >= minimum for good",
}
"""The named criteria and what each measures (besides ``kpi.NAME``)."""


@dataclass(frozen=True, kw_only=True)
class CriterionSpec:
    """A bound on one measure: ``min <= value <= max`` (None: that side open)."""

    name: str
    min: float | None = None
    max: float | None = None

    def bound_text(self) -> str:
        """The bound as a person reads it, e.g. ``>= 25`` or ``in [0, 1]``."""
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f">= {self.min:g}"
        return f"<= {self.max:g}"


@dataclass(frozen=True, kw_only=True)
class CriterionResult:
    """A criterion's measured value and whether it passed."""

    name: str
    bound: str
    measured: float
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON, reports)."""
        return {
            "name": self.name,
            "bound": self.bound,
            "measured": self.measured,
            "passed": self.passed,
            "message": self.message,
        }


def measure(
    *,
    kpis: Mapping[str, Any],
    records: Sequence[Record],
    limits: Mapping[str, SetpointLimits],
    records_emitted: int,
    fault_start_h: float | None,
    fault_end_h: float | None,
    truth: tuple[np.ndarray, np.ndarray, float] | None = None,
    historian_points: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Every figure of the module docstring for one run; ``limits`` are the pack's;
    ``truth`` is (t h, true DO %, the pack's DO minimum %) when the model has DO;
    ``historian_points`` is (points the embedded records make, points InfluxDB holds of
    them) when the run had an InfluxDB mirror."""
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    plans = [r for r in records if isinstance(r, PlanRecord)]
    fallbacks = [
        r.t_h for r in records if isinstance(r, EventRecord) and r.kind is EventKind.FALLBACK
    ]
    from_h = 0.0 if fault_start_h is None else fault_start_h
    controller_t = [r.t_h for r in setpoints if r.source == "nmpc"]
    out: dict[str, float] = {
        "product": _number(kpis.get("final_product")),
        "product_vs_oracle": _number(kpis.get("product_vs_oracle")),
        "do_min_percent": _number(kpis.get("do_min_percent")),
        "time_below_minimum_percent": _number(kpis.get("time_do_below_min_percent")),
        "setpoints_outside_clamps": float(len(setpoint_violations(setpoints, limits))),
        "fallback_entered": float(sum(t >= from_h - 1e-9 for t in fallbacks)),
        "records_lost": float(max(records_emitted - len(records), 0)),
        "historian_points_missing": math.nan,
    }
    if historian_points is not None:
        expected, held = historian_points
        out["historian_points_missing"] = float(max(expected - held, 0))
    if fallbacks:
        last = max(fallbacks)
        out["fallback_left"] = float(any(t > last for t in controller_t))
    else:
        out["fallback_left"] = 1.0
    solve = np.array([p.solve_time_s for p in plans if math.isfinite(p.solve_time_s)])
    out["solve_time_p99_s"] = float(np.percentile(solve, 99)) if solve.size else math.nan
    if fault_end_h is None:
        out["recovery_time_h"] = math.nan
    else:
        after = [t - fault_end_h for t in controller_t if t >= fault_end_h - 1e-9]
        out["recovery_time_h"] = max(min(after), 0.0) if after else math.inf
    out["do_recovery_time_h"] = _do_recovery(truth, fault_end_h)
    return out


def _do_recovery(truth: tuple[np.ndarray, np.ndarray, float] | None, end_h: float | None) -> float:
    """Hours from ``end_h`` until the true DO stays at or above its minimum (NaN: no DO or
    no windowed fault)."""
    if truth is None or end_h is None:
        return math.nan
    t, do, minimum = (np.asarray(truth[0]), np.asarray(truth[1]), truth[2])
    after = t >= end_h - 1e-9
    if not after.any():
        return math.nan
    below = np.flatnonzero(after & (do < minimum))
    if below.size == 0:
        return 0.0
    last = int(below[-1])
    if last == t.size - 1:
        return math.inf
    return float(t[last + 1] - end_h)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def evaluate(
    criteria: Sequence[CriterionSpec],
    measures: Mapping[str, float],
    kpis: Mapping[str, Any],
) -> list[CriterionResult]:
    """Each criterion with its measured value; a value that was not measured fails."""
    results = []
    for c in criteria:
        if c.name.startswith("kpi."):
            value = _number(kpis.get(c.name[4:]))
        else:
            value = measures.get(c.name, math.nan)
        bound = c.bound_text()
        if math.isnan(value):
            results.append(
                CriterionResult(
                    name=c.name,
                    bound=bound,
                    measured=value,
                    passed=False,
                    message=f"{c.name}: not measured in this run (needs {bound})",
                )
            )
            continue
        ok = (c.min is None or value >= c.min) and (c.max is None or value <= c.max)
        verdict = "ok" if ok else "FAILED"
        results.append(
            CriterionResult(
                name=c.name,
                bound=bound,
                measured=value,
                passed=ok,
                message=f"{c.name} = {value:.6g} (needs {bound}): {verdict}",
            )
        )
    return results
