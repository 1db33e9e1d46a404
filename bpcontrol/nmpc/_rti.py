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
anything. No line search: a damped step would leave the linearized dynamics unsatisfied and
the error would build up from period to period (CasADi's ``sqpmethod`` with ``max_iter=1``
does exactly that).

The linearization exploits the OCP's structure (:func:`structured_linearization`): one
small stage function mapped over the intervals plus the rest of the NLP, exact to
rounding. With ``jit`` it is compiled to machine code once per problem and machine: the
generated C is built with ``$CC`` (default ``cc``) at ``-O1`` and cached as a shared
library under ``$BPCONTROL_JIT_CACHE`` (default ``~/.cache/bpcontrol/jit``,
:mod:`models._jit`), keyed by a hash of the generated C; the build takes one to a few
seconds (the whole-horizon expression it replaces took a minute and ran slower, its 1.8 MB
of straight-line code thrashing the caches). The QP is condensed to the moves by default
(:mod:`bpcontrol.nmpc._condensing`), or handed sparse to a CasADi conic solver.

The QP solver's word is not taken for it: the step must satisfy the QP's bounds and
linear constraints (CasADi's ``qrqp`` reports success on points that violate them by
orders of magnitude once state bounds become active, casadi/casadi#3141). A step that
fails the check is solved again by the fallback solver (``qpoases`` on the sparse QP with
equalities kept active: slower, dependable), and by the first solver cold only when there
is no fallback; only if all fail is the step reported as failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np
from scipy.sparse import coo_matrix

from bpcontrol.nmpc._buffered import BufferedFunction
from bpcontrol.nmpc._condensing import CONDENSED, QP_INPUTS, Condenser
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

    Every CasADi call goes through preallocated NumPy buffers (:class:`BufferedFunction`,
    about 1 us a call against 50-100 us of conversion to and from ``DM``), and the QP
    solvers read the linearization's outputs in place. ``timings``, when a list, gets
    ``(linearize_s, qp_s, qp_calls)`` per call (the benchmarks' split of a step).
    """

    def __init__(
        self,
        ocp: OCP,
        qp_solvers: Sequence[tuple[str, dict[str, Any]]],
        *,
        jit: bool = False,
        feas_tol: float = 1e-6,
    ) -> None:
        self.linearize = structured_linearization(ocp)
        if jit:
            self.linearize = compiled(self.linearize)
        w, g = ocp.nlp["x"], ocp.nlp["g"]
        H_sp, J_sp = self.linearize.sparsity_out("h"), self.linearize.sparsity_out("a")
        structure = {"h": H_sp, "a": J_sp}
        self._lin = BufferedFunction(self.linearize)
        qp_data = dict(zip(self.linearize.name_out(), self._lin.res, strict=True))
        # attempts in order: the first solver warm-started from the last step's active set,
        # then the others cold (the first one cold again only when it is alone: a second
        # cold attempt of the same active-set solver rarely succeeds where the warm one
        # failed, and every attempt adds to the step's worst case)
        self.qps: list[tuple[str, BufferedFunction | Condenser, bool]] = []
        for i, (name, opts) in enumerate(qp_solvers):
            solver: BufferedFunction | Condenser
            if name == CONDENSED:
                lay = ocp.layout
                solver = Condenser(
                    H_sp,
                    J_sp,
                    np.concatenate([lay.U.ravel(), lay.S]),
                    np.flatnonzero(ocp.lbg == ocp.ubg),
                    ocp.lbw,
                    ocp.ubw,
                    **opts,
                )
                solver.bind(qp_data)
            else:
                solver = BufferedFunction(ca.conic(f"nmpc_rti_{name}", name, structure, opts))
                for key in QP_INPUTS:
                    solver.bind_arg(key, qp_data[key])
            if i == 0:
                self.qps.append((name, solver, True))
            if i > 0 or len(qp_solvers) == 1:
                self.qps.append((f"{name} (cold)" if i == 0 else name, solver, False))
        # largest violation of the QP's bounds and linear constraints (relative above 1)
        dw = ca.SX.sym("x", w.shape[0])
        A = ca.SX.sym("a", J_sp)
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
        self._check = BufferedFunction(self.violation)
        for key in ("a", "lbx", "ubx", "lba", "uba"):
            self._check.bind_arg(key, qp_data[key])
        self.feas_tol = feas_tol
        self.timings: list[tuple[float, float, int]] | None = None

    def __call__(
        self,
        w: np.ndarray,
        par: np.ndarray,
        lam_x: np.ndarray,
        lam_g: np.ndarray,
        *,
        bounds: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> RTIResult:
        """One iteration from ``w`` (scaled variables) with ``bounds`` (lbw, ubw) in place
        of the OCP's variable bounds when given (the supervisor's limits on the moves)."""
        t0 = time.perf_counter()
        data = self._lin(w, par, lam_g)
        if bounds is not None:
            np.subtract(bounds[0], w, out=data[3])
            np.subtract(bounds[1], w, out=data[4])
        t_lin = time.perf_counter() - t0
        problems: list[str] = []
        calls = 0
        for i, (name, qp, warm_start) in enumerate(self.qps):
            calls += 1
            if isinstance(qp, Condenser):
                step = qp.solve(lam_x, lam_g) if warm_start else qp.solve()
                x, lam_a, lam_xs = step.dw, step.lam_a, step.lam_x
                ok, why = step.success, step.status
            else:
                if warm_start:
                    qp.set_arg("lam_x0", _active(lam_x))
                    qp.set_arg("lam_a0", _active(lam_g))
                else:
                    qp.set_arg("lam_x0", 0.0)
                    qp.set_arg("lam_a0", 0.0)
                qp.set_arg("x0", 0.0)
                x, _, lam_a, lam_xs = qp()
                stats = qp.stats()
                ok, why = bool(stats.get("success", False)), str(stats.get("return_status"))
            if not ok:
                problems.append(f"{name}: {why or 'failed'}")
                continue
            if not all(np.all(np.isfinite(v)) for v in (x, lam_a, lam_xs)):
                problems.append(f"{name}: non-finite solution")
                continue
            viol = float(self._check(x)[0][0])
            if not viol <= self.feas_tol:
                problems.append(f"{name}: point violates the QP's constraints by {viol:.2g}")
                continue
            self._record(t0, t_lin, calls)
            return RTIResult(
                w=w + x,
                lam_x=lam_xs.copy(),
                lam_g=lam_a.copy(),
                success=True,
                status="; ".join(problems) if i else "solved",
                solver=name,
            )
        self._record(t0, t_lin, calls)
        status = "; ".join(problems) or "no QP solver"
        return RTIResult(w=w, lam_x=lam_x, lam_g=lam_g, success=False, status=status, solver="")

    def _record(self, t0: float, t_lin: float, calls: int) -> None:
        if self.timings is not None:
            self.timings.append((t_lin, time.perf_counter() - t0 - t_lin, calls))


def structured_linearization(ocp: OCP) -> ca.Function:
    """The QP data of the OCP at ``(w, p, lam_g)``: Hessian of the Lagrangian, cost
    gradient, constraint Jacobian and the bound gaps (outputs h, g, a, lbx, ubx, lba,
    uba), built from the OCP's structure (:class:`bpcontrol.nmpc._ocp.StageStructure`).

    The stages (one per interval) are linearized by one small function mapped over the
    horizon: outputs, Jacobian in the local variables and the Hessian of the multiplier-
    weighted outputs. The rest of the NLP (cost, bounds, rate limits, soft bounds and the
    stage outputs' places in the constraints) is differentiated as one SX expression with
    the stage outputs as symbols, where they enter linearly. The two are added, each stage
    block scattered to its variables, which gives the exact Hessian and Jacobian of the
    whole NLP (to rounding) in a fraction of the code of differentiating the whole horizon
    at once (200,000 instructions for do-mpc's batch reactor with RK4): the JIT compiles it
    in seconds, and the compiled code fits the caches.
    """
    st = ocp.stages
    w_sx, par_sx = ocp.nlp["x"], ocp.nlp["p"]
    n_w, n_g = int(w_sx.shape[0]), int(st.g_lifted.shape[0])
    n_st, n_z = st.z_idx.shape
    n_o = int(st.o_sym.shape[0])
    o_sx = ca.vec(st.o_sym)
    lam_sx = ca.SX.sym("lam_g", n_g)
    H_l, _ = ca.hessian(st.f_lifted + ca.dot(lam_sx, st.g_lifted), w_sx)
    lifted = ca.Function(
        "nmpc_lifted",
        [w_sx, par_sx, lam_sx, o_sx],
        [H_l, ca.gradient(st.f_lifted, w_sx), ca.jacobian(st.g_lifted, w_sx), st.g_lifted],
        {"cse": True},
    )
    G_o = ca.DM(ca.evalf(ca.jacobian(st.g_lifted, o_sx)))  # constant (checked when built)

    z_s = ca.SX.sym("z", st.fn.size1_in(0))
    q_s = ca.SX.sym("q", st.fn.size1_in(1))
    mu_s = ca.SX.sym("mu", n_o)
    o_s = st.fn(z_s, q_s)
    stage_lin = ca.Function(
        "nmpc_stage_lin",
        [z_s, q_s, mu_s],
        [o_s, ca.densify(ca.jacobian(o_s, z_s)), ca.densify(ca.hessian(ca.dot(mu_s, o_s), z_s)[0])],
        {"cse": True},
    ).map(n_st)

    w = ca.MX.sym("w", n_w)
    par = ca.MX.sym("p", int(par_sx.shape[0]))
    lam = ca.MX.sym("lam_g", n_g)
    scale = ca.repmat(ca.DM(st.z_scale), 1, n_st)
    Z = ca.reshape(w[st.z_idx.ravel().tolist()], n_z, n_st) * scale
    MU = ca.reshape(ca.mtimes(G_o.T, lam), n_o, n_st)
    outs, JO, HO = stage_lin(Z, st.q_fn(par), MU)
    H_lift, grad, J_w, g = lifted(w, par, lam, ca.vec(outs))

    # scatter the stage blocks: d o_k / d w and the stage Hessians in w (duplicates add)
    k = np.arange(n_st)[:, None, None]
    r = np.arange(n_o)[None, :, None]
    c = np.arange(n_z)[None, None, :]
    rows = np.broadcast_to(k * n_o + r, (n_st, n_o, n_z))
    cols = np.broadcast_to(st.z_idx[:, None, :], (n_st, n_o, n_z))
    src = np.broadcast_to((k * n_z + c) * n_o + r, (n_st, n_o, n_z))  # column-major in JO
    fac = np.broadcast_to(st.z_scale[None, None, :], (n_st, n_o, n_z))
    dOdw = _scatter(JO, n_o * n_st, n_w, rows, cols, src, fac)
    i = np.arange(n_z)[None, :, None]
    rows = np.broadcast_to(st.z_idx[:, :, None], (n_st, n_z, n_z))
    cols = np.broadcast_to(st.z_idx[:, None, :], (n_st, n_z, n_z))
    src = np.broadcast_to((k * n_z + c) * n_z + i, (n_st, n_z, n_z))
    fac = st.z_scale[None, :, None] * st.z_scale[None, None, :] * np.ones((n_st, 1, 1))
    H = H_lift + _scatter(HO, n_w, n_w, rows, cols, src, fac)
    J = J_w + ca.mtimes(G_o, dOdw)
    lbw, ubw, lbg, ubg = (ca.DM(v) for v in (ocp.lbw, ocp.ubw, ocp.lbg, ocp.ubg))
    return ca.Function(
        "nmpc_rti_qp",
        [w, par, lam],
        [H, grad, J, lbw - w, ubw - w, lbg - g, ubg - g],
        ["w", "p", "lam_g"],
        ["h", "g", "a", "lbx", "ubx", "lba", "uba"],
    )


def _scatter(
    blocks: Any,
    n_rows: int,
    n_cols: int,
    rows: np.ndarray,
    cols: np.ndarray,
    src: np.ndarray,
    factor: np.ndarray,
) -> Any:
    """A sparse (n_rows x n_cols) MX whose entry (rows[i], cols[i]) is the sum of
    ``factor[i] * vec(blocks)[src[i]]`` over every i naming it (column-major ``vec``)."""
    rows, cols = rows.ravel(), cols.ravel()
    src, factor = src.ravel(), factor.ravel()
    keys = cols * n_rows + rows  # column-major position: the order of CasADi's nonzeros
    uniq, slot = np.unique(keys, return_inverse=True)
    sp = ca.Sparsity.triplet(n_rows, n_cols, (uniq % n_rows).tolist(), (uniq // n_rows).tolist())
    n_src = int(blocks.numel())
    M_csc = coo_matrix((factor, (slot, src)), shape=(uniq.size, n_src)).tocsc()  # sums
    M = ca.DM(
        ca.Sparsity(uniq.size, n_src, M_csc.indptr.tolist(), M_csc.indices.tolist()),
        M_csc.data,
    )
    return ca.MX(sp, ca.mtimes(M, ca.vec(ca.densify(blocks))))


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
