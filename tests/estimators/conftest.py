"""The E. coli filter configuration shared by the estimator tests (compiled once).

The configuration is the tuned preset :func:`estimators.presets.ecoli_ekf_config`; its
docstring explains the sensor noise, the tracked parameters and the tiny process noise.
"""

from __future__ import annotations

import pytest

from estimators import EKFConfig, ExtendedKalmanFilter
from estimators.presets import ECOLI_OFFLINE_PERIOD_H, ECOLI_OFFLINE_SIGMA, ecoli_ekf_config
from models import Model, load_model

ECOLI = load_model("ecoli_fedbatch")
MU_MAX_0, Y_XS_0 = ECOLI.p0[ECOLI.index("mu_max")], ECOLI.p0[ECOLI.index("Y_xs")]
OFFLINE_SIGMA = dict(ECOLI_OFFLINE_SIGMA)  # g/L
OFFLINE_PERIOD_H = ECOLI_OFFLINE_PERIOD_H

ECOLI_CONFIG = ecoli_ekf_config(ECOLI)


@pytest.fixture(scope="session")
def ecoli_model() -> Model:
    return ECOLI


@pytest.fixture(scope="session")
def ecoli_config() -> EKFConfig:
    return ECOLI_CONFIG


@pytest.fixture(scope="session")
def ecoli_ekf() -> ExtendedKalmanFilter:
    """One filter for the session, so its functions compile once."""
    return ExtendedKalmanFilter(ECOLI, ECOLI_CONFIG)
