"""Records and loop state as JSON-ready data (no NaN: a non-finite number is ``null``)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    RunIdentity,
    SetpointRecord,
)

__all__ = ["RECORD_TYPES", "fin", "fin_map", "record_json"]

RECORD_TYPES: dict[type, str] = {
    MeasurementRecord: "measurement",
    EstimateRecord: "estimate",
    PlanRecord: "plan",
    SetpointRecord: "setpoint",
    EventRecord: "event",
    AuditRecord: "audit",
}
"""Record class -> its type name in streams (the historian's table names)."""


def fin(value: object) -> float | None:
    """``value`` as a float, or None when it is missing or not finite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fin_map(values: Mapping[str, float]) -> dict[str, float | None]:
    """A name -> number mapping with non-finite values as None."""
    return {str(k): fin(v) for k, v in values.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, RunIdentity):
        return value.tags()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return fin(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return str(value)


def record_json(record: Record) -> dict[str, Any]:
    """``record`` as a JSON object: ``type`` (its table name) and every field."""
    out: dict[str, Any] = {"type": RECORD_TYPES.get(type(record), type(record).__name__)}
    for f in fields(record):
        out[f.name] = _plain(getattr(record, f.name))
    return out
