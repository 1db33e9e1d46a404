"""The real-time path's pieces are exact: the structured linearization against
differentiating the whole NLP at once, the condensed QP against the sparse one, and the
supervisor's input limits reach the plan."""

from __future__ import annotations

from typing import Any

import casadi as ca
import numpy as np
import pytest

from bpcontrol.nmpc import NMPC, NMPCConfig, Objective, SoftBound, StateEstimate
from bpcontrol.nmpc._buffered import BufferedFunction
from bpcontrol.nmpc._condensing import Condenser
from bpcontrol.nmpc._rti import structured_linearization
from bpcontrol.nmpc.presets import ecoli_nmpc_config
from models import load_model

DOMPC = load_model("dompc_batch_reactor")
X0 = np.array([1.0, 0.5, 0.0, 120.0])
BASE: dict[str, Any] = dict(
    horizon=10,
    dt_h=1.0,
    objective=Objective(terminal={"P_s": -1.0}, stage={"P_s": -1.0}, move={"inp": 1.0}),
    state_bounds={"X_s": (0.0, 3.7), "P_s": (0.0, 3.0)},
    input_bounds={"inp": (0.0, 0.2)},
)
VARIANTS: dict[str, dict[str, Any]] = {
    "rk4": {},
    "collocation": {"discretization": "collocation", "collocation_degree": 2},
    "move blocks, rate limit": {"move_blocks": (2, 3, 5), "rate_limits": {"inp": 0.05}},
    "soft bound": {"soft_bounds": (SoftBound(name="X_s", upper=3.0, weight_l1=10.0),)},
}
# rounding of sums of a few hundred terms of order one: 1e-12 absolute leaves a margin of
# about 1e3 over what the two evaluations differ by here (~1e-15)
TOL = 1e-12


def whole_nlp_linearization(ctl: NMPC) -> ca.Function:
    """The reference: Hessian, gradient and Jacobian of the whole NLP as one expression."""
    w, par, f, g = (ctl.ocp.nlp[k] for k in ("x", "p", "f", "g"))
    lam = ca.SX.sym("lam", g.shape[0])
    H, _ = ca.hessian(f + ca.dot(lam, g), w)
    return ca.Function("ref", [w, par, lam], [H, ca.gradient(f, w), ca.jacobian(g, w), g])


