"""Condensing: the real-time iteration's sparse QP reduced to the moves and slacks.

The QP of a multiple-shooting OCP has the states as variables, tied by equality rows
(the initial-state row, every interval's dynamics and collocation rows), as many rows as
states, which fix the states given the moves. With ``E`` those rows, ``D`` the states and
``I`` the moves and slacks, ``A_ED dw_D + A_EI dw_I = b_E`` gives ``dw_D = T dw_I + t0``
(one sparse QR of the block-banded ``A_ED``). Substituted, ``dw = Z dw_I + z0`` and the QP
becomes a dense one in ``dw_I`` alone (20 variables for do-mpc's batch reactor, against
104):

    min 1/2 dw_I' Z'HZ dw_I + (Z'(g + H z0))' dw_I
    s.t. the bounds of dw_I; the other rows and the states' finite bounds as rows in dw_I

solved by a dense active-set solver (qpOASES), warm-started from the last step's active
set. It has the same solution as the sparse QP wherever that has one (the reduced Hessian
positive definite); where it is not, the dense solver reports failure and the real-time
iteration falls back to its sparse solvers. The multipliers of the eliminated rows come
back from the stationarity in the states, ``A_ED' lam_E = -(H_D dw + g_D + A_RD' lam_R +
lam_x_D)``, so the next linearization has every multiplier, as after a sparse solve.

All of it runs in CasADi (three functions evaluated in place on NumPy buffers: condense,
the dense QP, expand): no LAPACK call from Python, whose threads are slow on a busy
machine (an 84 x 84 solve took 16 ms with OpenBLAS threads at a load of 3, 0.15 ms without).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

from bpcontrol.nmpc._buffered import BufferedFunction

QP_INPUTS = ("h", "g", "a", "lbx", "ubx", "lba", "uba")
CONDENSED = "condensed"
"""The name of this QP method among the real-time iteration's QP solvers."""


@dataclass(frozen=True)
class CondensedStep:
    """A condensed QP's solution in the full variables: step and multipliers (views of
    the condenser's buffers: copy what is kept)."""

    dw: np.ndarray
    lam_x: np.ndarray
    lam_a: np.ndarray
    success: bool
    status: str


