"""What both EKFs share, without JAX: filter state and result types, the constants.

:class:`ExtendedKalmanFilter` (JAX, batched) and :class:`CompiledEKF` (CasADi, one
reactor) derive their noise, prior, gate and index constants from one
:class:`FilterSetup`, so they cannot disagree; keeping it free of JAX lets the compiled
filter (the one a run uses) start without importing JAX (about 1-2 s).

Also shared, in NumPy, so that both filters use one implementation: the projection
(clipping) of the mean onto the declared bounds (:meth:`FilterSetup.project`), the covariance limits
(:attr:`FilterSetup.variance_limits`) and the covariance inflation that recovers an
inconsistent estimate (:meth:`FilterSetup.inflate_for`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import casadi as ca
import numpy as np
from scipy.special import chdtri  # inverse chi-square survival; scipy.stats costs ~1-4 s to import

from estimators._config import VARIANCE_SCALE_FRACTION, EKFConfig, default_scale
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
    prior ``P0_diag``, the chi-square gate, the outputs' bounds, the bounds of the
    augmented mean (``z_lower``, ``z_upper``: the states' declared bounds, then the
    tracked parameters') and the covariance limits ``variance_limits``.
    """

    def __init__(self, model: Model, config: EKFConfig, *, p: np.ndarray | None = None) -> None:
        config.validate(model)
        self.model = model
        self.config = config
        self.p_nominal = np.asarray(model.p0 if p is None else p, dtype=float)
        if self.p_nominal.shape != (model.n_p,):
            raise ValueError(f"parameter vector must have shape ({model.n_p},)")
        self.sensor_names = tuple(s.output for s in config.sensors)
        self.tracked_names = config.tracked_names
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
        x_lo, x_hi = model.bounds("states")
        p_lo, p_hi = model.bounds("parameters")
        self.z_lower = np.concatenate([x_lo, p_lo[self._par_idx]])
        self.z_upper = np.concatenate([x_hi, p_hi[self._par_idx]])
        self.names = tuple(model.state_names) + self.tracked_names  # of the augmented mean
        # limits of the variances (a reset above them): variance_limit times the prior
        # variance, or times (10 % of the typical magnitude)^2 where that is larger, so a
        # state or parameter given a tiny prior std is judged on its scale, not its prior
        par_scale = [
            max(abs(float(self.p_nominal[i])), 0.01 * float(p_hi[i] - p_lo[i]), 1e-12)
            for i in self._par_idx
        ]
        typical = np.array([*scale, *par_scale])
        self.variance_limits = config.variance_limit * np.maximum(
            self.P0_diag, (VARIANCE_SCALE_FRACTION * typical) ** 2
        )

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

    def project(self, state: FilterState) -> tuple[FilterState, tuple[str, ...]]:
        """The state with its mean moved inside the declared bounds, and the names moved.

        Estimate projection with the identity weight (Simon 2010, "Kalman filtering with
        state constraints: a survey of linear and nonlinear algorithms", IET Control
        Theory Appl. 4:1303-1318, sec. 2.3 with W = I): the mean becomes the nearest
        point of the box ``[z_lower, z_upper]`` in the Euclidean metric, which for a box
        is clipping each entry to its bounds; entries inside their bounds do not move. A
        mean inside its bounds is returned unchanged (the same object).

        Why not the inverse-covariance weight (W = P^-1, Simon and Chia 2002, the
        minimum-variance projection of a linear filter, which moves the correlated
        entries along with a clipped one): at a bound the model has a kink (uptake
        ``fmax(S, 0)`` and friends), and the correlations linearised there are wrong, so
        the P^-1 projection moved the tracked parameters every minute while glucose sat
        at zero. Measured on ``tests/estimators/test_tracking_mismatch.py`` (plant 20 %
        above, seed 2): mu_max ended 34 % off with 92 gated readings with W = P^-1, 1.5 %
        off with none gated with W = I.

        The covariance is kept. Conditioning it on the active bounds would make it
        singular in those directions, so the filter would never again move an entry that
        touched a bound (and the positive-definiteness check would reset it); keeping it
        is conservative, since the clipped mean is nearer the truth than the unclipped
        one whenever the truth lies inside the bounds (Simon 2010, sec. 2.3).
        """
        z = np.asarray(state.z, dtype=float)
        out = (z < self.z_lower) | (z > self.z_upper)
        if not np.any(out):
            return state, ()
        clipped = np.clip(z, self.z_lower, self.z_upper)
        moved = tuple(self.names[i] for i in np.flatnonzero(out))
        return FilterState(t=state.t, z=clipped, P=state.P), moved

    @cached_property
    def _measurement_jacobian(self) -> ca.Function:
        """``(z, u, p) -> dh/dz`` of the configured sensors (CasADi's virtual machine; used
        only when a recovery needs to know which states a sensor observes)."""
        model, nx = self.model, self.nx
        cm = model.to_casadi()
        z = ca.SX.sym("z", self.nz)
        u = ca.SX.sym("u", model.nu)
        p = ca.SX.sym("p", model.n_p)
        entries = [p[i] for i in range(model.n_p)]
        for j, i in enumerate(self._par_idx):
            entries[int(i)] = z[nx + j]
        y = cm.h(z[:nx], u, ca.vertcat(*entries))[[int(i) for i in self._out_idx]]
        return ca.Function("ekf_H", [z, u, p], [ca.densify(ca.jacobian(y, z))])

    def measurement_jacobian(self, state: FilterState, u: np.ndarray) -> np.ndarray:
        """``H = dh/dz`` at the state's mean (sensors x augmented states)."""
        H = self._measurement_jacobian(np.asarray(state.z, dtype=float), u, self.p_nominal)
        return np.asarray(H, dtype=float).reshape(len(self.sensor_names), self.nz)

    def inflate_for(
        self,
        state: FilterState,
        u: np.ndarray,
        result: UpdateResult,
        sensors: Sequence[int],
    ) -> tuple[FilterState, dict[int, tuple[tuple[str, ...], float]]]:
        """Inflate the variances of the states the ``sensors`` observe so that their last
        (gated) readings become one-sigma innovations.

        ``state`` is the prior the gated update started from and ``result`` that update's
        outcome. For sensor ``i`` with measurement Jacobian row ``H_i`` the innovation
        variance lacks ``need = nu_i^2 - (H_i P H_i' + R_i)``; it is added as a diagonal
        ``Delta`` on the observed entries (``H_ij != 0``) with ``H_i Delta H_i' = need``,
        so the reading passes the gate (NIS 1) and the update moves the estimate by
        ``1 - R_i / nu_i^2`` of the way to it (over 93 % at the default gate): a
        re-initialisation of those entries from the reading. An additive diagonal keeps
        ``P`` positive definite and the cross-covariances as they were, so the other
        entries do not follow the jump through correlations the failure has just shown to
        be wrong. ``need`` is shared in proportion to the square of each entry's typical
        contribution ``g_j = H_ij^2 w_j``, ``w_j`` the entry's reference variance (the
        larger of its prior and (10 % of its scale)^2, as in :attr:`variance_limits`):
        ``Delta_j = need g_j w_j / sum_k g_k^2``. An entry the sensor barely sees gets
        almost nothing (shares proportional to ``g_j`` itself would hand it as large a
        multiple of ``w_j`` as the entries that explain the reading). Sensors are treated
        in turn, each on the covariance the previous one left. Returns the new state and,
        per sensor, the names of the entries inflated (those taking at least 1 % of
        ``need``) and the factor by which its innovation variance grew (1 when nothing).
        """
        P = np.array(state.P, dtype=float)
        P0 = np.asarray(state.P, dtype=float)
        H = self.measurement_jacobian(state, u)
        w = self.variance_limits / self.config.variance_limit
        done: dict[int, tuple[tuple[str, ...], float]] = {}
        for i in sensors:
            Hi = H[i]
            nu = float(np.asarray(result.innovation)[i])
            R_i = max(float(np.asarray(result.innovation_var)[i]) - float(Hi @ P0 @ Hi), 0.0)
            s_now = float(Hi @ P @ Hi) + R_i
            need = nu * nu - s_now
            g = Hi**2 * w
            total = float(np.sum(g**2))
            names: tuple[str, ...] = ()
            factor = 1.0
            if need > 0.0 and total > 0.0 and math.isfinite(need) and math.isfinite(total):
                delta = need * g * w / total
                P[np.diag_indices(self.nz)] += delta
                share = Hi**2 * delta / need
                names = tuple(self.names[j] for j in np.flatnonzero(share >= 0.01))
                factor = (s_now + need) / s_now
            done[int(i)] = (names, factor)
        return FilterState(t=state.t, z=np.asarray(state.z), P=P), done

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
