"""The plant: the same model with a 25 % slower growth than the controller believes."""

from __future__ import annotations

from bpcontrol.recipe import Recipe
from hil.plant import SimulatedPlant
from hil.synthetic import OfflineAssays
from models import Model

PLANT_FACTORS = {"mu_max": 0.75}


def get_simulator(model: Model, recipe: Recipe, *, seed: int) -> SimulatedPlant:
    """CVODES-integrated plant: load cell noise 5 mL, assays every 2-4 h, 1-2 h late."""
    return SimulatedPlant(
        model,
        seed=seed,
        x0=recipe.initial_state(model),
        u0=recipe.fallback(0.0),
        parameter_factors=PLANT_FACTORS,
        online={"V_meas": 0.005},
        period_h=recipe.measurement_period_h,
        offline=OfflineAssays(
            outputs=("X_off", "S_off", "P_off"),
            delay_h=(1.0, 2.0),
            relative_sigma=0.05,
            absolute_sigma={"X_off": 0.02, "S_off": 0.02, "P_off": 0.02},
        ),
    )
