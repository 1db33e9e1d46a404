"""The compiled filter (CasADi -> C) computes what the JAX filter computes.

:class:`CompiledEKF` evaluates the same mathematics as :class:`ExtendedKalmanFilter`
(which ``test_linear_kf`` proves against an exact linear Kalman filter), pivoted LU of the
ROS2 stages included, in a different order: one triangle of each symmetric covariance,
the rank-one form of the Joseph update. So every reference value here comes from the JAX
filter on the same inputs, and the two must agree to rounding: 1e-11 of each component's
scale (its value plus its standard deviation) for one step, 1e-10 over a record of
hundreds of steps (measured: about 1e-15 and 1e-13; JAX jitted and JAX op by op differ by
as much). The cases cover the E. coli configuration with tracked parameters, relative
assay noise, random sensor masks, readings the chi-square gate rejects, substeps, the
online estimator with late assays, CasADi's virtual machine (no C compiler), and the
errors for arrays of the wrong shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from estimators import (
    CompiledEKF,
    EKFConfig,
    ExtendedKalmanFilter,
    FilterState,
    OnlineEstimator,
    Reading,
    UpdateResult,
)
from hil.synthetic import ecoli_fedbatch_run, generate
from models import Model

DT_H = 1.0 / 60.0
N_CASES = 12
STEP_TOL = 1e-11
RECORD_TOL = 1e-10


@pytest.fixture(scope="module")
def compiled(ecoli_model: Model, ecoli_config: EKFConfig) -> CompiledEKF:
    """The E. coli filter compiled to C (built once per machine: the library is cached)."""
    cekf = CompiledEKF(ecoli_model, ecoli_config)
    assert cekf.join() == "c", "a C compiler is needed for this test module"
    return cekf


def _cases(
    ekf: ExtendedKalmanFilter, model: Model, rng: np.random.Generator
) -> list[tuple[np.ndarray, ...]]:
    """(z, P, u, y, mask) from batch phase to late fed-batch, with gated outliers.

    Readings are the predicted outputs plus twice the sensor noise; a quarter of the
    present ones are shifted by 10^4 sensor standard deviations (the gate rejects them).
    """
    nz, ns = ekf.nz, len(ekf.sensor_names)
    h = jax.jit(ekf._h)
    out = []
    for _ in range(N_CASES):
        x = np.array([rng.uniform(0.3, 40.0), rng.choice([rng.uniform(0.005, 0.05),
                      rng.uniform(1.0, 10.0)]), rng.uniform(0.0, 1.5), rng.uniform(20, 95),
                      rng.uniform(5, 8), rng.uniform(0, 3), rng.uniform(30, 38)])  # fmt: skip
        z = np.concatenate([x, [rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.6)]])
        L = rng.normal(size=(nz, nz)) * 0.1
        scale = np.sqrt(ekf.P0_diag)
        P = (L @ L.T + np.eye(nz)) * np.outer(scale, scale)
        P = 0.5 * (P + P.T)  # exactly symmetric, as the filter keeps it
        u = np.array([rng.uniform(0, 0.1), rng.uniform(5, 20), rng.uniform(400, 1200), 37.0])
        y_hat = np.asarray(h(jnp.asarray(z), jnp.asarray(u), jnp.asarray(ekf.p_nominal)))
        sd = np.sqrt(ekf.R + ekf.R_rel * y_hat**2)
        y = y_hat + 2.0 * sd * rng.normal(size=ns)
        mask = rng.random(ns) < 0.6
        outlier = mask & (rng.random(ns) < 0.25)
        y[outlier] += 1e4 * (sd[outlier] + 1.0)
        out.append((z, P, u, y, mask))
    return out


def _assert_close(
    z: np.ndarray, P: np.ndarray, z_ref: jax.Array, P_ref: jax.Array, tol: float
) -> None:
    """Equal to ``tol`` of each component's scale: |z| + std (and its outer product)."""
    z_ref, P_ref = np.asarray(z_ref), np.asarray(P_ref)
    scale = np.abs(z_ref) + np.sqrt(np.abs(np.diagonal(P_ref, axis1=-2, axis2=-1)))
    np.testing.assert_array_less(np.abs(z - z_ref), tol * scale)
    np.testing.assert_array_less(np.abs(P - P_ref), tol * scale[..., :, None] * scale[..., None, :])


def _assert_same_result(res: UpdateResult, ref: UpdateResult, tol: float) -> None:
    for field in ("accepted", "gated", "dof", "healthy"):
        np.testing.assert_array_equal(np.asarray(getattr(res, field)), getattr(ref, field))
    np.testing.assert_allclose(np.asarray(res.nis), np.asarray(ref.nis), rtol=tol, atol=tol)
    for field in ("innovation", "innovation_var"):
        a, b = np.asarray(getattr(res, field)), np.asarray(getattr(ref, field))
        np.testing.assert_array_less(np.abs(a - b), tol * (np.abs(b) + 1.0))