def random_point(ctl: NMPC, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lay, model = ctl.ocp.layout, ctl.model
    h = ctl.interval_lengths(0.0)
    par = ctl.parameters(model.x0, model.u0, model.p0, h, ctl.scheduled_inputs(0.0, h))
    return rng.uniform(0.1, 1.0, lay.n_w), par, rng.normal(size=lay.n_g)


def assert_same_linearization(ctl: NMPC) -> None:
    new, ref = structured_linearization(ctl.ocp), whole_nlp_linearization(ctl)
    for seed in range(3):
        w, par, lam = random_point(ctl, seed)
        H, grad, J, _, _, lba, _ = new(w, par, lam)
        H_ref, grad_ref, J_ref, g_ref = ref(w, par, lam)
        scale = max(1.0, float(ca.mmax(ca.fabs(H_ref))), float(ca.mmax(ca.fabs(J_ref))))
        assert float(ca.mmax(ca.fabs(ca.DM(H) - H_ref))) <= TOL * scale
        assert float(ca.mmax(ca.fabs(ca.DM(J) - J_ref))) <= TOL * scale
        assert float(ca.mmax(ca.fabs(grad - grad_ref))) <= TOL * scale
        g = ca.DM(ctl.ocp.lbg) - lba  # lba = lbg - g
        assert float(ca.mmax(ca.fabs(g - g_ref))) <= TOL * scale


@pytest.mark.parametrize("variant", VARIANTS)
def test_structured_linearization_is_the_whole_nlps(variant: str) -> None:
    assert_same_linearization(NMPC(DOMPC, NMPCConfig(**{**BASE, **VARIANTS[variant]})))


def test_structured_linearization_on_ecoli_collocation_with_smoothing() -> None:
    """Several manipulated inputs, smoothed kinks, collocation and soft bounds."""
    model = load_model("ecoli_fedbatch")
    cfg = ecoli_nmpc_config(model)
    assert cfg.discretization == "collocation" and cfg.soft_bounds
    assert_same_linearization(NMPC(model, cfg))


def closed_loop_qps(cfg: NMPCConfig, steps: int) -> tuple[NMPC, list[dict[str, np.ndarray]]]:
    """The QPs an RTI controller solves over ``steps`` steps on its own model."""
    ctl = NMPC(DOMPC, cfg)
    rti = ctl._rti
    assert rti is not None
    seen: list[dict[str, np.ndarray]] = []
    lin = rti._lin
    names = lin.fn.name_out()

    class Recording(BufferedFunction):
        def __call__(self, *values: Any) -> list[np.ndarray]:
            out = lin(*values)
            seen.append({n: o.copy() for n, o in zip(names, out, strict=True)})
            return out

    rec = Recording.__new__(Recording)
    rec.__dict__.update(lin.__dict__)
    rti._lin = rec
    sim = DOMPC.to_casadi().integrator(1.0)
    state, x = ctl.init(X0), X0.copy()
    for k in range(steps):
        plan, state = ctl.step(state, StateEstimate(x, DOMPC.p0), float(k))
        assert plan.status.usable, plan.message
        x = np.asarray(sim(x, plan.u_next, DOMPC.p0)).ravel()
    return ctl, seen


def test_condensed_qp_has_the_sparse_qps_solution_and_multipliers() -> None:
    """Condensing is an exact elimination: same step and multipliers as qpOASES on the
    sparse QP (to the solvers' precision), over a closed loop that reaches the X bound."""
    ctl, qps = closed_loop_qps(NMPCConfig(**{**BASE, "solver": "rti"}), 40)
    assert len(qps) == 39  # every step after the first full solve
    lin = structured_linearization(ctl.ocp)
    h_sp, a_sp = lin.sparsity_out("h"), lin.sparsity_out("a")
    lay = ctl.ocp.layout
    cond = Condenser(
        h_sp,
        a_sp,
        np.concatenate([lay.U.ravel(), lay.S]),
        np.flatnonzero(ctl.ocp.lbg == ctl.ocp.ubg),
        ctl.ocp.lbw,
        ctl.ocp.ubw,
    )
    sparse = ca.conic(
        "ref",
        "qpoases",
        {"h": h_sp, "a": a_sp},
        {"printLevel": "none", "sparse": True, "enableEqualities": True},
    )
    for q in qps:
        cond.bind(q)
        step = cond.solve()
        assert step.success, step.status
        ref = sparse.call(
            {
                "h": ca.DM(h_sp, q["h"]),
                "a": ca.DM(a_sp, q["a"]),
                **{k: q[k] for k in ("g", "lbx", "ubx", "lba", "uba")},
            }
        )
        # both solve the same KKT system: agreement to ~1e-12 here; 1e-9 leaves room
        assert np.max(np.abs(step.dw - np.asarray(ref["x"]).ravel())) <= 1e-9
        lam_ref = np.asarray(ref["lam_a"]).ravel()
        assert np.max(np.abs(step.lam_a - lam_ref)) <= 1e-9 * max(1.0, np.max(np.abs(lam_ref)))


def test_default_rti_takes_every_step_from_the_condensed_qp() -> None:
    """No fallback on do-mpc's batch reactor, where qrqp needed qpOASES 12 times in 150
    steps: the QP method the fast path's worst case depends on."""
    cfg = NMPCConfig(**{**BASE, "solver": "rti"})
    assert cfg.qp_solver == "condensed"
    ctl = NMPC(DOMPC, cfg)
    sim = DOMPC.to_casadi().integrator(1.0)
    state, x = ctl.init(X0), X0.copy()
    messages = []
    for k in range(60):
        plan, state = ctl.step(state, StateEstimate(x, DOMPC.p0), float(k))
        messages.append(plan.message)
        x = np.asarray(sim(x, plan.u_next, DOMPC.p0)).ravel()
    assert messages[1:] == ["real-time iteration"] * 59
    assert x[0] <= 3.7 + 1e-4  # the X bound holds on the plant (RK4 error near the bound)


@pytest.mark.parametrize("solver", ["ipopt", "rti"])
def test_input_bounds_narrow_the_plan(solver: str) -> None:
    """The supervisor's limits in force bound every planned move, not only the first."""
    ctl = NMPC(DOMPC, NMPCConfig(**{**BASE, "solver": solver}))
    sim = DOMPC.to_casadi().integrator(1.0)
    state, x = ctl.init(X0), X0.copy()
    free_max = 0.0
    for k in range(8):
        plan, state = ctl.step(state, StateEstimate(x, DOMPC.p0), float(k))
        free_max = max(free_max, float(plan.U[:, 0].max()))
        x = np.asarray(sim(x, plan.u_next, DOMPC.p0)).ravel()
    cap = 0.5 * free_max  # below what the free plan wants: the limit is active
    plan, _ = ctl.step(state, StateEstimate(x, DOMPC.p0), 8.0, input_bounds={"inp": (0.0, cap)})
    assert plan.status.usable, plan.message
    assert plan.U[:, 0].max() <= cap + 1e-9
    assert plan.U[:, 0].max() >= cap - 1e-6  # and the plan uses it
    # the model's bounds stay the outer limits; an empty intersection is said, not applied
    plan, _ = ctl.step(state, StateEstimate(x, DOMPC.p0), 8.0, input_bounds={"inp": (0.5, 0.9)})
    assert "miss its bounds" in plan.message and plan.U[:, 0].max() <= 0.2 + 1e-9


def test_buffered_function_refuses_a_wrong_buffer() -> None:
    x = ca.SX.sym("x", 3)
    fn = BufferedFunction(ca.Function("f", [x], [2 * x], ["x"], ["y"]))
    assert fn(np.array([1.0, 2.0, 3.0]))[0].tolist() == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="needs 3 values"):
        fn.bind_arg("x", np.zeros(2))
    with pytest.raises(ValueError, match="contiguous float64"):
        fn.bind_arg("x", np.zeros(3, dtype=np.float32))


