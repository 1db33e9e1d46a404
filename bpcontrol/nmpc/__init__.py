"""Nonlinear model-predictive control with CasADi: config, transcription, controller."""

from bpcontrol.nmpc._config import NMPCConfig, NMPCConfigError, Objective, SoftBound, Tracking
from bpcontrol.nmpc._controller import NMPC, NMPCState, Plan, SolveStatus, StateEstimate

__all__ = [
    "NMPC",
    "NMPCConfig",
    "NMPCConfigError",
    "NMPCState",
    "Objective",
    "Plan",
    "SoftBound",
    "SolveStatus",
    "StateEstimate",
    "Tracking",
]