def test_step_equals_jax_step(
    compiled: CompiledEKF,
    ecoli_ekf: ExtendedKalmanFilter,
    ecoli_model: Model,
    rng: np.random.Generator,
) -> None:
    step = jax.jit(ecoli_ekf._step_core)
    p = jnp.asarray(ecoli_ekf.p_nominal)
    n_gated = 0
    for z, P, u, y, mask in _cases(ecoli_ekf, ecoli_model, rng):
        zc, Pc, res = compiled.step(z, P, u, DT_H, y, mask)
        zj, Pj, ref = step(z, P, u, p, DT_H, y, mask)
        _assert_close(zc, Pc, zj, Pj, STEP_TOL)
        _assert_same_result(res, ref, STEP_TOL)
        np.testing.assert_array_equal(Pc, Pc.T)  # kept exactly symmetric
        n_gated += int(np.sum(res.gated))
    assert n_gated >= 3  # the gate was exercised


def test_predict_and_update_equal_jax(
    compiled: CompiledEKF,
    ecoli_ekf: ExtendedKalmanFilter,
    ecoli_model: Model,
    rng: np.random.Generator,
) -> None:
    for z, P, u, y, mask in _cases(ecoli_ekf, ecoli_model, rng)[:4]:
        x, theta = (
            z[: ecoli_ekf.nx],
            dict(zip(ecoli_ekf.tracked_names, z[ecoli_ekf.nx :], strict=True)),
        )
        ref = ecoli_ekf.init(x, t0=1.0, theta0=theta)._replace(P=jnp.asarray(P))
        state = compiled.init(x, t0=1.0, theta0=theta)._replace(P=P)
        np.testing.assert_array_equal(np.asarray(state.z), np.asarray(ref.z))
        # 2.5 intervals of max_step_h: split into 3 equal predictions by both
        t = 1.0 + 2.5 * ecoli_ekf.config.max_step_h
        ref, state = ecoli_ekf.predict(ref, u, t), compiled.predict(state, u, t)
        assert float(state.t) == float(ref.t)
        _assert_close(np.asarray(state.z), np.asarray(state.P), ref.z, ref.P, STEP_TOL)
        ref_u, res_ref = ecoli_ekf.update(ref, u, y, mask)
        new, res = compiled.update(state, u, y, mask)
        _assert_close(np.asarray(new.z), np.asarray(new.P), ref_u.z, ref_u.P, STEP_TOL)
        _assert_same_result(res, res_ref, STEP_TOL)


def test_nothing_to_fuse_changes_nothing(
    compiled: CompiledEKF, ecoli_ekf: ExtendedKalmanFilter, ecoli_model: Model
) -> None:
    state = compiled.init(ecoli_model.x0)
    y = np.full(len(compiled.sensor_names), np.nan)  # absent readings may hold anything
    new, res = compiled.update(state, ecoli_model.u0, y, np.zeros(len(y), dtype=bool))
    np.testing.assert_array_equal(np.asarray(new.z), np.asarray(state.z))
    np.testing.assert_array_equal(np.asarray(new.P), np.asarray(state.P))
    assert int(res.dof) == 0 and float(res.nis) == 0.0 and bool(res.healthy)


@pytest.fixture(scope="module")
def record(ecoli_model: Model, ecoli_ekf: ExtendedKalmanFilter) -> tuple[np.ndarray, ...]:
    """6 h of synthetic E. coli data, readings at sample time, random masks and outliers."""
    data = generate(
        ecoli_model,
        ecoli_fedbatch_run(hours=6.0, parameter_factors={"mu_max": 0.8, "Y_xs": 1.2}),
        seed=7,
    )
    Y, M = data.on_time_arrays(ecoli_ekf.sensor_names)
    rng = np.random.default_rng(11)
    M = M & (rng.random(M.shape) < 0.8)
    bad = M & (rng.random(M.shape) < 0.01)
    Y = np.where(bad, Y * 3.0 + 50.0, Y)  # gross errors for the gate
    U = np.concatenate([data.u[:1], data.u[:-1]])  # inputs held before each reading
    return U, np.full(len(U), DT_H), np.nan_to_num(Y), M


