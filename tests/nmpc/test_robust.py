"""Multi-stage (scenario-tree) robust NMPC: the tree, its configuration and its files.

The tree has one scenario per combination of the uncertain values for each branching
interval (``n_combinations ** n_robust``), weights that sum to one, shared moves up to
the robust horizon and scenario 0 at the first (nominal) values; sampled parameters sit
at ``p`` and ``p +- c sigma`` inside their bounds. Every bad configuration is one
:class:`NMPCConfigError` naming the key, before anything is built; every bad ``[robust]``
table of a pack's ``control.toml`` is one error line naming the file and the key.
"""

from __future__ import annotations

import math
import shutil
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import bpcontrol.nmpc._controller as controller_module
from bpcontrol.cli import app
from bpcontrol.control_spec import (
    ControlSpecError,
    default_deadline_s,
    nmpc_config,
    oracle_configs,
    parse_control,
)
from bpcontrol.nmpc import (
    MAX_SCENARIOS,
    NMPC,
    NMPCConfig,
    NMPCConfigError,
    Objective,
    RobustConfig,
    StateEstimate,
)
from bpcontrol.nmpc._ocp import state_scale
from bpcontrol.pack import builtin_pack_dir
from bpcontrol.runspec import resolve, spec_for
from hil.runner import Scenario, run_batch
from models import Model, load_model

DOMPC_VALUES = {"Y_x": (0.5, 0.4, 0.3), "S_in": (200.0, 220.0, 180.0)}  # do-mpc's example
ECOLI = builtin_pack_dir("ecoli_fedbatch")


@pytest.fixture(scope="module")
def reactor() -> Model:
    return load_model("dompc_batch_reactor")


# --- the tree ----------------------------------------------------------------------------


def test_dompc_tree_has_nine_scenarios_sharing_only_the_first_move(reactor: Model) -> None:
    cfg = RobustConfig(values=DOMPC_VALUES, n_robust=1)
    cfg.validate(reactor, 20)
    tree = cfg.tree(reactor, 20)
    assert tree.n_scenarios == cfg.n_scenarios == 9
    assert tree.weights == pytest.approx(np.full(9, 1 / 9))
    # one node for the first move, then 19 own moves per scenario
    assert np.all(tree.node_of[:, 0] == tree.node_of[0, 0])
    assert len(set(tree.node_of[:, 1:].ravel())) == 9 * 19
    assert tree.n_nodes == 1 + 9 * 19
    sets = tree.parameter_sets(reactor.p0)
    iy, isin = reactor.index("Y_x"), reactor.index("S_in")
    # every combination once, the nominal one first, the other parameters untouched
    assert {(s[iy], s[isin]) for s in sets} == {
        (y, s) for y in DOMPC_VALUES["Y_x"] for s in DOMPC_VALUES["S_in"]
    }
    assert (sets[0, iy], sets[0, isin]) == (0.5, 200.0)
    others = np.setdiff1d(np.arange(reactor.n_p), [iy, isin])
    assert np.all(sets[:, others] == reactor.p0[others])
    # n_robust = 1: each scenario keeps its combination over the whole horizon
    assert np.all(tree.comb_of == tree.comb_of[:, :1])


def test_robust_horizon_two_branches_twice(reactor: Model) -> None:
    """n_robust = 2 over 3 values: 9 leaves; the second move is shared by the 3 leaves
    of each first branch, the parameters change at the second branching."""
    cfg = RobustConfig(values={"Y_x": (0.5, 0.4, 0.3)}, n_robust=2, weights=(2.0, 1.0, 1.0))
    cfg.validate(reactor, 5)
    tree = cfg.tree(reactor, 5)
    assert tree.n_scenarios == 9
    assert len(set(tree.node_of[:, 0])) == 1
    assert len(set(tree.node_of[:, 1])) == 3
    assert len(set(tree.node_of[:, 2])) == 9
    for s in range(9):
        same_first = tree.paths[:, 0] == tree.paths[s, 0]
        assert np.all(tree.node_of[same_first, 1] == tree.node_of[s, 1])
        assert list(tree.comb_of[s]) == [tree.paths[s, 0]] + [tree.paths[s, 1]] * 4
    # weights: product over the branches, normalised (nominal path 2 x 2 of 16)
    assert tree.weights.sum() == pytest.approx(1.0)
    assert tree.weights[0] == pytest.approx(4 / 16)


