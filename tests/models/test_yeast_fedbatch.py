"""Physics checks of the S. cerevisiae bottleneck model (Sonnleitner and Kaeppeli 1986).

Reference values are derived here from first principles (conservation of volume, carbon and
electrons; the steady state of a chemostat), not taken from the model's own output.
"""

from __future__ import annotations

import math

import casadi as ca
import numpy as np
import pytest
from scipy.optimize import brentq

import models
from models import CASADI, NUMPY
from models.library import yeast_fedbatch as yf

MODEL = models.load_model("yeast_fedbatch")
IX = {n: MODEL.index(n) for n in MODEL.state_names}
P0 = MODEL.p0
PAR = dict(zip(MODEL.parameter_names, P0, strict=True))

# Degrees of reduction per C-mol (Roels 1983): glucose 4, ethanol 6, biomass 4.2
O_OX = (4.0 * PAR["C_s"] - 4.2 * PAR["C_x"] * PAR["Y_xs_ox"]) / 48.0 * 1000.0  # mmol O2/g
K_O_PCT = 100.0 * PAR["K_o"] / (32.0 * PAR["C_O2_sat"])  # K_o (mg/L) as % of saturation

DT = 0.5  # h
T_END = 40.0  # h
KLA = 1000.0  # 1/h


def feed_profile(t: float) -> float:
    """Batch for 12 h, then exponential feeding at 0.2 1/h with a 3-fold overfeed at 30-32 h."""
    if t < 12.0:
        return 0.0
    F = 0.004 * math.exp(0.2 * (t - 12.0))
    if 30.0 <= t < 32.0:
        F *= 3.0
    return min(F, 0.5)


def fluxes_np(x: np.ndarray, u: np.ndarray | None = None, p: np.ndarray = P0) -> dict[str, float]:
    u = MODEL.u0 if u is None else u
    r = yf.fluxes(NUMPY, *MODEL.named([np.float64(v) for v in x], u, p))
    return {k: float(v) for k, v in r.items()}


@pytest.fixture(scope="module")
def nominal_run() -> dict[str, np.ndarray]:
    """Fed-batch run with the model's own CVODES step, plus the CO2 carbon integrated alongside.

    The augmented integrator carries int q_C X V dt (g C released as CO2) next to the states.
    """
    cm = MODEL.to_casadi()
    xs, us, ps = MODEL.named(
        [cm.x[i] for i in range(MODEL.nx)],
        [cm.u[i] for i in range(MODEL.nu)],
        [cm.p[i] for i in range(MODEL.n_p)],
    )
    r = yf.fluxes(CASADI, xs, us, ps)
    co2_c = ca.SX.sym("co2_c")
    ode = ca.vertcat(cm.xdot, r["q_C"] * xs.X * xs.V)
    aug = ca.integrator(
        "yeast_aug",
        "cvodes",
        {"x": ca.vertcat(cm.x, co2_c), "p": ca.vertcat(cm.u, cm.p), "ode": ode},
        0.0,
        DT,
        {"abstol": 1e-12, "reltol": 1e-12, "max_num_steps": 100000},
    )
    step = cm.integrator(DT, method="cvodes")
    n = round(T_END / DT)
    t = np.arange(n + 1) * DT
    F = np.array([feed_profile(tk) for tk in t[:-1]])
    x = np.empty((n + 1, MODEL.nx))
    xa = np.empty((n + 1, MODEL.nx + 1))
    x[0] = MODEL.x0
    xa[0] = np.append(MODEL.x0, 0.0)
    for k in range(n):
        u = np.array([F[k], KLA])
        x[k + 1] = np.asarray(step(x[k], u, P0)).ravel()
        xa[k + 1] = np.asarray(aug(x0=xa[k], p=np.concatenate([u, P0]))["xf"]).ravel()
    return {"t": t, "F": F, "x": x, "xa": xa}


def test_registry_and_nominal_point() -> None:
    assert models.load_model("yeast_fedbatch") is MODEL
    lo, hi = MODEL.bounds("states")
    assert np.all(np.isfinite(MODEL.x0)) and np.all((lo <= MODEL.x0) & (MODEL.x0 <= hi))
    dx = MODEL.to_casadi().rhs(MODEL.x0, MODEL.u0, P0)
    assert np.all(np.isfinite(dx))


