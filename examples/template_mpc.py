"""The controller: economic NMPC that maximises the product made by the batch end."""

from __future__ import annotations

from bpcontrol.nmpc import NMPCConfig, Objective, SoftBound
from bpcontrol.recipe import Recipe


def get_mpc_config(recipe: Recipe) -> NMPCConfig:
    """Shrinking horizon to the batch end; the vessel holds 5 L (soft bound); substrate
    kept below the inhibition range (soft, 20 g/L); feed moves lightly penalised."""
    limits = recipe.limits
    return NMPCConfig(
        horizon=12,
        dt_h=recipe.control_period_h,
        horizon_mode="batch_end",
        batch_end_h=recipe.duration_h,
        input_bounds={n: (lim.lower, lim.upper) for n, lim in limits.items()},
        rate_limits={n: lim.rate_per_h for n, lim in limits.items()},
        state_bounds={"S": (0.0, 300.0)},
        soft_bounds=(
            SoftBound(name="V", upper=5.0, weight_l1=100.0),
            SoftBound(name="S", upper=20.0, weight_l1=10.0),
        ),
        objective=Objective(terminal={"P_total": -1.0}, move={"F": 1.0}),
        discretization="collocation",
        solver="ipopt",
        initial_inputs=recipe.fallback,
        time_limit_s=30.0,
    )
