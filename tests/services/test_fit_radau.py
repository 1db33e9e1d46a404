"""The single-shooting Radau IIA fit (``FitOptions(integrator="radau")``, services.fitting._radau).

Data: do-mpc's batch reactor (``reactor_batches``, simulated, seeded); the references are
a fit of the same data by CVODES multiple shooting and central finite differences.
Per-batch parameters and estimated initial states by this integrator are tested in
test_fitting.py (parametrised over rk and radau).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reactor_batches import ERRORS, MODEL, PROFILES, synthetic_batch

from models import Model, Output, Parameter, State
from services.fitting import ErrorModel, FitError, FitOptions, fit
from services.fitting._fit import _radau_collocation
from services.fitting._radau import RadauShooting
from services.historian.readback import BatchData, Series

PARAMS = ("mu_m", "K_m", "Y_x", "v_par")
RADAU = FitOptions(n_starts=1, integrator="radau", steps_per_interval=2)


@pytest.fixture(scope="module")
def batches() -> list[BatchData]:
    return [synthetic_batch(11 + k, f"B{k + 1}", p) for k, p in enumerate(PROFILES)]


def test_radau_shooting_agrees_with_the_cvodes_fit(batches: list[BatchData]) -> None:
    ra = fit(MODEL, batches[:1], PARAMS, errors=ERRORS, options=RADAU)
    cv = fit(
        MODEL,
        batches[:1],
        PARAMS,
        errors=ERRORS,
        options=FitOptions(n_starts=1, integrator="cvodes"),
    )
    assert ra.converged and cv.converged, (ra.status, cv.status)
    assert ra.integrator == "radau x2"
    for name in PARAMS:
        e, c = ra.estimate(name), cv.estimate(name)
        # order-5 steps on 0.5 h intervals of a smooth model: the discretisation moves the
        # optimum by far less than its statistical error (2 % of an SE)
        assert e.value == pytest.approx(c.value, abs=0.02 * c.se), name
        assert e.se == pytest.approx(c.se, rel=0.02), name
    assert ra.timing.simulation > 0 and ra.timing.sensitivities > 0


def test_radau_sensitivities_equal_central_differences() -> None:
    cas = MODEL.to_casadi()
    sim = RadauShooting(_radau_collocation(cas, 1)[0])
    t_h = np.arange(0.0, 20.5, 0.5)
    u = np.tile(np.array([[0.02]]), (t_h.size - 1, 1)) if MODEL.nu else np.zeros((t_h.size - 1, 0))
    x0, p = MODEL.x0.copy(), MODEL.p0.copy()
    scale = np.maximum(np.abs(x0), 1.0)
    idx = [MODEL.index(n) for n in PARAMS]
    dp = np.zeros((MODEL.n_p, len(idx)))
    dp[idx, range(len(idx))] = 1.0
    dx0 = np.zeros((MODEL.nx, len(idx)))
    tr = sim.simulate(t_h, u, x0, p, n_fe=2, scale=scale, dx0=dx0, dp=dp)
    assert tr.S is not None
    for k, i in enumerate(idx):
        h = 1e-5 * abs(p[i])
        up, dn = p.copy(), p.copy()
        up[i] += h
        dn[i] -= h
        fd = (
            sim.simulate(t_h, u, x0, up, n_fe=2, scale=scale).X
            - sim.simulate(t_h, u, x0, dn, n_fe=2, scale=scale).X
        ) / (2 * h)
        # central differences are second order: relative error ~ (1e-5)^2 plus rounding
        # of the Newton tolerance (1e-10 of the scale) over h: 1e-5 of the largest entry
        assert np.max(np.abs(fd - tr.S[:, :, k])) <= 1e-5 * np.max(np.abs(fd)) + 1e-9, (
            MODEL.parameter_names[i]
        )


def test_a_model_that_cannot_be_integrated_from_the_start_is_one_fit_error() -> None:
    """x' = k x^2 from x = 1 blows up at t = 1/k h: no mesh integrates it past that."""

    def rhs(m: Any, x: Any, u: Any, p: Any) -> dict[str, Any]:
        return {"X": p.k * x.X**2}

    def measure(m: Any, x: Any, u: Any, p: Any) -> dict[str, Any]:
        return {"X_meas": x.X}

    src = "test-only model"
    blowup = Model(
        name="blowup",
        description="finite-time blow-up",
        states=(State(name="X", unit="g/L", lower=0.0, upper=1e9, nominal=1.0),),
        inputs=(),
        parameters=(Parameter.of("k", "1/h", 1.0, 0.1, 10.0, src),),
        outputs=(Output(name="X_meas", unit="g/L", lower=0.0, upper=1e9),),
        rhs=rhs,
        measure=measure,
    )
    t = np.arange(1, 7) * 0.5
    batch = BatchData("Z1", "simulated", {"X_meas": Series("X_meas", t, t + 1.0, t)}, None)
    with pytest.raises(FitError, match="cannot be integrated from the start values"):
        fit(blowup, [batch], ["k"], errors={"X_meas": ErrorModel(0.1)}, options=RADAU)
