"""Simulated batches of do-mpc's batch reactor for the fitting tests, as the read-back
gives them: online biomass and volume every 0.5 h, offline substrate and product assays
every 2-4 h with 5 % + absolute error, arriving 1-3 h late (``hil.synthetic``), and the
error models the data are generated with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hil.synthetic import OfflineAssays, SyntheticRun, generate
from models import InputProfile, Model, load_model
from services.fitting import ErrorModel, FitOptions
from services.historian.readback import BatchData, series_from_rows

MODEL = load_model("dompc_batch_reactor")
ERRORS = {
    "X_meas": ErrorModel(0.01),
    "V_meas": ErrorModel(0.1),
    "S_meas": ErrorModel(0.002, 0.05),
    "P_meas": ErrorModel(0.002, 0.05),
}
FAST = FitOptions(n_starts=1, integrator="rk", steps_per_interval=4)
"""RK4 on 0.5 h shooting intervals: do-mpc's reactor is not stiff (rates below 0.1 1/h),
and the fit agrees with the CVODES one to 1e-6 relative (tests/services/test_fitting.py)."""
PROFILES = (
    {"inp": [(0.0, 0.0), (8.0, 0.02), (20.0, 0.05)]},
    {"inp": [(0.0, 0.0), (5.0, 0.04), (25.0, 0.01)]},
)


def synthetic_batch(
    seed: int,
    batch_id: str,
    profile: Mapping[str, Any],
    *,
    plant: Model | None = None,
    origin: str | None = None,
    period_h: float = 0.5,
) -> BatchData:
    """One simulated 40 h batch of ``plant`` (default: the nominal reactor) under the
    feed ``profile``, online readings every ``period_h``; the inputs are the reactor
    model's."""
    steps = InputProfile.from_steps(MODEL, profile)
    run = SyntheticRun(
        hours=40.0,
        inputs=steps,
        period_h=period_h,
        online={"X_meas": 0.01, "V_meas": 0.1},
        offline=OfflineAssays(
            outputs=("S_meas", "P_meas"),
            relative_sigma=0.05,
            absolute_sigma={"S_meas": 0.002, "P_meas": 0.002},
        ),
    )
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for r in generate(plant or MODEL, run, seed=seed).records:
        rows.setdefault(r.sensor, []).append((r.t_sample_h, r.value, r.t_h))
    series = {name: series_from_rows(name, rs) for name, rs in rows.items()}
    return BatchData(batch_id, origin or f"synthetic seed {seed}", series, steps, {}, {})
