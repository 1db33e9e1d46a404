"""Physics checks of the penicillin fed-batch model (Bajpai and Reuss 1980 / PenSim 2002).

Reference values are derived here from first principles (conservation of volume and
substrate, the closed forms of the rate laws), not taken from the model's own output.
"""

from __future__ import annotations

import math

import casadi as ca
import numpy as np
import pytest

import models
from models import CASADI, NUMPY
from models.library import penicillin_fedbatch as pf

MODEL = models.load_model("penicillin_fedbatch")
IX = {n: MODEL.index(n) for n in MODEL.state_names}
P0 = MODEL.p0
PAR = dict(zip(MODEL.parameter_names, P0, strict=True))

DT = 2.0  # h
T_END = 240.0  # h


def inputs_at(t: float) -> np.ndarray:
    """PenSim-like recipe: batch for 40 h, then constant feed; T setpoint 25 -> 27 degC at 100 h."""
    F = 0.0 if t < 40.0 else 0.045
    T_set = 25.0 if t < 100.0 else 27.0
    return np.array([F, 8.6, 29.9, T_set])


def fluxes_np(x: np.ndarray, u: np.ndarray | None = None, p: np.ndarray = P0) -> dict[str, float]:
    u = MODEL.u0 if u is None else u
    r = pf.fluxes(NUMPY, *MODEL.named([np.float64(v) for v in x], u, p))
    return {k: float(v) for k, v in r.items()}


@pytest.fixture(scope="module")
def nominal_run() -> dict[str, np.ndarray]:
    """Run with the model's own CVODES step, and an augmented run that integrates the
    substrate consumed, int sigma X V dt (g), alongside the states."""
    cm = MODEL.to_casadi()
    xs, us, ps = MODEL.named(
        [cm.x[i] for i in range(MODEL.nx)],
        [cm.u[i] for i in range(MODEL.nu)],
        [cm.p[i] for i in range(MODEL.n_p)],
    )
    r = pf.fluxes(CASADI, xs, us, ps)
    consumed = ca.SX.sym("consumed")
    aug = ca.integrator(
        "penicillin_aug",
        "cvodes",
        {
            "x": ca.vertcat(cm.x, consumed),
            "p": ca.vertcat(cm.u, cm.p),
            "ode": ca.vertcat(cm.xdot, r["sigma"] * xs.X * xs.V),
        },
        0.0,
        DT,
        {"abstol": 1e-12, "reltol": 1e-12, "max_num_steps": 100000},
    )
    step = cm.integrator(DT, method="cvodes")
    n = round(T_END / DT)
    t = np.arange(n + 1) * DT
    U = np.array([inputs_at(tk) for tk in t[:-1]])
    x = np.empty((n + 1, MODEL.nx))
    xa = np.empty((n + 1, MODEL.nx + 1))
    x[0] = MODEL.x0
    xa[0] = np.append(MODEL.x0, 0.0)
    for k in range(n):
        x[k + 1] = np.asarray(step(x[k], U[k], P0)).ravel()
        xa[k + 1] = np.asarray(aug(x0=xa[k], p=np.concatenate([U[k], P0]))["xf"]).ravel()
    return {"t": t, "U": U, "x": x, "xa": xa}


def test_registry_and_nominal_point() -> None:
    assert models.load_model("penicillin_fedbatch") is MODEL
    lo, hi = MODEL.bounds("states")
    assert np.all(np.isfinite(MODEL.x0)) and np.all((lo <= MODEL.x0) & (MODEL.x0 <= hi))
    assert np.all(np.isfinite(MODEL.to_casadi().rhs(MODEL.x0, MODEL.u0, P0)))


def test_volume_balance_exact(nominal_run: dict[str, np.ndarray]) -> None:
    # V(t) = V0 + integral of F dt (no evaporation in this model)
    V_ref = MODEL.x0[IX["V"]] + np.concatenate([[0.0], np.cumsum(nominal_run["U"][:, 0] * DT)])
    np.testing.assert_allclose(nominal_run["x"][:, IX["V"]], V_ref, rtol=0.0, atol=1e-9)


