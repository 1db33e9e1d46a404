"""Stiff single-shooting simulation with exact sensitivities: Radau IIA steps solved by Newton.

A batch is integrated interval by interval (piecewise-constant inputs) with ``n_fe`` Radau
IIA elements of :data:`~services.fitting._fit.RADAU_DEGREE` stages per interval (L-stable,
order 5 at the element ends: a DO that settles in seconds needs no small steps). Each
element's stage equations are solved by Newton from the element's start state; an element
whose Newton iteration does not converge (a kink of the model's min/max, a feed step) is
halved, down to :data:`MAX_HALVINGS` times, as an adaptive integrator shortens a failed
step. The sensitivities of the states to the estimates follow from the converged stage
equations by the implicit function theorem (one linear solve per element with the Newton
matrix already at hand), exact for the discretised trajectory, never finite differences.

Why not CVODES: its forward sensitivities restart on every interval and cost seconds per
Jacobian on the E. coli model, and fail at trial points; why not direct collocation: the
stage states as NLP variables give IPOPT a KKT system that MUMPS factors slowly, and the
kinks make the stage equations fail to converge at the start point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_HALVINGS = 12
"""An element is halved at most this many times (to 1/4096 of its length) before the
simulation is declared failed."""
NEWTON_MAX_ITER = 10
NEWTON_TOL = 1e-10
"""Newton stops when the step is below this in units of the state scales."""


class SimulationError(RuntimeError):
    """Newton did not converge on an element even after :data:`MAX_HALVINGS` halvings."""


@dataclass(frozen=True)
class Trajectory:
    """States at the nodes of a batch grid and their sensitivities to the estimates."""

    X: np.ndarray
    """(nodes, nx) states."""
    S: np.ndarray | None
    """(nodes, nx, n_est) sensitivities dX/dtheta, or None when not asked."""
    elements: int
    """Elements integrated (halvings included)."""


class RadauShooting:
    """Simulator of one model (see the module docstring); built once, used for every batch."""

    def __init__(self, cas: Any, nx: int, nu: int, n_p: int, degree: int, C: np.ndarray):
        import casadi as ca

        d = degree
        x, u, p, h = ca.SX.sym("x", nx), ca.SX.sym("u", nu), ca.SX.sym("p", n_p), ca.SX.sym("h")
        k = ca.SX.sym("K", nx * d)
        pts = [x] + [k[j * nx : (j + 1) * nx] for j in range(d)]
        res = []
        for j in range(d):
            slope = sum(float(C[r, j]) * pts[r] for r in range(d + 1))
            res.append(slope - h * cas.f(pts[j + 1], u, p))
        R = ca.vertcat(*res)
        self._newton = ca.Function("radau_newton", [k, x, u, p, h], [R, ca.jacobian(R, k)])
        self._sens = ca.Function(
            "radau_sens", [k, x, u, p, h], [ca.jacobian(R, k), ca.jacobian(R, x), ca.jacobian(R, p)]
        )
        self.nx, self.d = nx, d

    def _element(
        self, x: np.ndarray, u: np.ndarray, p: np.ndarray, h: float, scale: np.ndarray
    ) -> np.ndarray | None:
        """Converged stage states of one element, or None when Newton fails."""
        K = np.tile(x, self.d)
        ks = np.tile(scale, self.d)
        for _ in range(NEWTON_MAX_ITER):
            R, RK = self._newton(K, x, u, p, h)
            R, RK = np.asarray(R).reshape(-1), np.asarray(RK)
            try:
                dK = np.linalg.solve(RK, -R)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(dK)):
                return None
            K = K + dK
            if float(np.max(np.abs(dK) / ks)) <= NEWTON_TOL:
                return K
        return None

    def simulate(
        self,
        t_h: np.ndarray,
        u: np.ndarray,
        x0: np.ndarray,
        p: np.ndarray,
        *,
        n_fe: int,
        scale: np.ndarray,
        dx0: np.ndarray | None = None,
        dp: np.ndarray | None = None,
    ) -> Trajectory:
        """States at the nodes ``t_h`` (h) from ``x0`` under inputs ``u[k]`` on interval k.

        With ``dx0`` (nx, n_est) and ``dp`` (n_p, n_est), the derivatives of x0 and p with
        respect to the estimates, the node sensitivities are propagated too.

        Raises:
            SimulationError: an element that does not converge after the halvings.
        """
        nx, d = self.nx, self.d
        n_nodes = t_h.size
        X = np.empty((n_nodes, nx))
        X[0] = x0
        want = dx0 is not None and dp is not None
        S = np.empty((n_nodes, nx, dx0.shape[1])) if want and dx0 is not None else None
        if S is not None and dx0 is not None:
            S[0] = dx0
        elements = 0
        for k in range(n_nodes - 1):
            x = X[k]
            s = S[k] if S is not None else None
            todo = [(t_h[k + 1] - t_h[k]) / n_fe] * n_fe
            halvings = 0
            while todo:
                h = todo.pop()
                K = self._element(x, u[k], p, h, scale)
                if K is None:
                    halvings += 1
                    if halvings > MAX_HALVINGS * n_fe:
                        raise SimulationError(
                            f"Radau IIA: Newton did not converge at t = {t_h[k]:g} h "
                            f"after {MAX_HALVINGS} halvings"
                        )
                    todo += [h / 2.0, h / 2.0]
                    continue
                elements += 1
                if s is not None and dp is not None:
                    RK, Rx, Rp = (np.asarray(a) for a in self._sens(K, x, u[k], p, h))
                    dK = np.linalg.solve(RK, -(Rx @ s + Rp @ dp))
                    s = dK[(d - 1) * nx :]
                x = K[(d - 1) * nx :]
            X[k + 1] = x
            if S is not None and s is not None:
                S[k + 1] = s
        return Trajectory(X, S, elements)


@dataclass(frozen=True)
class ShootingBatch:
    """One batch as the shooting fit sees it: its grid, and how x0 and p follow from the
    estimates (``x0(theta) = x0_base + dx0 @ theta``, ``p(theta) = p_base + dp @ theta``,
    both linear: each estimate is one parameter or one initial state)."""

    t_h: np.ndarray
    u: np.ndarray
    x0_base: np.ndarray
    dx0: np.ndarray
    p_base: np.ndarray
    dp: np.ndarray
    node: np.ndarray
    output: np.ndarray
    value: np.ndarray
    std: np.ndarray
    u_meas: np.ndarray
    scale: np.ndarray


@dataclass
class ShootingOutcome:
    """Where a Levenberg-Marquardt run ended and what it cost."""

    theta: np.ndarray
    residuals: np.ndarray
    jacobian: np.ndarray
    converged: bool
    status: str
    iterations: int
    evaluations: dict[str, int]
    t_sim_s: float
    t_sens_s: float
    t_opt_s: float


class ShootingProblem:
    """Weighted residuals of every batch and their exact Jacobian by the estimates."""

    def __init__(self, cas: Any, sim: RadauShooting, batches: list[ShootingBatch], n_fe: int):
        import casadi as ca

        x, u = ca.SX.sym("x", sim.nx), ca.SX.sym("u", cas.u.size1())
        p = ca.SX.sym("p", cas.p.size1())
        y = cas.h(x, u, p)
        self._h = ca.Function("h_jac", [x, u, p], [y, ca.jacobian(y, x), ca.jacobian(y, p)])
        self.sim, self.batches, self.n_fe = sim, batches, n_fe
        self.t_sim = self.t_sens = 0.0
        self.n_sim = self.n_sens = 0

    def _batch(self, b: ShootingBatch, theta: np.ndarray, sens: bool) -> tuple[Any, Any]:
        x0 = b.x0_base + b.dx0 @ theta
        p = b.p_base + b.dp @ theta
        tr = self.sim.simulate(
            b.t_h,
            b.u,
            x0,
            p,
            n_fe=self.n_fe,
            scale=b.scale,
            dx0=b.dx0 if sens else None,
            dp=b.dp if sens else None,
        )
        n = b.node.size
        fn = self._h.map(n)
        Y, DX, DP = fn(tr.X[b.node].T, b.u_meas.T, np.tile(p[:, None], (1, n)))
        Y = np.asarray(Y)
        rows = np.arange(n)
        r = (Y[b.output, rows] - b.value) / b.std
        if not sens or tr.S is None:
            return r, None
        ny, nx = Y.shape[0], self.sim.nx
        DX = np.asarray(DX).reshape(ny, n, nx)  # map block i: columns i nx..
        DP = np.asarray(DP).reshape(ny, n, p.size)
        dy_dx = DX[b.output, rows]  # (n, nx)
        dy_dp = DP[b.output, rows]  # (n, n_p)
        S = tr.S[b.node]  # (n, nx, n_est)
        J = np.einsum("ij,ijk->ik", dy_dx, S) + dy_dp @ b.dp
        return r, J / b.std[:, None]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return np.concatenate([self._batch(b, theta, False)[0] for b in self.batches])
        finally:
            self.t_sim += time.perf_counter() - t0
            self.n_sim += 1

    def jacobian(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        try:
            parts = [self._batch(b, theta, True) for b in self.batches]
        finally:
            self.t_sens += time.perf_counter() - t0
            self.n_sens += 1
        return np.concatenate([r for r, _ in parts]), np.vstack([J for _, J in parts])


FAILED_RESIDUAL = 1e6
"""Residual given for every reading where the simulation fails at a trial point: the
trust-region step is rejected and shortened, as for any step that raises the cost."""


def levenberg_marquardt(
    problem: ShootingProblem,
    theta0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    scale: np.ndarray,
    *,
    max_nfev: int,
    tol: float,
) -> ShootingOutcome:
    """Bounded trust-region least squares (SciPy ``trf``) on the estimates scaled by
    ``scale``, with the exact Jacobian; the outcome in physical units."""
    from scipy.optimize import least_squares

    n_res = sum(b.value.size for b in problem.batches)
    cache: dict[str, Any] = {}

    def fun(z: np.ndarray) -> np.ndarray:
        try:
            return problem.residuals(z * scale)
        except SimulationError:
            return np.full(n_res, FAILED_RESIDUAL)

    def jac(z: np.ndarray) -> np.ndarray:
        _, J = problem.jacobian(z * scale)
        cache["z"] = z.copy()
        return J * scale[None, :]

    t0 = time.perf_counter()
    sol = least_squares(
        fun,
        np.clip(theta0 / scale, lower / scale, upper / scale),
        jac=jac,
        bounds=(lower / scale, upper / scale),
        method="trf",
        x_scale="jac",
        ftol=tol,
        xtol=tol,
        gtol=tol,
        max_nfev=max_nfev,
    )
    wall = time.perf_counter() - t0
    t_sim, t_sens = problem.t_sim, problem.t_sens
    theta = sol.x * scale
    r, J = problem.jacobian(theta)
    converged = bool(sol.status > 0) and bool(np.all(np.abs(r) < FAILED_RESIDUAL))
    return ShootingOutcome(
        theta=theta,
        residuals=r,
        jacobian=J,
        converged=converged,
        status=str(sol.message),
        iterations=int(sol.njev),
        evaluations={"f": int(sol.nfev), "jac": int(sol.njev) + 1},
        t_sim_s=t_sim,
        t_sens_s=problem.t_sens,
        t_opt_s=max(wall - t_sim - t_sens, 0.0),
    )
