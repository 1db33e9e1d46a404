"""Stateful adapters that fit the pure estimator and controller into the loop's ports.

The estimators (:class:`estimators.OnlineEstimator`, the EKF, and
:class:`estimators.MovingHorizonEstimator`) and the NMPC (:class:`bpcontrol.nmpc.NMPC`)
are pure ``init``/``step`` functions over an explicit state (see
:mod:`bpcontrol.interfaces` for the convention); the loop wants objects that keep their
own state and speak in records (:class:`bpcontrol.interfaces.Estimator`,
:class:`bpcontrol.interfaces.Controller`). These adapters do only that translation.
``EstimatorOutput`` lives in :mod:`bpcontrol.interfaces` and is re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from bpcontrol.interfaces import EstimatorOutput
from bpcontrol.nmpc import NMPC, NMPCState, Plan, StateEstimate
from bpcontrol.records import EstimateRecord, EventKind, EventRecord, PlanRecord, PlanStatus
from estimators import Reading, StepReport
from models import Model

__all__ = ["EstimatorOutput", "LoopEstimator", "NMPCController", "PureEstimator", "plan_record"]


class NMPCController:
    """The NMPC as a :class:`bpcontrol.interfaces.Controller`: keeps its warm start."""

    def __init__(self, nmpc: NMPC, x0: np.ndarray, u0: np.ndarray) -> None:
        self.nmpc = nmpc
        self._state: NMPCState = nmpc.init(x0, u0)
        self._limits: dict[str, tuple[float, float]] | None = None

    def set_input_limits(self, limits: Mapping[str, tuple[float, float]]) -> None:
        """Plan inside these setpoint limits from the next plan on (the supervisor's limits
        in force; :class:`bpcontrol.interfaces.InputLimitsAware`)."""
        self._limits = {n: (float(lo), float(hi)) for n, (lo, hi) in limits.items()}

    def plan(self, estimate: StateEstimate, t_h: float, u_applied: np.ndarray) -> Plan:
        """Solve for the period starting at ``t_h`` (h) from the applied inputs, every move
        inside the limits last set."""
        plan, self._state = self.nmpc.step(
            self._state, estimate, t_h, u_applied=u_applied, input_bounds=self._limits
        )
        return plan

    def warm_up(self, x0: np.ndarray, p: np.ndarray, u0: np.ndarray, t0_h: float = 0.0) -> Plan:
        """One solve from the charged state before the clock starts: the first solve of a
        fresh NMPC is cold (seconds on a loaded machine, past a real-time deadline); the
        loop's first solve then starts warm from this one."""
        return self.plan(StateEstimate(np.asarray(x0, float), np.asarray(p, float)), t0_h, u0)


def plan_record(model: Model, plan: Plan) -> PlanRecord:
    """The historian record of a plan (predicted states and planned inputs by name)."""
    X, U = np.asarray(plan.X), np.asarray(plan.U)
    return PlanRecord(
        t_h=plan.t,
        status=PlanStatus(plan.status.value),
        solve_time_s=plan.solve_time_s,
        t_nodes_h=tuple(np.asarray(plan.t_nodes, dtype=float)),
        x_pred={n: tuple(X[:, i]) for i, n in enumerate(model.state_names)} if X.ndim == 2 else {},
        u_plan={n: tuple(U[:, i]) for i, n in enumerate(model.input_names)} if U.ndim == 2 else {},
        message=plan.message,
    )


class FilterInfo(Protocol):
    """What the adapter reads of an estimator's filter: names and base parameters."""

    @property
    def model(self) -> Model: ...

    @property
    def sensor_names(self) -> tuple[str, ...]: ...

    @property
    def tracked_names(self) -> tuple[str, ...]: ...

    @property
    def p_nominal(self) -> np.ndarray: ...


class PureEstimator(Protocol):
    """A pure estimator the adapter can hold: :class:`estimators.OnlineEstimator` (the EKF)
    or :class:`estimators.MovingHorizonEstimator`.

    ``init(x0, t0=) -> state`` and ``step(state, t, u, readings) -> (StepReport, state)``
    (the state is opaque to the adapter); ``ekf`` names the sensors, the tracked
    parameters and the model.
    """

    @property
    def ekf(self) -> FilterInfo: ...

    def init(
        self,
        x0: np.ndarray,
        *,
        t0: float = 0.0,
        theta0: Mapping[str, float] | None = None,
        P0_diag: np.ndarray | None = None,
    ) -> Any: ...

    def step(
        self, state: Any, t: float, u: np.ndarray, readings: Iterable[Reading] = ()
    ) -> tuple[StepReport, Any]: ...


