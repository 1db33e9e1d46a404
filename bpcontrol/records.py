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

__all__ = ["AuditRecord", "EventRecord", "SetpointRecord", "SetpointSource"]


def _check_time(t_h: float) -> None:
    if not math.isfinite(t_h):
        raise ValueError(f"t_h must be a finite process time in hours, got {t_h!r}")


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