def test_reductive_ethanol_yield_matches_publication() -> None:
    # fermentation is redox neutral; Sonnleitner and Kaeppeli (1986) report Y_E/S = 0.48 g/g
    Y_es = fluxes_np(MODEL.x0)["Y_es"]
    assert Y_es == pytest.approx(0.48, abs=2e-3)
    # and it cannot exceed the Gay-Lussac maximum 2 * 46.07 / 180.16 = 0.511 g/g
    assert Y_es < 2 * 46.07 / 180.16


def test_volume_balance_exact(nominal_run: dict[str, np.ndarray]) -> None:
    # V(t) = V0 + integral of F dt (piecewise-constant F)
    V_ref = MODEL.x0[IX["V"]] + np.concatenate([[0.0], np.cumsum(nominal_run["F"] * DT)])
    np.testing.assert_allclose(nominal_run["x"][:, IX["V"]], V_ref, rtol=0.0, atol=1e-9)


def test_carbon_balance_closes(nominal_run: dict[str, np.ndarray]) -> None:
    # C in broth + C released as CO2 = C in broth at t=0 + C fed (glucose, 0.4 g C/g)
    xa = nominal_run["xa"]
    c = np.array([PAR["C_x"], PAR["C_s"], PAR["C_e"]])
    broth = xa[:, IX["V"]] * (c[0] * xa[:, IX["X"]] + c[1] * xa[:, IX["S"]] + c[2] * xa[:, IX["E"]])
    fed = PAR["S_feed"] * PAR["C_s"] * np.concatenate([[0.0], np.cumsum(nominal_run["F"] * DT)])
    lhs = broth + xa[:, -1]
    rhs = broth[0] + fed
    np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=0.0)
    # the augmented run reproduces the model's own integrator
    np.testing.assert_allclose(xa[:, : MODEL.nx], nominal_run["x"], rtol=1e-6, atol=1e-8)
    # the run is not trivial: CO2 was released and ethanol was made and consumed
    assert xa[-1, -1] > 0.1 * broth[-1]
    assert nominal_run["x"][:, IX["E"]].max() > 1.0


def test_no_negative_concentrations(nominal_run: dict[str, np.ndarray]) -> None:
    x = nominal_run["x"]
    for name in ("X", "S", "E", "DO"):
        assert x[:, IX[name]].min() >= -1e-9, name
    assert np.all(np.isfinite(x))


def test_outputs_match_balances(nominal_run: dict[str, np.ndarray]) -> None:
    # OUR equals the O2 term of the DO balance; CER equals the CO2 carbon in mmol
    cm = MODEL.to_casadi()
    for k in (4, 30, 60, 70):
        x = nominal_run["x"][k]
        u = np.array([nominal_run["F"][k], KLA])
        y = dict(zip(MODEL.output_names, cm.outputs(x, u, P0), strict=True))
        dx = cm.rhs(x, u, P0)
        D = u[0] / x[IX["V"]]
        DO = x[IX["DO"]]
        our = (KLA * (100.0 - DO) - D * DO - dx[IX["DO"]]) * PAR["C_O2_sat"] / 100.0
        assert y["OUR"] == pytest.approx(our, rel=1e-9, abs=1e-9)
        r = fluxes_np(x, u)
        assert y["CER"] == pytest.approx(r["q_C"] / 12.0 * 1000.0 * x[IX["X"]], rel=1e-12)