def test_filter_sequence_equals_jax_scan(
    compiled: CompiledEKF,
    ecoli_ekf: ExtendedKalmanFilter,
    ecoli_model: Model,
    record: tuple[np.ndarray, ...],
) -> None:
    U, DT, Y, M = record
    DT = DT.copy()
    DT[100:103] = [0.0, 0.5 * DT_H, 0.25 * DT_H]  # steps of other lengths
    ref0 = ecoli_ekf.init(ecoli_model.x0)
    ref_end, Zj, Pj, ref = ecoli_ekf.filter_sequence(ref0, U, DT, Y, M)
    end, Zc, Pc, res = compiled.filter_sequence(compiled.init(ecoli_model.x0), U, DT, Y, M)
    assert Zc.shape == Zj.shape == (len(DT), compiled.nz) and Pc.shape == Pj.shape
    _assert_close(Zc, Pc, Zj, Pj, RECORD_TOL)
    _assert_same_result(res, ref, RECORD_TOL)
    assert int(np.sum(res.gated)) >= 3 and bool(np.all(res.healthy))
    assert float(end.t) == pytest.approx(float(ref_end.t), abs=1e-12)
    np.testing.assert_array_equal(np.asarray(end.z), Zc[-1])
    # the chained library and single steps from Python give the same numbers
    z, P = np.asarray(compiled.init(ecoli_model.x0).z), np.asarray(ref0.P)
    for k in range(70):
        z, P, _ = compiled.step(z, P, U[k], DT[k], Y[k], M[k])
    np.testing.assert_array_equal(z, Zc[69])
    np.testing.assert_array_equal(P, Pc[69])


def test_substeps_equal_jax(ecoli_model: Model, ecoli_config: EKFConfig) -> None:
    config = dataclasses.replace(ecoli_config, n_substeps=3, max_step_h=0.1)
    ekf = ExtendedKalmanFilter(ecoli_model, config)
    cekf = CompiledEKF(ecoli_model, config)
    z0, P0 = np.asarray(ekf.init(ecoli_model.x0).z), np.diag(ekf.P0_diag)
    zj, Pj = jax.jit(ekf._predict_core)(z0, P0, ecoli_model.u0, ekf.p_nominal, 0.1)
    zc, Pc = cekf.predict_arrays(z0, P0, ecoli_model.u0, 0.1)
    _assert_close(zc, Pc, zj, Pj, STEP_TOL)


def test_online_estimator_on_compiled_filter_equals_jax(
    compiled: CompiledEKF, ecoli_ekf: ExtendedKalmanFilter, ecoli_model: Model
) -> None:
    """Late assays (re-filtering the stored steps) included: the same estimates."""
    data = generate(ecoli_model, ecoli_fedbatch_run(hours=5.0), seed=5)
    est_j, est_c = OnlineEstimator(ecoli_ekf), OnlineEstimator(compiled)
    sj, sc = est_j.init(ecoli_model.x0), est_c.init(ecoli_model.x0)
    kinds: list[str] = []
    for k, (tk, records) in enumerate(data.arrivals()):
        readings = [
            Reading(r.sensor, r.value, None if r.t_sample_h == r.t_h else r.t_sample_h)
            for r in records
        ]
        u = data.u[max(k - 1, 0)]
        rj, sj = est_j.step(sj, tk, u, readings)
        rc, sc = est_c.step(sc, tk, u, readings)
        assert [e.kind for e in rc.events] == [e.kind for e in rj.events]
        assert rc.dof == rj.dof
        kinds.extend(e.kind for e in rc.events)
    _assert_close(
        np.asarray(sc.filter.z), np.asarray(sc.filter.P), sj.filter.z, sj.filter.P, RECORD_TOL
    )
    assert "late_fused" in kinds
    assert isinstance(sc.filter, FilterState) and isinstance(sc.filter.z, np.ndarray)


def test_virtual_machine_fallback_without_compiler(
    compiled: CompiledEKF,
    ecoli_model: Model,
    ecoli_config: EKFConfig,
    ecoli_ekf: ExtendedKalmanFilter,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-bpcontrol")
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="virtual machine"):
        vm = CompiledEKF(ecoli_model, ecoli_config)
    assert vm.backend == "vm" and vm.compile_s == 0.0
    assert CompiledEKF(ecoli_model, ecoli_config, jit=False).backend == "vm"
    for z, P, u, y, mask in _cases(ecoli_ekf, ecoli_model, rng)[:3]:
        zv, Pv, rv = vm.step(z, P, u, DT_H, y, mask)
        zc, Pc, rc = compiled.step(z, P, u, DT_H, y, mask)
        _assert_close(zv, Pv, jnp.asarray(zc), jnp.asarray(Pc), 1e-13)
        _assert_same_result(rv, rc, 1e-13)


