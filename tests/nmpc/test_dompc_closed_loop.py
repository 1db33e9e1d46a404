"""bpcontrol's NMPC on do-mpc's batch-reactor example, closed loop and one OCP, without do-mpc.

The problem is that of do-mpc's ``examples/batch_reactor`` (N = 20 intervals of 1 h, cost
-P_s per stage and at the end, move penalty 1.0 on the feed, hard bounds X_s in [0, 3.7],
S_s >= -0.01, P_s in [0, 3], V_s >= 0, feed in [0, 0.2], nominal Y_x = 0.5, S_in = 200,
x0 = [1, 0.5, 0, 120], 150 steps of state feedback). bpcontrol must reach P_s >= 1.68 with
every step solved (do-mpc's own loop: 1.682 with its initial guess set, see
benchmarks/nmpc_vs_dompc.py). The plant is bpcontrol's CVODES integrator (which matches
do-mpc's simulator to 1e-6, tests/models/test_dompc_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import casadi as ca
import numpy as np
import pytest

from bpcontrol.nmpc import NMPC, NMPCConfig, Objective, Plan, SolveStatus, StateEstimate
from models import Model, load_model

N_STEPS = 150
X0 = np.array([1.0, 0.5, 0.0, 120.0])
STATE_BOUNDS = {
    "X_s": (0.0, 3.7),
    "S_s": (-0.01, np.inf),
    "P_s": (0.0, 3.0),
    "V_s": (0.0, np.inf),
}
CONFIG = NMPCConfig(
    horizon=20,
    dt_h=1.0,
    objective=Objective(terminal={"P_s": -1.0}, stage={"P_s": -1.0}, move={"inp": 1.0}),
    state_bounds=STATE_BOUNDS,
    input_bounds={"inp": (0.0, 0.2)},
    discretization="rk4",
    rk4_substeps=4,
    solver="rti",
)
TOL = 1e-6


@dataclass
class ClosedLoop:
    plans: list[Plan]
    xs: np.ndarray  # (N_STEPS + 1, nx) plant states


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("dompc_batch_reactor")


@pytest.fixture(scope="module")
def closed_loop(model: Model) -> ClosedLoop:
    ctl = NMPC(model, CONFIG)
    plant = model.to_casadi().integrator(1.0, method="cvodes", abstol=1e-10, reltol=1e-10)
    p = model.p0.copy()
    x = X0.copy()
    state = ctl.init(x)
    plans, xs = [], [x]
    for k in range(N_STEPS):
        plan, state = ctl.step(state, StateEstimate(x, p), float(k))
        plans.append(plan)
        x = np.asarray(plant(x, plan.u_next, p)).ravel()
        xs.append(x)
    return ClosedLoop(plans, np.array(xs))


def _within_bounds(model: Model, plan: Plan, tol: float) -> None:
    """Every predicted node after the first and every move respect the hard bounds."""
    for name, (lo, hi) in STATE_BOUNDS.items():
        v = plan.X[1:, model.index(name)]
        assert np.all(v >= lo - tol), f"{name} below {lo}: {v.min()!r}"
        assert np.all(v <= hi + tol), f"{name} above {hi}: {v.max()!r}"
    assert np.all(plan.U >= -tol) and np.all(plan.U <= 0.2 + tol), plan.U.ravel()


def test_rti_closed_loop_reaches_the_product_and_solves_every_step(
    model: Model, closed_loop: ClosedLoop
) -> None:
    statuses = [plan.status for plan in closed_loop.plans]
    bad = [
        (k, p.status.value, p.message)
        for k, p in enumerate(closed_loop.plans)
        if p.status is not SolveStatus.SOLVED
    ]
    assert not bad, f"{len(bad)} steps not SOLVED, first: {bad[:3]}"
    assert statuses[0] is SolveStatus.SOLVED and closed_loop.plans[0].iterations > 1  # IPOPT
    assert all(p.message.startswith("real-time iteration") for p in closed_loop.plans[1:])
    final_P = closed_loop.xs[-1, model.index("P_s")]
    assert final_P >= 1.68, f"final P_s {final_P:.4f} < 1.68"
    # the plant honours the bounds the plans respect (X_s rides on its bound near the end)
    X_s = closed_loop.xs[:, model.index("X_s")]
    assert X_s.max() <= 3.7 + 1e-4 and X_s.max() > 3.69
    u = np.array([p.u_next[0] for p in closed_loop.plans])
    assert np.all(u >= -TOL) and np.all(u <= 0.2 + TOL)
    for plan in closed_loop.plans:
        _within_bounds(model, plan, tol=1e-6)


def test_first_step_ipopt_solution_satisfies_the_bounds(
    model: Model, closed_loop: ClosedLoop
) -> None:
    first = closed_loop.plans[0]
    assert first.message == "Solve_Succeeded"
    _within_bounds(model, first, tol=1e-7)  # IPOPT relaxes bounds by 1e-8 relative
    np.testing.assert_allclose(first.X[0], X0)
    # the prediction of the first interval is what the plant then did (RK4 vs CVODES)
    np.testing.assert_allclose(first.X[1], closed_loop.xs[1], rtol=1e-6, atol=1e-8)


def test_ipopt_solution_of_one_ocp_is_a_kkt_point(model: Model) -> None:
    """From a state where the biomass bound X_s <= 3.7 binds, IPOPT's optimum is a KKT point.

    The solution is rebuilt from the plan (RK4 has no hidden variables) and checked against
    the NLP itself: bounds and dynamics hold, the Lagrangian's gradient vanishes, and bound
    multipliers are nonzero only on active bounds, with the right sign.
    """
    ctl = NMPC(model, replace(CONFIG, solver="ipopt"))
    x0 = np.array([3.3, 0.3, 0.6, 123.0])
    p = model.p0.copy()
    u_prev = np.array([0.02])
    state = ctl.init(x0, u0=u_prev)
    plan, state = ctl.step(state, StateEstimate(x0, p), 0.0)
    assert plan.status is SolveStatus.SOLVED, plan.message
    _within_bounds(model, plan, tol=1e-7)
    X_s = plan.X[:, model.index("X_s")]
    assert np.isclose(X_s.max(), 3.7, atol=1e-6), "the bound X_s <= 3.7 should bind"

    ocp = ctl.ocp
    lay = ocp.layout
    w = np.zeros(lay.n_w)
    w[lay.X] = plan.X
    w[lay.U] = plan.U[:, lay.manip][: lay.U.shape[0]]
    w /= ocp.w_scale
    par = np.concatenate([x0, u_prev, p, ctl.interval_lengths(0.0)])
    assert par.size == lay.n_par
    nlp = ocp.nlp
    fns = ca.Function(
        "kkt",
        [nlp["x"], nlp["p"]],
        [nlp["g"], ca.gradient(nlp["f"], nlp["x"]), ca.jacobian(nlp["g"], nlp["x"])],
    )
    g, grad_f, J = (np.asarray(ca.DM(v).full()) for v in fns(w, par))
    g = g.ravel()
    lam_x, lam_g = state.lam_x, state.lam_g
    assert lam_x is not None and lam_g is not None

    # primal feasibility
    assert np.all(w >= ocp.lbw - 1e-7) and np.all(w <= ocp.ubw + 1e-7)
    assert np.max(np.abs(np.clip(g, ocp.lbg, ocp.ubg) - g)) < 1e-8
    # stationarity of the Lagrangian f + lam_g' g + lam_x' w
    residual = grad_f.ravel() + J.T @ lam_g + lam_x
    assert np.max(np.abs(residual)) < 1e-5 * max(1.0, np.max(np.abs(grad_f)))
    # complementarity with signs: lam_x > 0 only against an upper bound, < 0 a lower one
    upper, lower = lam_x > 0, lam_x < 0
    assert np.all(np.abs(lam_x[upper] * (ocp.ubw[upper] - w[upper])) < 1e-7)
    assert np.all(np.abs(lam_x[lower] * (w[lower] - ocp.lbw[lower])) < 1e-7)
    x_s_upper = lay.X[1:, model.index("X_s")]
    assert np.any(lam_x[x_s_upper] > 1e-6), "X_s <= 3.7 is active but carries no multiplier"


def test_rti_never_takes_an_infeasible_qp_step(model: Model) -> None:
    """Without the fallback QP solver, a bad QP answer is reported, never applied.

    CasADi's qrqp returns "success" on points that violate the QP's bounds once X_s <= 3.7
    binds (casadi/casadi#3141); the step check must catch every such point.
    """
    ctl = NMPC(model, replace(CONFIG, qp_fallback=None))
    plant = model.to_casadi().integrator(1.0)
    p, x = model.p0.copy(), X0.copy()
    state = ctl.init(x)
    for k in range(100):
        plan, state = ctl.step(state, StateEstimate(x, p), float(k))
        if plan.status is SolveStatus.SOLVED:
            _within_bounds(model, plan, tol=1e-6)
        else:
            assert plan.status is SolveStatus.FAILED
            assert "QP failed" in plan.message and "shifted" in plan.message
        x = np.asarray(plant(x, plan.u_next, p)).ravel()
    assert x[model.index("X_s")] <= 3.7 + 1e-3
