"""Real-time iteration: one full-step SQP iteration per control period (Diehl et al. 2005).

Each step linearizes the NLP once at the shifted previous solution and solves the QP

    min  1/2 dw' H dw + grad_f' dw
    s.t. lbg - g <= J dw <= ubg - g,   lbw - w <= dw <= ubw - w

with H the exact Hessian of the Lagrangian at the previous multipliers, then takes the
full step w + dw and the QP's multipliers. Everything that changes between steps but is
no decision (initial state, last input, model parameters, interval lengths and the
scheduled inputs per interval, see :mod:`bpcontrol.nmpc._ocp`) is the parameter vector
``p`` of the linearization, filled by the controller each step: a new estimate, a
shrinking horizon or a recipe step coming into the horizon never rebuilds (or recompiles)
anything. No line search: a damped step would leave the
linearized dynamics unsatisfied and the error would build up from period to period
(CasADi's ``sqpmethod`` with ``max_iter=1`` does exactly that). All derivatives come from
one CasADi function (shared subexpressions). With ``jit`` it is compiled to machine code
once per problem and machine: the generated C is built with ``$CC`` (default ``cc``) at
``-O1`` (as fast as ``-O2`` here at half the compile time) and cached as a shared library
under ``$BPCONTROL_JIT_CACHE`` (default ``~/.cache/bpcontrol/jit``, :mod:`models._jit`),
keyed by a hash of the generated C, so only the first controller built for a configuration waits
for the compiler (a minute or more for a 20-interval RK4 problem).

The QP solver's word is not taken for it: the step must satisfy the QP's bounds and
linear constraints (CasADi's ``qrqp`` reports success on points that violate them by
orders of magnitude once state bounds become active, casadi/casadi#3141). A step that
fails the check is solved again, first by the same solver without the warm start, then by
the fallback solver (``qpoases`` with equalities kept active: slower, dependable); only if
all fail is the step reported as failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from bpcontrol.nmpc._ocp import OCP
from models import compile_functions


@dataclass(frozen=True)
class RTIResult:
    """A step's primal point and multipliers, and whether a QP solver delivered it."""

    w: np.ndarray
    lam_x: np.ndarray
    lam_g: np.ndarray
    success: bool
    status: str
    solver: str  # the QP solver whose step was taken (or last tried)


class RealTimeIteration:
    """The linearization function, QP solver(s) and step check of one OCP, built once.

    Data stays in CasADi between the calls of a step (linearization -> QP -> check), so
    a step converts only w, p and the multipliers from NumPy and the new point back.
    """

    def __init__(
        self,
        ocp: OCP,
        qp_solvers: Sequence[tuple[str, dict[str, Any]]],
        *,
        jit: bool = False,
        feas_tol: float = 1e-6,
    ) -> None:
        w, par, f, g = (ocp.nlp[k] for k in ("x", "p", "f", "g"))
        lam_g = ca.SX.sym("lam_g", g.shape[0])
        H, _ = ca.hessian(f + ca.dot(lam_g, g), w)
        J = ca.jacobian(g, w)
        lbw, ubw, lbg, ubg = (ca.DM(v) for v in (ocp.lbw, ocp.ubw, ocp.lbg, ocp.ubg))
        self.linearize = ca.Function(
            "nmpc_rti_qp",
            [w, par, lam_g],
            [H, ca.gradient(f, w), J, lbw - w, ubw - w, lbg - g, ubg - g],
            ["w", "p", "lam_g"],
            ["h", "g", "a", "lbx", "ubx", "lba", "uba"],
        )
        if jit:
            self.linearize = compiled(self.linearize)
        structure = {"h": H.sparsity(), "a": J.sparsity()}
        solvers = [
            (name, ca.conic(f"nmpc_rti_{name}", name, structure, opts)) for name, opts in qp_solvers
        ]
        # attempts in order: the first solver warm-started from the last step's active set,
        # the same cold (a stale active set is what usually trips it), then the others cold
        self.qps: list[tuple[str, Any, bool]] = []
        for i, (name, qp) in enumerate(solvers):
            if i == 0:
                self.qps.append((name, qp, True))
            self.qps.append((f"{name} (cold)" if i == 0 else name, qp, False))
        # largest violation of the QP's bounds and linear constraints (relative above 1)
        dw = ca.SX.sym("x", w.shape[0])
        A = ca.SX.sym("a", J.sparsity())
        lbx, ubx = ca.SX.sym("lbx", w.shape[0]), ca.SX.sym("ubx", w.shape[0])
        lba, uba = ca.SX.sym("lba", g.shape[0]), ca.SX.sym("uba", g.shape[0])
        Adw = ca.mtimes(A, dw)
        viol = ca.vertcat(
            ca.fmax(lbx - dw, dw - ubx) / ca.fmax(1, ca.fabs(dw)),
            ca.fmax(lba - Adw, Adw - uba) / ca.fmax(1, ca.fabs(Adw)),
            0,
        )
        self.violation = ca.Function(
            "nmpc_rti_check",
            [dw, A, lbx, ubx, lba, uba],
            [ca.mmax(viol)],
            ["x", "a", "lbx", "ubx", "lba", "uba"],
            ["violation"],
        )
        self.feas_tol = feas_tol

    def __call__(
        self, w: np.ndarray, par: np.ndarray, lam_x: np.ndarray, lam_g: np.ndarray
    ) -> RTIResult:
        qp_data = self.linearize.call({"w": w, "p": par, "lam_g": lam_g})
        check_data = {k: qp_data[k] for k in ("a", "lbx", "ubx", "lba", "uba")}
        problems: list[str] = []
        for i, (name, qp, warm_start) in enumerate(self.qps):
            warm = {"lam_x0": _active(lam_x), "lam_a0": _active(lam_g)} if warm_start else {}
            sol = qp.call({**qp_data, **warm})
            stats = qp.stats()
            if not bool(stats.get("success", False)):
                problems.append(f"{name}: {stats.get('return_status', 'failed')}")
                continue
            dw = sol["x"].full().ravel()
            new_lam_x, new_lam_g = sol["lam_x"].full().ravel(), sol["lam_a"].full().ravel()
            if not all(np.all(np.isfinite(v)) for v in (dw, new_lam_x, new_lam_g)):
                problems.append(f"{name}: non-finite solution")
                continue
            viol = float(self.violation.call({"x": sol["x"], **check_data})["violation"])
            if not viol <= self.feas_tol:
                problems.append(f"{name}: point violates the QP's constraints by {viol:.2g}")
                continue
            return RTIResult(
                w=w + dw,
                lam_x=new_lam_x,
                lam_g=new_lam_g,
                success=True,
                status="; ".join(problems) if i else "solved",
                solver=name,
            )
        status = "; ".join(problems) or "no QP solver"
        return RTIResult(w=w, lam_x=lam_x, lam_g=lam_g, success=False, status=status, solver="")


def _active(lam: np.ndarray, rel_tol: float = 1e-6) -> np.ndarray:
    """Multipliers as an active-set guess: interior-point ones are never exactly zero."""
    tiny = np.abs(lam) <= rel_tol * max(1.0, float(np.max(np.abs(lam), initial=0.0)))
    return np.where(tiny, 0.0, lam)


def compiled(fn: ca.Function) -> ca.Function:
    """``fn`` as machine code (compiled once, cached on disk, see :mod:`models._jit`).

    Falls back to ``fn`` itself (CasADi's virtual machine), with a warning, where no C
    compiler works.
    """
    lib, _ = compile_functions([fn], fn.name(), what=f"jit {fn.name()}")
    return fn if lib is None else ca.external(fn.name(), str(lib))
