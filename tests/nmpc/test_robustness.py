"""The NMPC step never raises and nearly always delivers a usable plan, whatever it is fed.

- 200 random initial states and parameter sets (each value within +-30 % of nominal) on
  do-mpc's batch reactor, each a short closed loop (first step a full IPOPT solve, then
  real-time iterations), plant with the same parameters; and 200 such estimates fed one
  after the other to a single controller (every real-time iteration starts far off);
- a few random starts of the E. coli fed-batch (collocation, economic objective -P V,
  soft DO >= 20 %, move penalties);
- a NaN in the estimate gives a FAILED plan, the previous one shifted, and no exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bpcontrol.nmpc import (
    NMPC,
    NMPCConfig,
    Objective,
    Plan,
    SoftBound,
    SolveStatus,
    StateEstimate,
)
from models import Model, load_model

BATCH_CONFIG = NMPCConfig(
    horizon=20,
    dt_h=1.0,
    objective=Objective(terminal={"P_s": -1.0}, stage={"P_s": -1.0}, move={"inp": 1.0}),
    state_bounds={
        "X_s": (0.0, 3.7),
        "S_s": (-0.01, np.inf),
        "P_s": (0.0, 3.0),
        "V_s": (0.0, np.inf),
    },
    input_bounds={"inp": (0.0, 0.2)},
    solver="rti",
)
N_CASES = 200
STEPS_PER_CASE = 3


def _jitter(rng: np.random.Generator, nominal: np.ndarray, rel: float = 0.3) -> np.ndarray:
    return nominal * rng.uniform(1.0 - rel, 1.0 + rel, size=nominal.shape)


def _run(
    ctl: NMPC, plant: Any, x: np.ndarray, p: np.ndarray, steps: int, dt_h: float
) -> list[Plan]:
    """A short closed loop; any exception from ``step`` fails the test."""
    plans = []
    state = ctl.init(x)
    for k in range(steps):
        plan, state = ctl.step(state, StateEstimate(x.copy(), p), k * dt_h)
        plans.append(plan)
        lo, hi = ctl.model.bounds("inputs")
        assert np.all(np.isfinite(plan.u_next)), plan.message
        assert np.all(plan.u_next >= lo - 1e-9) and np.all(plan.u_next <= hi + 1e-9)
        x = np.asarray(plant(x, plan.u_next, p)).ravel()
    return plans


def _check(plans: list[Plan], n_expected: int, min_usable: float) -> None:
    assert len(plans) == n_expected
    assert all(isinstance(p, Plan) and isinstance(p.status, SolveStatus) for p in plans)
    usable = [p.status.usable for p in plans]
    failed = [p.message for p in plans if not p.status.usable]
    assert np.mean(usable) >= min_usable, (
        f"{len(failed)} of {len(plans)} steps unusable, e.g. {failed[:3]}"
    )


def test_batch_reactor_random_states_and_parameters() -> None:
    model = load_model("dompc_batch_reactor")
    ctl = NMPC(model, BATCH_CONFIG)
    plant = model.to_casadi().integrator(1.0)
    rng = np.random.default_rng(20261125)
    p_lo, p_hi = model.bounds("parameters")
    plans: list[Plan] = []
    for _ in range(N_CASES):
        x0 = _jitter(rng, np.array([1.0, 0.5, 0.0, 120.0]))
        x0[model.index("P_s")] = rng.uniform(0.0, 0.3)  # nominal 0: +-30 % of its scale
        p = np.clip(_jitter(rng, model.p0), p_lo, p_hi)
        plans += _run(ctl, plant, x0, p, STEPS_PER_CASE, 1.0)
    _check(plans, N_CASES * STEPS_PER_CASE, min_usable=0.99)


def test_batch_reactor_jumping_estimates() -> None:
    """One controller fed 200 unrelated random estimates in a row: each real-time
    iteration starts from a linearization far from the new state and parameters."""
    model = load_model("dompc_batch_reactor")
    ctl = NMPC(model, BATCH_CONFIG)
    rng = np.random.default_rng(11)
    p_lo, p_hi = model.bounds("parameters")
    state = ctl.init(model.x0)
    plans: list[Plan] = []
    for k in range(N_CASES):
        x = _jitter(rng, np.array([1.0, 0.5, 0.0, 120.0]))
        x[model.index("P_s")] = rng.uniform(0.0, 0.3)
        p = np.clip(_jitter(rng, model.p0), p_lo, p_hi)
        plan, state = ctl.step(state, StateEstimate(x, p), float(k))
        plans.append(plan)
    _check(plans, N_CASES, min_usable=0.99)
    assert sum(p.message.startswith("real-time iteration") for p in plans) >= 0.9 * N_CASES


@pytest.fixture(scope="module")
def ecoli() -> Model:
    return load_model("ecoli_fedbatch")


def _ecoli_config() -> NMPCConfig:
    return NMPCConfig(
        horizon=10,
        dt_h=0.25,
        discretization="collocation",
        objective=Objective(
            terminal_fn=lambda m, x, p: -x.P * x.V,
            move={"F": 10.0, "Q_air": 1e-2, "N_stir": 1e-5, "T_set": 1e-2},
        ),
        soft_bounds=(SoftBound(name="DO", lower=20.0),),
        solver="rti",
    )


def test_ecoli_random_starts(ecoli: Model) -> None:
    ctl = NMPC(ecoli, _ecoli_config())
    plant = ecoli.to_casadi().integrator(0.25)
    rng = np.random.default_rng(7)
    x_lo, x_hi = ecoli.bounds("states")
    p_lo, p_hi = ecoli.bounds("parameters")
    plans: list[Plan] = []
    n_cases, steps = 4, 3
    for _ in range(n_cases):
        x0 = _jitter(rng, ecoli.x0)
        x0[[ecoli.index("A"), ecoli.index("P")]] = rng.uniform(0.0, 0.3, size=2)
        x0 = np.clip(x0, x_lo, x_hi)
        p = np.clip(_jitter(rng, ecoli.p0), p_lo, p_hi)
        plans += _run(ctl, plant, x0, p, steps, 0.25)
    # too few steps for a percentage: every one must be usable
    _check(plans, n_cases * steps, min_usable=1.0)


@pytest.mark.parametrize("where", ["x", "p"])
def test_nan_estimate_gives_the_previous_plan_shifted(where: str) -> None:
    model = load_model("dompc_batch_reactor")
    ctl = NMPC(model, BATCH_CONFIG)
    plant = model.to_casadi().integrator(1.0)
    x, p = np.array([1.0, 0.5, 0.0, 120.0]), model.p0.copy()
    state = ctl.init(x)
    prev: Plan | None = None
    for k in range(3):
        prev, state = ctl.step(state, StateEstimate(x, p), float(k))
        assert prev.status is SolveStatus.SOLVED
        x = np.asarray(plant(x, prev.u_next, p)).ravel()
    assert prev is not None

    bad_x, bad_p = x.copy(), p.copy()
    if where == "x":
        bad_x[1] = np.nan
    else:
        bad_p[0] = np.nan
    plan, state = ctl.step(state, StateEstimate(bad_x, bad_p), 3.0)  # must not raise
    assert plan.status is SolveStatus.FAILED
    assert not plan.status.usable
    assert "estimate is not finite" in plan.message
    assert "previous plan shifted by one period" in plan.message
    np.testing.assert_array_equal(plan.U[:-1], prev.U[1:])
    np.testing.assert_array_equal(plan.U[-1], prev.U[-1])
    np.testing.assert_array_equal(plan.X[:-1], prev.X[1:])
    np.testing.assert_array_equal(plan.u_next, prev.U[1])
    np.testing.assert_allclose(plan.t_nodes, prev.t_nodes + 1.0)
    assert plan.t == 3.0 and np.isnan(plan.cost)

    # the next good estimate is solved again (from scratch: a full IPOPT solve)
    x = np.asarray(plant(x, plan.u_next, p)).ravel()
    plan, state = ctl.step(state, StateEstimate(x, p), 4.0)
    assert plan.status is SolveStatus.SOLVED, plan.message
    assert plan.message == "Solve_Succeeded"


def test_nan_before_any_plan_holds_the_last_input() -> None:
    model = load_model("dompc_batch_reactor")
    ctl = NMPC(model, BATCH_CONFIG)
    state = ctl.init(np.array([1.0, 0.5, 0.0, 120.0]), u0=np.array([0.05]))
    bad = StateEstimate(np.array([1.0, np.nan, 0.0, 120.0]), model.p0)
    plan, state = ctl.step(state, bad, 0.0)
    assert plan.status is SolveStatus.FAILED
    assert "estimate is not finite" in plan.message
    np.testing.assert_array_equal(plan.U, np.full((20, 1), 0.05))
    assert np.all(np.isnan(plan.X))


def test_wrong_shape_estimate_is_a_failed_plan_not_an_exception() -> None:
    model = load_model("dompc_batch_reactor")
    ctl = NMPC(model, BATCH_CONFIG)
    state = ctl.init(np.array([1.0, 0.5, 0.0, 120.0]))
    plan, _ = ctl.step(state, StateEstimate(np.ones(3), model.p0), 0.0)
    assert plan.status is SolveStatus.FAILED
    assert "wrong shape" in plan.message
