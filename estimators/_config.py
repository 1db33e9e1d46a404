"""Configuration of the extended Kalman filter: sensors, tracked parameters, noise, gating."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from models import Model


class EstimatorConfigError(ValueError):
    """The filter configuration does not fit the model; the message says which entry."""


@dataclass(frozen=True, kw_only=True)
class Sensor:
    """One measured model output: its noise and nominal period (h).

    The noise std is ``sqrt(sigma^2 + (relative_sigma * y)^2)`` (output units), with ``y``
    the predicted reading: offline assays have a relative error (e.g. 5 %).

    ``period_h`` documents the sensor's rate (and drives simulated plants); the filter
    fuses a reading whenever it arrives. Offline assays have a period of hours.
    """

    output: str
    sigma: float
    period_h: float = 1.0 / 60.0
    relative_sigma: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TrackedParameter:
    """A model parameter estimated as a random-walk state.

    ``sigma0``: prior std (parameter units); ``drift_per_sqrt_h``: random-walk intensity,
    the std the parameter may drift in one hour.
    """

    name: str
    sigma0: float
    drift_per_sqrt_h: float = 0.0


@dataclass(frozen=True, kw_only=True)
class EKFConfig:
    """Everything the filter needs besides the model.

    ``state_sigma0`` and ``process_sigma`` map state names to the initial std and to the
    process-noise std per sqrt(hour); states not named get defaults relative to their
    scale (see :func:`default_scale`). ``max_step_h`` bounds one prediction interval,
    inside which ``n_substeps`` L-stable ROS2 steps are taken (stiff oxygen transfer
    needs no small steps).
    ``gate_probability`` is the per-measurement chi-square acceptance probability
    (1 degree of freedom). ``lag_h`` is how far back a late sample may be fused.
    ``variance_limit`` triggers a covariance reset: a variance above ``variance_limit``
    times the larger of the state's initial variance and ``(VARIANCE_SCALE_FRACTION x its
    typical magnitude)^2`` (``FilterSetup.variance_limits``), so a state given a tiny prior std
    does not reset the filter as soon as process noise has grown its variance.
    ``recover_after_gated`` is how many readings in a row from one assay the gate may
    reject (assays are lab references, trusted from their first reading) before the
    filter declares its estimate inconsistent and recovers (it inflates the covariance of
    the states that sensor observes and fuses the reading; an ``inconsistent`` event says
    so; see :class:`~estimators.OnlineEstimator`); 0 turns the recovery off. It applies to sensors
    whose ``period_h`` is at least ``recover_min_period_h`` (default 0.5 h: the offline
    assays, not the minute-rate probes). A probe read every minute is gated for a few
    minutes at every regime change the model lags (the DO and off-gas jump at glucose
    exhaustion while the estimated glucose is still above zero), and the recovery's
    measurement Jacobian then points at the wrong states: saturated uptake makes the
    off-gas insensitive to the glucose that is actually wrong, so the biomass takes the
    jump (measured: the E. coli filter with mu_max and Y_xs 20 % off, seed 2 of
    ``tests/estimators/test_tracking_mismatch.py``, had its biomass inflated from the
    off-gas at 3 h and collapse from 3.5 to 0.05 g/L). The gate alone rides those
    minutes out. Probes recover only together: once at least two trusted probes have
    each had every reading of the last ``recover_probes_after_h`` (default 0.5 h, 0: off)
    gated, the plant has departed from the model (a contamination, a failed pump: the DO
    and the off-gas disagree with it at once, for longer than any regime change), and
    those probes recover as an assay does. One probe alone (a stuck or drifting DO
    probe) never does: its run is a sensor fault, and the gate keeps guarding against it.
    """

    sensors: tuple[Sensor, ...]
    tracked: tuple[TrackedParameter, ...] = ()
    state_sigma0: Mapping[str, float] = field(default_factory=dict)
    process_sigma: Mapping[str, float] = field(default_factory=dict)
    max_step_h: float = 1.0 / 60.0
    n_substeps: int = 1
    gate_probability: float = 0.9999
    lag_h: float = 6.0
    variance_limit: float = 1e6
    recover_after_gated: int = 3
    recover_min_period_h: float = 0.5
    recover_probes_after_h: float = 0.5

    @property
    def tracked_names(self) -> tuple[str, ...]:
        """The tracked parameters' names, in the filter's order."""
        return tuple(tp.name for tp in self.tracked)

    def validate(self, model: Model) -> None:
        """Raise :class:`EstimatorConfigError` naming the first entry that does not fit."""
        if not self.sensors:
            raise EstimatorConfigError("filter configuration has no sensors")
        outputs = set(model.output_names)
        seen: set[str] = set()
        for s in self.sensors:
            if s.output not in outputs:
                raise EstimatorConfigError(
                    f"sensor {s.output!r} is not an output of model {model.name!r}; "
                    f"known: {', '.join(model.output_names)}"
                )
            if model.outputs[model.index(s.output)].derived:
                raise EstimatorConfigError(
                    f"sensor {s.output!r} is a derived output of model {model.name!r} "
                    "(computed from the state, read by no instrument)"
                )
            if s.output in seen:
                raise EstimatorConfigError(f"sensor {s.output!r} is configured twice")
            seen.add(s.output)
            if not (math.isfinite(s.sigma) and s.sigma > 0):
                raise EstimatorConfigError(f"sensor {s.output!r}: sigma must be > 0, got {s.sigma}")
            if not (math.isfinite(s.relative_sigma) and s.relative_sigma >= 0):
                raise EstimatorConfigError(
                    f"sensor {s.output!r}: relative_sigma must be >= 0, got {s.relative_sigma}"
                )
            if not (math.isfinite(s.period_h) and s.period_h > 0):
                raise EstimatorConfigError(
                    f"sensor {s.output!r}: period_h must be > 0, got {s.period_h}"
                )
        params = set(model.parameter_names)
        for tp in self.tracked:
            if tp.name not in params:
                raise EstimatorConfigError(
                    f"tracked parameter {tp.name!r} is not a parameter of model {model.name!r}"
                )
            if not (tp.sigma0 > 0 and tp.drift_per_sqrt_h >= 0):
                raise EstimatorConfigError(
                    f"tracked parameter {tp.name!r}: need sigma0 > 0 and drift_per_sqrt_h >= 0"
                )
        if len(set(self.tracked_names)) != len(self.tracked):
            raise EstimatorConfigError("a tracked parameter is listed twice")
        states = set(model.state_names)
        for label, mapping in (
            ("state_sigma0", self.state_sigma0),
            ("process_sigma", self.process_sigma),
        ):
            for name, value in mapping.items():
                if name not in states:
                    raise EstimatorConfigError(
                        f"{label}: {name!r} is not a state of {model.name!r}"
                    )
                if not (math.isfinite(value) and value >= 0):
                    raise EstimatorConfigError(f"{label}[{name!r}] must be >= 0, got {value}")
        if not (self.max_step_h > 0 and self.n_substeps >= 1):
            raise EstimatorConfigError("max_step_h must be > 0 and n_substeps >= 1")
        if not 0.5 < self.gate_probability < 1.0:
            raise EstimatorConfigError("gate_probability must be in (0.5, 1)")
        if not self.lag_h >= 0:
            raise EstimatorConfigError("lag_h must be >= 0")
        if not (math.isfinite(self.variance_limit) and self.variance_limit > 0.0):
            raise EstimatorConfigError(
                f"variance_limit must be a finite number > 0, got {self.variance_limit}"
            )
        if not (math.isfinite(self.recover_min_period_h) and self.recover_min_period_h >= 0):
            raise EstimatorConfigError(
                f"recover_min_period_h must be a number >= 0, got {self.recover_min_period_h}"
            )
        if not (math.isfinite(self.recover_probes_after_h) and self.recover_probes_after_h >= 0):
            raise EstimatorConfigError(
                "recover_probes_after_h must be a number >= 0 (0: probes never recover), "
                f"got {self.recover_probes_after_h}"
            )
        n = self.recover_after_gated
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise EstimatorConfigError(
                f"recover_after_gated must be a whole number >= 0 (0: no recovery), got {n!r}"
            )


VARIANCE_SCALE_FRACTION = 0.1
"""The variance limit's floor, as a fraction of a state's typical magnitude: the default
prior std is this fraction of the scale (see :class:`~estimators._filter_base.FilterSetup`),
so a state given a much tighter prior gets the limit its default prior would have."""


def default_scale(model: Model) -> list[float]:
    """Typical magnitude of each state: its nominal value, or 1 % of its range if larger."""
    out = []
    for s in model.states:
        out.append(max(abs(s.nominal), 0.01 * (s.upper - s.lower), 1e-6))
    return out
