"""The CasADi and JAX twins of every built-in model agree (values and Jacobians, 1e-9 rel.)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import available_models, load_model

N_POINTS = 1000
RTOL = 1e-9


def _random_points(model, n: int, rng: np.random.Generator):
    """Uniform samples inside the declared state, input and parameter bounds."""

    def draw(group: str) -> np.ndarray:
        lo, hi = model.bounds(group)
        return lo + (hi - lo) * rng.random((n, lo.size))

    return draw("states"), draw("inputs"), draw("parameters")


def _assert_close(a: np.ndarray, b: np.ndarray, what: str, floor: np.ndarray) -> None:
    """Elementwise relative agreement; ``floor`` bounds the reference magnitude from below
    where an entry is zero or is the rounding residue of cancelling terms."""
    err = np.abs(a - b)
    bound = RTOL * np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    bad = err > bound
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {bad.sum()} entries differ, first at {i}: {a[i]} vs {b[i]}")


@pytest.mark.parametrize("name", available_models())
def test_casadi_and_jax_agree_at_random_points(name: str, rng: np.random.Generator) -> None:
    model = load_model(name)
    cas, jx = model.to_casadi(), model.to_jax()
    X, U, P = _random_points(model, N_POINTS, rng)
    f_map = cas.f.map(N_POINTS)
    jac_map = cas.jac_f.map(N_POINTS)
    h_map = cas.h.map(N_POINTS)
    f_c = np.asarray(f_map(X.T, U.T, P.T)).T
    jac_c = [np.asarray(J) for J in jac_map(X.T, U.T, P.T)]
    h_c = np.asarray(h_map(X.T, U.T, P.T)).T
    f_j = np.asarray(jx.f_batch(X, U, P))
    A, B, Bp = (np.asarray(a) for a in jx.f_and_jac_batch(X, U, P)[1])
    h_j = np.asarray(jx.h_batch(X, U, P))
    finite = np.isfinite(f_c).all(axis=1) & np.isfinite(h_c).all(axis=1)
    assert finite.mean() > 0.99, f"{name}: CasADi gives non-finite values at random points"
    for what, c, j in (("rhs", f_c, f_j), ("outputs", h_c, h_j)):
        # floor: 1e-3 of the entry's largest magnitude over the sample
        _assert_close(c[finite], j[finite], f"{name} {what}", 1e-3 * np.abs(c[finite]).max(axis=0))
    # casadi maps stack the Jacobians horizontally: (nx, n*ncols). Jacobians are compared
    # row-normwise (Higham, Accuracy and Stability of Numerical Algorithms, 2002, ch. 7): an
    # entry that is analytically zero comes out as rounding residue of terms of the size of
    # the row, so each row's largest entry floors the reference magnitude.
    for what, Jc, Jj in (("df/dx", jac_c[0], A), ("df/du", jac_c[1], B), ("df/dp", jac_c[2], Bp)):
        ncol = Jj.shape[2]
        Jc3 = Jc.reshape(model.nx, N_POINTS, ncol).transpose(1, 0, 2)[finite]
        row_norm = np.abs(Jc3).max(axis=2, keepdims=True)
        _assert_close(Jc3, Jj[finite], f"{name} {what}", row_norm)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_ecoli_twins_agree_property(seed: int) -> None:
    """Property form of the same claim on the main model (hypothesis chooses the seeds)."""
    model = _ECOLI
    x, u, p = (a[0] for a in _random_points(model, 1, np.random.default_rng(seed)))
    fc = np.asarray(_ECOLI_CAS.f(x, u, p)).ravel()
    fj = np.asarray(_ECOLI_JAX.f(x, u, p))
    np.testing.assert_allclose(fj, fc, rtol=RTOL, atol=1e-12 * (1 + np.abs(fc).max()))
    Ac = np.asarray(_ECOLI_CAS.jac_f(x, u, p)[0])
    Aj = np.asarray(_ECOLI_JAX.jac_f(x, u, p)[0])
    np.testing.assert_allclose(Aj, Ac, rtol=RTOL, atol=1e-12 * (1 + np.abs(Ac).max()))


_ECOLI = load_model("ecoli_fedbatch")
_ECOLI_CAS = _ECOLI.to_casadi()
_ECOLI_JAX = _ECOLI.to_jax()
