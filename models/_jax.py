"""JAX twin of a model: jitted float64 functions, Jacobians and batched (vmap) forms."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from models._math import JAX  # noqa: E402
from models._spec import Model  # noqa: E402

Array = jax.Array


class JaxModel:
    """A :class:`Model` as pure, jitted JAX functions in float64.

    ``f(x, u, p) -> dx/dt`` (per hour), ``h(x, u, p) -> y``; ``jac_f`` returns
    (df/dx, df/du, df/dp) by forward-mode AD; ``*_batch`` variants map over a leading
    axis of reactors. ``step(x, u, p, dt_h, n_sub)`` is a fixed-step RK4 discretisation.
    """

    def __init__(self, model: Model) -> None:
        self.model = model

    def _f(self, x: Array, u: Array, p: Array) -> Array:
        dx, _ = self.model.evaluate(JAX, list(x), list(u), list(p))
        return jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in dx])

    def _h(self, x: Array, u: Array, p: Array) -> Array:
        _, y = self.model.evaluate(JAX, list(x), list(u), list(p))
        if not y:
            return jnp.zeros((0,), dtype=jnp.float64)
        return jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in y])

    @cached_property
    def f(self) -> Callable[[Array, Array, Array], Array]:
        return jax.jit(self._f)

    @cached_property
    def h(self) -> Callable[[Array, Array, Array], Array]:
        return jax.jit(self._h)

    @cached_property
    def jac_f(self) -> Callable[[Array, Array, Array], tuple[Array, Array, Array]]:
        """(x, u, p) -> (df/dx, df/du, df/dp)."""
        return jax.jit(jax.jacfwd(self._f, argnums=(0, 1, 2)))

    @cached_property
    def jac_h(self) -> Callable[[Array, Array, Array], Array]:
        """(x, u, p) -> dh/dx."""
        return jax.jit(jax.jacfwd(self._h, argnums=0))

    def _f_and_jac(self, x: Array, u: Array, p: Array) -> tuple[Array, tuple[Array, ...]]:
        return self._f(x, u, p), jax.jacfwd(self._f, argnums=(0, 1, 2))(x, u, p)

    @cached_property
    def f_and_jac(self) -> Callable[[Array, Array, Array], tuple[Array, tuple[Array, ...]]]:
        """(x, u, p) -> (f, (df/dx, df/du, df/dp)) in one jitted call."""
        return jax.jit(self._f_and_jac)

    @cached_property
    def f_and_jac_batch(self) -> Callable[[Array, Array, Array], Any]:
        """Batched ``f_and_jac`` over a leading reactor axis of x, u and p."""
        return jax.jit(jax.vmap(self._f_and_jac))

    @cached_property
    def f_batch(self) -> Callable[[Array, Array, Array], Array]:
        return jax.jit(jax.vmap(self._f))

    @cached_property
    def h_batch(self) -> Callable[[Array, Array, Array], Array]:
        return jax.jit(jax.vmap(self._h))

    def rk4(self, x: Array, u: Array, p: Array, dt_h: float, n_sub: int = 1) -> Array:
        """Fixed-step RK4 over ``dt_h`` hours in ``n_sub`` sub-steps (traceable, not jitted)."""
        h = dt_h / n_sub

        def one(_: int, xk: Array) -> Array:
            k1 = self._f(xk, u, p)
            k2 = self._f(xk + 0.5 * h * k1, u, p)
            k3 = self._f(xk + 0.5 * h * k2, u, p)
            k4 = self._f(xk + h * k3, u, p)
            return xk + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

        return jax.lax.fori_loop(0, n_sub, one, x)
