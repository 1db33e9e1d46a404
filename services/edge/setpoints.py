"""What both gateways share about setpoints: the range check before sending, the record.

A setpoint is checked against the device's declared range (the mapping file) before
anything leaves the controller; :class:`Exchange` is the record of one write and its
confirmation, kept by each gateway in ``exchanges`` (the HIL tests compare them with the
device's write log).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bpcontrol.interfaces import PlantError
from services.edge.mapping import DeviceMapping

__all__ = ["CURRENT_WITHIN_H", "Exchange", "device_setpoints", "loop_time"]


CURRENT_WITHIN_H = 10.0 / 3600.0
"""A sample this close (h of process time) before the loop's tick counts as taken at the
tick: the device's clock is known to the gateway only to about a round trip (times the
speed-up on an accelerated clock), and an online sample stamped a hair before the tick
would otherwise be re-fused by the estimator as a late one."""


def loop_time(ts_device_h: float, offset_h: float, t_h: float) -> float:
    """The loop's process time (h) of a sample the device stamped ``ts_device_h``, given the
    device clock's ``offset_h`` (device minus loop), at the loop's tick ``t_h``."""
    ts = ts_device_h - offset_h
    return t_h if ts > t_h - CURRENT_WITHIN_H else ts


@dataclass(frozen=True)
class Exchange:
    """One setpoint write: command id, loop time (h), values sent and held (model units),
    wall seconds from the write to the confirmation (NaN: not confirmed)."""

    command_id: int
    t_h: float
    sent: dict[str, float]
    held: dict[str, float]
    confirm_s: float

    @property
    def confirmed(self) -> bool:
        """True when the device confirmed the write."""
        return not math.isnan(self.confirm_s)


def device_setpoints(mapping: DeviceMapping, setpoints: Mapping[str, float]) -> dict[str, float]:
    """Device values (device units) of ``setpoints`` (model units, every input).

    Raises :class:`PlantError` for a missing, unknown, non-finite or out-of-range value:
    the device's declared range is checked here, so such a value is never sent.
    """
    names = tuple(m.name for m in mapping.inputs)
    device: dict[str, float] = {}
    for m in mapping.inputs:
        if m.name not in setpoints:
            raise PlantError(f"setpoint {m.name!r} missing; the device needs {', '.join(names)}")
        value = float(setpoints[m.name])
        d = m.to_device(value)
        tol = 1e-9 * max(1.0, abs(m.lower), abs(m.upper))
        if not math.isfinite(d) or d < m.lower - tol or d > m.upper + tol:
            raise PlantError(
                f"setpoint {m.name} = {value:g} ({d:g} {m.unit}) is outside the device range "
                f"[{m.lower:g}, {m.upper:g}] {m.unit} ({mapping.source}); nothing sent"
            )
        device[m.name] = min(max(d, m.lower), m.upper)
    unknown = sorted(set(setpoints) - set(names))
    if unknown:
        raise PlantError(f"unknown setpoint(s) {unknown}; the device takes {', '.join(names)}")
    return device
