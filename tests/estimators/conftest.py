"""The E. coli filter configuration shared by the estimator tests (compiled once).

Sensor noise is that of the synthetic plant (:data:`hil.synthetic.ECOLI_ONLINE_NOISE`):
DO probe 1 %, off-gas O2 and CO2 0.02 % (mole fraction), load cell 0.01 L. The offline
assays have 5 % relative error in the data; the filter's noise model is one constant std
per sensor, so each assay gets 5 % of a level typical of the run (X ~20 g/L, glucose
~2 g/L in the batch, acetate ~1 g/L when it matters, product ~2 g/L).

Process noise is tiny on purpose: the plant *is* the model apart from the two tracked
parameters, so the only model error left is the filter's ROS2 discretisation at one
minute, far below the sensor noise. The plant's parameters do not drift in these runs,
so the parameters' random walk is zero (a drifting plant needs a positive
``drift_per_sqrt_h``, which makes NIS fall below its expectation on a plant that does not
drift: with 0.002 per sqrt(h) the 50-run average NIS was 0.990 per degree of freedom).
"""

from __future__ import annotations

import pytest

from estimators import EKFConfig, ExtendedKalmanFilter, Sensor, TrackedParameter
from hil.synthetic import ECOLI_ONLINE_NOISE
from models import Model, load_model

ECOLI = load_model("ecoli_fedbatch")
MU_MAX_0, Y_XS_0 = ECOLI.p0[ECOLI.index("mu_max")], ECOLI.p0[ECOLI.index("Y_xs")]
OFFLINE_SIGMA = {"X_off": 1.0, "S_off": 0.1, "A_off": 0.05, "P_off": 0.1}  # g/L
OFFLINE_PERIOD_H = 3.0

ECOLI_CONFIG = EKFConfig(
    sensors=(
        *(Sensor(output=name, sigma=sigma) for name, sigma in ECOLI_ONLINE_NOISE.items()),
        *(
            Sensor(output=name, sigma=sigma, period_h=OFFLINE_PERIOD_H)
            for name, sigma in OFFLINE_SIGMA.items()
        ),
    ),
    tracked=(
        # prior std: 20 % of the literature value (Xu, Jahic, Enfors 1999)
        TrackedParameter(name="mu_max", sigma0=0.2 * MU_MAX_0, drift_per_sqrt_h=0.0),
        TrackedParameter(name="Y_xs", sigma0=0.2 * Y_XS_0, drift_per_sqrt_h=0.0),
    ),
    # initial std: inoculum biomass 10 %, initial glucose 2 % (as the synthetic plant)
    state_sigma0={"X": 0.03, "S": 0.2, "A": 0.01, "DO": 2.0, "V": 0.01, "P": 0.01, "T": 0.1},
    process_sigma={"X": 1e-3, "S": 1e-4, "A": 1e-4, "DO": 0.01, "V": 1e-4, "P": 1e-4, "T": 1e-3},
    max_step_h=1.0 / 60.0,
    n_substeps=1,
    lag_h=6.0,
)


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
