"""A run spec with ``estimator = "mhe"`` builds and runs the loop with the MHE.

The spec goes through its TOML form (``run.toml``, :func:`load_run_spec`) so the option
survives a round trip; the loop runs the E. coli pack's recipe (no NMPC, to keep it
short) for 0.5 h on the simulated plant, and every estimate it stores is the MHE's:
finite, healthy, inside the model's state bounds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from bpcontrol.adapters import LoopEstimator
from bpcontrol.assembly import build_loop
from bpcontrol.clock import PacedClock
from bpcontrol.records import EstimateRecord, EventRecord
from bpcontrol.runspec import RunSpecError, load_run_spec, resolve, spec_for
from estimators import MHEConfig, MovingHorizonEstimator
from hil.runner import pack_scenario, run_batch, simulated_plant
from services.historian import EmbeddedHistorian, read_records


def test_mhe_run_spec_round_trips_and_runs(tmp_path: Path) -> None:
    spec = spec_for("ecoli_fedbatch", controller="recipe", estimator="mhe")
    pack = dataclasses.replace(
        spec.pack, ekf={**(spec.pack.ekf or {}), "mhe": {"window_h": 0.5, "solve_every": 5}}
    )
    path = tmp_path / "run.toml"
    path.write_text(dataclasses.replace(spec, pack=pack).to_toml(), encoding="utf-8")
    loaded = load_run_spec(path)
    assert loaded.estimator == "mhe"
    run = resolve(loaded)
    assert run.mhe == MHEConfig(window_h=0.5, solve_every=5, step_h=run.recipe.measurement_period_h)

    result = run_batch(run, run_dir=tmp_path / "run", duration_h=0.5, report=False)
    assert result.state == "completed", result.reason
    estimates = read_records(tmp_path / "run" / "records.sqlite", EstimateRecord)
    assert len(estimates) >= 30
    x_lo, x_hi = run.model.bounds("states")
    for e in estimates:
        assert isinstance(e, EstimateRecord) and e.healthy, e
        x = np.array([e.x[n] for n in run.model.state_names])
        assert np.all(np.isfinite(x)) and np.all(x >= x_lo) and np.all(x <= x_hi), e
    events = read_records(tmp_path / "run" / "records.sqlite", EventRecord)
    assert not [e for e in events if isinstance(e, EventRecord) and "failed" in e.kind.value]


def test_assembly_picks_the_mhe(tmp_path: Path) -> None:
    run = resolve(spec_for("ecoli_fedbatch", controller="recipe", estimator="mhe"))
    plant = simulated_plant(run, pack_scenario(run), seed=1)
    historian = EmbeddedHistorian(tmp_path / "records.sqlite")
    try:
        assembled = build_loop(run, plant=plant, historian=historian, clock=PacedClock())
    finally:
        historian.close()
    est = assembled.estimator
    assert isinstance(est, LoopEstimator)
    assert isinstance(est.online, MovingHorizonEstimator)
    assert est.online.mhe == run.mhe


def test_unknown_estimator_is_refused(tmp_path: Path) -> None:
    spec = spec_for("ecoli_fedbatch", controller="recipe")
    text = spec.to_toml().replace('estimator = "compiled"', 'estimator = "ukf"')
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunSpecError, match="estimator: must be 'compiled', 'jax' or 'mhe'"):
        load_run_spec(path)
