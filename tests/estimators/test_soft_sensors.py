"""Soft sensors agree with the model's own gas balance and mass balances."""

from __future__ import annotations

import pytest

from estimators.soft_sensors import off_gas_rates, specific_rates
from models import NUMPY, load_model
from models.library.ecoli_fedbatch import fluxes

MODEL = load_model("ecoli_fedbatch")


@pytest.mark.parametrize(
    ("X", "S", "DO"), [(5.0, 0.05, 60.0), (20.0, 0.02, 30.0), (1.0, 8.0, 90.0)]
)
def test_off_gas_rates_invert_the_model_gas_balance(X: float, S: float, DO: float) -> None:
    """The model computes outlet fractions from OUR/CER; the soft sensor recovers them."""
    x, u, p = MODEL.states_with(X=X, S=S, DO=DO), MODEL.u0.copy(), MODEL.p0
    y = MODEL.to_casadi().outputs(x, u, p)
    get = {n: y[MODEL.index(n)] for n in MODEL.output_names}
    r = off_gas_rates(
        get["y_O2_out"], get["y_CO2_out"], u[MODEL.index("Q_air")], x[MODEL.index("V")]
    )
    assert r.OUR == pytest.approx(get["OUR"], rel=1e-9)
    assert r.CER == pytest.approx(get["CER"], rel=1e-9)
    assert r.RQ == pytest.approx(get["CER"] / get["OUR"], rel=1e-9)


def test_air_in_equals_air_out_gives_zero_rates() -> None:
    r = off_gas_rates(20.95, 0.04, 10.0, 5.0)
    assert r.OUR == pytest.approx(0.0, abs=1e-9) and r.CER == pytest.approx(0.0, abs=1e-9)


def test_specific_rates_match_the_kinetics() -> None:
    """mu and qS recovered from the balances equal the kinetic rates of the model."""
    x, u = MODEL.states_with(X=8.0, S=0.05, A=0.2, DO=50.0), MODEL.u0.copy()
    u[MODEL.index("F")] = 0.05
    p = MODEL.p0
    r = specific_rates(MODEL, x, u, p)
    k = fluxes(NUMPY, *MODEL.named(x, u, p))
    assert r.mu == pytest.approx(float(k["mu"]), rel=1e-9)
    assert r.qS == pytest.approx(float(k["qS"]), rel=1e-9)
    assert r.qO2 == pytest.approx(float(k["q_O2"]), rel=1e-9)
    assert r.Y_xs == pytest.approx(float(k["mu"]) / float(k["qS"]), rel=1e-9)


def test_specific_rates_refuse_zero_biomass() -> None:
    with pytest.raises(ValueError, match="biomass > 0"):
        specific_rates(MODEL, MODEL.states_with(X=0.0), MODEL.u0, MODEL.p0)
