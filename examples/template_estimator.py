"""The estimator: an EKF on the load cell and offline assays, tracking mu_max."""

from __future__ import annotations

from bpcontrol.recipe import Recipe
from estimators import EKFConfig, Sensor, TrackedParameter
from models import Model


def get_ekf_config(model: Model, recipe: Recipe) -> EKFConfig:
    """Load cell every measurement period; assays every ~3 h with 5 % error; the growth
    rate tracked with a 25 % prior standard deviation."""
    online = recipe.measurement_period_h
    return EKFConfig(
        sensors=(
            Sensor(output="V_meas", sigma=0.005, period_h=online),
            Sensor(output="X_off", sigma=0.02, period_h=3.0, relative_sigma=0.05),
            Sensor(output="S_off", sigma=0.02, period_h=3.0, relative_sigma=0.05),
            Sensor(output="P_off", sigma=0.02, period_h=3.0, relative_sigma=0.05),
        ),
        tracked=(
            TrackedParameter(name="mu_max", sigma0=0.25 * float(model.p0[model.index("mu_max")])),
        ),
    )
