"""CasADi twin of a model: SX functions with exact derivatives, and integrators."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import casadi as ca
import numpy as np

from models._math import CASADI, MathNamespace
from models._spec import Model


class CasadiModel:
    """A :class:`Model` traced once to CasADi SX.

    ``f(x, u, p) -> dx/dt`` (per hour) and ``h(x, u, p) -> y`` are ``casadi.Function``s
    that the optimizer embeds; ``jac_f`` gives (df/dx, df/du, df/dp) exactly.
    """

    def __init__(self, model: Model, math: MathNamespace = CASADI) -> None:
        self.model = model
        self.math = math
        self.x = ca.SX.sym("x", model.nx)
        self.u = ca.SX.sym("u", model.nu)
        self.p = ca.SX.sym("p", model.n_p)
        dx, y = model.evaluate(
            math,
            [self.x[i] for i in range(model.nx)],
            [self.u[i] for i in range(model.nu)],
            [self.p[i] for i in range(model.n_p)],
        )
        self.xdot = ca.vertcat(*dx)
        self.y = ca.vertcat(*y) if y else ca.SX(0, 1)
        args = [self.x, self.u, self.p]
        self.f = ca.Function(f"{model.name}_f", args, [self.xdot], ["x", "u", "p"], ["xdot"])
        self.h = ca.Function(f"{model.name}_h", args, [self.y], ["x", "u", "p"], ["y"])

    @cached_property
    def jac_f(self) -> ca.Function:
        """(x, u, p) -> (df/dx, df/du, df/dp), exact by algorithmic differentiation."""
        return ca.Function(
            f"{self.model.name}_jac_f",
            [self.x, self.u, self.p],
            [
                ca.jacobian(self.xdot, self.x),
                ca.jacobian(self.xdot, self.u),
                ca.jacobian(self.xdot, self.p),
            ],
            ["x", "u", "p"],
            ["dfdx", "dfdu", "dfdp"],
        )

    @cached_property
    def jac_h(self) -> ca.Function:
        """(x, u, p) -> dh/dx."""
        return ca.Function(
            f"{self.model.name}_jac_h",
            [self.x, self.u, self.p],
            [ca.jacobian(self.y, self.x)],
            ["x", "u", "p"],
            ["dhdx"],
        )

    def integrator(
        self,
        dt_h: float,
        *,
        method: str = "cvodes",
        abstol: float = 1e-10,
        reltol: float = 1e-10,
        options: dict[str, Any] | None = None,
    ) -> ca.Function:
        """Integrator over one interval of ``dt_h`` hours with inputs held constant.

        Returns a Function ``(x0, u, p) -> xf``. ``method`` is any CasADi integrator
        plugin (``cvodes`` for stiff fed-batch dynamics, ``idas``, ``rk``, ``collocation``).
        """
        if not dt_h > 0:
            raise ValueError(f"integration interval must be positive, got {dt_h} h")
        up = ca.vertcat(self.u, self.p)
        dae = {"x": self.x, "p": up, "ode": self.xdot}
        opts: dict[str, Any] = {}
        if method in ("cvodes", "idas"):
            opts = {"abstol": abstol, "reltol": reltol, "max_num_steps": 100000}
        opts.update(options or {})
        integ = ca.integrator(f"{self.model.name}_{method}", method, dae, 0.0, float(dt_h), opts)
        x0, u, p = (
            ca.MX.sym("x0", self.model.nx),
            ca.MX.sym("u", self.model.nu),
            ca.MX.sym("p", self.model.n_p),
        )
        xf = integ(x0=x0, p=ca.vertcat(u, p))["xf"]
        return ca.Function(f"{self.model.name}_step", [x0, u, p], [xf], ["x0", "u", "p"], ["xf"])

    def rhs(self, x: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Numeric right-hand side (convenience for tests and plain use)."""
        return np.asarray(self.f(x, u, p)).reshape(-1)

    def outputs(self, x: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Numeric outputs."""
        return np.asarray(self.h(x, u, p)).reshape(-1)