def test_substrate_balance_closes(nominal_run: dict[str, np.ndarray]) -> None:
    # S V + substrate consumed (growth/Y_xs + production/Y_ps + maintenance) = S0 V0 + s_f int F
    xa = nominal_run["xa"]
    in_broth = xa[:, IX["S"]] * xa[:, IX["V"]]
    fed = PAR["s_f"] * np.concatenate([[0.0], np.cumsum(nominal_run["U"][:, 0] * DT)])
    np.testing.assert_allclose(in_broth + xa[:, -1], in_broth[0] + fed, rtol=1e-6, atol=0.0)
    np.testing.assert_allclose(xa[:, : MODEL.nx], nominal_run["x"], rtol=1e-6, atol=1e-8)
    # most of what was fed was consumed (substrate-limited fed-batch)
    assert xa[-1, -1] > 0.9 * (in_broth[0] + fed[-1])


def test_no_negative_concentrations(nominal_run: dict[str, np.ndarray]) -> None:
    x = nominal_run["x"]
    for name in ("X", "S", "P", "DO"):
        assert x[:, IX[name]].min() >= -1e-9, name
    assert np.all(np.isfinite(x))
    assert x[-1, IX["P"]] > 0.1  # penicillin was made


def test_temperature_follows_first_order_loop(nominal_run: dict[str, np.ndarray]) -> None:
    # T(t) = T_set + (T(t0) - T_set) exp(-(t - t0) / tau_T) after the setpoint step at 100 h
    t, x = nominal_run["t"], nominal_run["x"]
    k0 = int(np.searchsorted(t, 100.0))
    ref = 27.0 + (x[k0, IX["T"]] - 27.0) * np.exp(-(t[k0:] - t[k0]) / PAR["tau_T"])
    # within the integrator tolerance (reltol 1e-10 per step on a ~27 degC state)
    np.testing.assert_allclose(x[k0:, IX["T"]], ref, rtol=0.0, atol=1e-7)


def test_production_is_substrate_inhibited() -> None:
    # q_P = mu_p S / (K_p + S + S^2/K_I) peaks at S* = sqrt(K_p K_I), rising below, falling above
    S_star = math.sqrt(PAR["K_p"] * PAR["K_I"])
    S_grid = np.logspace(-6, 2, 161)
    qP = np.array([fluxes_np(MODEL.states_with(S=S, X=10.0))["q_P"] for S in S_grid])
    below, above = S_grid < S_star, S_grid > S_star
    assert np.all(np.diff(qP[below]) > 0.0)
    assert np.all(np.diff(qP[above]) < 0.0)

    # the oxygen factor is a common multiplier; compare ratios with the closed form
    def shape(S: float) -> float:
        return S / (PAR["K_p"] + S + S * S / PAR["K_I"])

    q_star = fluxes_np(MODEL.states_with(S=S_star, X=10.0))["q_P"]
    for S in (1e-5, 0.01, 0.1, 1.0, 10.0):
        assert fluxes_np(MODEL.states_with(S=S, X=10.0))["q_P"] / q_star == pytest.approx(
            shape(S) / shape(S_star), rel=1e-12
        )
    # at batch-phase glucose (15 g/L) production is below 1 % of the maximum
    assert fluxes_np(MODEL.states_with(S=15.0, X=10.0))["q_P"] < 0.01 * q_star


def test_growth_and_death_follow_arrhenius() -> None:
    # ratios between two temperatures: exp(-E/R (1/T2 - 1/T1)), E in cal/mol, R = 1.987
    T1, T2 = 25.0, 30.0
    r1 = fluxes_np(MODEL.states_with(T=T1, S=1.0, X=5.0))
    r2 = fluxes_np(MODEL.states_with(T=T2, S=1.0, X=5.0))
    inv = 1.0 / (T2 + 273.15) - 1.0 / (T1 + 273.15)
    assert r2["mu_g"] / r1["mu_g"] == pytest.approx(math.exp(-PAR["E_g"] / 1.987 * inv), rel=1e-12)
    assert r2["k_death"] / r1["k_death"] == pytest.approx(
        math.exp(-PAR["E_d"] / 1.987 * inv), rel=1e-12
    )
    # death rises much faster with temperature than growth (E_d >> E_g): x4.0 against x1.15
    assert r2["k_death"] / r1["k_death"] > 3.0 * r2["mu_g"] / r1["mu_g"]
    # nominal growth: mu_x f_pH (Contois) k_g exp(-E_g/RT), pH 5 factor 1/(1 + 1e-5 + 1/7)
    f_pH = 1.0 / (1.0 + PAR["K_1"] / 1e-5 + 1e-5 / PAR["K_2"])
    x = MODEL.states_with(T=T1, S=1.0, X=5.0)
    C_L = PAR["C_L_sat"]
    mu_ref = (
        PAR["mu_x"]
        * f_pH
        * 1.0
        / (PAR["K_x"] * 5.0 + 1.0)
        * C_L
        / (PAR["K_ox"] * 5.0 + C_L)
        * PAR["k_g"]
        * math.exp(-PAR["E_g"] / (1.987 * (T1 + 273.15)))
    )
    assert fluxes_np(x)["mu_g"] == pytest.approx(mu_ref, rel=1e-12)


