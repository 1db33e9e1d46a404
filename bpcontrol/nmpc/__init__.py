"""Nonlinear model-predictive control with CasADi: config, transcription, controller."""

from bpcontrol.nmpc._config import (
    MAX_SCENARIOS,
    NMPCConfig,
    NMPCConfigError,
    Objective,
    RobustConfig,
    ScenarioTree,
    SoftBound,
    Tracking,
)
from bpcontrol.nmpc._controller import NMPC, NMPCState, Plan, SolveStatus, StateEstimate

__all__ = [
    "MAX_SCENARIOS",
    "NMPC",
    "NMPCConfig",
    "NMPCConfigError",
    "NMPCState",
    "Objective",
    "Plan",
    "RobustConfig",
    "ScenarioTree",
    "SoftBound",
    "SolveStatus",
    "StateEstimate",
    "Tracking",
]