def test_sampled_scenarios_sit_at_the_estimate_plus_minus_c_sigma(reactor: Model) -> None:
    cfg = RobustConfig(sigma_factors={"Y_x": 2.0}, values={"S_in": (200.0,)})
    cfg.validate(reactor, 10)
    tree = cfg.tree(reactor, 10)
    assert tree.n_scenarios == 3
    iy = reactor.index("Y_x")
    p = reactor.p0.copy()
    sigma = np.full(reactor.n_p, np.nan)
    sigma[iy] = 0.05
    sets = tree.parameter_sets(p, sigma)
    assert sets[:, iy] == pytest.approx([0.5, 0.6, 0.4])
    # clipped to the parameter's bounds [0.01, 10]
    sigma[iy] = 1.0
    assert tree.parameter_sets(p, sigma)[:, iy] == pytest.approx([0.5, 2.5, 0.01])
    # no sigma in the estimate: every scenario at the estimate
    assert np.all(tree.parameter_sets(p, None)[:, iy] == 0.5)


# --- configuration errors ------------------------------------------------------------------

ROBUST_CASES = [
    pytest.param(RobustConfig(), r"robust: no uncertain parameter", id="empty"),
    pytest.param(
        RobustConfig(values={"Yx": (0.5,)}),
        r"robust.values: 'Yx' is not a parameter of 'dompc_batch_reactor'; parameters: mu_m",
        id="unknown-parameter",
    ),
    pytest.param(
        RobustConfig(sigma_factors={"X_s": 1.0}),
        r"robust.sigma_factors: 'X_s' is not a parameter",
        id="state-as-parameter",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5,)}, sigma_factors={"Y_x": 1.0}),
        r"robust: parameter 'Y_x' is in both values and sigma_factors",
        id="both-kinds",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": ()}), r"robust.values.Y_x lists no value", id="no-values"
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5, math.nan)}),
        r"robust.values.Y_x: nan is not a finite number",
        id="nan-value",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5, 20.0)}),
        r"robust.values.Y_x: 20 leaves the parameter's range \[0.01, 10\] mol/mol",
        id="value-out-of-range",
    ),
    pytest.param(
        RobustConfig(sigma_factors={"Y_x": 0.0}),
        r"robust.sigma_factors.Y_x must be > 0, got 0.0",
        id="zero-sigma-factor",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5,)}, n_robust=0),
        r"robust.n_robust must be in \[1, horizon = 20\], got 0",
        id="n-robust-zero",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5,)}, n_robust=21),
        r"robust.n_robust must be in \[1, horizon = 20\], got 21",
        id="n-robust-beyond-horizon",
    ),
    pytest.param(
        RobustConfig(values=DOMPC_VALUES, weights=(1.0, 2.0)),
        r"robust.weights: 2 given, the tree has 9 combinations",
        id="weights-count",
    ),
    pytest.param(
        RobustConfig(values={"Y_x": (0.5, 0.4)}, weights=(1.0, -1.0)),
        r"robust.weights: -1.0 is not a number > 0",
        id="negative-weight",
    ),
    pytest.param(
        RobustConfig(values=DOMPC_VALUES, n_robust=3),
        rf"robust: 3 x 3 = 9 combinations, n_robust 3: 729 scenarios, above the limit of "
        rf"{MAX_SCENARIOS}",
        id="too-many-scenarios",
    ),
]