def test_hydrolysis_and_dilution_of_penicillin() -> None:
    # without biomass nothing is made: dP/dt = -(K + F/V) P
    x = MODEL.states_with(X=0.0, S=1.0, P=2.0, V=120.0)
    u = np.array([0.3, 8.6, 29.9, 25.0])
    dP = MODEL.to_casadi().rhs(x, u, P0)[IX["P"]]
    assert dP == pytest.approx(-(PAR["K_h"] + 0.3 / 120.0) * 2.0, rel=1e-12)


def test_no_substrate_no_consumption() -> None:
    # at S = 0 growth, production and (saturating) maintenance stop: S cannot go negative
    r = fluxes_np(MODEL.states_with(S=0.0, X=10.0))
    assert r["sigma"] == 0.0 and r["mu_g"] == 0.0 and r["q_P"] == 0.0
    dS = MODEL.to_casadi().rhs(
        MODEL.states_with(S=0.0, X=10.0), np.array([0.0, 8.6, 29.9, 25.0]), P0
    )
    assert dS[IX["S"]] == 0.0
    # well above K_m maintenance equals m_x
    assert fluxes_np(MODEL.states_with(S=1.0))["m_S"] == pytest.approx(PAR["m_x"], rel=1e-3)


def test_kla_and_oxygen_balance() -> None:
    # PenSim correlation kLa = alpha sqrt(f_g) (P_w / V)^beta at its default inputs
    kla_ref = 70.0 * math.sqrt(8.6) * (29.9 / 100.0) ** 0.4
    assert fluxes_np(MODEL.x0)["kla"] == pytest.approx(kla_ref, rel=1e-12)
    # DO balance: dDO/dt = kLa (100 - DO) - 100 OUR / C_L* - D DO, OUR from the yields
    x = MODEL.states_with(X=8.0, S=0.05, DO=60.0, V=110.0)
    u = np.array([0.05, 8.6, 29.9, 25.0])
    r = fluxes_np(x, u)
    C_L = PAR["C_L_sat"] * 0.6
    q_O2 = (
        r["mu_g"] / PAR["Y_xo"]
        + r["q_P"] / PAR["Y_po"]
        + PAR["m_o"] * C_L / (PAR["K_ox"] * 8.0 + C_L)
    )
    y = dict(zip(MODEL.output_names, MODEL.to_casadi().outputs(x, u, P0), strict=True))
    assert y["OUR"] == pytest.approx(q_O2 * 8.0, rel=1e-12)
    dDO = MODEL.to_casadi().rhs(x, u, P0)[IX["DO"]]
    ref = r["kla"] * 40.0 - 100.0 * q_O2 * 8.0 / PAR["C_L_sat"] - 0.05 / 110.0 * 60.0
    assert dDO == pytest.approx(ref, rel=1e-12)
    # no oxygen: no O2 uptake, so the DO cannot be driven negative
    assert fluxes_np(MODEL.states_with(DO=0.0, X=8.0))["q_O2"] == 0.0


def test_jax_twin_matches_casadi() -> None:
    jm, cm = MODEL.to_jax(), MODEL.to_casadi()
    for x in (MODEL.x0, MODEL.states_with(X=10.0, S=0.01, P=1.0, DO=40.0, V=110.0, T=27.0)):
        u = np.array([0.05, 10.0, 40.0, 26.0])
        np.testing.assert_allclose(np.asarray(jm.f(x, u, P0)), cm.rhs(x, u, P0), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jm.h(x, u, P0)), cm.outputs(x, u, P0), rtol=1e-12)