def test_collocation_ipopt_solves_every_step_while_x_rides_its_bound() -> None:
    """do-mpc's reactor with Radau collocation of degree 2 and full IPOPT solves: as X
    approaches its 3.7 bound, warm starts ended in IPOPT's local infeasibility on 4 steps
    of 100 (steps 73-76); the retry with the adaptive barrier solves them."""
    cfg = NMPCConfig(
        **{
            **BASE,
            "horizon": 20,
            "state_bounds": {"X_s": (0.0, 3.7), "S_s": (-0.01, np.inf), "P_s": (0.0, 3.0)},
            "discretization": "collocation",
            "collocation_degree": 2,
            "solver": "ipopt",
        }
    )
    ctl = NMPC(DOMPC, cfg)
    sim = DOMPC.to_casadi().integrator(1.0)
    state, x = ctl.init(X0), X0.copy()
    x_max, statuses = 0.0, []
    for k in range(100):
        plan, state = ctl.step(state, StateEstimate(x, DOMPC.p0), float(k))
        statuses.append(plan.status.value)
        x = np.asarray(sim(x, plan.u_next, DOMPC.p0)).ravel()
        x_max = max(x_max, float(x[0]))
    assert statuses == ["solved"] * 100
    # Radau IIA of degree 2 (order 3) over 1-h intervals predicts the plant's X to ~3e-5
    # (2.7e-5 measured): the plant may overshoot the planned bound by that much; 1e-4
    assert 3.7 - 1e-3 <= x_max <= 3.7 + 1e-4  # the bound is reached, and held
