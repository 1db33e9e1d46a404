"""The smoothed min/max namespaces the controller and the MHE build their model copies with.

References are the definitions themselves: exact min/max, and the smoothing widths'
error bounds (symmetric: eps/2 at the kink; one-sided: exact on the first argument's
branch, below eps on the other, since |eps tanh(d/eps)| < eps and |d| of the branch).
"""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from models import OneSidedSmoothCasadiMath, SmoothCasadiMath, smooth_casadi_math

EPS = 1e-3
D = np.concatenate([-np.logspace(-6, 1, 40), [0.0], np.logspace(-6, 1, 40)])


def _fn(math: SmoothCasadiMath, op: str) -> tuple[ca.Function, ca.Function, ca.Function]:
    """f(a, b), df/da and d2f/da2 of ``op`` (fmin or fmax) as CasADi functions."""
    a, b = ca.SX.sym("a"), ca.SX.sym("b")
    f = getattr(math, op)(a, b)
    g = ca.jacobian(f, a)
    h = ca.jacobian(g, a)
    return (
        ca.Function("f", [a, b], [f]),
        ca.Function("g", [a, b], [g]),
        ca.Function("h", [a, b], [h]),
    )


@pytest.mark.parametrize("op", ["fmax", "fmin"])
def test_one_sided_is_exact_on_the_first_arguments_branch(op: str) -> None:
    f, _, _ = _fn(OneSidedSmoothCasadiMath(EPS), op)
    b = 0.3
    a = b + D
    got = np.array([float(f(ai, b)) for ai in a])
    exact = np.maximum(a, b) if op == "fmax" else np.minimum(a, b)
    first = (a >= b) if op == "fmax" else (a <= b)
    assert np.array_equal(got[first], a[first])  # bit-exact where a is the result
    assert np.all(np.abs(got - exact) <= EPS * (1 + 1e-12))  # within the width elsewhere
    assert np.all(np.abs(got - exact)[~first] > 0)  # and smooth (not the kink) there


@pytest.mark.parametrize("op", ["fmax", "fmin"])
def test_one_sided_is_twice_differentiable_at_the_kink(op: str) -> None:
    """IPOPT needs C2: first and second derivatives meet at d = 0 (tanh' = 1, tanh'' = 0).

    Off the kink by delta on the smoothed side, Taylor gives r' = 1 - (delta/eps)^2 and
    |r''| = 2 delta / eps^2 (+ O(delta^3)): the bounds below, with a factor 1.5 margin."""
    _, g, h = _fn(OneSidedSmoothCasadiMath(EPS), op)
    b = 0.3
    for delta in (1e-9, 1e-8, 1e-7):
        for fn, bound in ((g, 1.5 * (delta / EPS) ** 2 + 1e-15), (h, 1.5 * 2 * delta / EPS**2)):
            left, right = float(fn(b - delta, b)), float(fn(b + delta, b))
            assert abs(left - right) <= bound


def test_symmetric_is_half_the_width_off_at_the_kink() -> None:
    f, _, _ = _fn(SmoothCasadiMath(EPS), "fmax")
    assert float(f(0.0, 0.0)) == pytest.approx(EPS / 2, rel=1e-12)
    f1, _, _ = _fn(OneSidedSmoothCasadiMath(EPS), "fmax")
    assert float(f1(0.0, 0.0)) == 0.0


def test_the_kind_is_chosen_by_name_and_checked() -> None:
    assert type(smooth_casadi_math(EPS)) is OneSidedSmoothCasadiMath
    assert type(smooth_casadi_math(EPS, "symmetric")) is SmoothCasadiMath
    with pytest.raises(ValueError, match="smoothing kind"):
        smooth_casadi_math(EPS, "both")
