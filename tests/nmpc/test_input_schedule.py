"""Scheduled inputs: what the recipe does to the inputs the NMPC does not choose is predicted.

A tiny fed-batch with two inputs: a substrate feed ``F`` the controller manipulates and a
water addition ``W`` (dilution) that the recipe schedules. The controller keeps the
substrate at 2 g/L; the water steps up part-way through the horizon. The plan must show
the step in its inputs (``Plan.U``) and in its predicted states, which must agree with an
open-loop simulation of those inputs by the model's own integrator (CVODES, 1e-10) to the
accuracy of the controller's RK4 discretization, with IPOPT and with real-time iterations,
in receding, cut and shrinking (``batch_end``) horizons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bpcontrol.nmpc import NMPC, NMPCConfig, Objective, Plan, SolveStatus, StateEstimate, Tracking
from bpcontrol.recipe import parse_recipe
from models import Input, MathNamespace, Model, Output, Parameter, State, Values

_SRC = "test model"


def _rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    mu = p.mu_m * x.S / (p.K_s + x.S)
    dilution = (u.F + u.W) / x.V  # 1/h, feed and water together
    return {
        "X": mu * x.X - dilution * x.X,
        "S": -mu * x.X / p.Y + u.F / x.V * p.S_in - dilution * x.S,
        "V": u.F + u.W,
    }


def _measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"S_meas": x.S}


MODEL = Model(
    name="diluted_fedbatch",
    description="Monod fed-batch with a substrate feed and a water addition (test model)",
    states=(
        State(name="X", unit="g/L", lower=0.0, upper=100.0, nominal=1.0, description="biomass"),
        State(name="S", unit="g/L", lower=0.0, upper=200.0, nominal=2.0, description="substrate"),
        State(name="V", unit="m3", lower=0.1, upper=20.0, nominal=1.0, description="volume"),
    ),
    inputs=(
        Input(name="F", unit="m3/h", lower=0.0, upper=0.5, nominal=0.0, description="feed"),
        Input(name="W", unit="m3/h", lower=0.0, upper=0.5, nominal=0.0, description="water"),
    ),
    parameters=(
        Parameter.of("mu_m", "1/h", 0.3, 0.0, 1.0, _SRC),
        Parameter.of("K_s", "g/L", 0.5, 0.01, 10.0, _SRC),
        Parameter.of("Y", "g/g", 0.5, 0.01, 1.0, _SRC),
        Parameter.of("S_in", "g/L", 100.0, 1.0, 500.0, _SRC),
    ),
    outputs=(Output(name="S_meas", unit="g/L"),),
    rhs=_rhs,
    measure=_measure,
)
iF, iW, iV = MODEL.index("F"), MODEL.index("W"), MODEL.index("V")
X0, P0 = MODEL.x0, MODEL.p0
WATER_ON_H = 5.0  # the water addition starts here (h)
WATER = 0.2  # m3/h


def water_schedule(t_h: float) -> np.ndarray:
    """All inputs at ``t_h``: the feed's recipe value (unused: manipulated) and the water."""
    return np.array([0.05, WATER if t_h >= WATER_ON_H - 1e-9 else 0.0])


CONFIG = NMPCConfig(
    horizon=8,
    dt_h=1.0,
    manipulated=("F",),
    input_schedule=water_schedule,
    objective=Objective(tracking=(Tracking(name="S", target=2.0, weight=10.0),), move={"F": 1.0}),
    discretization="rk4",
    rk4_substeps=8,
    solver="ipopt",
)
RTOL = 1e-6  # RK4 with 8 substeps of 1/8 h against CVODES: about 1e-7 here


def starts(plan: Plan) -> np.ndarray:
    """Start time (h) of each interval of a plan's horizon."""
    return plan.t_nodes[:-1]


def simulate(plan: Plan) -> np.ndarray:
    """The plan's inputs applied open loop from its first node (the model's integrator)."""
    xs = [plan.X[0]]
    for k, h in enumerate(np.diff(plan.t_nodes)):
        x = xs[-1] if h <= 0 else MODEL.to_casadi().integrator(float(h))(xs[-1], plan.U[k], P0)
        xs.append(np.asarray(x).ravel())
    return np.array(xs)


def assert_prediction_is_the_simulation(plan: Plan, rtol: float = RTOL) -> None:
    np.testing.assert_allclose(plan.X, simulate(plan), rtol=rtol, atol=rtol)
    # the volume is linear in the inputs: exact in RK4 and in any linearization
    dV = np.diff(plan.X[:, iV])
    np.testing.assert_allclose(dV, (plan.U[:, iF] + plan.U[:, iW]) * np.diff(plan.t_nodes))


def assert_schedule_in_plan(plan: Plan, schedule: Callable[[float], Any]) -> None:
    expected = [np.asarray(schedule(float(t)))[iW] for t in starts(plan)]
    np.testing.assert_array_equal(plan.U[:, iW], expected)


