"""Online estimation around the EKF: reading checks, late samples, events and health.

``OnlineEstimator.step(state, t, u, readings) -> (report, state)`` is pure: the
:class:`EstimatorState` carries a short history (a fixed lag, ``config.lag_h``) so that
an offline assay arriving hours after its sample time is fused *at its sample time* by
re-filtering the stored steps, giving the very estimate it would have given on time.

Around every prediction and update of either filter (:class:`CompiledEKF` or
:class:`ExtendedKalmanFilter`, one implementation here for both):

- the mean is projected onto the declared bounds of the states and tracked parameters
  after the prediction and after the update (:meth:`FilterSetup.project`: estimate
  projection with the identity weight, i.e. clipping, covariance kept), so no estimate
  leaves its bounds (no negative concentration or yield);
- an offline assay (a sensor with ``period_h >= config.recover_min_period_h``: a lab
  reference, trusted from the start) with ``config.recover_after_gated`` readings in a
  row rejected by the chi-square gate marks the estimate inconsistent (the gate then
  guards a wrong estimate against the truth, the case after a drift under a wrong
  model): the covariance of the states that sensor observes is
  inflated so that the reading is a one-sigma innovation
  (:meth:`FilterSetup.inflate_for`), that reading is fused alone from the inflated prior
  (a re-initialisation from it: the other readings of the step, read through the model
  that has just failed, do not pull the estimate back first), then the step's other
  readings, and an ``inconsistent`` event names the sensor and the states. The
  run counters are stored with every history entry and replayed with it, so a late
  assay gives the same counts, recoveries and estimates as on-time fusion;
- probes (faster than ``recover_min_period_h``) recover together only: two or more
  trusted probes each with every reading of the last ``config.recover_probes_after_h``
  gated (the plant departing from the model, not one faulty probe) recover as an
  assay does, with an ``inconsistent`` event each;
- a covariance that is not finite, not positive definite or has a variance above its
  limit (:attr:`FilterSetup.variance_limits`) is reset to the prior (a ``reset`` event
  naming the entry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from estimators._ekf_compiled import CompiledEKF
from estimators._filter_base import (
    FilterState,
    StateArray,
    UpdateResult,
    covariance_problem,
    filter_covariance_ok,
)

if TYPE_CHECKING:
    from estimators._ekf import ExtendedKalmanFilter

_T_EPS = 1e-9  # h: readings closer than this in time belong to the same step


@dataclass(frozen=True)
class Reading:
    """One sensor value; ``t_sample`` (h) is when it was taken (default: now)."""

    sensor: str
    value: float
    t_sample: float | None = None


@dataclass(frozen=True)
class FilterEvent:
    """Something the operator should see: a rejected or late value, a covariance reset.

    ``kind`` is one of ``rejected`` (not physical / unknown sensor), ``gated`` (failed the
    chi-square innovation gate), ``late_fused``, ``too_late``, ``reset``, ``inconsistent``
    (an assay's readings failed the gate ``recover_after_gated`` times in a row:
    the covariance of ``states``, the entries that sensor observes, was inflated and the
    reading fused).
    """

    t: float
    kind: str
    message: str
    sensor: str | None = None
    value: float | None = None
    states: tuple[str, ...] = ()


@dataclass(frozen=True)
class SensorRuns:
    """Per sensor (ordered as configured): whether it ever had a reading accepted
    (``trusted``) and how many of its readings in a row the gate has rejected since."""

    trusted: tuple[bool, ...]
    gated_run: tuple[int, ...]

    def after(self, accepted: StateArray, gated: StateArray) -> SensorRuns:
        """The counts after one update: an accepted reading trusts its sensor and ends its
        run, a gated one extends it, an absent one leaves it."""
        acc, gat = np.asarray(accepted, dtype=bool), np.asarray(gated, dtype=bool)
        return SensorRuns(
            trusted=tuple(t or bool(a) for t, a in zip(self.trusted, acc, strict=True)),
            gated_run=tuple(
                0 if a else n + 1 if g else n
                for n, a, g in zip(self.gated_run, acc, gat, strict=True)
            ),
        )


@dataclass(frozen=True)
class _Entry:
    """One step of the history: the inputs held up to ``t`` and the readings taken at
    ``t``; ``after`` and ``runs`` are the filter state and sensor counts after it, and
    ``recovered`` the sensors whose recovery it triggered (an event is emitted only the
    first time an entry recovers, not again when a late sample replays it)."""

    t: float
    u: np.ndarray | None
    readings: Mapping[str, float]
    after: FilterState
    runs: SensorRuns
    recovered: tuple[str, ...] = ()


@dataclass(frozen=True)
class EstimatorState:
    """Filter state plus the history needed to fuse late samples (oldest first)."""

    filter: FilterState
    history: tuple[_Entry, ...]


@dataclass(frozen=True)
class StepReport:
    """Estimate after a step with its uncertainty, innovation statistics and events."""

    t: float
    x: np.ndarray
    p: np.ndarray
    sigma: np.ndarray  # std of the augmented mean [x; tracked parameters]
    nis: float
    dof: int
    events: tuple[FilterEvent, ...] = field(default_factory=tuple)


class OnlineEstimator:
    """Multi-rate, delay-tolerant estimator for one reactor, built on an EKF.

    ``ekf`` is an :class:`ExtendedKalmanFilter` (JAX) or a :class:`CompiledEKF` (the same
    filter compiled to C: the same estimates to rounding, several times faster per step).
    """

    def __init__(self, ekf: ExtendedKalmanFilter | CompiledEKF) -> None:
        self.ekf = ekf
        cfg = ekf.config
        # the sensors a run of gated readings can recover from (the slow ones: assays)
        self._recoverable = tuple(s.period_h >= cfg.recover_min_period_h for s in cfg.sensors)
        # the run of gated readings that recovers each sensor (0: never): an assay's
        # recover_after_gated, a probe's recover_probes_after_h in readings (together only)
        self._recover_run = tuple(
            cfg.recover_after_gated
            if recoverable
            else 0
            if cfg.recover_probes_after_h <= 0
            else max(math.ceil(cfg.recover_probes_after_h / s.period_h - 1e-9), 1)
            for s, recoverable in zip(cfg.sensors, self._recoverable, strict=True)
        )

    def init(
        self,
        x0: np.ndarray,
        *,
        t0: float = 0.0,
        theta0: Mapping[str, float] | None = None,
        P0_diag: np.ndarray | None = None,
    ) -> EstimatorState:
        """The state at ``t0`` (h): ``x0`` and the tracked parameters at ``theta0`` (default
        their base values), covariance ``diag(P0_diag)`` (states then tracked parameters;
        default the configured prior; a resumed run passes its last estimate's)."""
        fs, _ = self.ekf.project(self.ekf.init(x0, t0=t0, theta0=theta0, P0_diag=P0_diag))
        # the assays are trusted from the start (lab references: a filter already off at
        # the first assay must recover from it too); a fast probe earns trust by a reading
        # accepted, and only assays recover in any case
        runs = SensorRuns(trusted=self._recoverable, gated_run=(0,) * len(self.ekf.sensor_names))
        return EstimatorState(
            filter=fs,
            history=(_Entry(t=float(t0), u=None, readings={}, after=fs, runs=runs),),
        )

    # --- reading checks -------------------------------------------------------------
    def check(self, reading: Reading, t: float) -> FilterEvent | None:
        """A 'rejected' event when a reading is unknown or not physical, else None."""
        names = self.ekf.sensor_names
        if reading.sensor not in names:
            return FilterEvent(
                t,
                "rejected",
                f"unknown sensor {reading.sensor!r}; configured: {', '.join(names)}",
                reading.sensor,
                reading.value,
            )
        value = reading.value
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(float(value)):
            return FilterEvent(
                t,
                "rejected",
                f"{reading.sensor}: value {value!r} is not a finite number",
                reading.sensor,
                None,
            )
        i = names.index(reading.sensor)
        lo, hi = self.ekf.y_lower[i], self.ekf.y_upper[i]
        unit = self.ekf.model.outputs[self.ekf.model.index(reading.sensor)].unit
        if not lo <= float(value) <= hi:
            return FilterEvent(
                t,
                "rejected",
                f"{reading.sensor}: {value} {unit} is outside the physical range "
                f"[{lo}, {hi}] {unit}",
                reading.sensor,
                float(value),
            )
        if reading.t_sample is not None and reading.t_sample > t + _T_EPS:
            return FilterEvent(
                t,
                "rejected",
                f"{reading.sensor}: sample time {reading.t_sample} h is in the future (now {t} h)",
                reading.sensor,
                float(value),
            )
        return None

    # --- one step -------------------------------------------------------------------
    def step(
        self, state: EstimatorState, t: float, u: np.ndarray, readings: Iterable[Reading] = ()
    ) -> tuple[StepReport, EstimatorState]:
        """Advance to ``t`` (h) with ``u`` held since the last step, fuse ``readings``;
        return ``(report, new state)`` (the convention of every pure piece: out, state).

        Readings whose sample time lies before ``t`` are fused at their sample time.
        """
        t = float(t)
        t_last = state.history[-1].t
        if t < t_last - _T_EPS:
            raise ValueError(f"step time {t} h is before the last step {t_last} h")
        u = np.asarray(u, dtype=float)
        if u.shape != (self.ekf.model.nu,) or not np.all(np.isfinite(u)):
            raise ValueError(
                f"u must be {self.ekf.model.nu} finite inputs {self.ekf.model.input_names}"
            )
        events: list[FilterEvent] = []
        now: dict[str, float] = {}
        late: list[Reading] = []
        for r in readings:
            bad = self.check(r, t)
            if bad is not None:
                events.append(bad)
            elif r.t_sample is None or r.t_sample >= t - _T_EPS:
                now[r.sensor] = float(r.value)
            else:
                late.append(r)
        history = list(state.history)
        if t <= t_last + _T_EPS and len(history) > 1:
            # same time as the last step: merge readings into it
            merged = {**history[-1].readings, **now}
            history[-1] = replace(history[-1], readings=merged)
            start = len(history) - 1
        else:
            history.append(
                _Entry(t=t, u=u, readings=now, after=state.filter, runs=history[-1].runs)
            )
            start = len(history) - 1
        for r in sorted(late, key=lambda r: float(r.t_sample or 0.0)):
            ts = float(r.t_sample or 0.0)
            if ts < history[0].t - _T_EPS:
                events.append(
                    FilterEvent(
                        t,
                        "too_late",
                        f"{r.sensor}: sample at {ts:.3f} h is older than the "
                        f"{self.ekf.config.lag_h} h lag window",
                        r.sensor,
                        float(r.value),
                    )
                )
                continue
            k = _insert(history, ts, r)
            start = min(start, k)
            events.append(
                FilterEvent(
                    t,
                    "late_fused",
                    f"{r.sensor}: sample from {ts:.3f} h fused {t - ts:.2f} h late",
                    r.sensor,
                    float(r.value),
                )
            )
        new_events, last = self._replay(history, start)
        events.extend(
            e for e in new_events if e.t >= t - _T_EPS or e.kind != "gated" or _is_late(e, late)
        )
        history = _prune(history, t - self.ekf.config.lag_h)
        new_state = EstimatorState(filter=history[-1].after, history=tuple(history))
        x, p, sigma = self.ekf.estimate(new_state.filter)
        report = StepReport(
            t=t,
            x=x,
            p=p,
            sigma=sigma,
            nis=float(last.nis) if last else 0.0,
            dof=int(last.dof) if last else 0,
            events=tuple(events),
        )
        return report, new_state

    def _replay(
        self, history: list[_Entry], start: int
    ) -> tuple[list[FilterEvent], UpdateResult | None]:
        """Re-filter history[start:] from the state stored before it (in place)."""
        events: list[FilterEvent] = []
        ekf = self.ekf
        k0 = max(start, 1)
        fs, runs = history[k0 - 1].after, history[k0 - 1].runs
        last: UpdateResult | None = None
        for k in range(k0, len(history)):
            e = history[k]
            assert e.u is not None
            fs, _ = ekf.project(ekf.predict(fs, e.u, e.t))
            recovered: tuple[str, ...] = ()
            if e.readings:
                y, mask = ekf.to_arrays(e.readings)
                prior = fs
                fs, last = ekf.update(prior, e.u, y, mask)
                counted = runs.after(last.accepted, last.gated)
                ended = [  # a trusted sensor whose run of gated readings reached its bound
                    i
                    for i, (trusted, run) in enumerate(
                        zip(counted.trusted, counted.gated_run, strict=True)
                    )
                    if 0 < self._recover_run[i] <= run and trusted and bool(last.gated[i])
                ]
                due = [i for i in ended if self._recoverable[i]]
                probes = [i for i in ended if not self._recoverable[i]]
                if len(probes) >= 2:  # the plant departs from the model (EKFConfig)
                    due += probes
                if due:
                    inflated, how = ekf.inflate_for(prior, e.u, last, due)
                    gated_first = last
                    # the recovering readings first, alone, from the inflated prior (the
                    # re-initialisation), then the others of the step from that estimate
                    first = np.zeros_like(mask)
                    first[due] = True
                    fs, res_first = ekf.update(inflated, e.u, y, first)
                    fs, res_rest = ekf.update(fs, e.u, y, mask & ~first)
                    last = _merged(res_first, res_rest, first)
                    counted = runs.after(last.accepted, last.gated)
                    recovered = tuple(ekf.sensor_names[i] for i in due)
                    if not set(recovered) <= set(e.recovered):
                        events += self._inconsistent_events(e.t, y, gated_first, last, how, runs)
                runs = counted
                events += self._gated_events(e.t, y, last)
                fs, _ = ekf.project(fs)
                limit = ekf.variance_limits
                if not bool(last.healthy) or not filter_covariance_ok(fs.P, limit):
                    why = covariance_problem(fs.P, limit, ekf.names) or "update not healthy"
                    fs = ekf.reset_covariance(fs, history[k - 1].after)
                    events.append(
                        FilterEvent(
                            e.t, "reset", f"covariance degenerated ({why}); reset to its prior"
                        )
                    )
            history[k] = replace(e, after=fs, runs=runs, recovered=recovered)
        return events, last

    def _gated_events(self, t: float, y: np.ndarray, result: UpdateResult) -> list[FilterEvent]:
        """A ``gated`` event for every reading the gate rejected in ``result``."""
        out = []
        for i in np.flatnonzero(np.asarray(result.gated)):
            name = self.ekf.sensor_names[i]
            nu, sd = float(result.innovation[i]), math.sqrt(float(result.innovation_var[i]))
            out.append(
                FilterEvent(
                    t,
                    "gated",
                    f"{name}: {y[i]:.6g} failed the innovation gate "
                    f"(innovation {nu:.4g}, std {sd:.4g})",
                    name,
                    float(y[i]),
                )
            )
        return out

    def _inconsistent_events(
        self,
        t: float,
        y: np.ndarray,
        gated: UpdateResult,
        fused: UpdateResult,
        how: Mapping[int, tuple[tuple[str, ...], float]],
        before: SensorRuns,
    ) -> list[FilterEvent]:
        """One ``inconsistent`` event per recovered sensor: the run, what was inflated."""
        out = []
        for i, (states, factor) in how.items():
            name = self.ekf.sensor_names[i]
            run = before.gated_run[i] + 1
            nu, sd = float(gated.innovation[i]), math.sqrt(float(gated.innovation_var[i]))
            outcome = "fused" if bool(fused.accepted[i]) else "still gated"
            what = (
                f"variances of {', '.join(states)} inflated (innovation variance x{factor:.3g})"
                if states
                else "nothing to inflate"
            )
            out.append(
                FilterEvent(
                    t,
                    "inconsistent",
                    f"{name}: {run} readings in a row of a trusted sensor failed the "
                    f"innovation gate (last {y[i]:.6g}, innovation {nu:.4g}, std {sd:.4g}); "
                    f"estimate inconsistent: {what}, reading {outcome}",
                    name,
                    float(y[i]),
                    states,
                )
            )
        return out


def _merged(a: UpdateResult, b: UpdateResult, in_a: np.ndarray) -> UpdateResult:
    """One update's outcome from two updates of disjoint sensor sets (``in_a``: a's)."""
    return UpdateResult(
        accepted=np.asarray(a.accepted) | np.asarray(b.accepted),
        gated=np.asarray(a.gated) | np.asarray(b.gated),
        innovation=np.where(in_a, np.asarray(a.innovation), np.asarray(b.innovation)),
        innovation_var=np.where(in_a, np.asarray(a.innovation_var), np.asarray(b.innovation_var)),
        nis=np.asarray(float(a.nis) + float(b.nis)),
        dof=np.asarray(int(a.dof) + int(b.dof)),
        healthy=np.asarray(bool(a.healthy) and bool(b.healthy)),
    )


def _insert(history: list[_Entry], ts: float, r: Reading) -> int:
    """Put a late reading into the step at its sample time (a new step if none); index."""
    for k in range(1, len(history)):
        e = history[k]
        if abs(e.t - ts) <= _T_EPS:
            history[k] = replace(e, readings={**e.readings, r.sensor: float(r.value)})
            return k
        if e.t > ts:
            # the input held over (t_{k-1}, t_k] also held at ts
            history.insert(
                k,
                _Entry(
                    t=ts, u=e.u, readings={r.sensor: float(r.value)}, after=e.after, runs=e.runs
                ),
            )
            return k
    last = history[-1]
    history.append(
        _Entry(
            t=ts, u=last.u, readings={r.sensor: float(r.value)}, after=last.after, runs=last.runs
        )
    )
    return len(history) - 1


def _prune(history: list[_Entry], t_keep: float) -> list[_Entry]:
    """Drop entries older than the lag window, keeping one anchor before it."""
    k = 0
    while k + 1 < len(history) and history[k + 1].t <= t_keep:
        k += 1
    return history[k:]


def _is_late(event: FilterEvent, late: list[Reading]) -> bool:
    return any(
        r.sensor == event.sensor and abs(float(r.t_sample or 0.0) - event.t) <= _T_EPS for r in late
    )