def test_background_build_runs_the_vm_until_built_then_switches_bit_for_bit(
    compiled: CompiledEKF,
    ecoli_model: Model,
    ecoli_config: EKFConfig,
    ecoli_ekf: ExtendedKalmanFilter,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    """An empty cache: the VM at once, the same numbers bit for bit before and after."""
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    cases = _cases(ecoli_ekf, ecoli_model, rng)[:4]
    blocking = CompiledEKF(ecoli_model, ecoli_config, jit=False)
    cekf = CompiledEKF(ecoli_model, ecoli_config)
    assert cekf.backend == "vm" and cekf.compile_s == 0.0  # cc takes seconds: still building
    seen = set()
    for _ in range(2):  # during the build (VM), then after join (C)
        for z, P, u, y, mask in cases:
            for a, b in zip(
                cekf.step(z, P, u, DT_H, y, mask)[:2] + cekf.update_arrays(z, P, u, y, mask)[:2],
                compiled.step(z, P, u, DT_H, y, mask)[:2]
                + compiled.update_arrays(z, P, u, y, mask)[:2],
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(
                cekf.predict_arrays(z, P, u, DT_H)[1], blocking.predict_arrays(z, P, u, DT_H)[1]
            )
        seen.add(cekf.backend)
        assert cekf.join() == "c" and cekf.compile_s > 0.0
    assert "c" in seen
    again = CompiledEKF(ecoli_model, ecoli_config)  # from the cache, loaded at once
    assert again.backend == "c" and again.compile_s == 0.0
    waited = CompiledEKF(ecoli_model, ecoli_config, background=False)
    assert waited.backend == "c" and waited.compile_s == 0.0


def test_bad_shapes_raise_clear_errors(compiled: CompiledEKF, ecoli_model: Model) -> None:
    nz, ns = compiled.nz, len(compiled.sensor_names)
    z, P, u = np.ones(nz), np.eye(nz), ecoli_model.u0
    y, m = np.zeros(ns), np.zeros(ns, dtype=bool)
    with pytest.raises(ValueError, match=rf"need z \({nz},\), P \({nz}, {nz}\)"):
        compiled.step(z[:-1], P, u, DT_H, y, m)
    with pytest.raises(ValueError, match="got"):
        compiled.step(z, P[:, :-1], u, DT_H, y, m)
    with pytest.raises(ValueError, match=r"u \(4,\)"):
        compiled.step(z, P, u[:2], DT_H, y, m)
    with pytest.raises(ValueError, match=rf"y and mask must have shape \({ns},\)"):
        compiled.step(z, P, u, DT_H, y[:2], m)
    with pytest.raises(ValueError, match="max_step_h"):
        compiled.step(z, P, u, 1.0, y, m)
    K = 5
    with pytest.raises(ValueError, match=r"need DT \(K,\)"):
        compiled.filter_sequence(
            compiled.init(ecoli_model.x0),
            np.zeros((K, 3)),
            np.full(K, DT_H),
            np.zeros((K, ns)),
            np.zeros((K, ns), dtype=bool),
        )


def test_step_batch_equals_the_single_step_and_jax_vmap(
    compiled: CompiledEKF,
    ecoli_ekf: ExtendedKalmanFilter,
    ecoli_model: Model,
    rng: np.random.Generator,
) -> None:
    cases = _cases(ecoli_ekf, ecoli_model, rng)
    Z, P, U, Y, M = (np.stack([c[i] for c in cases]) for i in range(5))
    dts = np.linspace(0.5, 1.0, len(cases)) * DT_H  # a different interval per reactor
    for threads in (1, 2):
        Zb, Pb, stats = compiled.step_batch(Z, P, U, dts, Y, M, threads=threads)
        for k in range(len(cases)):
            zc, Pc, res = compiled.step(Z[k], P[k], U[k], dts[k], Y[k], M[k])
            np.testing.assert_array_equal(Zb[k], zc)  # the same C code, bit for bit
            np.testing.assert_array_equal(Pb[k], Pc)
            ns = len(compiled.sensor_names)
            np.testing.assert_array_equal(stats[k, ns : 2 * ns].astype(bool), res.gated)
    fused = jax.jit(jax.vmap(ecoli_ekf._step_core, in_axes=(0, 0, 0, None, 0, 0, 0)))
    Zj, Pj, _ = fused(Z, P, U, jnp.asarray(ecoli_ekf.p_nominal), dts, Y, M)
    _assert_close(Zb, Pb, Zj, Pj, STEP_TOL)


def test_step_batch_refuses_bad_shapes(compiled: CompiledEKF, ecoli_model: Model) -> None:
    nz, ns, n = compiled.nz, len(compiled.sensor_names), 3
    Z, P, U = np.ones((n, nz)), np.tile(np.eye(nz), (n, 1, 1)), np.tile(ecoli_model.u0, (n, 1))
    Y, M = np.zeros((n, ns)), np.zeros((n, ns))
    with pytest.raises(ValueError, match=rf"need Z \(N, {nz}\)"):
        compiled.step_batch(Z, P[:2], U, DT_H, Y, M)
    with pytest.raises(ValueError, match="max_step_h"):
        compiled.step_batch(Z, P, U, 2.0, Y, M)
