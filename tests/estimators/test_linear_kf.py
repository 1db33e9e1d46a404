"""On a linear model the EKF is the Kalman filter: compare with a NumPy reference.

The model is a kinematic double integrator, pos' = vel, vel' = a (input). Its exact
discretisation over a step h with the input held is (Kalman 1960; e.g. Bar-Shalom, Li,
Kirubarajan 2001, Estimation with Applications to Tracking and Navigation, sec. 6.2)

    Phi = expm(A h) = [[1, h], [0, 1]],   Gamma = [h^2 / 2, h],

and ROS2 reproduces it exactly: A is nilpotent (A^2 = 0), so every elementary
differential beyond the second vanishes and the solution under a constant input is a
quadratic in t, which a second-order method integrates without error. The filter adds
process noise as ``P+ = Phi P Phi' + diag(Q) h`` per substep (estimators/_ekf.py), and
so does the reference below. Its update is the textbook batch update with the Joseph
form, which the EKF's sequential scalar updates equal algebraically for a diagonal R.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.linalg import expm

from estimators import EKFConfig, ExtendedKalmanFilter, Sensor
from models import Input, MathNamespace, Model, Output, State, Values


def _rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"pos": x.vel, "vel": u.a}


def _measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    return {"pos_meas": x.pos, "vel_meas": x.vel}


MODEL = Model(
    name="double_integrator",
    description="kinematic double integrator (linear test model)",
    states=(
        State(name="pos", unit="m", lower=-1e3, upper=1e3, nominal=0.0),
        State(name="vel", unit="m/h", lower=-1e3, upper=1e3, nominal=0.0),
    ),
    inputs=(Input(name="a", unit="m/h2", lower=-10.0, upper=10.0, nominal=0.0),),
    parameters=(),
    outputs=(Output(name="pos_meas", unit="m"), Output(name="vel_meas", unit="m/h")),
    rhs=_rhs,
    measure=_measure,
)
A = np.array([[0.0, 1.0], [0.0, 0.0]])
B = np.array([0.0, 1.0])
Q = np.array([0.02**2, 0.3**2])  # process noise variance per hour (pos, vel)
P0 = np.diag([0.5**2, 1.0**2])
X0_HAT = np.array([1.0, -2.0])


def _discretise(h: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact zero-order-hold discretisation: Phi = expm(A h), Gamma = int_0^h expm(A s) B ds."""
    return np.array([[1.0, h], [0.0, 1.0]]), np.array([h**2 / 2.0, h])