def first_plan(config: NMPCConfig, t: float = 0.0, x: np.ndarray = X0) -> tuple[NMPC, Plan]:
    ctl = NMPC(MODEL, config)
    plan, _ = ctl.step(ctl.init(x), StateEstimate(x, P0), t)
    assert plan.status is SolveStatus.SOLVED, plan.message
    return ctl, plan


def test_ipopt_prediction_follows_the_scheduled_water_step() -> None:
    ctl, plan = first_plan(CONFIG)
    assert plan.U[:, iW].tolist() == [0.0] * 5 + [WATER] * 3  # steps up mid-horizon
    assert plan.u_next[iW] == 0.0
    assert_prediction_is_the_simulation(plan)
    # the parameters of the NLP, not a rebuild: nx + nu + n_p + N + N x (one scheduled input)
    assert ctl.ocp.layout.scheduled.tolist() == [iW]
    assert ctl.ocp.layout.n_par == MODEL.nx + MODEL.nu + MODEL.n_p + 8 + 8
    # the controller sees the dilution coming and feeds more from then on than one that
    # holds the water at its nominal 0 (which would keep planning the old feed)
    _, blind = first_plan(replace(CONFIG, input_schedule=None))
    assert np.all(blind.U[:, iW] == 0.0)
    assert np.all(plan.U[5:, iF] > blind.U[5:, iF] + 2e-3)  # about 20 % more
    np.testing.assert_allclose(plan.U[:4, iF], blind.U[:4, iF], rtol=0.05)


def test_rti_iterations_converge_to_the_prediction_with_the_schedule() -> None:
    """Real-time iterations at one time are SQP steps on one NLP: they converge to its
    solution, whose prediction must be the simulation of the schedule (no shift in the
    batch_end mode, the input applied before held fixed)."""
    cfg = replace(CONFIG, solver="rti", horizon_mode="batch_end", batch_end_h=8.0)
    ctl = NMPC(MODEL, cfg)
    plan0, state = ctl.step(ctl.init(X0), StateEstimate(X0, P0), 0.0)
    assert plan0.message == "Solve_Succeeded"
    x1 = np.asarray(MODEL.to_casadi().integrator(1.0)(X0, plan0.u_next, P0)).ravel()
    plans = []
    for _ in range(4):
        plan, state = ctl.step(state, StateEstimate(x1, P0), 1.0, u_applied=plan0.u_next)
        assert plan.status is SolveStatus.SOLVED
        assert plan.message.startswith("real-time iteration"), plan.message
        assert_schedule_in_plan(plan, water_schedule)
        plans.append(plan)
    assert plans[-1].U[:, iW].tolist() == [0.0] * 4 + [WATER] * 3 + [WATER]  # last: 0 h long
    assert_prediction_is_the_simulation(plans[-1])
    # Newton's quadratic convergence (here 4e-2, 1e-4, 1e-7 = the RK4 error, then flat)
    gaps = [float(np.max(np.abs(p.X - simulate(p)))) for p in plans]
    assert gaps[1] < 1e-2 * gaps[0] and gaps[2] < 1e-6


def test_rti_closed_loop_plans_carry_the_schedule() -> None:
    """Receding horizon, one real-time iteration per period: every plan takes the water
    schedule at its own interval starts (shifting with the horizon) and predicts the
    coming period as the plant then does it."""
    ctl = NMPC(MODEL, replace(CONFIG, solver="rti"))
    plant = MODEL.to_casadi().integrator(1.0)
    x, state = X0.copy(), ctl.init(X0)
    for k in range(7):
        plan, state = ctl.step(state, StateEstimate(x, P0), float(k))
        assert plan.status is SolveStatus.SOLVED, plan.message
        assert plan.message.startswith("Solve_Succeeded" if k == 0 else "real-time iteration")
        assert_schedule_in_plan(plan, water_schedule)
        assert plan.U[:, iW].sum() == pytest.approx(WATER * min(8, k + 3))
        dV = np.diff(plan.X[:, iV])  # linear: exact after one iteration as well
        np.testing.assert_allclose(dV, plan.U[:, iF] + plan.U[:, iW])
        x_next = np.asarray(plant(x, plan.u_next, P0)).ravel()
        np.testing.assert_allclose(plan.X[1], x_next, rtol=1e-4)
        x = x_next
    assert x[iV] > 1.0 + 2 * WATER  # the plant did get the water


RECIPE = {
    "model": "diluted_fedbatch",
    "duration_h": 12.0,
    "measurement_period_min": 60.0,
    "control_period_min": 60.0,
    "limits": {"F": {"lower": 0.0, "upper": 0.5}, "W": {"lower": 0.0, "upper": 0.5}},
    "phases": [
        {"name": "fed-batch", "start_h": 0.0, "fallback": {"F": 0.05, "W": 0.0}},
        {
            "name": "dilution",
            "start_h": 4.0,
            "fallback": {"W": {"steps": [[0.0, 0.2], [4.0, 0.4]]}},
        },
    ],
}


