"""The small interfaces the loop needs, as ``typing.Protocol``s (implemented elsewhere).

The loop (:mod:`bpcontrol.loop`) talks only to these. Implementations:

- :class:`Plant`: the in-process simulator (``hil.plant.SimulatedPlant``), later the edge
  gateways (OPC UA, MQTT) and HIL rigs (``services``, ``hil``);
- :class:`Historian`: the embedded file store (``services.historian``), later InfluxDB
  with store-and-forward;
- :class:`Clock`: :class:`bpcontrol.clock.PacedClock` (accelerated or 1x wall time);
- :class:`Controller`: :class:`bpcontrol.loop.NMPCController`, or fault-injecting wrappers
  in HIL tests.

Contracts the loop relies on (and that implementations must keep):

- Every call may fail: ``Plant.read``/``Plant.apply`` may raise (device offline, timeout);
  the loop records an event and goes on. ``Plant.apply`` returns what the device confirms
  it holds, which may differ from what was asked (a device clamp, a late confirmation).
- ``Historian.write`` never blocks the loop and never loses an accepted record; ``flush``
  waits (bounded) until everything written is stored.
- ``Controller.plan`` may raise, hang or return garbage: the loop runs it in a worker
  thread with a wall-time deadline and the supervisor falls back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from bpcontrol.nmpc import Plan, StateEstimate
from bpcontrol.records import Record
from estimators import Reading

__all__ = ["Clock", "Controller", "Historian", "Plant", "PlantError"]


class PlantError(RuntimeError):
    """A plant (device, gateway, simulator) could not read or apply; the loop goes on."""


@runtime_checkable
class Plant(Protocol):
    """A reactor the loop reads and actuates (setpoints in the model's input units)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs the plant accepts, in model order."""
        ...

    def read(self, t_h: float) -> Sequence[Reading]:
        """Readings that became available by process time ``t_h`` (h) since the last call.

        A reading with ``t_sample`` earlier than ``t_h`` is a late sample (an offline
        assay). Raises :class:`PlantError` (or any exception) when the device fails.
        """
        ...

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Ask the plant to hold ``setpoints`` from ``t_h`` (h) on; return what it confirms.

        The returned mapping names every input with the value the device really holds
        (which the loop treats as applied). Raises when the write fails.
        """
        ...


@runtime_checkable
class Historian(Protocol):
    """Where every record goes; writing must never block or slow the loop."""

    def write(self, record: Record) -> None:
        """Queue ``record`` for storage (returns at once; never drops an accepted record)."""
        ...

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until all queued records are stored; False when ``timeout_s`` ran out."""
        ...

    def close(self) -> None:
        """Store what is queued and release the store (idempotent)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Process time of the loop, in hours since the batch started."""

    def now(self) -> float:
        """The current process time (h)."""
        ...

    def sleep_until(self, t_h: float) -> float:
        """Wait until process time ``t_h`` (h); return how late it woke (s of wall time)."""
        ...


@runtime_checkable
class Controller(Protocol):
    """Something that plans the next setpoints from an estimate (the NMPC, or a fake)."""

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """The plan for the period starting at ``t_h`` (h) given the applied inputs."""
        ...
