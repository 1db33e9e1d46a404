"""bpcontrol's ``dompc_batch_reactor`` against do-mpc's own model and simulator.

The reference is built here with do-mpc itself (``do_mpc.model.Model('continuous')`` and
``do_mpc.simulator.Simulator`` with CVODES at abstol = reltol = 1e-10 and t_step = 1 h, as in
do-mpc's ``examples/batch_reactor``), written from the published equations of that example:

    mu     = mu_m S / (K_m + S + S^2 / K_i)
    dX/dt  = mu X - (inp / V) X
    dS/dt  = -mu X / Y_x - v_par X / Y_p + (inp / V) (S_in - S)
    dP/dt  = v_par X - (inp / V) P
    dV/dt  = inp

with mu_m = 0.02, K_m = 0.05, K_i = 5, v_par = 0.004, Y_p = 1.2 and the uncertain Y_x, S_in
supplied by the simulator's ``p_fun``. Both simulators run open loop over the same seeded,
piecewise-constant feed profile; every state must agree to 1e-6 (relative, absolute floor).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    # do-mpc warns at import about optional features (ONNX, OPC UA, PyTorch) it lacks.
    warnings.simplefilter("ignore")
    do_mpc = pytest.importorskip("do_mpc")

from models import load_model

N_STEPS = 150
T_STEP = 1.0
RTOL = 1e-6
ATOL = 1e-6  # floor for states that pass through zero (P_s starts at 0)

# (Y_x, S_in): the simulator's nominal values, and one of do-mpc's uncertainty scenarios.
PARAMETER_SETS = [
    pytest.param(0.5, 200.0, id="nominal-Yx0.5-Sin200"),
    pytest.param(0.4, 220.0, id="scenario-Yx0.4-Sin220"),
]


def _dompc_model() -> Any:
    model = do_mpc.model.Model("continuous")
    X_s = model.set_variable("_x", "X_s")
    S_s = model.set_variable("_x", "S_s")
    P_s = model.set_variable("_x", "P_s")
    V_s = model.set_variable("_x", "V_s")
    inp = model.set_variable("_u", "inp")
    Y_x = model.set_variable("_p", "Y_x")
    S_in = model.set_variable("_p", "S_in")

    mu_m, K_m, K_i, v_par, Y_p = 0.02, 0.05, 5.0, 0.004, 1.2
    mu = mu_m * S_s / (K_m + S_s + S_s**2 / K_i)
    dilution = inp / V_s
    model.set_rhs("X_s", mu * X_s - dilution * X_s)
    model.set_rhs("S_s", -mu * X_s / Y_x - v_par * X_s / Y_p + dilution * (S_in - S_s))
    model.set_rhs("P_s", v_par * X_s - dilution * P_s)
    model.set_rhs("V_s", inp)
    model.setup()
    return model


def _dompc_simulator(model: Any, Y_x: float, S_in: float) -> Any:
    sim = do_mpc.simulator.Simulator(model)
    sim.settings.integration_tool = "cvodes"
    sim.settings.abstol = 1e-10
    sim.settings.reltol = 1e-10
    sim.settings.t_step = T_STEP
    p_template = sim.get_p_template()

    def p_fun(t_now: float) -> Any:
        p_template["Y_x"] = Y_x
        p_template["S_in"] = S_in
        return p_template

    sim.set_p_fun(p_fun)
    sim.setup()
    return sim


def _feed_profile() -> np.ndarray:
    """Seeded piecewise-constant feed in [0, 0.2]: a new level every 10 h, plus both bounds."""
    rng = np.random.default_rng(1124)
    levels = rng.uniform(0.0, 0.2, size=N_STEPS // 10)
    levels[1], levels[4] = 0.0, 0.2  # hold exactly at the input bounds for a while
    return np.repeat(levels, 10)


def _run_bpcontrol(step: Any, x0: np.ndarray, feed: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.empty((len(feed), len(x0)))
    x = x0.copy()
    for k, inp in enumerate(feed):
        x = np.asarray(step(x, inp, p)).reshape(-1)
        out[k] = x
    return out


def _assert_close(actual: np.ndarray, expected: np.ndarray, names: tuple[str, ...]) -> None:
    err = np.abs(actual - expected)
    allowed = RTOL * np.abs(expected) + ATOL
    bad = err > allowed
    if bad.any():
        k, i = np.argwhere(bad)[0]
        ratio = np.max(err / allowed)
        pytest.fail(
            f"{int(bad.sum())} state values disagree (worst err/allowed = {ratio:.3g}); "
            f"first at step {k + 1}, state {names[i]}: bpcontrol {actual[k, i]!r}, "
            f"do-mpc {expected[k, i]!r}"
        )


@pytest.mark.parametrize(("Y_x", "S_in"), PARAMETER_SETS)
def test_open_loop_trajectory_matches_dompc(Y_x: float, S_in: float) -> None:
    bp_model = load_model("dompc_batch_reactor")
    assert bp_model.state_names == ("X_s", "S_s", "P_s", "V_s")
    assert bp_model.input_names == ("inp",)
    feed = _feed_profile()
    x0 = bp_model.x0
    np.testing.assert_array_equal(x0, [1.0, 0.5, 0.0, 120.0])

    # do-mpc reference
    sim = _dompc_simulator(_dompc_model(), Y_x, S_in)
    sim.x0 = x0.copy()
    ref = np.empty((N_STEPS, 4))
    for k in range(N_STEPS):
        sim.make_step(np.array([[feed[k]]]))
        ref[k] = np.asarray(sim.x0.cat).reshape(-1)

    # bpcontrol
    step = bp_model.to_casadi().integrator(T_STEP, method="cvodes", abstol=1e-10, reltol=1e-10)
    p = bp_model.p0.copy()
    p[bp_model.index("Y_x")] = Y_x
    p[bp_model.index("S_in")] = S_in
    out = _run_bpcontrol(step, x0, feed, p)

    # The profile must actually exercise the dynamics, or the comparison proves little ...
    assert np.ptp(ref[:, 0]) > 0.1 and np.ptp(ref[:, 1]) > 0.1 and ref[-1, 2] > 0.1
    assert ref[-1, 3] > 120.0 + 1.0
    # ... and the tolerance must be tight enough to see a 0.1 % change in a yield.
    p_off = p.copy()
    p_off[bp_model.index("Y_x")] *= 1.001
    off = _run_bpcontrol(step, x0, feed, p_off)
    assert np.max(np.abs(off - ref) / (RTOL * np.abs(ref) + ATOL)) > 10.0

    _assert_close(out, ref, bp_model.state_names)


def test_right_hand_side_matches_dompc() -> None:
    """Pointwise: bpcontrol's f equals do-mpc's rhs at random points inside the bounds."""
    bp_model = load_model("dompc_batch_reactor")
    f = bp_model.to_casadi().f
    ref = _dompc_model()
    rhs_fun = ref._rhs_fun  # (x, u, z, tvp, p, w) -> xdot
    rng = np.random.default_rng(7)
    x_lo, x_hi = bp_model.bounds("states")
    x_lo = np.maximum(x_lo, [0.0, 0.0, 0.0, 1.0])  # S_s >= 0, V_s > 0
    for _ in range(50):
        x = rng.uniform(x_lo, x_hi)
        u = rng.uniform(0.0, 0.2, size=1)
        Y_x, S_in = rng.uniform(0.3, 0.5), rng.uniform(180.0, 220.0)
        p = bp_model.p0.copy()
        p[bp_model.index("Y_x")] = Y_x
        p[bp_model.index("S_in")] = S_in
        expected = np.asarray(rhs_fun(x, u, [], [], [Y_x, S_in], [])).reshape(-1)
        actual = np.asarray(f(x, u, p)).reshape(-1)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
