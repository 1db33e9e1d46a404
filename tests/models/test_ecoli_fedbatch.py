"""Physics of the E. coli fed-batch model: balances, overflow, gas analysis, temperature."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from models import NUMPY, Values, load_model
from models.library.ecoli_fedbatch import cardinal_temperature, fluxes

MODEL = load_model("ecoli_fedbatch")
CAS = MODEL.to_casadi()
IX = {n: i for i, n in enumerate(MODEL.state_names)}
IU = {n: i for i, n in enumerate(MODEL.input_names)}
IY = {n: i for i, n in enumerate(MODEL.output_names)}


def feed_profile(t_h: float) -> np.ndarray:
    """A nominal recipe: batch for 6 h, then an exponential feed (mu_set 0.15 1/h), capped."""
    u = MODEL.u0.copy()
    u[IU["Q_air"]], u[IU["N_stir"]] = 15.0, 1000.0
    if t_h >= 6.0:
        u[IU["F"]] = min(0.02 * np.exp(0.15 * (t_h - 6.0)), 0.2)
    return u


def carbon_in_broth(x: np.ndarray, p: np.ndarray) -> float:
    """g C in biomass, glucose, acetate and product in the broth."""
    P = Values(MODEL.parameter_names, list(p))
    v = x[IX["V"]]
    return v * (x[IX["X"]] * P.C_x + x[IX["S"]] * P.C_s + x[IX["A"]] * P.C_a + x[IX["P"]] * P.C_p)


def augmented_integrator(dt_h: float) -> ca.Function:
    """Model states plus cumulative CO2 carbon out (g C) and glucose carbon fed (g C)."""
    x, u, p = CAS.x, CAS.u, CAS.p
    P = Values(MODEL.parameter_names, [p[i] for i in range(MODEL.n_p)])
    y = CAS.h(x, u, p)
    v = x[IX["V"]]
    co2_out = y[IY["CER"]] * 12e-3 * v  # mmol/L/h * g/mmol * L = g C/h
    fed = u[IU["F"]] * P.S_feed * P.C_s  # L/h * g/L * gC/g
    xa = ca.vertcat(x, ca.SX.sym("c_out"), ca.SX.sym("c_fed"))
    ode = ca.vertcat(CAS.xdot, co2_out, fed)
    dae = {"x": xa, "p": ca.vertcat(u, p), "ode": ca.substitute(ode, x, xa[: MODEL.nx])}
    return ca.integrator("aug", "cvodes", dae, 0.0, dt_h, {"abstol": 1e-11, "reltol": 1e-11})


def run_nominal(hours: float = 30.0, dt_h: float = 0.25, p: np.ndarray | None = None):
    p = MODEL.p0 if p is None else p
    step = augmented_integrator(dt_h)
    xa = np.concatenate([MODEL.x0, [0.0, 0.0]])
    traj, fed_volume = [xa], 0.0
    for k in range(round(hours / dt_h)):
        u = feed_profile(k * dt_h)
        xa = np.asarray(step(x0=xa, p=np.concatenate([u, p]))["xf"]).ravel()
        fed_volume += u[IU["F"]] * dt_h
        traj.append(xa)
    return np.array(traj), fed_volume


@pytest.fixture(scope="module")
def nominal_run():
    return run_nominal()


def test_volume_balance_is_exact(nominal_run) -> None:
    traj, fed_volume = nominal_run
    # dV/dt = F: V(t) = V0 + sum(F_k * dt) for a piecewise-constant feed
    assert traj[-1, IX["V"]] == pytest.approx(MODEL.x0[IX["V"]] + fed_volume, rel=1e-9)
    assert fed_volume > 1.0  # the run really fed


def test_carbon_balance_closes(nominal_run) -> None:
    traj, _ = nominal_run
    p = MODEL.p0
    c0 = carbon_in_broth(traj[0, : MODEL.nx], p)
    c_end = carbon_in_broth(traj[-1, : MODEL.nx], p)
    c_out, c_fed = traj[-1, MODEL.nx], traj[-1, MODEL.nx + 1]
    # carbon in broth at start + carbon fed = carbon in broth at end + carbon left as CO2
    residual = (c0 + c_fed) - (c_end + c_out)
    assert abs(residual) <= 1e-6 * (c0 + c_fed)
    assert c_out > 0.1 * c_fed  # respiration really happened


def test_no_negative_concentrations_on_nominal_run(nominal_run) -> None:
    traj, _ = nominal_run
    for name in ("X", "S", "A", "DO", "P"):
        assert traj[:, IX[name]].min() >= -1e-9, name
    assert traj[-1, IX["X"]] > 20.0  # a real fed-batch grew


def _flux_at(S: float, A: float = 0.1, DO: float = 60.0, **p_over: float) -> dict[str, float]:
    x = MODEL.x0.copy()
    x[IX["S"]], x[IX["A"]], x[IX["DO"]], x[IX["X"]] = S, A, DO, 10.0
    p = MODEL.parameters_with(**p_over)
    r = fluxes(NUMPY, *MODEL.named(x, MODEL.u0, p))
    return {k: float(v) for k, v in r.items()}


@pytest.mark.parametrize("S", [0.002, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0, 10.0, 50.0])
def test_acetate_forms_only_above_the_respiratory_limit(S: float) -> None:
    r = _flux_at(S)
    if r["qS"] < r["qS_crit"]:
        assert r["p_A"] == 0.0
        assert r["qA_c"] > 0.0  # acetate present and spare capacity: it is consumed
        assert r["p_A"] - r["qA_c"] < 0.0
    else:
        assert r["p_A"] == pytest.approx(MODEL.p0[MODEL.index("Y_as")] * (r["qS"] - r["qS_crit"]))
        assert r["p_A"] > 0.0
        assert r["qA_c"] == 0.0  # respiratory capacity is used up by glucose


def test_both_regimes_are_reached() -> None:
    assert _flux_at(0.005)["qS"] < _flux_at(0.005)["qS_crit"]
    assert _flux_at(50.0)["qS"] > _flux_at(50.0)["qS_crit"]


def test_oxidative_batch_yield_equals_y_xs() -> None:
    """Without maintenance, overflow or product, biomass formed = Y_xs * glucose used (batch)."""
    p = MODEL.parameters_with(q_m=0.0, qO_max=30.0, beta_P=0.0, alpha_P=0.0)
    x = MODEL.x0.copy()
    x[IX["A"]] = 0.0
    u = MODEL.u0.copy()
    u[IU["Q_air"]], u[IU["N_stir"]] = 20.0, 1200.0
    step = CAS.integrator(0.5)
    x_end = x
    for _ in range(20):
        x_end = np.asarray(step(x_end, u, p)).ravel()
    used = x[IX["S"]] - x_end[IX["S"]]
    assert used > 5.0
    assert x_end[IX["A"]] == pytest.approx(0.0, abs=1e-9)  # never overflowed
    y_xs = p[MODEL.index("Y_xs")]
    assert x_end[IX["X"]] - x[IX["X"]] == pytest.approx(y_xs * used, rel=1e-7)


def test_off_gas_inert_balance_and_heat() -> None:
    x = MODEL.x0.copy()
    x[IX["X"]], x[IX["S"]], x[IX["DO"]] = 20.0, 0.05, 40.0
    u = MODEL.u0.copy()
    y = CAS.outputs(x, u, MODEL.p0)
    P = Values(MODEL.parameter_names, list(MODEL.p0))
    n_in = u[IU["Q_air"]] * 60.0 / 22.414
    our, cer = y[IY["OUR"]] * x[IX["V"]] / 1000.0, y[IY["CER"]] * x[IX["V"]] / 1000.0
    n_out = n_in - our + cer
    yo, yc = y[IY["y_O2_out"]] / 100.0, y[IY["y_CO2_out"]] / 100.0
    # nitrogen (inert) in = nitrogen out
    assert n_out * (1 - yo - yc) == pytest.approx(n_in * (1 - P.y_O2_in - P.y_CO2_in), rel=1e-12)
    # O2 in - O2 out = OUR
    assert n_in * P.y_O2_in - n_out * yo == pytest.approx(our, rel=1e-9)
    # heat: 460 kJ per mol O2 (Cooney et al. 1969)
    assert y[IY["Q_heat"]] == pytest.approx(460e3 * our / 3600.0, rel=1e-12)
    # glucose-limited oxidative growth on glucose: RQ close to 1 (about 1.0-1.1 for E. coli)
    assert 0.95 < cer / our < 1.2


@pytest.mark.parametrize(("T", "expected"), [(40.0, 1.0), (5.0, 0.0), (47.0, 0.0), (50.0, 0.0)])
def test_cardinal_temperature_limits(T: float, expected: float) -> None:
    """CTMI (Rosso et al. 1993) is 1 at T_opt and 0 at and beyond T_min, T_max."""
    assert cardinal_temperature(NUMPY, T, 5.0, 40.0, 47.0) == pytest.approx(expected, abs=1e-12)


def test_kla_correlation_magnitude() -> None:
    """At 1000 rpm and 15 NL/min the van't Riet correlation gives a lab-scale kLa
    (100-600 1/h is the range reported for lab stirred tanks, van't Riet 1979)."""
    from models.library.ecoli_fedbatch import kla

    x, u = MODEL.x0.copy(), MODEL.u0.copy()
    u[IU["Q_air"]], u[IU["N_stir"]] = 15.0, 1000.0
    k = float(kla(NUMPY, *MODEL.named(x, u, MODEL.p0)))
    assert 100.0 < k < 600.0
