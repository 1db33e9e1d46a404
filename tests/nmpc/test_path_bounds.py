"""Soft bounds hold between the shooting nodes, and the back-off for estimation error.

The test plant is a double integrator ``y'' = u`` with ``u`` constant over one interval of
1 h, starting at ``y = 1`` falling at ``v = -3`` per hour: ``y(t) = 1 - 3 t + u t^2 / 2``,
a parabola, which Radau collocation of degree 3 and RK4 both integrate exactly. The cost
is ``u`` (per hour), so the optimal ``u`` is the smallest that keeps ``y >= lower``:

- at the end node only: ``y(1) = u / 2 - 2 >= 0`` gives ``u = 4``, and the trajectory dips
  to ``1 - 9 / 8 = -0.125`` at ``t = 0.75`` between the nodes (what the NMPC did before
  the bounds held along the interval);
- along the whole interval: ``min_t y = 1 - 4.5 / u`` (at ``t = 3 / u``), so ``u = 4.5``
  for ``y >= 0`` (minimum at t = 2/3) and ``u = 5`` for ``y >= 0.1`` (minimum at t = 0.6).

With ``path_points = 14`` the bound is checked at t = j/15, which holds both minima, so
the optimum is exact (to the solver's tolerance); with RK4 the points are the substep ends
(3 substeps: t = 1/3, 2/3).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bpcontrol.nmpc import NMPC, NMPCConfig, NMPCConfigError, Objective, SoftBound, StateEstimate
from models import Input, MathNamespace, Model, Output, Parameter, State, Values

_SRC = "test model"


def _rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"y": x.v, "v": p.gain * u.a}


def _measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"y_meas": x.y, "y2": 2.0 * x.y}


MODEL = Model(
    name="falling_mass",
    description="double integrator y'' = gain a (test model)",
    states=(
        State(name="y", unit="m", lower=-10.0, upper=10.0, nominal=1.0, description="height"),
        State(name="v", unit="m/h", lower=-10.0, upper=10.0, nominal=-3.0, description="speed"),
    ),
    inputs=(
        Input(name="a", unit="m/h2", lower=0.0, upper=10.0, nominal=0.0, description="thrust"),
    ),
    parameters=(Parameter.of("gain", "-", 1.0, 0.1, 10.0, _SRC),),
    outputs=(Output(name="y_meas", unit="m"), Output(name="y2", unit="m")),
    rhs=_rhs,
    measure=_measure,
)
X0 = np.array([1.0, -3.0])
U_NODE_ONLY = 4.0  # y(1) = u/2 - 2 >= 0
U_PATH = 4.5  # min_t y = 1 - 4.5/u >= 0
U_BACKOFF = 5.0  # min_t y = 1 - 4.5/u >= 0.1


def _config(bound: SoftBound, **kw: Any) -> NMPCConfig:
    base: dict[str, Any] = dict(
        horizon=1,
        dt_h=1.0,
        solver="ipopt",
        discretization="collocation",
        collocation_degree=3,
        path_points=14,
        soft_bounds=(bound,),
        objective=Objective(input_cost={"a": 1.0}),
        ipopt_options={"tol": 1e-10},
    )
    base.update(kw)
    return NMPCConfig(**base)


def _solve(cfg: NMPCConfig, x_sigma: np.ndarray | None = None) -> tuple[float, str]:
    ctl = NMPC(MODEL, cfg)
    plan, _ = ctl.step(ctl.init(X0), StateEstimate(X0, MODEL.p0, x_sigma=x_sigma), 0.0)
    assert plan.status.usable, plan.message
    return float(plan.u_next[0]), plan.message


def _true_min_y(u: float) -> float:
    t = np.linspace(0.0, 1.0, 10_001)
    return float(np.min(1.0 - 3.0 * t + u * t**2 / 2.0))


@pytest.mark.parametrize(
    "kw",
    [
        {},  # collocation points + 14 path points
        {"discretization": "rk4", "rk4_substeps": 3},  # substep ends t = 1/3, 2/3
    ],
    ids=["collocation", "rk4"],
)
def test_soft_bound_holds_between_nodes(kw: dict[str, Any]) -> None:
    u, _ = _solve(_config(SoftBound(name="y", lower=0.0, weight_l1=1e3), **kw))
    # the exact optimum along the interval, not the node-only one (4: dips to -0.125)
    assert u == pytest.approx(U_PATH, abs=1e-4)
    assert abs(u - U_NODE_ONLY) > 0.4
    assert _true_min_y(u) >= -1e-4


def test_collocation_points_alone_catch_most_of_the_dip() -> None:
    """Without extra path points the bound holds at the collocation points, the binding
    one at tau = (4 + sqrt 6) / 10 = 0.645 (Radau IIA, degree 3): y(tau) = 0 gives
    u = (3 tau - 1) / (tau^2 / 2) = 4.4949, and the dip left between the points is
    1 - 4.5 / u = -1.1e-3 (the node-only plan dipped 0.125)."""
    tau = (4.0 + np.sqrt(6.0)) / 10.0
    u_expected = (3.0 * tau - 1.0) / (tau**2 / 2.0)
    u, _ = _solve(_config(SoftBound(name="y", lower=0.0, weight_l1=1e3), path_points=0))
    assert u == pytest.approx(u_expected, abs=1e-4)
    assert _true_min_y(u) == pytest.approx(1.0 - 4.5 / u_expected, abs=1e-5)
    assert _true_min_y(u) > -2e-3


def test_backoff_tightens_a_state_bound_by_k_sigma() -> None:
    bound = SoftBound(name="y", lower=0.0, weight_l1=1e3, backoff_sigma=2.0)
    # 2 x 0.05 = 0.1 (v known exactly: y one period ahead is as uncertain as now)
    u, msg = _solve(_config(bound), x_sigma=np.array([0.05, 0.0]))
    assert u == pytest.approx(U_BACKOFF, abs=1e-4)
    assert _true_min_y(u) >= 0.1 - 1e-4
    assert "back-off" not in msg
    # an estimate without state sigma plans on the bound itself, and says so
    u, msg = _solve(_config(bound))
    assert u == pytest.approx(U_PATH, abs=1e-4)
    assert "no back-off: the estimate has no state sigma" in msg


def test_backoff_of_an_output_is_first_order_in_the_state_sigma() -> None:
    """y2 = 2 y: its sigma is 2 sigma_y (through dy2/dy = 2), so k = 2 and sigma_y = 0.05
    back y2's bound off by 0.2, i.e. y >= 0.1 as in the state's case. One control period
    (1 h) ahead y2 = 2 (y + v + a/2): with sigma_v = 0.02 the period-ahead sigma
    2 sqrt(0.05^2 + 0.02^2) is the larger, and the back-off is k times that."""
    bound = SoftBound(name="y2", lower=0.0, weight_l1=1e3, backoff_sigma=2.0)
    ctl = NMPC(MODEL, _config(bound))
    backoff, note = ctl.backoffs(X0, MODEL.u0, MODEL.p0, np.array([0.05, 0.0]))
    assert backoff == pytest.approx([0.2], rel=1e-6)
    assert note == ""
    backoff, _ = ctl.backoffs(X0, MODEL.u0, MODEL.p0, np.array([0.05, 0.02]))
    assert backoff == pytest.approx([2.0 * 2.0 * np.hypot(0.05, 0.02)], rel=1e-6)
    u, _ = _solve(_config(bound), x_sigma=np.array([0.05, 0.0]))
    assert u == pytest.approx(U_BACKOFF, abs=1e-4)


def test_slack_penalty_is_per_control_period() -> None:
    """A soft bound's weights are per control period: an interval of half a period (the
    last half hour before the batch end) pays half the penalty for the same slack, as the
    rest of the cost, which is per hour, does."""
    bound = SoftBound(name="y", lower=0.0, weight_l1=1e3)
    ctl = NMPC(MODEL, _config(bound, batch_end_h=0.5, dt_h=1.0, horizon_mode="batch_end"))
    assert ctl.interval_lengths(0.0) == pytest.approx([0.5])
    lay = ctl.ocp.layout
    par = ctl.parameters(X0, MODEL.u0, MODEL.p0, np.array([0.5]), np.zeros((1, 0)))
    w = np.zeros(lay.n_w)
    w[lay.S] = 1.0  # one unit of slack, nothing else
    cost_half = float(ctl.ocp.report_fn(w / ctl.ocp.w_scale, par)[0])
    par[lay.n_par - lay.P_backoff.size - 1] = 1.0  # h = 1 h: one whole control period
    cost_full = float(ctl.ocp.report_fn(w / ctl.ocp.w_scale, par)[0])
    # L1 1e3 + L2 1 per unit of slack and period: 1001 per period, 500.5 on half of one
    assert cost_full == pytest.approx(1001.0, rel=1e-9)
    assert cost_half == pytest.approx(500.5, rel=1e-9)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"path_points": -1}, "path_points must be in"),
        ({"soft_bounds": (SoftBound(name="y", lower=0.0, backoff_sigma=-1.0),)}, "backoff_sigma"),
    ],
)
def test_bad_path_settings_are_refused(kw: dict[str, Any], match: str) -> None:
    cfg = _config(SoftBound(name="y", lower=0.0), **kw)
    with pytest.raises(NMPCConfigError, match=match):
        NMPC(MODEL, cfg)


def test_control_toml_keys_reach_the_config() -> None:
    """``path_points`` and ``[soft_bounds.X] backoff_sigma`` in a pack's control.toml; a bad
    value is one error naming the file and the key."""
    from bpcontrol.control_spec import ControlSpecError, parse_control

    doc = {"path_points": 3, "soft_bounds": {"y": {"lower": 0.0, "backoff_sigma": 2.5}}}
    spec = parse_control(doc, MODEL, source="c.toml")
    assert spec.path_points == 3
    assert spec.soft_bounds["y"].backoff_sigma == 2.5
    bad = {"soft_bounds": {"y": {"lower": 0.0, "backoff_sigma": -1.0}}}
    with pytest.raises(ControlSpecError, match=r"^c\.toml: soft_bounds\.y\.backoff_sigma: "):
        parse_control(bad, MODEL, source="c.toml")
    with pytest.raises(ControlSpecError, match=r"^c\.toml: path_points: "):
        parse_control({"path_points": 51}, MODEL, source="c.toml")


def test_pack_sets_the_measured_backoff() -> None:
    """The E. coli pack plans DO 3 estimate-sigmas above its 31 % (see its control.toml)."""
    from bpcontrol.pack import builtin_pack_dir, load_pack
    from bpcontrol.runspec import resolve, spec_for

    run = resolve(spec_for(load_pack(builtin_pack_dir("ecoli_fedbatch"))))
    assert run.nmpc is not None
    do = next(b for b in run.nmpc.soft_bounds if b.name == "DO")
    assert (do.lower, do.backoff_sigma) == (31.0, 3.0)


def test_bounds_at_the_nodes_only_is_the_node_only_optimum() -> None:
    """``bounds_between_nodes = False`` (the oracle's first, easier problem) drops every
    interior point: the optimum is the node-only one, u = 4 (module docstring)."""
    bound = SoftBound(name="y", lower=0.0, weight_l1=1e3)
    u, _ = _solve(_config(bound, bounds_between_nodes=False))
    assert u == pytest.approx(U_NODE_ONLY, abs=1e-4)
    u, _ = _solve(_config(bound, discretization="rk4", rk4_substeps=3, bounds_between_nodes=False))
    assert u == pytest.approx(U_NODE_ONLY, abs=1e-4)


def _blow_up(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"y": p.gain * x.y**2 + u.a, "v": 0.0 * x.v}


def test_backoff_falls_back_to_the_sigma_now_when_the_period_ahead_fails() -> None:
    """y' = y^2 from y = 2 blows up at t = 1/2 h, inside the 1 h period: CVODES cannot
    integrate the period ahead, so the back-off is k times the sigma now (2 x 0.05), said
    in the note, instead of the step failing (measured: one E. coli step at 9.33 h failed
    on the period-ahead sensitivity and sent the loop to FALLBACK for 3 steps)."""
    model = replace(MODEL, name="blow_up", rhs=_blow_up)
    bound = SoftBound(name="y", upper=5.0, weight_l1=1e3, backoff_sigma=2.0)
    ctl = NMPC(model, _config(bound, discretization="rk4"))
    backoff, note = ctl.backoffs(np.array([2.0, 0.0]), model.u0, model.p0, np.array([0.05, 0.0]))
    assert backoff == pytest.approx([0.1], rel=1e-9)
    assert note.startswith("back-off from the sigma now only: the period-ahead sensitivity failed")
