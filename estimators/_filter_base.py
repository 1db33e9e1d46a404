"""What both EKFs share, without JAX: filter state and result types, the constants.

:class:`ExtendedKalmanFilter` (JAX, batched) and :class:`CompiledEKF` (CasADi, one
reactor) derive their noise, prior, gate and index constants from one
:class:`FilterSetup`, so they cannot disagree; keeping it free of JAX lets the compiled
filter (the one a run uses) start without importing JAX (about 1-2 s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import numpy as np
from scipy.special import chdtri  # inverse chi-square survival; scipy.stats costs ~1-4 s to import

from estimators._config import EKFConfig, default_scale
from models import Model

if TYPE_CHECKING:
    import jax

    # what filter states and results hold: JAX arrays from ExtendedKalmanFilter, NumPy
    # arrays from CompiledEKF (both work with NumPy and jax.numpy functions alike)
    StateArray: TypeAlias = jax.Array | np.ndarray
else:
    StateArray: TypeAlias = Any


ROS2_GAMMA = 1.0 + 1.0 / math.sqrt(2.0)
"""The stage coefficient of the L-stable ROS2 Rosenbrock method both filters predict with."""


class FilterState(NamedTuple):
    """Filter state: time (h), augmented mean z = [x; tracked parameters], covariance."""

    t: StateArray
    z: StateArray
    P: StateArray


class UpdateResult(NamedTuple):
    """Per-sensor outcome of one update (arrays ordered as the configured sensors)."""

    accepted: StateArray  # bool: fused
    gated: StateArray  # bool: present but rejected by the chi-square gate
    innovation: StateArray  # y - h(z) (0 where absent)
    innovation_var: StateArray  # diagonal of S
    nis: StateArray  # normalised innovation squared over accepted sensors
    dof: StateArray  # number of accepted sensors
    healthy: StateArray  # bool: covariance finite and positive definite after the update


class FilterSetup:
    """The constants of an EKF for one model and configuration (validated here).

    Sensor and tracked-parameter names and indices, measurement variances ``R`` (absolute)
    and ``R_rel`` (relative, times y_hat^2), process noise ``Q`` (variance per hour),
    prior ``P0_diag``, the chi-square gate and the outputs' bounds.
    """

    def __init__(self, model: Model, config: EKFConfig, *, p: np.ndarray | None = None) -> None:
        config.validate(model)
        self.model = model
        self.config = config
        self.p_nominal = np.asarray(model.p0 if p is None else p, dtype=float)
        if self.p_nominal.shape != (model.n_p,):
            raise ValueError(f"parameter vector must have shape ({model.n_p},)")
        self.sensor_names = tuple(s.output for s in config.sensors)
        self.tracked_names = tuple(tp.name for tp in config.tracked)
        self.nx = model.nx
        self.nz = model.nx + len(config.tracked)
        self._out_idx = np.array([model.index(n) for n in self.sensor_names], dtype=int)
        self._par_idx = np.array([model.index(n) for n in self.tracked_names], dtype=int)
        self.R = np.array([s.sigma**2 for s in config.sensors])
        self.R_rel = np.array([s.relative_sigma**2 for s in config.sensors])
        scale = default_scale(model)
        q_state = [
            config.process_sigma.get(s.name, 1e-3 * sc) ** 2
            for s, sc in zip(model.states, scale, strict=True)
        ]
        q_par = [tp.drift_per_sqrt_h**2 for tp in config.tracked]
        self.Q = np.array(q_state + q_par)  # variance per hour
        p0_state = [
            config.state_sigma0.get(s.name, 0.1 * sc) ** 2
            for s, sc in zip(model.states, scale, strict=True)
        ]
        self.P0_diag = np.array(p0_state + [tp.sigma0**2 for tp in config.tracked])
        self.gate = float(chdtri(1, 1.0 - config.gate_probability))  # chi2(1) quantile
        lo, hi = model.bounds("outputs")
        self.y_lower, self.y_upper = lo[self._out_idx], hi[self._out_idx]

    def initial_arrays(
        self,
        x0: np.ndarray,
        *,
        theta0: Mapping[str, float] | None = None,
        P0_diag: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z0, P0): x0 and the tracked parameters at ``theta0`` (default: the base values)."""
        x0 = np.asarray(x0, dtype=float)
        if x0.shape != (self.nx,) or not np.all(np.isfinite(x0)):
            raise ValueError(
                f"x0 must be {self.nx} finite values (states {self.model.state_names})"
            )
        theta = dict(theta0 or {})
        unknown = set(theta) - set(self.tracked_names)
        if unknown:
            raise ValueError(f"theta0 names untracked parameters: {sorted(unknown)}")
        th = [theta.get(n, self.p_nominal[self.model.index(n)]) for n in self.tracked_names]
        z0 = np.concatenate([x0, np.asarray(th, dtype=float)])
        P0 = np.diag(self.P0_diag if P0_diag is None else np.asarray(P0_diag, dtype=float))
        return z0, P0

    def estimate(self, state: FilterState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states, full parameter vector, std of the augmented mean) as NumPy arrays."""
        z = np.asarray(state.z)
        p = self.p_nominal.copy()
        p[self._par_idx] = z[self.nx :]
        return z[: self.nx], p, np.sqrt(np.clip(np.diag(np.asarray(state.P)), 0.0, None))

    def to_arrays(self, readings: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Reading dict (sensor name -> value) to (y, mask) ordered as the sensors."""
        y = np.zeros(len(self.sensor_names))
        mask = np.zeros(len(self.sensor_names), dtype=bool)
        for i, name in enumerate(self.sensor_names):
            if name in readings:
                y[i], mask[i] = float(readings[name]), True
        return y, mask


def covariance_problem(P: Any, limit: np.ndarray, names: tuple[str, ...]) -> str:
    """What is wrong with covariance ``P`` ("" when nothing), naming the augmented states
    (``names``: the states, then the tracked parameters): non-finite entries, variances
    above ``limit``, or no positive definiteness."""
    P = np.asarray(P)
    bad = [names[i] for i in range(len(names)) if not np.all(np.isfinite(P[i]))]
    if bad:
        return f"covariance not finite for {', '.join(bad)}"
    var = np.diag(P)
    over = [
        f"{names[i]} (variance {var[i]:.3g} > limit {limit[i]:.3g})"
        for i in range(len(names))
        if var[i] > limit[i]
    ]
    if over:
        return f"variance above its limit: {', '.join(over)}"
    try:
        np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        low = [names[i] for i in range(len(names)) if var[i] <= 0]
        where = f" (variance <= 0: {', '.join(low)})" if low else ""
        return f"covariance not positive definite{where}"
    return ""


def filter_covariance_ok(P: Any, limit: np.ndarray) -> bool:
    """True when P is finite, symmetric positive definite and no variance exceeds ``limit``."""
    P = np.asarray(P)
    if not np.all(np.isfinite(P)):
        return False
    if np.any(np.diag(P) > limit):
        return False
    try:
        np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        return False
    return True