def test_ethanol_only_above_critical_glucose_uptake() -> None:
    # at full aeration the critical glucose flux is qO_max fO / (O2 per g oxidised glucose)
    qS_crit = PAR["qO_max"] * 100.0 / (K_O_PCT + 100.0) / O_OX
    S_crit = PAR["K_s"] * qS_crit / (PAR["qS_max"] - qS_crit)
    assert fluxes_np(MODEL.states_with(S=S_crit))["qS_crit"] == pytest.approx(qS_crit, rel=1e-12)
    for S in (1e-4, 0.1 * S_crit, 0.5 * S_crit, 0.99 * S_crit):
        r = fluxes_np(MODEL.states_with(S=S, E=0.0))
        assert r["qS"] < qS_crit
        assert r["p_E"] == 0.0 and r["qS_red"] == 0.0
        assert r["q_O2"] < r["qO_cap"]
    for S in (1.01 * S_crit, 2.0 * S_crit, 10.0):
        r = fluxes_np(MODEL.states_with(S=S, E=0.0))
        assert r["p_E"] > 0.0
        assert r["p_E"] == pytest.approx(r["Y_es"] * (r["qS"] - qS_crit), rel=1e-9)
        # respiration is saturated: the bottleneck is hit exactly
        assert r["q_O2"] == pytest.approx(r["qO_cap"], rel=1e-9)
    # the volumetric ethanol rate switches sign with the glucose supply (E present, X = 5 g/L)
    dE_low = MODEL.to_casadi().rhs(MODEL.states_with(S=0.5 * S_crit, E=1.0, X=5.0), MODEL.u0, P0)[
        IX["E"]
    ]
    dE_high = MODEL.to_casadi().rhs(MODEL.states_with(S=2.0 * S_crit, E=1.0, X=5.0), MODEL.u0, P0)[
        IX["E"]
    ]
    assert dE_low < 0.0 < dE_high


def test_ethanol_uptake_needs_spare_respiration() -> None:
    # above the critical flux there is no spare capacity: ethanol is not consumed
    r = fluxes_np(MODEL.states_with(S=1.0, E=2.0))
    assert r["qE"] == 0.0
    # without glucose ethanol is oxidised, and respiration never exceeds the capacity
    for DO in (0.5, 5.0, 50.0, 100.0):
        for S in (0.0, 0.01, 0.05, 0.2, 5.0):
            for E in (0.0, 0.05, 2.0):
                r = fluxes_np(MODEL.states_with(S=S, E=E, DO=DO))
                assert r["q_O2"] <= r["qO_cap"] * (1 + 1e-12) + 1e-12
                assert r["qE"] >= 0.0 and r["p_E"] >= 0.0 and r["q_C"] > -1e-12
    r = fluxes_np(MODEL.states_with(S=0.0, E=2.0))
    assert r["qE"] > 0.0 and r["mu"] == pytest.approx(PAR["Y_xe"] * r["qE"], rel=1e-12)
    # without oxygen only fermentation remains: no O2 uptake, no ethanol uptake
    r = fluxes_np(MODEL.states_with(S=5.0, E=2.0, DO=0.0))
    assert r["q_O2"] == pytest.approx(0.0, abs=1e-12) and r["qE"] == 0.0


def test_respiratory_quotient_of_the_routes() -> None:
    # RQ of a route from carbon and electron balances, per g substrate with yield Y:
    # RQ = 4 (C_sub - Y C_x) / (gamma_sub C_sub - 4.2 Y C_x)
    def rq(C_sub: float, gamma: float, Y: float) -> float:
        return 4.0 * (C_sub - Y * PAR["C_x"]) / (gamma * C_sub - 4.2 * Y * PAR["C_x"])

    def rq_model(r: dict[str, float]) -> float:
        return r["q_C"] / 12.0 * 1000.0 / r["q_O2"]

    # purely oxidative growth on glucose: RQ just above 1 (S. cerevisiae ~1.05)
    r = fluxes_np(MODEL.states_with(S=0.01, E=0.0))
    assert rq_model(r) == pytest.approx(rq(PAR["C_s"], 4.0, PAR["Y_xs_ox"]), rel=1e-9)
    assert 1.0 < rq_model(r) < 1.15
    # oxido-reductive growth: the O2-free reductive CO2 raises RQ far above 1
    r = fluxes_np(MODEL.states_with(S=5.0, E=0.0))
    assert rq_model(r) > 3.0
    # growth on ethanol: below 2/3, the RQ of complete ethanol oxidation
    r = fluxes_np(MODEL.states_with(S=0.0, E=2.0))
    assert rq_model(r) == pytest.approx(rq(PAR["C_e"], 6.0, PAR["Y_xe"]), rel=1e-9)
    assert 0.0 < rq_model(r) < 2.0 / 3.0


