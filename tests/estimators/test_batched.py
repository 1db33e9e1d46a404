"""Batched prediction and update over many reactors equal the one-reactor functions.

``predict_batch`` / ``update_batch`` are ``vmap``s of the same pure cores, so every
reactor's result must match its own single-reactor ``predict`` / ``update`` up to
floating-point reassociation (1e-12 relative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from estimators import ExtendedKalmanFilter
from models import load_model

MODEL = load_model("ecoli_fedbatch")
N_REACTORS = 16
DT_H = 1.0 / 60.0  # one prediction chunk (the shared config's max_step_h)


def _reactors(
    EKF: ExtendedKalmanFilter, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Different states (batch to late fed-batch), SPD covariances and inputs per reactor."""
    nz = EKF.nz
    Z = np.empty((N_REACTORS, nz))
    P = np.empty((N_REACTORS, nz, nz))
    U = np.empty((N_REACTORS, MODEL.nu))
    for r in range(N_REACTORS):
        X = rng.uniform(0.3, 40.0)
        S = rng.choice([rng.uniform(0.005, 0.05), rng.uniform(1.0, 10.0)])
        x = np.array([X, S, rng.uniform(0.0, 1.5), rng.uniform(20, 95), rng.uniform(5, 8),
                      rng.uniform(0, 3), rng.uniform(30, 38)])  # fmt: skip
        Z[r] = np.concatenate([x, [rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.6)]])
        L = rng.normal(size=(nz, nz)) * 0.1
        scale = np.sqrt(EKF.P0_diag)
        P[r] = (L @ L.T + np.eye(nz)) * np.outer(scale, scale)
        U[r] = [rng.uniform(0, 0.1), rng.uniform(5, 20), rng.uniform(400, 1200), 37.0]
    return Z, P, U


def _assert_close(
    zb: jax.Array, Pb: jax.Array, z: jax.Array, P: jax.Array, z0: np.ndarray, P0: np.ndarray
) -> None:
    """Equal to 1e-12 relative to each component's scale (its prior value and std).

    A plain relative test would fail on cancellation: an update can take glucose from
    0.01 g/L to 1e-4 g/L, where the last bits differ between batched and single code.
    """
    scale = np.abs(z0) + np.sqrt(np.diag(P0))
    np.testing.assert_array_less(np.abs(np.asarray(zb) - np.asarray(z)), 1e-12 * scale)
    np.testing.assert_array_less(
        np.abs(np.asarray(Pb) - np.asarray(P)), 1e-12 * np.outer(scale, scale)
    )


def test_predict_batch_equals_single_reactor_predict(
    ecoli_ekf: ExtendedKalmanFilter, rng: np.random.Generator
) -> None:
    EKF = ecoli_ekf
    Z, P, U = _reactors(EKF, rng)
    pb = jnp.asarray(EKF.p_nominal)
    Zb, Pb = EKF.predict_batch(
        jnp.asarray(Z), jnp.asarray(P), jnp.asarray(U), pb, jnp.full(N_REACTORS, DT_H)
    )
    for r in range(N_REACTORS):
        state = EKF.init(Z[r, : EKF.nx], theta0={"mu_max": Z[r, 7], "Y_xs": Z[r, 8]})
        state = state._replace(P=jnp.asarray(P[r]))
        single = EKF.predict(state, U[r], DT_H)
        _assert_close(Zb[r], Pb[r], single.z, single.P, Z[r], P[r])
    # the reactors really differ: the batch is not one state repeated
    assert np.ptp(np.asarray(Zb)[:, 0]) > 10.0


def test_update_batch_equals_single_reactor_update(
    ecoli_ekf: ExtendedKalmanFilter, rng: np.random.Generator
) -> None:
    EKF = ecoli_ekf
    Z, P, U = _reactors(EKF, rng)
    pb = jnp.asarray(EKF.p_nominal)
    ns = len(EKF.sensor_names)
    h = jax.jit(jax.vmap(EKF._h, in_axes=(0, 0, None)))
    Yhat = np.asarray(h(jnp.asarray(Z), jnp.asarray(U), pb))
    sig = np.sqrt(EKF.R)
    Y = Yhat + sig * rng.normal(size=(N_REACTORS, ns)) * 2.0
    M = rng.random((N_REACTORS, ns)) < 0.7
    M[0] = False  # a reactor with nothing to fuse
    M[1] = True  # and one with everything
    DO = MODEL.index("DO")
    Y[2, 0] = Yhat[2, 0] + 50.0 * np.sqrt(P[2, DO, DO] + sig[0] ** 2)  # gated (one reactor)
    M[2, 0] = True
    Zb, Pb, res = EKF.update_batch(
        jnp.asarray(Z), jnp.asarray(P), jnp.asarray(U), pb, jnp.asarray(Y), jnp.asarray(M)
    )
    for r in range(N_REACTORS):
        state = EKF.init(Z[r, : EKF.nx], theta0={"mu_max": Z[r, 7], "Y_xs": Z[r, 8]})
        state = state._replace(P=jnp.asarray(P[r]))
        single, one = EKF.update(state, U[r], Y[r], M[r])
        _assert_close(Zb[r], Pb[r], single.z, single.P, Z[r], P[r])
        for field in ("accepted", "gated", "dof", "healthy"):
            np.testing.assert_array_equal(np.asarray(getattr(res, field)[r]), getattr(one, field))
        np.testing.assert_allclose(float(res.nis[r]), float(one.nis), rtol=1e-12)
    assert bool(res.gated[2, 0]) and not np.asarray(res.gated)[3:, 0].any()
    np.testing.assert_array_equal(np.asarray(Zb[0]), Z[0])  # nothing fused: unchanged