class Condenser:
    """Condensing of one OCP's QPs (index sets and the CasADi functions built once).

    ``independent``: indices of the variables kept (moves, slacks); ``eq_rows``: the
    constraint rows that fix the others (equalities, as many as eliminated variables, else
    ``ValueError``). ``h_sp``, ``a_sp``: the QP's sparsities; ``lbw``, ``ubw``: the
    variables' bounds (which states have a finite bound, fixed per controller).
    """

    def __init__(
        self,
        h_sp: ca.Sparsity,
        a_sp: ca.Sparsity,
        independent: np.ndarray,
        eq_rows: np.ndarray,
        lbw: np.ndarray,
        ubw: np.ndarray,
        *,
        dense_solver: str = "qpoases",
    ) -> None:
        n_w, n_g = h_sp.size1(), a_sp.size1()
        ind = np.asarray(independent, dtype=int)
        dep = np.setdiff1d(np.arange(n_w), ind)
        eq = np.asarray(eq_rows, dtype=int)
        rest = np.setdiff1d(np.arange(n_g), eq)
        if eq.size != dep.size:
            raise ValueError(f"cannot condense: {eq.size} equality rows for {dep.size} states")
        bounded = np.flatnonzero(np.isfinite(lbw[dep]) | np.isfinite(ubw[dep]))
        self.ind, self.dep, self.eq, self.rest, self.bounded = ind, dep, eq, rest, bounded
        n_i = ind.size

        h = ca.MX.sym("h", h_sp)
        a = ca.MX.sym("a", a_sp)
        g, lbx, ubx = (ca.MX.sym(n, n_w) for n in ("g", "lbx", "ubx"))
        lba, uba = (ca.MX.sym(n, n_g) for n in ("lba", "uba"))
        E, D, I, R = (v.tolist() for v in (eq, dep, ind, rest))  # noqa: E741
        A_ED = a[E, D]
        sol = ca.solve(A_ED, ca.horzcat(-ca.densify(a[E, I]), lba[E]), "qr")
        # T is sparse (a move reaches only the later states of its own scenarios): keep
        # only its structural nonzeros, so the products below cost what T holds, about
        # linear in the scenarios of a tree instead of quadratic
        T = ca.project(sol[:, :n_i], _solve_sparsity(a_sp, eq, dep, ind))
        t0 = sol[:, n_i]
        # back to the natural order: rows D from T, rows I the identity
        perm = np.concatenate([dep, ind])
        P = ca.DM(ca.Sparsity.triplet(n_w, n_w, perm.tolist(), list(range(n_w))), 1.0)
        Z = ca.mtimes(P, ca.vertcat(T, ca.DM.eye(n_i)))
        z0 = ca.mtimes(P, ca.vertcat(t0, ca.DM.zeros(n_i)))
        H_r = ca.mtimes(Z.T, ca.mtimes(h, Z))
        H_r = 0.5 * (H_r + H_r.T)
        g_r = ca.mtimes(Z.T, g + ca.mtimes(h, z0))
        A_R = a[R, :]
        B = bounded.tolist()
        A_r = ca.densify(ca.vertcat(ca.mtimes(A_R, Z), T[B, :]))
        off = ca.vertcat(ca.mtimes(A_R, z0), t0[B])
        lb_r = ca.vertcat(lba[R], lbx[D][B]) - off
        ub_r = ca.vertcat(uba[R], ubx[D][B]) - off
        data = [h, g, a, lbx, ubx, lba, uba]
        self._condense = BufferedFunction(
            ca.Function(
                "nmpc_condense",
                data,
                [ca.densify(H_r), g_r, A_r, lb_r, ub_r, lbx[I], ubx[I], ca.densify(Z), z0],
                list(QP_INPUTS),
                ["h_r", "g_r", "a_r", "lba_r", "uba_r", "lbx_r", "ubx_r", "Z", "z0"],
            )
        )
        n_rows = rest.size + bounded.size
        structure = {"h": ca.Sparsity.dense(n_i, n_i), "a": ca.Sparsity.dense(n_rows, n_i)}
        self.solver_name = dense_solver
        self.qp = BufferedFunction(
            ca.conic("nmpc_condensed", dense_solver, structure, _dense_options(dense_solver))
        )
        cond_out = dict(zip(self._condense.fn.name_out(), self._condense.res, strict=True))
        for key in ("h", "g", "a", "lba", "uba", "lbx", "ubx"):
            self.qp.bind_arg(key, cond_out[f"{key}_r"])

        # expansion: the step and every multiplier in the full variables
        x_r, lam_a_r, lam_x_r = (
            ca.MX.sym(n, k) for n, k in (("x", n_i), ("lam_a", n_rows), ("lam_x", n_i))
        )
        Zs, z0s = ca.MX.sym("Z", n_w, n_i), ca.MX.sym("z0", n_w)
        dw = ca.mtimes(Zs, x_r) + z0s
        lam_x = ca.MX(ca.DM.zeros(n_w))
        lam_x[I] = lam_x_r
        dep_bounded = dep[bounded].tolist()
        if dep_bounded:
            lam_x[dep_bounded] = lam_a_r[rest.size :]
        lam_a = ca.MX(ca.DM.zeros(n_g))
        if R:
            lam_a[R] = lam_a_r[: rest.size]
        rhs = -(ca.mtimes(h[D, :], dw) + g[D] + ca.mtimes(a[R, D].T, lam_a[R]) + lam_x[D])
        lam_a[E] = ca.solve(A_ED.T, rhs, "qr")
        self._expand = BufferedFunction(
            ca.Function(
                "nmpc_expand",
                [x_r, lam_a_r, lam_x_r, Zs, z0s, h, g, a],
                [dw, lam_x, lam_a],
                ["x", "lam_a_r", "lam_x_r", "Z", "z0", "h", "g", "a"],
                ["dw", "lam_x", "lam_a"],
            )
        )
        for key in ("Z", "z0"):
            self._expand.bind_arg(key, cond_out[key])
        qp_out = dict(zip(self.qp.fn.name_out(), self.qp.res, strict=True))
        for key, out in (("x", "x"), ("lam_a_r", "lam_a"), ("lam_x_r", "lam_x")):
            self._expand.bind_arg(key, qp_out[out])

    def bind(self, qp_data: dict[str, np.ndarray]) -> None:
        """Read the QP data from these arrays (the linearization's output buffers)."""
        for key in QP_INPUTS:
            self._condense.bind_arg(key, qp_data[key])
        for key in ("h", "g", "a"):
            self._expand.bind_arg(key, qp_data[key])

    def solve(
        self, lam_x0: np.ndarray | None = None, lam_a0: np.ndarray | None = None
    ) -> CondensedStep:
        """Condense, solve and expand the QP in the bound arrays; ``lam_x0``, ``lam_a0``
        (full-size multipliers) warm-start the dense solver's active set."""
        self._condense()
        qp = self.qp
        qp.set_arg("x0", 0.0)
        if lam_x0 is not None and lam_a0 is not None:
            qp.set_arg("lam_x0", lam_x0[self.ind])
            qp.set_arg(
                "lam_a0",
                np.concatenate([lam_a0[self.rest], lam_x0[self.dep[self.bounded]]]),
            )
        else:
            qp.set_arg("lam_x0", 0.0)
            qp.set_arg("lam_a0", 0.0)
        qp()
        stats = qp.stats()
        dw, lam_x, lam_a = self._expand()
        return CondensedStep(
            dw, lam_x, lam_a, bool(stats.get("success", False)), str(stats.get("return_status"))
        )


def _solve_sparsity(
    a_sp: ca.Sparsity, eq: np.ndarray, dep: np.ndarray, ind: np.ndarray
) -> ca.Sparsity:
    """The structural sparsity of ``A_ED^-1 A_EI``: solved once with random values on the
    pattern (a structural nonzero is then nonzero with probability one)."""
    colind, row = a_sp.get_ccs()
    cols = np.repeat(np.arange(a_sp.size2()), np.diff(colind))
    rng = np.random.default_rng(0)
    A = csc_matrix((rng.uniform(1.0, 2.0, len(row)), (np.asarray(row), cols)), shape=a_sp.shape)
    A_E = A[eq]
    T = splu(csc_matrix(A_E[:, dep])).solve(A_E[:, ind].toarray())
    r, c = np.nonzero(np.abs(T) > 0.0)
    return ca.Sparsity.triplet(dep.size, ind.size, r.tolist(), c.tolist())


def _dense_options(name: str) -> dict[str, Any]:
    if name == "qpoases":
        return {"printLevel": "none", "sparse": False, "error_on_fail": False}
    if name == "qrqp":
        return {
            "print_iter": False,
            "print_header": False,
            "print_info": False,
            "error_on_fail": False,
        }
    return {"error_on_fail": False}
