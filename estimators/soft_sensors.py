"""Soft sensors: OUR, CER and RQ from off-gas analysis; specific rates and yields from estimates.

Off-gas rates use the inert (N2) balance, the standard in bioprocess monitoring
(e.g. Villadsen, Nielsen, Liden 2011, Bioreaction Engineering Principles, ch. 13): the
outlet gas flow is not measured, it follows from nitrogen in = nitrogen out. The gas
functions take floats or NumPy arrays (one value per sample or per reactor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models import Model

MOLAR_VOLUME_NL = 22.414  # L/mol of ideal gas at 0 degC and 1 atm (normal litres)
Y_O2_AIR = 0.2095  # mole fraction of O2 in dry air
Y_CO2_AIR = 0.0004  # mole fraction of CO2 in dry air


@dataclass(frozen=True)
class OffGasRates:
    """Volumetric rates from the gas balance: OUR and CER in mmol/L/h, RQ in mol/mol."""

    OUR: Any
    CER: Any
    RQ: Any


def off_gas_rates(
    y_O2_out_pct: Any,
    y_CO2_out_pct: Any,
    Q_air_NL_min: Any,
    V_L: Any,
    *,
    y_O2_in: float = Y_O2_AIR,
    y_CO2_in: float = Y_CO2_AIR,
) -> OffGasRates:
    """OUR, CER (mmol/L/h) and RQ from outlet O2/CO2 (%), inlet air flow (NL/min), volume (L)."""
    yo, yc = y_O2_out_pct / 100.0, y_CO2_out_pct / 100.0
    n_in = Q_air_NL_min * 60.0 / MOLAR_VOLUME_NL  # mol/h
    n_out = n_in * (1.0 - y_O2_in - y_CO2_in) / (1.0 - yo - yc)  # inert balance, mol/h
    our = (n_in * y_O2_in - n_out * yo) / V_L * 1000.0
    cer = (n_out * yc - n_in * y_CO2_in) / V_L * 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rq = np.true_divide(cer, our)  # NaN where no O2 is taken up
    return OffGasRates(OUR=our, CER=cer, RQ=rq)


@dataclass(frozen=True)
class SpecificRates:
    """Per-biomass rates: mu (1/h), qS (g/g/h), qO2 (mmol/g/h), and Y_xs = mu/qS (g/g)."""

    mu: float
    qS: float
    qO2: float
    Y_xs: float


@dataclass(frozen=True, kw_only=True)
class RateSensorSpec:
    """Which variables of a model are biomass, substrate, feed, volume and feed substrate."""

    biomass: str = "X"
    substrate: str = "S"
    volume: str = "V"
    feed: str = "F"
    feed_concentration: str = "S_feed"
    our_output: str = "OUR"


def specific_rates(
    model: Model, x: np.ndarray, u: np.ndarray, p: np.ndarray, spec: RateSensorSpec | None = None
) -> SpecificRates:
    """Specific rates at an estimate, from the model's own balances.

    mu = (dX/dt + D X) / X and qS = (D (S_f - S) - dS/dt) / X with D = F / V: the rates
    the estimated state and parameters imply, whatever the kinetic form.
    """
    spec = spec or RateSensorSpec()
    cas = model.to_casadi()
    dx = cas.rhs(x, u, p)
    y = cas.outputs(x, u, p)
    X = float(x[model.index(spec.biomass)])
    S = float(x[model.index(spec.substrate)])
    D = float(u[model.index(spec.feed)]) / float(x[model.index(spec.volume)])
    S_f = float(p[model.index(spec.feed_concentration)])
    if X <= 0.0:
        raise ValueError(f"specific rates need biomass > 0, got {spec.biomass} = {X}")
    mu = (float(dx[model.index(spec.biomass)]) + D * X) / X
    qS = (D * (S_f - S) - float(dx[model.index(spec.substrate)])) / X
    qO2 = float(y[model.index(spec.our_output)]) / X
    return SpecificRates(mu=mu, qS=qS, qO2=qO2, Y_xs=mu / qS if qS != 0.0 else float("nan"))