def _chemostat(D: float, S_in: float, kla: float, t_end: float) -> np.ndarray:
    """Long CVODES run of a chemostat: the concentration balances of a fed-batch with
    D = F/V are those of a CSTR whose outflow equals the feed, with the volume held."""
    cm = MODEL.to_casadi()
    xdot = ca.vertcat(cm.xdot[: IX["V"]], 0.0)
    integ = ca.integrator(
        "chemostat",
        "cvodes",
        {"x": cm.x, "p": ca.vertcat(cm.u, cm.p), "ode": xdot},
        0.0,
        t_end,
        {"abstol": 1e-12, "reltol": 1e-10, "max_num_steps": 200000},
    )
    x0 = MODEL.states_with(X=1.0, S=S_in / 2, E=0.0, DO=90.0, V=1.0)
    p = MODEL.parameters_with(S_feed=S_in)
    return np.asarray(integ(x0=x0, p=np.concatenate([[D * 1.0, kla], p]))["xf"]).ravel()


def test_glucose_limited_chemostat_below_critical_rate() -> None:
    # D = mu = Y_ox qS; S* from Monod, X* = Y_ox (S_in - S*), no ethanol; DO from the O2
    # balance kLa (100 - DO) = 100 OUR / C_sat + D DO with OUR = o_ox qS X*
    D, S_in, kla = 0.15, 10.0, 1000.0
    qS = D / PAR["Y_xs_ox"]
    S_ss = PAR["K_s"] * qS / (PAR["qS_max"] - qS)
    X_ss = PAR["Y_xs_ox"] * (S_in - S_ss)
    OUR = O_OX * qS * X_ss
    DO_ss = (100.0 * kla - 100.0 * OUR / PAR["C_O2_sat"]) / (kla + D)
    x = _chemostat(D, S_in, kla, 400.0)
    assert x[IX["S"]] == pytest.approx(S_ss, rel=1e-6)
    assert x[IX["X"]] == pytest.approx(X_ss, rel=1e-6)
    assert x[IX["E"]] == pytest.approx(0.0, abs=1e-7)
    assert x[IX["DO"]] == pytest.approx(DO_ss, rel=1e-6)


def test_chemostat_above_critical_rate_makes_ethanol() -> None:
    # respiration saturated at qO_max fO(DO): qS_ox = qS_crit, D = Y_ox qS_crit + Y_red qS_red;
    # E* = Y_es qS_red X* / D; DO* solves the O2 balance with OUR = qO_max fO X*
    D, S_in, kla = 0.35, 10.0, 1000.0
    Y_es = fluxes_np(MODEL.x0)["Y_es"]

    def steady(DO: float) -> tuple[float, float, float, float]:
        q_cap = PAR["qO_max"] * DO / (K_O_PCT + DO)
        q_crit = q_cap / O_OX
        qS = (D - (PAR["Y_xs_ox"] - PAR["Y_xs_red"]) * q_crit) / PAR["Y_xs_red"]
        S = PAR["K_s"] * qS / (PAR["qS_max"] - qS)
        X = D * (S_in - S) / qS
        E = Y_es * (qS - q_crit) * X / D
        residual = kla * (100.0 - DO) - 100.0 * q_cap * X / PAR["C_O2_sat"] - D * DO
        return residual, S, X, E

    DO_ss = brentq(lambda d: steady(d)[0], 1e-3, 100.0, xtol=1e-14, rtol=1e-14)
    _, S_ss, X_ss, E_ss = steady(DO_ss)
    assert E_ss > 1.0  # a real overflow steady state
    x = _chemostat(D, S_in, kla, 600.0)
    assert x[IX["S"]] == pytest.approx(S_ss, rel=1e-5)
    assert x[IX["X"]] == pytest.approx(X_ss, rel=1e-5)
    assert x[IX["E"]] == pytest.approx(E_ss, rel=1e-5)
    assert x[IX["DO"]] == pytest.approx(DO_ss, rel=1e-5)


def test_jax_twin_matches_casadi() -> None:
    jm, cm = MODEL.to_jax(), MODEL.to_casadi()
    for x in (MODEL.x0, MODEL.states_with(X=10.0, S=0.02, E=1.5, DO=30.0, V=7.0)):
        u = np.array([0.1, 600.0])
        np.testing.assert_allclose(np.asarray(jm.f(x, u, P0)), cm.rhs(x, u, P0), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jm.h(x, u, P0)), cm.outputs(x, u, P0), rtol=1e-12)
