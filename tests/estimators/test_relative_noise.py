"""A sensor's relative noise adds (relative_sigma * predicted reading)^2 to its variance."""

from __future__ import annotations

import numpy as np
import pytest

from estimators import EKFConfig, EstimatorConfigError, ExtendedKalmanFilter, Sensor
from models import load_model

MODEL = load_model("ecoli_fedbatch")


def test_innovation_variance_includes_relative_term() -> None:
    cfg = EKFConfig(sensors=(Sensor(output="X_off", sigma=0.1, relative_sigma=0.05),))
    ekf = ExtendedKalmanFilter(MODEL, cfg)
    x0 = MODEL.x0.copy()
    x0[MODEL.index("X")] = 20.0
    state = ekf.init(x0)
    y, mask = ekf.to_arrays({"X_off": 20.5})
    _, res = ekf.update(state, MODEL.u0, y, mask)
    P = np.asarray(state.P)
    i = MODEL.index("X")
    # X_off = X, so H P H' = P[X, X]; R = 0.1^2 + (0.05 * 20)^2
    expected = P[i, i] + 0.1**2 + (0.05 * 20.0) ** 2
    assert float(res.innovation_var[0]) == pytest.approx(expected, rel=1e-12)


def test_negative_relative_sigma_is_refused() -> None:
    with pytest.raises(EstimatorConfigError, match="relative_sigma must be >= 0"):
        ExtendedKalmanFilter(
            MODEL, EKFConfig(sensors=(Sensor(output="X_off", sigma=0.1, relative_sigma=-1.0),))
        )
