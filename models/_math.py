"""The small math namespace a model's right-hand side is written against.

A model calls ``m.exp``, ``m.fmin``, ``m.if_else`` ... instead of importing a backend,
so the same Python function traces to CasADi SX (exact derivatives for the optimizer),
to JAX (jit, vmap and Jacobians for the estimator) and to NumPy (validation, plain use).
"""

from __future__ import annotations

from typing import Any, Protocol

import casadi as ca
import numpy as np


class MathNamespace(Protocol):
    """Functions a right-hand side may use; each backend implements all of them."""

    name: str
    pi: float

    def exp(self, a: Any) -> Any: ...
    def log(self, a: Any) -> Any: ...
    def sqrt(self, a: Any) -> Any: ...
    def tanh(self, a: Any) -> Any: ...
    def fabs(self, a: Any) -> Any: ...
    def fmin(self, a: Any, b: Any) -> Any: ...
    def fmax(self, a: Any, b: Any) -> Any: ...
    def if_else(self, cond: Any, if_true: Any, if_false: Any) -> Any: ...


class _CasadiMath:
    """CasADi SX/MX operations (exact derivatives by algorithmic differentiation)."""

    name = "casadi"
    pi = float(np.pi)

    def exp(self, a: Any) -> Any:
        return ca.exp(a)

    def log(self, a: Any) -> Any:
        return ca.log(a)

    def sqrt(self, a: Any) -> Any:
        return ca.sqrt(a)

    def tanh(self, a: Any) -> Any:
        return ca.tanh(a)

    def fabs(self, a: Any) -> Any:
        return ca.fabs(a)

    def fmin(self, a: Any, b: Any) -> Any:
        return ca.fmin(a, b)

    def fmax(self, a: Any, b: Any) -> Any:
        return ca.fmax(a, b)

    def if_else(self, cond: Any, if_true: Any, if_false: Any) -> Any:
        return ca.if_else(cond, if_true, if_false)


class SmoothCasadiMath(_CasadiMath):
    """CasADi operations with fmin/fmax smoothed over a width ``eps`` (an optimizer's view).

    min(a, b) ~ (a + b - sqrt((a - b)^2 + eps^2)) / 2: differentiable everywhere and within
    eps/2 of the exact value, so Newton-type solvers do not stall on switching branches.
    """

    def __init__(self, eps: float) -> None:
        if not eps > 0:
            raise ValueError(f"smoothing width must be > 0, got {eps}")
        self.eps = float(eps)
        self.name = f"casadi-smooth({eps:g})"

    def fmin(self, a: Any, b: Any) -> Any:
        return 0.5 * (a + b - ca.sqrt((a - b) ** 2 + self.eps**2))

    def fmax(self, a: Any, b: Any) -> Any:
        return 0.5 * (a + b + ca.sqrt((a - b) ** 2 + self.eps**2))


class OneSidedSmoothCasadiMath(SmoothCasadiMath):
    """CasADi operations with ``fmin``/``fmax`` smoothed on one side only: exact wherever
    the first argument is the result, twice differentiable everywhere (what IPOPT needs).

    ``fmax(a, b) = b + r(a - b)`` and ``fmin(a, b) = b - r(b - a)`` with ``r(d) = d`` for
    d >= 0 and ``eps tanh(d / eps)`` below (monotone; within eps of the exact value, and
    r' and r'' continuous at 0). The symmetric smoothing (:class:`SmoothCasadiMath`) is
    off by eps/2 at the kink, and a model's clamps sit there: ``fmax(A, 0)`` at A = 0
    keeps an uptake of a substrate that is gone, so an optimizer predicts negative
    concentrations and slows down at exactly the states an estimator clipped to zero.
    Models write the usual branch first (``fmax(S, 0)``, ``fmin(qS, qS_crit)``), so the
    smoothed model is exact on it."""

    def __init__(self, eps: float) -> None:
        super().__init__(eps)
        self.name = f"casadi-one-sided({eps:g})"

    def _r(self, d: Any) -> Any:
        return ca.if_else(d >= 0, d, self.eps * ca.tanh(d / self.eps))

    def fmax(self, a: Any, b: Any) -> Any:
        return b + self._r(a - b)

    def fmin(self, a: Any, b: Any) -> Any:
        return b - self._r(b - a)


def smooth_casadi_math(eps: float, kind: str = "one-sided") -> SmoothCasadiMath:
    """The smoothed CasADi namespace of width ``eps`` of ``kind`` ``one-sided`` (exact on
    the first argument's branch) or ``symmetric`` (within eps/2 everywhere)."""
    if kind == "one-sided":
        return OneSidedSmoothCasadiMath(eps)
    if kind == "symmetric":
        return SmoothCasadiMath(eps)
    raise ValueError(f"smoothing kind must be 'one-sided' or 'symmetric', got {kind!r}")


def _jnp() -> Any:
    """jax.numpy, imported when a model is first traced in JAX (models._jax sets float64)."""
    import jax.numpy as jnp

    import models._jax  # noqa: F401 (enables float64 before any JAX array exists)

    return jnp


class _JaxMath:
    """jax.numpy operations (traceable under jit, vmap and jacfwd)."""

    name = "jax"
    pi = float(np.pi)

    def exp(self, a: Any) -> Any:
        return _jnp().exp(a)

    def log(self, a: Any) -> Any:
        return _jnp().log(a)

    def sqrt(self, a: Any) -> Any:
        return _jnp().sqrt(a)

    def tanh(self, a: Any) -> Any:
        return _jnp().tanh(a)

    def fabs(self, a: Any) -> Any:
        return _jnp().abs(a)

    def fmin(self, a: Any, b: Any) -> Any:
        return _jnp().minimum(a, b)

    def fmax(self, a: Any, b: Any) -> Any:
        return _jnp().maximum(a, b)

    def if_else(self, cond: Any, if_true: Any, if_false: Any) -> Any:
        return _jnp().where(cond, if_true, if_false)


class _NumpyMath:
    """NumPy operations, used to validate a model at its nominal point."""

    name = "numpy"
    pi = float(np.pi)

    def exp(self, a: Any) -> Any:
        return np.exp(a)

    def log(self, a: Any) -> Any:
        return np.log(a)

    def sqrt(self, a: Any) -> Any:
        return np.sqrt(a)

    def tanh(self, a: Any) -> Any:
        return np.tanh(a)

    def fabs(self, a: Any) -> Any:
        return np.abs(a)

    def fmin(self, a: Any, b: Any) -> Any:
        return np.minimum(a, b)

    def fmax(self, a: Any, b: Any) -> Any:
        return np.maximum(a, b)

    def if_else(self, cond: Any, if_true: Any, if_false: Any) -> Any:
        return np.where(cond, if_true, if_false)


CASADI: MathNamespace = _CasadiMath()
JAX: MathNamespace = _JaxMath()
NUMPY: MathNamespace = _NumpyMath()