class LoopEstimator:
    """A pure estimator (:class:`PureEstimator`: the EKF's :class:`OnlineEstimator` or the
    :class:`MovingHorizonEstimator`) with its state, speaking in records.

    Implements :class:`bpcontrol.interfaces.Estimator`. Filter events become
    ``"estimator-<kind>"`` events (:meth:`EventKind.of_filter_event`; an unknown filter
    kind, e.g. the MHE's ``fallback``, becomes ``"estimator-other"`` with the kind in the
    message).
    """

    def __init__(
        self,
        online: PureEstimator,
        x0: np.ndarray,
        *,
        t0_h: float = 0.0,
        theta0: Mapping[str, float] | None = None,
        P0_diag: np.ndarray | None = None,
    ) -> None:
        """Start at ``x0`` at ``t0_h`` (h); ``theta0`` and ``P0_diag`` (states then tracked
        parameters) default to the filter's configured prior (a resumed run passes its
        last estimate's: :mod:`bpcontrol.resume`)."""
        self.online = online
        self.model = online.ekf.model
        self._tracked = tuple(online.ekf.tracked_names)
        self._x = np.asarray(x0, dtype=float)
        self._t = float(t0_h)
        self._state: Any = online.init(self._x.copy(), t0=t0_h, theta0=theta0, P0_diag=P0_diag)

    def warm_up(self, u: np.ndarray) -> None:
        """Compile or solve the estimator once now (a throw-away step; state kept).

        A live loop must not spend its first periods compiling (the EKF) or on a cold
        first solve (the MHE): call this before the clock starts.
        """
        p = self.online.ekf.p_nominal
        y = np.asarray(self.model.to_casadi().h(self._x, u, p)).ravel()
        readings = [
            Reading(name, float(y[self.model.index(name)])) for name in self.online.ekf.sensor_names
        ]
        self.online.step(self._state, self._t + 1e-3, np.asarray(u, dtype=float), readings)

    def step(self, t_h: float, u: np.ndarray, readings: Iterable[Reading]) -> EstimatorOutput:
        """Advance to ``t_h`` (h) with ``u`` held since the last step and fuse ``readings``."""
        report, self._state = self.online.step(self._state, t_h, u, readings)
        self._t, self._x = float(t_h), np.asarray(report.x, dtype=float).copy()
        model = self.model
        nx = model.nx
        x, sigma = np.asarray(report.x), np.asarray(report.sigma)
        p = np.asarray(report.p)
        theta = {n: float(p[model.index(n)]) for n in self._tracked}
        theta_sigma = {n: float(sigma[nx + k]) for k, n in enumerate(self._tracked)}
        reset = any(e.kind == "reset" for e in report.events)
        healthy = bool(np.all(np.isfinite(x)) and np.all(np.isfinite(sigma))) and not reset
        record = EstimateRecord(
            t_h=t_h,
            x=dict(zip(model.state_names, map(float, x), strict=True)),
            x_sigma=dict(zip(model.state_names, map(float, sigma[:nx]), strict=True)),
            parameters=theta,
            parameter_sigma=theta_sigma,
            nis=float(report.nis) if math.isfinite(report.nis) else math.nan,
            dof=int(report.dof),
            healthy=healthy,
        )
        events = tuple(_event(t_h, e.kind, e.message) for e in report.events)
        # the tracked parameters' std (NaN for the others): what robust NMPC's
        # sigma_factors sample their scenarios from
        p_sigma = np.full(model.n_p, np.nan)
        for k, n in enumerate(self._tracked):
            p_sigma[model.index(n)] = sigma[nx + k]
        # the states' std too: the NMPC's soft-bound back-off (SoftBound.backoff_sigma)
        estimate = StateEstimate(x=x.copy(), p=p.copy(), p_sigma=p_sigma, x_sigma=sigma[:nx].copy())
        return EstimatorOutput(record, events, estimate, healthy)


def _event(t_h: float, filter_kind: str, message: str) -> EventRecord:
    """A filter event as an event record (the filter's kind kept in the message if unknown)."""
    kind = EventKind.of_filter_event(filter_kind)
    if kind is EventKind.ESTIMATOR_OTHER:
        message = f"[{filter_kind}] {message}"
    return EventRecord(t_h, kind, message, "estimator")
