"""State and parameter estimation: EKF (JAX and compiled), online wrapper, MHE, soft sensors.

``CompiledEKF`` is the same filter generated with CasADi and compiled to C, for one
reactor at a time (online use, long records); ``ExtendedKalmanFilter`` also runs batched.
``MovingHorizonEstimator`` (configured by ``MHEConfig``) is the second estimator: the same
sensor configuration, a window solved with IPOPT, its arrival cost from the compiled EKF.

>>> from estimators import CompiledEKF, EKFConfig, ExtendedKalmanFilter, OnlineEstimator, Sensor
>>> from estimators import default_ekf_config, load_ekf_config
"""

from typing import TYPE_CHECKING, Any

from estimators._config import EKFConfig, EstimatorConfigError, Sensor, TrackedParameter
from estimators._ekf_compiled import CompiledEKF
from estimators._filter_base import FilterState, UpdateResult
from estimators._mhe import (
    MHEConfig,
    MHEState,
    MovingHorizonEstimator,
    SolveInfo,
    dump_mhe_config,
    parse_mhe_config,
)
from estimators._online import EstimatorState, FilterEvent, OnlineEstimator, Reading, StepReport
from estimators.presets import (
    default_ekf_config,
    dump_ekf_config,
    load_ekf_config,
    parse_ekf_config,
)

if TYPE_CHECKING:
    from estimators._ekf import ExtendedKalmanFilter


def __getattr__(name: str) -> Any:
    """The JAX filter on first use: importing JAX costs 1-2 s the compiled filter avoids."""
    if name == "ExtendedKalmanFilter":
        from estimators._ekf import ExtendedKalmanFilter

        return ExtendedKalmanFilter
    raise AttributeError(f"module 'estimators' has no attribute {name!r}")


__all__ = [
    "CompiledEKF",
    "EKFConfig",
    "EstimatorConfigError",
    "EstimatorState",
    "ExtendedKalmanFilter",
    "FilterEvent",
    "FilterState",
    "MHEConfig",
    "MHEState",
    "MovingHorizonEstimator",
    "OnlineEstimator",
    "Reading",
    "Sensor",
    "SolveInfo",
    "StepReport",
    "TrackedParameter",
    "UpdateResult",
    "default_ekf_config",
    "dump_ekf_config",
    "dump_mhe_config",
    "load_ekf_config",
    "parse_ekf_config",
    "parse_mhe_config",
]
