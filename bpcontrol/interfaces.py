"""The ports of the loop, as ``typing.Protocol``s (implemented elsewhere), and their values.

The loop (:mod:`bpcontrol.loop`) talks only to these. Implementations:

- :class:`Plant`: the in-process simulator (``hil.plant.SimulatedPlant``), later the edge
  gateways (OPC UA, MQTT) and HIL rigs (``services``, ``hil``);
- :class:`Historian`: the embedded file store (``services.historian``), later InfluxDB
  with store-and-forward;
- :class:`Clock`: :class:`bpcontrol.clock.PacedClock` (accelerated or 1x wall time);
- :class:`Estimator`: :class:`bpcontrol.adapters.LoopEstimator` (the EKF with its state),
  or a fake in tests;
- :class:`Controller`: :class:`bpcontrol.adapters.NMPCController`, or fault-injecting
  wrappers in HIL tests (``hil.faults``).

Contracts the loop relies on (and that implementations must keep):

- Every call may fail: ``Plant.read``/``Plant.apply`` may raise (device offline, timeout);
  the loop records an event and goes on; :class:`PlantLinkLostError` also sends the supervisor
  to FALLBACK. ``Plant.apply`` returns what the device confirms
  it holds, which may differ from what was asked (a device clamp, a late confirmation).
- ``Historian.write`` never blocks the loop and never loses an accepted record; ``flush``
  waits (bounded) until everything written is stored.
- ``Estimator.step`` may raise: the loop keeps the last estimate, marks it unhealthy (the
  supervisor falls back at the next control step) and goes on.
- ``Controller.plan`` may raise, hang or return garbage: the loop runs it in a worker
  thread with a wall-time deadline and the supervisor falls back.

One convention for state (STYLE.md, after diffrax/equinox):

- The pure pieces are immutable objects over their configuration with
  ``init(...) -> State`` and ``step(state, ...) -> (out, State)``, the state a frozen
  value, so a run can be replayed from the historian and the pieces tested alone:

  - :class:`bpcontrol.nmpc.NMPC`: ``init(x0, u0) -> NMPCState``,
    ``step(state, estimate, t_h, u_applied=) -> (Plan, NMPCState)``;
  - :class:`bpcontrol.supervisor.Supervisor`: ``init(u0, t0_h, mode) -> SupervisorState``,
    ``step(state, t_h, plan_u=, ...) -> (SupervisorOutput, SupervisorState)`` and, for the
    operator writes, ``command(state, command, t_h=) -> (CommandOutcome, SupervisorState)``;
  - :class:`estimators.OnlineEstimator`: ``init(x0, t0=) -> EstimatorState`` and
    ``step(state, t_h, u, readings) -> (StepReport, EstimatorState)``.

- The loop-facing ports (:class:`Estimator`, :class:`Controller`) are stateful objects:
  the adapters in :mod:`bpcontrol.adapters` hold the pure piece's state between calls
  (``step(t_h, u, readings) -> EstimatorOutput``, ``plan(estimate, t_h, u) -> Plan``), and
  the loop holds the supervisor's state itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from bpcontrol.nmpc import Plan, StateEstimate
from bpcontrol.records import EstimateRecord, EventRecord, Record
from estimators import Reading
from models import Model

__all__ = [
    "Clock",
    "Controller",
    "Estimator",
    "EstimatorOutput",
    "Historian",
    "InputLimitsAware",
    "Plant",
    "PlantError",
    "PlantLinkLostError",
]


class PlantError(RuntimeError):
    """A plant (device, gateway, simulator) could not read or apply; the loop goes on."""


class PlantLinkLostError(PlantError):
    """The link to the device is lost (no connection, or the device reports that the
    controller's heartbeat is missing and it holds its local safe setpoints).

    The edge gateways (``services.edge``) raise it from ``read``/``apply``; the loop then
    counts the estimate as unusable for the next control step, so the supervisor goes to
    FALLBACK (recipe profile, with its alarm event) and returns by its usual rule, at the
    rate limits, once the link is back.
    """


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


@dataclass(frozen=True)
class EstimatorOutput:
    """One estimator step as the loop uses it.

    ``record`` goes to the historian, ``events`` too; ``estimate`` (states and the full
    parameter vector with the tracked ones replaced, model units) goes to the controller;
    ``healthy`` tells the supervisor whether the estimate may drive the plant.
    """

    record: EstimateRecord
    events: tuple[EventRecord, ...]
    estimate: StateEstimate
    healthy: bool


@runtime_checkable
class Estimator(Protocol):
    """A stateful estimator the loop steps once per measurement period (the EKF, a fake).

    It keeps its own state between calls (see the module docstring for the convention).
    """

    @property
    def model(self) -> Model:
        """The model whose states and inputs the estimates and plans are named after."""
        ...

    def step(self, t_h: float, u: np.ndarray, readings: Iterable[Reading]) -> EstimatorOutput:
        """Advance to ``t_h`` (h) with inputs ``u`` (model input units) held since the last
        step, fuse ``readings``; raise when it cannot (the loop records an event)."""
        ...


@runtime_checkable
class Controller(Protocol):
    """Something that plans the next setpoints from an estimate (the NMPC, or a fake)."""

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """The plan for the period starting at ``t_h`` (h) given the applied inputs."""
        ...


@runtime_checkable
class InputLimitsAware(Protocol):
    """A controller that plans inside the setpoint limits in force (the NMPC).

    The loop calls :meth:`set_input_limits` before a plan whenever the supervisor's limits
    changed (an operator's ``set_limits``), so the next plan's moves respect them instead
    of being clamped afterwards. Controllers without it (fakes, recipe-only) are planned
    as before and the supervisor clamps.
    """

    def set_input_limits(self, limits: Mapping[str, tuple[float, float]]) -> None:
        """Plan every move of input ``name`` inside ``limits[name]`` = (lower, upper)."""
        ...
