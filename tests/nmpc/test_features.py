"""Move blocking, rate limits, soft bounds, tracking and the shrinking horizon do what they say."""

from __future__ import annotations

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
    Tracking,
)
from bpcontrol.records import USABLE_PLAN_STATUSES
from models import load_model

MODEL = load_model("dompc_batch_reactor")
X0 = np.array([1.0, 0.5, 0.0, 120.0])
BASE = dict(
    horizon=10,
    dt_h=1.0,
    objective=Objective(terminal={"P_s": -1.0}, stage={"P_s": -1.0}, move={"inp": 1.0}),
    discretization="rk4",
    solver="ipopt",
)


def solve(**changes: object) -> tuple[NMPC, Plan]:
    ctl = NMPC(MODEL, NMPCConfig(**{**BASE, **changes}))  # type: ignore[arg-type]
    plan, _ = ctl.step(ctl.init(X0), StateEstimate(X0, MODEL.p0), 0.0)
    assert plan.status.usable, plan.message
    return ctl, plan


def test_move_blocking_holds_the_input_within_each_block() -> None:
    _, plan = solve(move_blocks=(2, 3, 5))
    u = plan.U[:, 0]
    assert np.all(u[0:2] == u[0]) and np.all(u[2:5] == u[2]) and np.all(u[5:] == u[5])


def test_rate_limits_bound_every_move() -> None:
    rate = 2e-4  # per hour, slower than the unconstrained optimum moves (about 9e-4)
    _, plan = solve(rate_limits={"inp": rate})
    u = np.concatenate([[MODEL.u0[0]], plan.U[:, 0]])
    assert np.max(np.abs(np.diff(u))) <= rate * 1.0 + 1e-7
    assert np.max(np.abs(np.diff(u))) > 0.5 * rate  # the limit is active


def test_soft_bound_is_exact_when_it_can_be_met() -> None:
    """An exact L1 penalty gives the hard-constrained optimum: zero slack (Fletcher 1987)."""
    _, soft = solve(soft_bounds=(SoftBound(name="X_s", upper=1.2, weight_l1=1e3),))
    _, hard = solve(state_bounds={"X_s": (0.0, 1.2)})
    assert soft.slack_max <= 1e-6
    assert soft.X[1:, 0].max() <= 1.2 + 1e-6
    # same optimal cost (the flat optimum leaves the feed itself loosely determined)
    assert soft.cost == pytest.approx(hard.cost, rel=1e-3)


def test_soft_bound_keeps_an_impossible_problem_solvable() -> None:
    """X_s already above its bound at the start: the problem still has a solution."""
    ctl = NMPC(
        MODEL,
        NMPCConfig(**{**BASE, "soft_bounds": (SoftBound(name="X_s", upper=0.5),)}),  # type: ignore[arg-type]
    )
    plan, _ = ctl.step(ctl.init(X0), StateEstimate(X0, MODEL.p0), 0.0)
    assert plan.status.value == "infeasible-softened"
    assert plan.slack_max > 0.0


def test_tracking_drives_the_feed_to_keep_volume_on_target() -> None:
    """Track V_s = 121 m3 from 120: the plan feeds about 1 m3 over the horizon."""
    _, plan = solve(
        objective=Objective(tracking=(Tracking(name="V_s", target=121.0, weight=100.0),)),
    )
    assert 120.8 < plan.X[-1, 3] < 121.2
    assert np.all(plan.U[:, 0] >= -1e-9) and plan.U[0, 0] > 0.0


@pytest.mark.parametrize("t", [0.0, 14.5, 17.0, 19.99])
def test_shrinking_horizon_ends_at_the_batch_end(t: float) -> None:
    ctl = NMPC(
        MODEL,
        NMPCConfig(**{**BASE, "horizon_mode": "batch_end", "batch_end_h": 20.0}),  # type: ignore[arg-type]
    )
    h = ctl.interval_lengths(t)
    assert h.sum() == pytest.approx(20.0 - t, abs=1e-12)
    assert h[0] == pytest.approx(min(1.0, 20.0 - t))
    assert np.all(h >= 0.0)


def test_usable_plan_statuses_in_records_match_the_solver() -> None:
    """The historian's text statuses that count as usable are SolveStatus.usable's."""
    assert {s.value for s in SolveStatus if s.usable} == USABLE_PLAN_STATUSES


def test_softened_is_judged_relative_to_the_bounds_scale() -> None:
    """The same problem, the bound 0.5 g/L violated at the start: a tolerance above the
    violation relative to the bound's scale reports it solved, one below softened."""
    from bpcontrol.nmpc._ocp import soft_scale

    bound = SoftBound(name="X_s", upper=0.5)
    scale = soft_scale(MODEL, "X_s", (bound.lower, bound.upper))
    assert scale >= 0.5
    statuses = {}
    for tol in (1e-9, 1e3):
        ctl = NMPC(
            MODEL,
            NMPCConfig(**{**BASE, "soft_bounds": (bound,), "slack_tolerance": tol}),  # type: ignore[arg-type]
        )
        plan, _ = ctl.step(ctl.init(X0), StateEstimate(X0, MODEL.p0), 0.0)
        statuses[tol] = plan.status.value
        assert plan.slack_max > 0.0
        assert plan.slack_max / scale < 1e3  # the violation is finite, well below 1e3 scales
    assert statuses == {1e-9: "infeasible-softened", 1e3: "solved"}
