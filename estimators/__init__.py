"""State and parameter estimation: a continuous-discrete EKF in JAX, online wrapper, soft sensors.

>>> from estimators import EKFConfig, ExtendedKalmanFilter, OnlineEstimator, Sensor
"""

from estimators._config import EKFConfig, EstimatorConfigError, Sensor, TrackedParameter
from estimators._ekf import ExtendedKalmanFilter, FilterState, UpdateResult
from estimators._online import EstimatorState, FilterEvent, OnlineEstimator, Reading, StepReport

__all__ = [
    "EKFConfig",
    "EstimatorConfigError",
    "EstimatorState",
    "ExtendedKalmanFilter",
    "FilterEvent",
    "FilterState",
    "OnlineEstimator",
    "Reading",
    "Sensor",
    "StepReport",
    "TrackedParameter",
    "UpdateResult",
]
