"""State and parameter estimation: a continuous-discrete EKF in JAX, online wrapper, soft sensors.

``CompiledEKF`` is the same filter generated with CasADi and compiled to C, for one
reactor at a time (online use, long records); ``ExtendedKalmanFilter`` also runs batched.

>>> from estimators import CompiledEKF, EKFConfig, ExtendedKalmanFilter, OnlineEstimator, Sensor
>>> from estimators import default_ekf_config, load_ekf_config
"""

from estimators._config import EKFConfig, EstimatorConfigError, Sensor, TrackedParameter
from estimators._ekf import ExtendedKalmanFilter, FilterState, UpdateResult
from estimators._ekf_compiled import CompiledEKF
from estimators._online import EstimatorState, FilterEvent, OnlineEstimator, Reading, StepReport
from estimators.presets import (
    default_ekf_config,
    dump_ekf_config,
    load_ekf_config,
    parse_ekf_config,
)

__all__ = [
    "CompiledEKF",
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
    "default_ekf_config",
    "dump_ekf_config",
    "load_ekf_config",
    "parse_ekf_config",
]