def test_closed_form_discretisation_is_the_matrix_exponential() -> None:
    for h in (1e-3, 0.1, 2.5):
        M = np.zeros((3, 3))
        M[:2, :2], M[:2, 2] = A, B
        E = expm(M * h)  # Van Loan (1978): the augmented exponential gives Phi and Gamma
        Phi, Gamma = _discretise(h)
        np.testing.assert_allclose(Phi, E[:2, :2], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(Gamma, E[:2, 2], rtol=1e-14, atol=1e-15)


class ReferenceKF:
    """Textbook linear Kalman filter with the EKF's substep schedule."""

    def __init__(self, R: np.ndarray, max_step_h: float, n_substeps: int) -> None:
        self.R, self.max_step_h, self.n_substeps = R, max_step_h, n_substeps
        self.x, self.P = X0_HAT.copy(), P0.copy()

    def predict(self, dt: float, a: float) -> None:
        n = max(1, math.ceil(dt / self.max_step_h - 1e-9))
        h = dt / n / self.n_substeps
        Phi, Gamma = _discretise(h)
        for _ in range(n * self.n_substeps):
            self.x = Phi @ self.x + Gamma * a
            self.P = Phi @ self.P @ Phi.T + np.diag(Q) * h

    def update(self, H_all: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
        if not mask.any():
            return 0.0
        H, R = H_all[mask], np.diag(self.R[mask])
        nu = y[mask] - H @ self.x
        S = H @ self.P @ H.T + R
        K = self.P @ H.T @ np.linalg.inv(S)
        IKH = np.eye(2) - K @ H
        self.x = self.x + K @ nu
        self.P = IKH @ self.P @ IKH.T + K @ R @ K.T
        return float(nu @ np.linalg.solve(S, nu))


def _filter(
    sensors: tuple[Sensor, ...], max_step_h: float, n_substeps: int
) -> ExtendedKalmanFilter:
    config = EKFConfig(
        sensors=sensors,
        state_sigma0={"pos": 0.5, "vel": 1.0},
        process_sigma={"pos": math.sqrt(Q[0]), "vel": math.sqrt(Q[1])},
        max_step_h=max_step_h,
        n_substeps=n_substeps,
        gate_probability=1.0 - 1e-12,  # no gating: the reference filter has none
    )
    return ExtendedKalmanFilter(MODEL, config)


def _run_and_compare(
    rng: np.random.Generator,
    sensors: tuple[Sensor, ...],
    *,
    full_masks: bool,
    max_step_h: float,
    n_substeps: int,
    n_steps: int = 200,
) -> None:
    ekf = _filter(sensors, max_step_h, n_substeps)
    idx = [MODEL.index(s.output) for s in sensors]
    H_all = np.eye(2)[idx]
    R = np.array([s.sigma**2 for s in sensors])
    ref = ReferenceKF(R, max_step_h, n_substeps)
    state = ekf.init(X0_HAT)
    np.testing.assert_allclose(np.asarray(state.P), ref.P, rtol=0, atol=0)

    x_true = X0_HAT + rng.normal(0.0, [0.5, 1.0])
    t, n_fused = 0.0, 0
    for _ in range(n_steps):
        dt = rng.uniform(0.02, 0.3)
        a = rng.uniform(-5.0, 5.0)
        Phi, Gamma = _discretise(dt)
        x_true = Phi @ x_true + Gamma * a + rng.normal(0.0, np.sqrt(Q * dt))
        t += dt
        state = ekf.predict(state, np.array([a]), t)
        ref.predict(dt, a)
        y = H_all @ x_true + rng.normal(0.0, np.sqrt(R))
        mask = np.ones(len(sensors), bool) if full_masks else rng.random(len(sensors)) < 0.6
        state, res = ekf.update(state, np.array([a]), y, mask)
        nis = ref.update(H_all, y, mask)
        n_fused += int(mask.sum())

        assert not np.asarray(res.gated).any()
        np.testing.assert_array_equal(np.asarray(res.accepted), mask)
        np.testing.assert_allclose(np.asarray(state.z), ref.x, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.asarray(state.P), ref.P, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(res.nis), nis, rtol=1e-9, atol=1e-12)
        assert int(res.dof) == int(mask.sum())
    assert n_fused > 0 and (full_masks or n_fused < n_steps * len(sensors))


@pytest.mark.parametrize(
    ("max_step_h", "n_substeps"),
    [(1.0, 1), (1.0, 3), (0.07, 2)],
    ids=["one-step", "substeps", "split-intervals"],
)
def test_position_only_random_masks_equal_numpy_kalman_filter(
    rng: np.random.Generator, max_step_h: float, n_substeps: int
) -> None:
    sensors = (Sensor(output="pos_meas", sigma=0.1),)
    _run_and_compare(rng, sensors, full_masks=False, max_step_h=max_step_h, n_substeps=n_substeps)


def test_two_outputs_full_masks_equal_numpy_kalman_filter(rng: np.random.Generator) -> None:
    sensors = (Sensor(output="pos_meas", sigma=0.1), Sensor(output="vel_meas", sigma=0.4))
    _run_and_compare(rng, sensors, full_masks=True, max_step_h=1.0, n_substeps=1)


def test_two_outputs_random_subsets_equal_numpy_kalman_filter(rng: np.random.Generator) -> None:
    sensors = (Sensor(output="pos_meas", sigma=0.1), Sensor(output="vel_meas", sigma=0.4))
    _run_and_compare(rng, sensors, full_masks=False, max_step_h=0.1, n_substeps=2)
