"""Key performance indicators of a closed-loop run, from its records and the true trajectory.

The figures the issue asks for: product made (g), time with DO below its minimum (%), the
count of applied setpoints outside the limits or rate clamps (recomputed from the records,
not trusted from the supervisor), time per mode, controller solve times and how close the
estimates came to the truth (when the plant is simulated and its truth is known).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bpcontrol.records import (
    USABLE_PLAN_STATUSES,
    EstimateRecord,
    EventKind,
    EventRecord,
    PlanRecord,
    Record,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.supervisor import SetpointLimits
from models import Model

__all__ = ["product_g", "run_kpis", "setpoint_violations"]


def product_g(model: Model, x: np.ndarray) -> float:
    """Product in the broth (g) = P (g/L) * V (L); NaN when the model has no P or V."""
    names = model.state_names
    if "P" not in names or "V" not in names:
        return math.nan
    return float(x[model.index("P")] * x[model.index("V")])


def setpoint_violations(
    setpoints: Sequence[SetpointRecord], limits: Mapping[str, SetpointLimits]
) -> list[str]:
    """Every applied setpoint outside its limits or moving faster than its rate clamp.

    Rates are checked between consecutive records: ``|v1 - v0| <= rate * (t1 - t0)`` with a
    relative tolerance of 1e-9 for rounding; an interlock's cut (source ``interlock``) is
    exempt from the rate clamp by design (:mod:`bpcontrol.interlocks`), never from the
    limits. Returns one line per violation (empty: none).
    """
    problems: list[str] = []
    prev: SetpointRecord | None = None
    for rec in setpoints:
        for name, value in rec.values.items():
            lim = limits[name]
            tol = 1e-9 * max(1.0, abs(value))
            if not (lim.lower - tol <= value <= lim.upper + tol):
                problems.append(
                    f"{rec.t_h:.4f} h: {name} = {value:g} outside [{lim.lower:g}, {lim.upper:g}]"
                )
            if prev is not None and rec.source != SetpointSource.INTERLOCK:
                step = abs(value - prev.values[name])
                allowed = lim.rate_per_h * (rec.t_h - prev.t_h)
                if step > allowed + tol:
                    problems.append(
                        f"{rec.t_h:.4f} h: {name} moved {step:g} > rate clamp {allowed:g}"
                    )
        prev = rec
    return problems


def run_kpis(
    records: Sequence[Record],
    *,
    model: Model,
    limits: Mapping[str, SetpointLimits],
    truth: tuple[np.ndarray, np.ndarray] | None = None,
    true_parameters: Mapping[str, float] | None = None,
    do_min: float | None = None,
) -> dict[str, Any]:
    """The KPIs of one run (see the module docstring); ``truth`` is (t_h, X) of the plant."""
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    estimates = [r for r in records if isinstance(r, EstimateRecord)]
    plans = [r for r in records if isinstance(r, PlanRecord)]
    events = [r for r in records if isinstance(r, EventRecord)]
    kpis: dict[str, Any] = {}
    if truth is not None:
        X = truth[1]
        kpis["final_product_g"] = product_g(model, X[-1])
        if do_min is not None and "DO" in model.state_names:
            do = X[:, model.index("DO")]
            kpis["do_min_percent"] = float(do.min())
            kpis["time_do_below_min_percent"] = 100.0 * float(np.mean(do < do_min))
            kpis["time_do_below_min_minus_1_percent"] = 100.0 * float(np.mean(do < do_min - 1))
    kpis["setpoints_outside_limits_or_rates"] = len(setpoint_violations(setpoints, limits))
    kpis["setpoints_applied"] = len(setpoints)
    kpis["setpoints_clamped"] = sum(bool(r.clamped) for r in setpoints)
    sources: dict[str, int] = {}
    for r in setpoints:
        sources[r.source] = sources.get(r.source, 0) + 1
    for source, n in sorted(sources.items()):
        kpis[f"control_steps_{source}_percent"] = 100.0 * n / max(len(setpoints), 1)
    kpis["fallback_events"] = sum(e.kind is EventKind.FALLBACK for e in events)
    solve = np.array([p.solve_time_s for p in plans if math.isfinite(p.solve_time_s)])
    if solve.size:
        kpis["solve_time_median_s"] = float(np.median(solve))
        kpis["solve_time_max_s"] = float(solve.max())
    usable = sum(p.status in USABLE_PLAN_STATUSES for p in plans)
    kpis["plans_usable_percent"] = 100.0 * usable / max(len(plans), 1)
    if truth is not None and estimates:
        kpis.update(_estimation_kpis(model, estimates, truth, true_parameters or {}))
    return kpis


def _estimation_kpis(
    model: Model,
    estimates: Sequence[EstimateRecord],
    truth: tuple[np.ndarray, np.ndarray],
    true_parameters: Mapping[str, float],
) -> dict[str, float]:
    t, X = truth
    te = np.array([e.t_h for e in estimates])
    out: dict[str, float] = {}
    if "X" in model.state_names:
        i = model.index("X")
        x_true = np.interp(te, t, X[:, i])
        x_est = np.array([e.x["X"] for e in estimates])
        last = te >= te[-1] - 20.0
        rmse = float(np.sqrt(np.mean((x_est[last] - x_true[last]) ** 2)))
        out["biomass_rmse_last_20h_percent_of_final"] = 100.0 * rmse / max(abs(X[-1, i]), 1e-12)
    final = estimates[-1]
    for name, true in true_parameters.items():
        if name in final.parameters and true != 0:
            out[f"{name}_final_error_percent"] = 100.0 * abs(final.parameters[name] / true - 1)
    return out
