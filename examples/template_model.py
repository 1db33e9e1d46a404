"""The physics: a fed-batch with substrate inhibition (Haldane kinetics) and a product.

Andrews (1968) Biotechnol. Bioeng. 10:707-723 (Haldane/Andrews growth on an inhibiting
substrate); Luedeking and Piret (1959) J. Biochem. Microbiol. Technol. Eng. 1:393-412
(growth- and non-growth-associated product). Time in hours.
"""

from __future__ import annotations

from typing import Any

from models import Input, MathNamespace, Model, Output, Parameter, State, Values

ANDREWS = "Andrews (1968) Biotechnol. Bioeng. 10:707-723"
LP = "Luedeking, Piret (1959) J. Biochem. Microbiol. Technol. Eng. 1:393-412"


def rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Mass balances per hour; growth falls off above S = sqrt(K_s K_i) (inhibition)."""
    mu = p.mu_max * x.S / (p.K_s + x.S + x.S**2 / p.K_i)
    D = u.F / x.V
    return {
        "X": (mu - D) * x.X,
        "S": D * (p.S_f - x.S) - mu * x.X / p.Y_xs,
        "P": (p.alpha * mu + p.beta) * x.X - D * x.P,
        "V": u.F,
    }


def measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Load cell online; biomass, substrate and product assayed offline; total product."""
    return {"V_meas": x.V, "X_off": x.X, "S_off": x.S, "P_off": x.P, "P_total": x.P * x.V}


def get_model() -> Model:
    """The model (do-mpc's ``template_model``)."""
    return Model(
        name="haldane_fedbatch",
        description="Haldane growth on an inhibiting substrate, Luedeking-Piret product",
        states=(
            State(name="X", unit="g/L", lower=0.0, upper=100.0, nominal=1.0),
            State(name="S", unit="g/L", lower=0.0, upper=300.0, nominal=1.0),
            State(name="P", unit="g/L", lower=0.0, upper=100.0, nominal=0.0),
            State(name="V", unit="L", lower=0.1, upper=10.0, nominal=2.0),
        ),
        inputs=(Input(name="F", unit="L/h", lower=0.0, upper=0.4, nominal=0.02),),
        parameters=(
            Parameter.of("mu_max", "1/h", 0.4, 0.01, 2.0, ANDREWS),
            Parameter.of("K_s", "g/L", 0.5, 1e-3, 10.0, ANDREWS),
            Parameter.of("K_i", "g/L", 10.0, 0.1, 500.0, ANDREWS, "substrate inhibition"),
            Parameter.of("Y_xs", "g/g", 0.5, 0.1, 1.0, ANDREWS),
            Parameter.of("alpha", "g/g", 0.1, 0.0, 2.0, LP),
            Parameter.of("beta", "g/g/h", 0.02, 0.0, 1.0, LP),
            Parameter.of("S_f", "g/L", 150.0, 10.0, 800.0, "feed recipe"),
        ),
        outputs=(
            Output(name="V_meas", unit="L", lower=0.0, upper=20.0),
            Output(name="X_off", unit="g/L", lower=0.0, upper=200.0),
            Output(name="S_off", unit="g/L", lower=0.0, upper=400.0),
            Output(name="P_off", unit="g/L", lower=0.0, upper=200.0),
            Output(name="P_total", unit="g", lower=0.0, upper=2000.0, derived=True),
        ),
        rhs=rhs,
        measure=measure,
        references=(ANDREWS, LP),
    )