@pytest.mark.parametrize(("robust", "message"), ROBUST_CASES)
def test_bad_robust_config_is_rejected_before_any_build(
    reactor: Model, robust: RobustConfig, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the OCP was built although the configuration is invalid")

    monkeypatch.setattr(controller_module, "build_ocp", refuse)
    cfg = NMPCConfig(horizon=20, robust=robust)
    with pytest.raises(NMPCConfigError, match=message):
        cfg.validate(reactor)
    with pytest.raises(NMPCConfigError, match=message):
        NMPC(reactor, cfg)


def test_robust_must_be_a_robust_config(reactor: Model) -> None:
    with pytest.raises(NMPCConfigError, match=r"robust must be a RobustConfig"):
        NMPCConfig(robust={"Y_x": [0.5]}).validate(reactor)  # type: ignore[arg-type]


# --- control.toml -------------------------------------------------------------------------

ROBUST_TOML = """
[robust]
n_robust = 1
values = { mu_max = [0.65, 0.52, 0.78] }
"""


def test_robust_table_builds_the_tree_and_the_oracle_stays_nominal() -> None:
    run = resolve(spec_for(ECOLI))
    doc = dict(run.spec.pack.control or {})
    doc.update(tomllib.loads(ROBUST_TOML))
    spec = parse_control(doc, run.model, source="control.toml")
    config = nmpc_config(spec, run.model, run.recipe, source="control.toml")
    assert config.robust == RobustConfig(values={"mu_max": (0.65, 0.52, 0.78)}, n_robust=1)
    assert all(o.robust is None for o in oracle_configs(config, run.recipe.duration_h))
    # the default deadline grows with the scenarios (the pack states its own)
    nominal = parse_control(run.spec.pack.control or {}, run.model, source="c")
    dt_h = run.recipe.control_period_h
    assert default_deadline_s(spec, run.model, dt_h) == pytest.approx(
        min(3 * default_deadline_s(nominal, run.model, dt_h), 0.25 * dt_h * 3600)
    )


BAD_TOML = {
    "unknown key": ("[robust]\nn_robustness = 2", ("robust.n_robustness", "allowed: n_robust")),
    "values not a list": ("[robust]\nvalues = { mu_max = 0.6 }", ("robust.values.mu_max",)),
    "value not a number": ('[robust]\nvalues = { mu_max = [0.6, "x"] }', ("robust.values.mu_max",)),
    "unknown parameter": ("[robust]\nvalues = { mu = [0.6] }", ("robust.values", "'mu'")),
    "value out of range": (
        "[robust]\nvalues = { mu_max = [0.6, 3.0] }",
        ("robust.values.mu_max", "range"),
    ),
    "n_robust zero": ("[robust]\nn_robust = 0\nvalues = { mu_max = [0.6] }", ("robust.n_robust",)),
    "n_robust beyond horizon": (
        "[robust]\nn_robust = 21\nvalues = { mu_max = [0.6] }",
        ("robust.n_robust", "horizon = 20"),
    ),
    "weights count": (
        "[robust]\nvalues = { mu_max = [0.6, 0.5] }\nweights = [1.0]",
        ("robust.weights", "2 combinations"),
    ),
    "weight zero": (
        "[robust]\nvalues = { mu_max = [0.6, 0.5] }\nweights = [1.0, 0.0]",
        ("robust.weights",),
    ),
    "sigma factor negative": (
        "[robust]\nsigma_factors = { Y_xs = -1.0 }",
        ("robust.sigma_factors",),
    ),
    "too many scenarios": (
        "[robust]\nn_robust = 3\nvalues = { mu_max = [0.6, 0.5, 0.7], Y_xs = [0.5, 0.4, 0.6] }",
        ("robust", "729 scenarios", f"limit of {MAX_SCENARIOS}"),
    ),
    "empty table": ("[robust]", ("robust", "no uncertain parameter")),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_robust_table_is_one_line_naming_file_and_key(case: str, tmp_path: Path) -> None:
    text, fragments = BAD_TOML[case]
    root = tmp_path / "pack"
    shutil.copytree(ECOLI, root)
    with (root / "control.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n" + text + "\n")
    result = CliRunner().invoke(app, ["pack", "check", str(root)])
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in ("control.toml", *fragments):
        assert fragment in lines[0], lines[0]


def test_control_spec_error_is_a_value_error() -> None:
    assert issubclass(ControlSpecError, ValueError)


# --- the robust OCP and controller ------------------------------------------------------

X0_REACTOR = np.array([1.0, 0.5, 0.0, 120.0])  # do-mpc's example start
REACTOR_CONFIG = NMPCConfig(  # do-mpc's batch_reactor problem (tests/nmpc/test_dompc_closed_loop)
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
    discretization="rk4",
    rk4_substeps=4,
)
ROBUST = RobustConfig(values=DOMPC_VALUES, n_robust=1)


@pytest.fixture(scope="module", params=["ipopt", "rti"])
def robust_ctl(request: pytest.FixtureRequest, reactor: Model) -> NMPC:
    return NMPC(reactor, replace(REACTOR_CONFIG, solver=request.param, robust=ROBUST))


def test_ocp_holds_one_trajectory_per_scenario_sharing_x0_and_the_first_move(
    robust_ctl: NMPC,
) -> None:
    lay = robust_ctl.ocp.layout
    assert lay.XS.shape == (9, 21, 4) and lay.US.shape == (9, 20, 1)
    assert np.all(lay.XS[:, 0] == lay.XS[0, 0])  # the measured state, one variable
    assert np.all(lay.US[:, 0] == lay.US[0, 0])  # non-anticipativity: shared variable
    assert np.unique(lay.US[:, 1:]).size == 9 * 19  # every later move its own
    assert np.unique(lay.XS[:, 1:]).size == 9 * 20 * 4
    assert lay.U.shape == (1 + 9 * 19, 1) and np.all(lay.U[:20] == lay.US[0])
    # block-wise per scenario: each scenario's intervals are contiguous in w and g
    for spans in (lay.w_spans_s, lay.g_spans_s):
        assert np.all(spans[:, 1:, 0] == spans[:, :-1, 1])
        assert np.all(spans[1:, 0, 0] >= spans[:-1, -1, 1])


def test_scenario_trajectories_follow_their_own_parameters(
    robust_ctl: NMPC, reactor: Model
) -> None:
    """Three steps closed loop (the first a full IPOPT solve, then the controller's own
    path): every plan solved, the first move common, the later moves different, and each
    scenario's predicted node the simulation of one interval from the node before with its
    move and its parameters (the multiple-shooting constraint), within a fraction of each
    state's scale (``_ocp.state_scale``): IPOPT's 1e-6 (RK4 with 4 substeps against
    CVODES; measured 1.3e-8), a real-time iteration's 5e-3 (one Newton step meets the
    dynamics to first order only: measured 1.7e-3, the nominal RTI 1.3e-3)."""
    tol = (1e-6 if robust_ctl.config.solver == "ipopt" else 5e-3) * state_scale(reactor)
    state = robust_ctl.init(X0_REACTOR)
    x = X0_REACTOR.copy()
    plant = reactor.to_casadi().integrator(1.0)
    tree = robust_ctl.ocp.layout.tree
    assert tree is not None
    sets = tree.parameter_sets(reactor.p0)
    for k in range(3):
        plan, state = robust_ctl.step(state, StateEstimate(x, reactor.p0), float(k))
        assert plan.status.usable, plan.message
        assert plan.scenario_X is not None and plan.scenario_moves is not None
        moves = plan.scenario_moves[:, :, 0]
        assert np.ptp(moves[:, 0]) == 0.0
        assert np.ptp(moves[:, 1]) > 1e-4  # the scenarios plan differently afterwards
        assert plan.u_next[0] == pytest.approx(moves[0, 0])
        assert np.array_equal(plan.X, plan.scenario_X[0])
        for s in range(9):
            for j in range(20):
                p_sj = sets[tree.comb_of[s, j]]
                xs = np.asarray(plant(plan.scenario_X[s, j], moves[s, j], p_sj)).ravel()
                assert np.all(np.abs(plan.scenario_X[s, j + 1] - xs) <= tol), (k, s, j)
        x = np.asarray(plant(x, plan.u_next, reactor.p0)).ravel()


def test_one_scenario_tree_is_the_nominal_problem(reactor: Model) -> None:
    """A tree of one scenario at the nominal values plans what the nominal NMPC plans."""
    nominal = NMPC(reactor, replace(REACTOR_CONFIG, solver="ipopt"))
    single = NMPC(
        reactor,
        replace(REACTOR_CONFIG, solver="ipopt", robust=RobustConfig(values={"Y_x": (0.5,)})),
    )
    a, _ = nominal.step(nominal.init(X0_REACTOR), StateEstimate(X0_REACTOR, reactor.p0), 0.0)
    b, _ = single.step(single.init(X0_REACTOR), StateEstimate(X0_REACTOR, reactor.p0), 0.0)
    assert b.U == pytest.approx(a.U, abs=1e-7)
    assert b.X == pytest.approx(a.X, rel=1e-7, abs=1e-9)
    assert b.cost == pytest.approx(a.cost, rel=1e-7)


def test_warm_start_shifts_every_scenario(robust_ctl: NMPC) -> None:
    lay = robust_ctl.ocp.layout
    w = np.arange(lay.n_w, dtype=float)
    shifted, _, _ = robust_ctl._shift(w, None, None)
    for s in range(9):
        assert np.array_equal(shifted[lay.XS[s, 1:-1]], w[lay.XS[s, 2:]])
        assert np.array_equal(shifted[lay.US[s, 1:-1]], w[lay.US[s, 2:]])
    assert np.all(shifted[lay.US[:, 0]] == w[lay.US[0, 1]])  # the root: nominal's next


def test_sampled_scenarios_come_from_the_estimates_sigma(reactor: Model) -> None:
    ctl = NMPC(
        reactor,
        replace(REACTOR_CONFIG, solver="ipopt", robust=RobustConfig(sigma_factors={"Y_x": 2.0})),
    )
    iy = reactor.index("Y_x")
    sigma = np.full(reactor.n_p, np.nan)
    sigma[iy] = 0.05
    h = ctl.interval_lengths(0.0)
    par = ctl.parameters(X0_REACTOR, reactor.u0, reactor.p0, h, ctl.scheduled_inputs(0.0, h), sigma)
    assert par[ctl.ocp.layout.P_scen[:, iy]] == pytest.approx([0.5, 0.6, 0.4])
    est = StateEstimate(X0_REACTOR, reactor.p0, p_sigma=sigma)
    plan, _ = ctl.step(ctl.init(X0_REACTOR), est, 0.0)
    assert plan.status.usable and "sigma" not in plan.message
    assert plan.scenario_X is not None and np.ptp(plan.scenario_X[:, -1, 0]) > 1e-3
    plan, _ = ctl.step(ctl.init(X0_REACTOR), StateEstimate(X0_REACTOR, reactor.p0), 0.0)
    assert plan.status.usable
    assert "robust: the estimate has no parameter sigma" in plan.message


def _closed_loop(ctl: NMPC, model: Model, plant_p: np.ndarray, steps: int) -> np.ndarray:
    plant = model.to_casadi().integrator(1.0)
    x, state, xs = X0_REACTOR.copy(), ctl.init(X0_REACTOR), [X0_REACTOR.copy()]
    for k in range(steps):
        plan, state = ctl.step(state, StateEstimate(x, model.p0), float(k))
        x = np.asarray(plant(x, plan.u_next, plant_p)).ravel()
        xs.append(x)
    return np.array(xs)


def test_robust_controller_keeps_x_bound_on_a_plant_the_nominal_one_overshoots(
    reactor: Model,
) -> None:
    """Plant Y_x = 0.4, S_in = 220 (inside the scenario range; CVODES at 1e-10), both
    controllers on the RTI path with state feedback and the nominal model's estimate.
    The nominal NMPC, planning with Y_x = 0.5, S_in = 200, overshoots X_s <= 3.7
    (measured 3.70036); the robust one stays within 3.7 + 5e-5 (measured 3.69996; the
    margin covers RK4's prediction error, 6e-6 on the nominal plant, ten times over)."""
    plant_p = reactor.parameters_with(Y_x=0.4, S_in=220.0)
    steps = 110
    nominal = _closed_loop(NMPC(reactor, REACTOR_CONFIG), reactor, plant_p, steps)
    robust = _closed_loop(
        NMPC(reactor, replace(REACTOR_CONFIG, robust=ROBUST)), reactor, plant_p, steps
    )
    assert robust[:, 0].max() <= 3.7 + 5e-5
    assert nominal[:, 0].max() > 3.7 + 2e-4
    assert robust[-1, 2] >= 0.99 * nominal[-1, 2]  # robustness costs little product


# --- the E. coli loop (acceptance, slow) --------------------------------------------------

ECOLI_HOURS = 16.0  # batch (6 h) and 10 h of the fed-batch, where the feed drives the DO
ECOLI_ROBUST = RobustConfig(values={"mu_max": (0.65, 0.585, 0.715)}, n_robust=1)  # 1/h, +-10 %
# Wall s a solve may take, for both controllers: 5 % of the pack's 10-min control period.
# The pack's own 2 s deadline paces accelerated simulation; the robust tree's worst solves
# (the batch phase, where the fast scenario cannot keep DO up: 300-500 IPOPT iterations)
# take 3-7 s quiet and 12.6 s at a load of 2, so under it the test measured the machine's
# load, not the controller (on a loaded machine 31 % of the steps fell back to the recipe).
ECOLI_DEADLINE_S = 30.0


def _ecoli_batch(robust: RobustConfig | None, factors: dict[str, float], out: Path) -> Any:
    run = resolve(spec_for(ECOLI, seed=1))
    assert run.nmpc is not None
    config = replace(run.nmpc, robust=robust, time_limit_s=ECOLI_DEADLINE_S)
    run = replace(run, nmpc=config, deadline_s=ECOLI_DEADLINE_S)
    scenario = Scenario(name="robust-test", parameter_factors=factors)
    return run_batch(run, run_dir=out, scenario=scenario, duration_h=ECOLI_HOURS, report=False)


@pytest.mark.slow
def test_robust_nmpc_in_the_ecoli_loop(tmp_path: Path) -> None:
    """The E. coli pack's loop (EKF + NMPC + supervisor, seed 1), shortened to 16 h, with
    a tree over mu_max in {0.65, 0.585, 0.715} 1/h. On the plant at the range's corner of
    highest oxygen demand (mu_max 0.715 = 1.1 x the model) the DO never falls below its
    30 % minimum; on the nominal plant the robust loop makes at least 97 % of the nominal
    loop's product (the issue's 3 %), and every setpoint stays inside the limits. Both
    controllers plan under the same deadline (``ECOLI_DEADLINE_S``) and every plan of
    either must be usable: a fallback would compare the recipe, not the controllers."""
    fast = _ecoli_batch(ECOLI_ROBUST, {"mu_max": 1.1}, tmp_path / "robust-fast")
    robust = _ecoli_batch(ECOLI_ROBUST, {}, tmp_path / "robust-nominal")
    nominal = _ecoli_batch(None, {}, tmp_path / "nominal")
    k_fast, k_rob, k_nom = fast.kpis, robust.kpis, nominal.kpis
    print(
        "fast plant", k_fast["do_min_percent"], k_fast["time_do_below_min_percent"],
        "product robust", k_rob["final_product"], "nominal", k_nom["final_product"],
    )  # fmt: skip
    assert k_fast["time_do_below_min_percent"] == 0.0
    assert k_fast["do_min_percent"] >= 30.0
    assert k_rob["final_product"] >= 0.97 * k_nom["final_product"]
    for k in (k_fast, k_rob, k_nom):
        assert k["setpoints_outside_limits_or_rates"] == 0
        assert k["plans_usable_percent"] == 100.0
