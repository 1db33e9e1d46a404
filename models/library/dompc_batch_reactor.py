"""Fed-batch bioreactor of do-mpc's ``examples/batch_reactor`` (same equations and values).

Haldane (substrate-inhibited) growth, growth-independent product formation, one feed.
Source: do-mpc documentation, example "Batch Bioreactor" (Lucia, Tatulea-Codrean, 2019),
after Srinivasan, Bonvin, Visser, Palanki (2003) Comput. Chem. Eng. 27:1-26. Time unit is
the example's own (hours); concentrations in mol/L as the example states.
"""

from __future__ import annotations

from typing import Any

from models import Input, MathNamespace, Model, Output, Parameter, State, Values

_SRC = "do-mpc examples/batch_reactor template_model.py / template_simulator.py"


def _rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    mu = p.mu_m * x.S_s / (p.K_m + x.S_s + x.S_s**2 / p.K_i)
    D = u.inp / x.V_s
    return {
        "X_s": mu * x.X_s - D * x.X_s,
        "S_s": -mu * x.X_s / p.Y_x - p.v_par * x.X_s / p.Y_p + D * (p.S_in - x.S_s),
        "P_s": p.v_par * x.X_s - D * x.P_s,
        "V_s": u.inp,
    }


def _measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {
        "X_meas": x.X_s,
        "S_meas": x.S_s,
        "P_meas": x.P_s,
        "V_meas": x.V_s,
        "P_total": x.P_s * x.V_s,  # mol/L * m3 = kmol of product in the reactor
    }


MODEL = Model(
    name="dompc_batch_reactor",
    description="do-mpc batch bioreactor example (Haldane growth, constant product formation)",
    states=(
        State(name="X_s", unit="mol/L", lower=0.0, upper=3.7, nominal=1.0, description="biomass"),
        State(
            name="S_s", unit="mol/L", lower=-0.01, upper=200.0, nominal=0.5, description="substrate"
        ),
        State(name="P_s", unit="mol/L", lower=0.0, upper=3.0, nominal=0.0, description="product"),
        State(name="V_s", unit="m3", lower=0.0, upper=1000.0, nominal=120.0, description="volume"),
    ),
    inputs=(
        Input(
            name="inp",
            unit="m3/h",
            lower=0.0,
            upper=0.2,
            nominal=0.0,
            description="substrate feed flow",
        ),
    ),
    parameters=(
        Parameter(name="mu_m", unit="1/h", value=0.02, lower=0.0, upper=1.0, source=_SRC),
        Parameter(name="K_m", unit="mol/L", value=0.05, lower=1e-6, upper=10.0, source=_SRC),
        Parameter(name="K_i", unit="mol/L", value=5.0, lower=1e-3, upper=100.0, source=_SRC),
        Parameter(name="v_par", unit="1/h", value=0.004, lower=0.0, upper=1.0, source=_SRC),
        Parameter(name="Y_p", unit="mol/mol", value=1.2, lower=0.01, upper=10.0, source=_SRC),
        Parameter(
            name="Y_x",
            unit="mol/mol",
            value=0.5,
            lower=0.01,
            upper=10.0,
            source=_SRC + " (uncertain: 0.3-0.5)",
        ),
        Parameter(
            name="S_in",
            unit="mol/L",
            value=200.0,
            lower=1.0,
            upper=1000.0,
            source=_SRC + " (uncertain: 180-220)",
        ),
    ),
    outputs=(
        Output(name="X_meas", unit="mol/L", lower=0.0, upper=100.0),
        Output(name="S_meas", unit="mol/L", lower=-0.01, upper=1000.0),
        Output(name="P_meas", unit="mol/L", lower=0.0, upper=100.0),
        Output(name="V_meas", unit="m3", lower=0.0, upper=1000.0),
        Output(
            name="P_total",
            unit="kmol",
            lower=0.0,
            upper=3000.0,
            description="product in the reactor (P_s V_s)",
            derived=True,
        ),
    ),
    rhs=_rhs,
    measure=_measure,
    references=(
        "do-mpc examples/batch_reactor",
        "Srinivasan B., Bonvin D., Visser E., Palanki S. (2003) Comput. Chem. Eng. 27:1-26",
    ),
)
