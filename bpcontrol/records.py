"""Typed records of the loop: each maps one-to-one to a historian measurement.

Every record carries its process time ``t_h`` (hours since the batch started, the loop's
clock) and is a frozen value, so it can be queued, written later and compared in tests.
Field names become historian fields; ``source`` and ``kind`` become tags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

SetpointSource = Literal["nmpc", "operator", "fallback", "hold"]
"""Where an applied setpoint came from: the NMPC plan, an operator, the recipe, or a hold."""

__all__ = [
    "USABLE_PLAN_STATUSES",
    "AuditRecord",
    "EstimateRecord",
    "EventRecord",
    "MeasurementRecord",
    "PlanRecord",
    "Record",
    "SetpointRecord",
    "SetpointSource",
]


def _check_time(t_h: float) -> None:
    if not math.isfinite(t_h):
        raise ValueError(f"t_h must be a finite process time in hours, got {t_h!r}")


def _frozen(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in values.items()})


@dataclass(frozen=True)
class MeasurementRecord:
    """One sensor value as the loop received it from the plant.

    Attributes:
        t_h: process time (h) at which the loop received it.
        sensor: the model output it measures (e.g. ``"DO_probe"``).
        value: the reading in that output's unit (NaN when the device sent garbage).
        t_sample_h: process time (h) the sample was taken (earlier than ``t_h`` for an
            offline assay that arrives late).
    """

    t_h: float
    sensor: str
    value: float
    t_sample_h: float

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_time(self.t_sample_h)


@dataclass(frozen=True)
class EstimateRecord:
    """The estimator's output after one step.

    Attributes:
        t_h: process time (h) of the estimate.
        x: state estimate per state name (state units, e.g. g/L, %, L).
        x_sigma: its standard deviation per state name (same units).
        parameters: tracked parameter estimates per name (parameter units).
        parameter_sigma: their standard deviations.
        nis: normalised innovation squared of this step (0 without readings).
        dof: number of scalar readings fused in this step.
        healthy: whether the estimate may drive the controller.
    """

    t_h: float
    x: Mapping[str, float]
    x_sigma: Mapping[str, float]
    parameters: Mapping[str, float] = field(default_factory=dict)
    parameter_sigma: Mapping[str, float] = field(default_factory=dict)
    nis: float = 0.0
    dof: int = 0
    healthy: bool = True

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        for name in ("x", "x_sigma", "parameters", "parameter_sigma"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


USABLE_PLAN_STATUSES = frozenset({"solved", "solved-inaccurate", "infeasible-softened"})
"""Plan statuses whose plan came from that step's solve (``SolveStatus.usable`` as text)."""


@dataclass(frozen=True)
class PlanRecord:
    """One controller solve: what it predicts and how the solve went.

    Attributes:
        t_h: process time (h) the plan was computed for.
        status: the solve status (``"solved"``, ``"failed"``, ``"late"``, ...).
        solve_time_s: wall time of the solve (s); NaN when it never returned.
        t_nodes_h: node times of the prediction (h), length N+1.
        x_pred: predicted state trajectory per state name, at ``t_nodes_h``.
        u_plan: planned inputs per input name, one value per interval (length N).
        message: the controller's own words (solver message, exception).
    """

    t_h: float
    status: str
    solve_time_s: float
    t_nodes_h: tuple[float, ...] = ()
    x_pred: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    u_plan: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        object.__setattr__(self, "t_nodes_h", tuple(float(v) for v in self.t_nodes_h))
        for name in ("x_pred", "u_plan"):
            values = {str(k): tuple(float(v) for v in vs) for k, vs in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(values))


@dataclass(frozen=True)
class SetpointRecord:
    """The setpoints the supervisor applied at one step.

    Attributes:
        t_h: process time (h) at which the setpoints apply.
        values: setpoint per input name, in that input's unit (the model's input units,
            e.g. feed rate L/h, temperature degC); read-only.
        source: where the values came from before clamping.
        clamped: names of the inputs whose value was changed by the absolute limits or by
            the rate-of-change limit (empty when the source was applied as is).
    """

    t_h: float
    values: Mapping[str, float]
    source: SetpointSource
    clamped: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "clamped", tuple(self.clamped))


@dataclass(frozen=True)
class EventRecord:
    """Something the loop wants a person to know: a mode change, a fallback, a fault.

    Attributes:
        t_h: process time (h) of the event.
        kind: short machine-readable kind (e.g. ``"fallback"``, ``"mode-change"``).
        message: a sentence for the operator, naming the cause and what to do.
        source: who raised it (``"supervisor"`` for automatic decisions, ``"operator"``).
    """

    t_h: float
    kind: str
    message: str
    source: str

    def __post_init__(self) -> None:
        _check_time(self.t_h)


@dataclass(frozen=True)
class AuditRecord:
    """One operator write (mode change, setpoint, limits), accepted or refused.

    Attributes:
        t_h: process time (h) at which the write was requested.
        who: the person or system that asked.
        why: their stated reason.
        action: what was asked, e.g. ``"mode AUTO -> MANUAL"`` or ``"setpoint F = 0.2"``.
        accepted: whether the supervisor carried it out.
        reason: why it was refused (empty when accepted).
    """

    t_h: float
    who: str
    why: str
    action: str
    accepted: bool
    reason: str = ""

    def __post_init__(self) -> None:
        _check_time(self.t_h)


Record = (
    MeasurementRecord | EstimateRecord | PlanRecord | SetpointRecord | EventRecord | AuditRecord
)
"""Any record the loop writes to its historian."""
