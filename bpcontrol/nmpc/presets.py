"""Ready controller configurations for the built-in models (defaults of the main job).

E. coli (``ecoli_fedbatch``): maximise the product made by the batch end (P V, g), pay a
little for stirring and air, keep DO >= 30 % air saturation (planned
with a 1 % back-off for estimation error and probe noise), volume <= 10 L, acetate
<= 1 g/L, glucose <= 1 g/L and metabolic heat <= 150 W (cooling capacity) as soft bounds
with exact penalties, with pump, air, agitation and temperature rate limits. A feed recipe
(batch until glucose is nearly used, then an exponential feed) builds the first guess.

The glucose bound keeps the fed-batch substrate-limited, as practice does: an economic
horizon of a few hours otherwise pumps glucose that a slow-growing strain cannot use yet,
and its later uptake needs more oxygen than aeration can give (DO crashes, measured with a
plant 20 % slower than the model). IPOPT is warm-started from the shifted previous
solution (multipliers included), which halves the iterations per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from bpcontrol.nmpc._config import NMPCConfig, Objective, SoftBound
from models import Model

ECOLI_BATCH_END_H = 30.0
ECOLI_CONTROL_PERIOD_H = 1.0 / 6.0  # 10 min
ECOLI_DO_MIN = 30.0  # % air saturation
ECOLI_S0 = 5.0  # g/L glucose at inoculation: a batch phase that DO can follow
ECOLI_DO_BACKOFF = 1.0  # % air saturation kept above the minimum for estimation error
ECOLI_S_MAX = 1.0  # g/L glucose in the fed-batch (substrate-limited feeding)
ECOLI_IPOPT_WARM_START = {
    "warm_start_init_point": "yes",
    "warm_start_bound_push": 1e-9,
    "warm_start_mult_bound_push": 1e-9,
    "mu_init": 1e-6,
}


def ecoli_initial_state(model: Model) -> np.ndarray:
    """Nominal inoculum with ``ECOLI_S0`` g/L glucose."""
    x0 = model.x0.copy()
    x0[model.index("S")] = ECOLI_S0
    return x0


def ecoli_recipe(model: Model) -> Callable[[float], np.ndarray]:
    """The fallback recipe ``t_h -> inputs``: batch for 6 h, then F = 0.02 e^(0.1 (t-6)) L/h
    (at most 0.06 L/h), full air (20 NL/min) and agitation (1200 rpm), 37 degC."""
    iF, iQ, iN, iT = (model.index(n) for n in ("F", "Q_air", "N_stir", "T_set"))

    def recipe(t_h: float) -> np.ndarray:
        u = model.u0.copy()
        u[iQ], u[iN], u[iT] = 20.0, 1200.0, 37.0
        if t_h >= 6.0:
            u[iF] = min(0.02 * math.exp(0.1 * (t_h - 6.0)), 0.06)
        return u

    return recipe


def ecoli_nmpc_config(
    model: Model,
    *,
    batch_end_h: float = ECOLI_BATCH_END_H,
    dt_h: float = ECOLI_CONTROL_PERIOD_H,
    horizon: int = 20,
    horizon_mode: Literal["receding", "batch_end"] = "receding",
    solver: Literal["rti", "ipopt"] = "ipopt",
) -> NMPCConfig:
    """Economic NMPC of the E. coli fed-batch (see the module docstring)."""
    return NMPCConfig(
        horizon=horizon,
        dt_h=dt_h,
        horizon_mode=horizon_mode,
        batch_end_h=batch_end_h,
        objective=Objective(
            terminal_fn=lambda m, x, p: -x.P * x.V,
            input_cost={"N_stir": 1e-4, "Q_air": 1e-3},
            move={"F": 10.0, "N_stir": 1e-6, "Q_air": 1e-4, "T_set": 1e-2},
        ),
        soft_bounds=(
            SoftBound(
                name="DO", lower=ECOLI_DO_MIN + ECOLI_DO_BACKOFF, weight_l1=100.0, weight_l2=1.0
            ),
            SoftBound(name="S", upper=ECOLI_S_MAX, weight_l1=10.0, weight_l2=0.0),
            SoftBound(name="V", upper=10.0, weight_l1=100.0),
            SoftBound(name="A", upper=1.0, weight_l1=100.0),
            SoftBound(name="Q_heat", upper=150.0, weight_l1=1.0, weight_l2=0.01),
        ),
        rate_limits={"F": 0.2, "N_stir": 1200.0, "Q_air": 20.0, "T_set": 3.0},
        discretization="collocation",
        collocation_degree=3,
        smoothing=1e-3,
        smoothing_kind="one-sided",  # max(A, 0) exact at A = 0 (docs/packs.md)
        initial_inputs=ecoli_recipe(model),
        solver=solver,
        max_iter=500,
        time_limit_s=60.0,
        ipopt_options=ECOLI_IPOPT_WARM_START,
    )
