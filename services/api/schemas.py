"""Request and response bodies: one pydantic model per direction, with examples.

Inputs (``...In``) forbid unknown fields, need a reason text and take only finite numbers;
outputs (``...Out``) carry no NaN (a missing or non-finite value is ``null``), so every
response is valid JSON.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "AckIn",
    "AlarmOut",
    "AuditOut",
    "ErrorOut",
    "EstimateOut",
    "EventOut",
    "HistoryOut",
    "LimitsIn",
    "LimitsOut",
    "MeasurementOut",
    "ModeIn",
    "ModeName",
    "PlanOut",
    "ReactorOut",
    "ReactorStateOut",
    "SeriesOut",
    "SetpointIn",
    "SetpointsOut",
    "TokenOut",
    "ValueSigma",
    "WriteOut",
]

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
"""Why the write is made (required; 1-500 characters, kept in the audit trail)."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModeName(enum.StrEnum):
    """The supervisor's modes, as sent and shown."""

    AUTO = "auto"
    MANUAL = "manual"
    HOLD = "hold"
    FALLBACK = "fallback"


class ModeIn(_In):
    """Switch the reactor's mode."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"mode": "manual", "reason": "feed pump test"}]},
    )
    mode: ModeName
    reason: Reason


class SetpointIn(_In):
    """Set one operator setpoint (MANUAL only), in the input's unit."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"value": 0.12, "reason": "hold growth rate"}]},
    )
    value: FiniteFloat
    reason: Reason


class LimitsIn(_In):
    """Change one input's limits (engineer): range and rate (input unit, per hour)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"lower": 0.0, "upper": 0.3, "rate_per_h": 0.2, "reason": "new pump"}]
        },
    )
    lower: FiniteFloat
    upper: FiniteFloat
    rate_per_h: Annotated[float, Field(gt=0, allow_inf_nan=False, le=1e12)] | None = Field(
        default=None, description="largest change per hour; null for no rate limit"
    )
    reason: Reason


class AckIn(_In):
    """Acknowledge one alarm."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "probe recalibrated"}]}
    )
    reason: Reason


class TokenOut(BaseModel):
    """A bearer token (OAuth2 password flow)."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until the token expires")
    role: str


class ErrorOut(BaseModel):
    """Why a request was refused."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "0.9 is outside the limits of 'F' [0.0, 0.3]"}]}
    )
    detail: str


class ReactorOut(BaseModel):
    """A reactor: identity, batch, phase and mode."""

    id: str
    site: str | None
    batch: str | None
    run_id: str | None
    t_h: float = Field(description="process time of the last tick (h)")
    phase: str
    mode: ModeName
    done: bool


class MeasurementOut(BaseModel):
    """The latest reading of one sensor (value null when the device sent garbage)."""

    sensor: str
    value: float | None
    t_h: float
    t_sample_h: float


class ValueSigma(BaseModel):
    """An estimate and its standard deviation (same unit)."""

    value: float | None
    sigma: float | None


class EstimateOut(BaseModel):
    """The estimator's latest output."""

    t_h: float
    healthy: bool
    states: dict[str, ValueSigma]
    parameters: dict[str, ValueSigma]
    nis: float | None


class LimitsOut(BaseModel):
    """The limits in force on one input (rate null: no rate limit)."""

    lower: float
    upper: float
    rate_per_h: float | None


class SetpointsOut(BaseModel):
    """The setpoints: last supervised ones with their source, applied and operator values."""

    t_h: float | None
    source: str | None
    values: dict[str, float | None]
    clamped: list[str]
    applied: dict[str, float | None]
    operator: dict[str, float | None]


class ReactorStateOut(BaseModel):
    """Everything the control room shows for one reactor."""

    reactor: ReactorOut
    measurements: list[MeasurementOut]
    estimate: EstimateOut | None
    setpoints: SetpointsOut
    limits: dict[str, LimitsOut]


class PlanOut(BaseModel):
    """The current NMPC plan: predicted states at the node times, planned inputs."""

    t_h: float
    status: str
    solve_time_s: float | None
    t_nodes_h: list[float | None]
    x_pred: dict[str, list[float | None]]
    u_plan: dict[str, list[float | None]]
    message: str


class EventOut(BaseModel):
    """One event (``id``: the reactor's record number; ``alarm``: whether its kind raises
    an alarm, listed with its alarm id by ``GET /alarms``)."""

    id: int
    t_h: float
    kind: str
    message: str
    source: str
    alarm: bool


class AlarmOut(BaseModel):
    """An event to acknowledge, and who did (empty until then), as the reactor's loop holds
    it (``id``: the alarm's number in that loop, 1, 2, ...; ``t_h`` and ``acked_t_h``:
    process time in h; ``acked_utc``: when the acknowledgement was asked, ISO-8601 UTC)."""

    id: int
    reactor: str
    t_h: float
    kind: str
    message: str
    acked_by: str
    acked_utc: str
    acked_why: str = ""
    acked_t_h: float | None = None


class WriteOut(BaseModel):
    """An accepted write and its audit entry."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "result": "accepted",
                    "action": "mode FALLBACK -> MANUAL",
                    "old_value": "FALLBACK",
                    "new_value": "MANUAL",
                    "t_h": 1.5,
                    "audit_seq": 12,
                }
            ]
        }
    )
    result: str = Field(description="'accepted', or 'pending' (202) when the loop is slow")
    action: str
    old_value: str
    new_value: str
    t_h: float
    audit_seq: int | None


class SeriesOut(BaseModel):
    """One series read back from the historian (sigma for estimated states)."""

    kind: str
    t_h: list[float]
    value: list[float | None]
    sigma: list[float | None] | None = None


class HistoryOut(BaseModel):
    """Series over a process-time range."""

    t_from: float | None
    t_to: float | None
    series: dict[str, SeriesOut]


class AuditOut(BaseModel):
    """One audit entry (Part 11 style: who, when, what, old/new value, why, result)."""

    seq: int
    wall_utc: str
    t_h: float
    reactor: str | None
    who: str
    action: str
    old_value: str
    new_value: str
    why: str
    accepted: bool
    result: str
    reason: str
    prev_hash: str
    hash: str