@pytest.mark.parametrize(
    ("mode", "t", "water"),
    [
        # N = 4: intervals of 1, 11/3, 11/3, 11/3 h to the batch end, starting 0, 1, 4.67, 8.33
        ("batch_end", 0.0, [0.0, 0.0, 0.2, 0.4]),
        # N = 8 intervals of 1 h from 6 h, cut at the batch end (12 h): the last two 0 h long
        ("receding", 6.0, [0.2, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]),
    ],
)
def test_recipe_step_table_is_taken_at_every_interval_start(
    mode: str, t: float, water: list[float]
) -> None:
    recipe = parse_recipe(RECIPE, MODEL)
    cfg = replace(
        CONFIG,
        horizon=4 if mode == "batch_end" else 8,
        rk4_substeps=64 if mode == "batch_end" else 8,  # 11/3 h intervals: keep RK4 at 1e-7
        horizon_mode=mode,  # type: ignore[arg-type]
        batch_end_h=recipe.duration_h,
        input_schedule=recipe.fallback,
        initial_inputs=recipe.fallback,
    )
    x = MODEL.states_with(V=2.0)
    _, plan = first_plan(cfg, t=t, x=x)
    assert plan.t_nodes[-1] == pytest.approx(12.0)
    assert plan.U[:, iW].tolist() == water
    assert_schedule_in_plan(plan, recipe.fallback)
    assert_prediction_is_the_simulation(plan)


def test_fixed_inputs_override_the_schedule_and_constants_are_unchanged() -> None:
    ctl, pinned = first_plan(replace(CONFIG, fixed_inputs={"W": 0.1}))
    assert ctl.ocp.layout.scheduled.size == 0  # a constant of the NLP, as before
    assert ctl.ocp.layout.n_par == MODEL.nx + MODEL.nu + MODEL.n_p + 8
    assert np.all(pinned.U[:, iW] == 0.1)
    _, constant = first_plan(replace(CONFIG, fixed_inputs={"W": 0.1}, input_schedule=None))
    np.testing.assert_array_equal(pinned.U, constant.U)
    np.testing.assert_array_equal(pinned.X, constant.X)
    assert_prediction_is_the_simulation(constant)
    _, nominal = first_plan(replace(CONFIG, input_schedule=None))
    assert np.all(nominal.U[:, iW] == MODEL.inputs[iW].nominal)


def test_rate_limits_and_move_penalties_ignore_scheduled_inputs() -> None:
    """A scheduled step is data, not a move: no rate limit can make it infeasible, no move
    penalty prices it."""
    ctl, free = first_plan(CONFIG)
    limited_ctl, limited = first_plan(
        replace(
            CONFIG,
            rate_limits={"W": 1e-3},
            objective=replace(CONFIG.objective, move={"F": 1.0, "W": 1e3}),
        )
    )
    assert limited.U[:, iW].tolist() == free.U[:, iW].tolist()
    assert limited.cost == pytest.approx(free.cost, rel=1e-9)
    assert limited_ctl.ocp.layout.n_g == ctl.ocp.layout.n_g  # no constraint rows for W
    np.testing.assert_allclose(limited.U, free.U, rtol=1e-7, atol=1e-10)


def test_a_failing_schedule_falls_back_and_never_raises() -> None:
    def fails_late(t_h: float) -> np.ndarray:
        if t_h > 12.0:
            raise RuntimeError("historian down")
        return water_schedule(t_h)

    ctl = NMPC(MODEL, replace(CONFIG, input_schedule=fails_late))
    plan, state = ctl.step(ctl.init(X0), StateEstimate(X0, P0), 0.0)
    assert plan.status is SolveStatus.SOLVED
    plan, state = ctl.step(state, StateEstimate(X0, P0), 6.0)  # horizon reaches 13 h
    assert plan.status is SolveStatus.FAILED
    assert "input_schedule(13 h) failed: RuntimeError: historian down" in plan.message
    assert "shifted" in plan.message
    # no plan yet (bad estimate on the first step): the scheduled inputs are still known
    bad, _ = ctl.step(ctl.init(X0), StateEstimate(np.full(3, np.nan), P0), 0.0)
    assert bad.status is SolveStatus.FAILED
    assert bad.U[:, iW].tolist() == [0.0] * 5 + [WATER] * 3


def test_schedule_steps_inside_a_move_block() -> None:
    """Move blocks tie the manipulated feed, never the schedule: the water steps at 5 h
    inside the block of intervals 4-7 while the feed stays one move there."""
    _, plan = first_plan(replace(CONFIG, move_blocks=(4, 4)))
    assert np.all(plan.U[:4, iF] == plan.U[0, iF]) and np.all(plan.U[4:, iF] == plan.U[4, iF])
    assert plan.U[:, iW].tolist() == [0.0] * 5 + [WATER] * 3
    assert_prediction_is_the_simulation(plan)
