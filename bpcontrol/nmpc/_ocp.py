"""Transcription of the optimal control problem to a CasADi NLP (direct multiple shooting).

Each interval is integrated by RK4 (non-stiff models) or by Radau IIA collocation
(stiff oxygen transfer; L-stable). Interval lengths are parameters of the NLP, like the
initial state, the last applied input and the model parameters, so a shrinking horizon
and estimator updates never recompile the problem. With ``NMPCConfig.input_schedule`` the
inputs the controller does not manipulate (and ``fixed_inputs`` does not pin) are
parameters too, one per interval and input (``Layout.P_sched``): the controller fills
them each step with the schedule at the interval start times, so a recipe's additions
(water, base, oil, discharges, aeration) are known ahead over the whole horizon.

Parameter vector: ``[x0 (nx), u_prev (nu), p (n_p), h (N), u_sched (N x n_sched, by
interval)]``, and with a scenario tree ``p_scen`` (n_combinations x n_p, by combination:
every combination's full parameter vector, ``Layout.P_scen``), then one back-off per soft
bound (``Layout.P_backoff``, in the bound's units: the bound is tightened by it).

Soft bounds hold along each interval, not only at its end node: a fast state such as
dissolved oxygen can dip between nodes while every node sits on the bound (measured on
the E. coli pack: DO 28.7 % inside a 10 min interval whose nodes were at the 31 % bound).
With collocation the points are the node, every collocation point inside the interval
and ``NMPCConfig.path_points`` evenly spaced points of the collocation polynomial (linear
in the collocation states: rows, no variables); with RK4 every substep's end (the stage
function returns the bounded values there). One slack per bound and interval covers all
its points, and its penalty is per control period: scaled by ``h_k / dt_h`` (at least
1 %, so an interval of zero length past the batch end keeps its slack bounded).

Multi-stage robust NMPC (``NMPCConfig.robust``, :class:`~bpcontrol.nmpc.RobustConfig`):
S copies of the trajectory, one per scenario of the tree, each with its combination's
parameters on each interval. The initial node X_0 is one variable for all of them, and
so is every move on a tree node: non-anticipativity by shared variables (no equality
rows, so nothing is duplicated or dependent; a shared move's rate-limit rows are
written once). The cost is the weighted sum of the scenarios' costs; every scenario has
its own hard bounds and soft-bound slacks. The variables are ordered block-wise per
scenario (its new moves, then its intervals), so the KKT matrix is block-diagonal but
for the shared moves and a sparse factorization (IPOPT's MUMPS) costs about S times
the nominal one per iteration. The nominal problem is the tree of one scenario with the
estimate's parameters: the same variables, rows and expressions as without a tree.

Every interval's dynamics is one call of the same small CasADi function (the *stage*,
:class:`StageStructure`): from the interval's local variables (start node, collocation
states, move) and data (model parameters, length, scheduled inputs) to its collocation
residuals and end state. The NLP handed to IPOPT has these calls inlined (one SX
expression, as fast as before); the real-time iteration keeps them apart and linearizes
the stage once per interval (mapped, compact code the JIT compiles in seconds) instead of
differentiating the whole horizon as one expression (see :mod:`bpcontrol.nmpc._rti`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from bpcontrol.nmpc._config import NMPCConfig, ScenarioTree
from models import CASADI, CasadiModel, Model, Values, smooth_casadi_math


@dataclass(frozen=True)
class Layout:
    """Where things are in the NLP vectors (index arrays into w, g and the parameters)."""

    X: np.ndarray  # (N+1, nx) indices into w
    U: np.ndarray  # (n_nodes, n_manip) indices into w: every move, one row per tree node
    move_of: np.ndarray  # (N,) interval -> move index
    S: np.ndarray  # slack indices into w
    n_w: int
    n_g: int
    manip: np.ndarray  # model input indices that are manipulated
    fixed: np.ndarray  # model input indices not manipulated (constant or scheduled)
    n_par: int
    scheduled: np.ndarray  # model input indices taken from the schedule (a subset of fixed)
    P_sched: np.ndarray  # (N, len(scheduled)) indices into the parameter vector
    w_spans: np.ndarray  # (N, 2) [start, stop) of interval k's variables in w (Xc, X_k+1, s)
    g_spans: np.ndarray  # (N, 2) [start, stop) of interval k's rows in g
    # the scenario tree of robust NMPC (one scenario when nominal): X, w_spans and g_spans
    # above are scenario 0's, and so are the first n_moves rows of U
    XS: np.ndarray  # (S, N+1, nx) every scenario's nodes (X_0 shared)
    US: np.ndarray  # (S, n_moves, n_manip) every scenario's moves (shared on tree nodes)
    w_spans_s: np.ndarray  # (S, N, 2) w_spans per scenario
    g_spans_s: np.ndarray  # (S, N, 2) g_spans per scenario
    P_scen: np.ndarray  # (n_combinations, n_p) indices into the parameters; (0, n_p) nominal
    tree: ScenarioTree | None
    P_backoff: np.ndarray  # (n_soft_bounds,) indices into the parameters: each bound's back-off


@dataclass(frozen=True)
class StageStructure:
    """The NLP's dynamics as calls of one stage function, kept apart for the linearization.

    ``fn(z, q) -> o``: local variables ``z`` (real units) and data ``q`` of one interval
    to its outputs ``o`` (collocation residuals, then the end state). Stage instance ``k``
    takes ``z = z_scale * w[z_idx[k]]`` and ``q = q_fn(par)[:, k]``. ``o_sym`` (n_o x
    n_stages, SX symbols) stands for the outputs in the lifted ``f_lifted``/``g_lifted``
    (the NLP with each call replaced by its symbols: linear in them with constant
    coefficients, checked when built); ``nlp`` is the lifted form with the calls inlined.
    """

    fn: ca.Function
    z_idx: np.ndarray  # (n_stages, n_z) indices into w
    z_scale: np.ndarray  # (n_z,)
    q_fn: ca.Function  # par -> (n_q, n_stages)
    o_sym: Any  # SX (n_o, n_stages)
    f_lifted: Any  # SX scalar of (w, par, o_sym)
    g_lifted: Any  # SX column of (w, par, o_sym)


@dataclass(frozen=True)
class OCP:
    """The NLP with its bounds and layout; ``stages`` its dynamics kept apart (see
    :class:`StageStructure`)."""

    nlp: dict[str, Any]
    layout: Layout
    w_scale: np.ndarray  # real value = w_scale * solver variable
    lbw: np.ndarray
    ubw: np.ndarray
    lbg: np.ndarray
    ubg: np.ndarray
    report_fn: ca.Function  # (w, par) -> (cost, largest slack in the bound's units, largest
    # slack over its bound's scale, see soft_scale): one call per step
    stages: StageStructure
    bounded_fn: ca.Function  # (x, u, p) -> each soft-bounded variable's value (the
    # controller's model copy), for the back-off's sensitivities


def state_scale(model: Model) -> np.ndarray:
    """Typical magnitude of each state (nominal, or a tenth of its largest bound)."""
    lo, hi = model.bounds("states")
    big = 0.1 * np.maximum(
        np.abs(np.where(np.isfinite(lo), lo, 0)), np.abs(np.where(np.isfinite(hi), hi, 0))
    )
    return np.maximum(np.maximum(np.abs(model.x0), big), 1e-6)


def soft_scale(model: Model, name: str, bounds: tuple[float, float]) -> float:
    """The scale a soft bound's slack is judged against: the largest finite bound value,
    or for a state the typical magnitude if that is larger (a bound at 0 has no scale of
    its own); at least 1e-6."""
    finite = [abs(b) for b in bounds if np.isfinite(b)]
    scale = max(finite, default=0.0)
    if name in model.state_names:
        scale = max(scale, float(state_scale(model)[model.index(name)]))
    return max(scale, 1e-6) if scale > 0 else 1.0


def _rk4(f: ca.Function, x: Any, u: Any, p: Any, h: Any, n: int) -> list[Any]:
    """The states at the ends of ``n`` RK4 substeps over ``h`` (the last: the interval's end)."""
    hs = h / n
    ends = []
    for _ in range(n):
        k1 = f(x, u, p)
        k2 = f(x + hs / 2 * k1, u, p)
        k3 = f(x + hs / 2 * k2, u, p)
        k4 = f(x + hs * k3, u, p)
        x = x + hs / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ends.append(x)
    return ends


def _lagrange(tau: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Lagrange basis on the nodes ``tau`` evaluated at ``at``: (len(at), len(tau)), so
    the polynomial through values ``z_j`` at ``tau_j`` is ``L @ z`` there."""
    L = np.ones((at.size, tau.size))
    for j in range(tau.size):
        for r in range(tau.size):
            if r != j:
                L[:, j] *= (at - tau[r]) / (tau[j] - tau[r])
    return L


def path_taus(cfg: NMPCConfig) -> tuple[np.ndarray, np.ndarray]:
    """Where inside an interval (fractions in (0, 1)) the soft bounds hold besides its end
    node: the interior collocation points, and the ``path_points`` evenly spaced points
    that are not collocation points (collocation); RK4: the interior substep ends. None
    when ``bounds_between_nodes`` is off."""
    if not cfg.bounds_between_nodes:
        return np.zeros(0), np.zeros(0)
    if cfg.discretization == "rk4":
        return np.arange(1, cfg.rk4_substeps) / cfg.rk4_substeps, np.zeros(0)
    colloc = np.asarray(ca.collocation_points(cfg.collocation_degree, "radau"), dtype=float)
    inner = colloc[colloc < 1 - 1e-12]
    extra = np.arange(1, cfg.path_points + 1) / (cfg.path_points + 1)
    extra = np.array([e for e in extra if np.min(np.abs(colloc - e)) > 1e-9])
    return inner, extra


def _radau(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Derivative matrix C (d+1 x d+1) and end weights D of Radau IIA collocation."""
    tau = np.append(0.0, ca.collocation_points(d, "radau"))
    C = np.zeros((d + 1, d + 1))
    D = np.zeros(d + 1)
    for j in range(d + 1):
        coeff = np.poly1d([1.0])
        for r in range(d + 1):
            if r != j:
                coeff *= np.poly1d([1.0, -tau[r]]) / (tau[j] - tau[r])
        D[j] = coeff(1.0)
        dcoeff = np.polyder(coeff)
        for r in range(d + 1):
            C[j, r] = dcoeff(tau[r])
    return C, D


def build_ocp(model: Model, cfg: NMPCConfig) -> OCP:
    """Build the NLP: variables w = [X_0, moves, X_1.., collocation states, slacks], with a
    scenario tree [X_0, then per scenario: its moves not shared with an earlier scenario,
    its X_1.., collocation states and slacks] (see the module docstring)."""
    nx, nu, N = model.nx, model.nu, cfg.horizon
    # the controller's view of the model: kinks smoothed if asked (the plant stays exact)
    cm = (
        CasadiModel(model, smooth_casadi_math(cfg.smoothing, cfg.smoothing_kind))
        if cfg.smoothing > 0
        else model.to_casadi()
    )
    manip_names = cfg.manipulated or model.input_names
    manip = np.array([model.index(n) for n in manip_names], dtype=int)
    manip_set = {int(i) for i in manip}
    fixed = np.array([i for i in range(nu) if i not in manip_set], dtype=int)
    blocks = cfg.move_blocks or (1,) * N
    move_of = np.repeat(np.arange(len(blocks)), blocks)

    # inputs on the schedule: not manipulated, not pinned by fixed_inputs
    scheduled = np.array(
        [i for i in fixed if model.input_names[i] not in cfg.fixed_inputs]
        if cfg.input_schedule is not None
        else [],
        dtype=int,
    )
    n_sched = scheduled.size
    sched_col = {int(i): j for j, i in enumerate(scheduled)}

    # parameters: x0, u_prev (all inputs), model parameters, interval lengths, schedule
    x0 = ca.SX.sym("x0", nx)
    u_prev = ca.SX.sym("u_prev", nu)
    pm = ca.SX.sym("p", model.n_p)
    h = ca.SX.sym("h", N)
    u_sched = ca.SX.sym("u_sched", N * n_sched)
    par = ca.vertcat(x0, u_prev, pm, h, u_sched)
    n_base = nx + nu + model.n_p + N
    P_sched = n_base + np.arange(N * n_sched, dtype=int).reshape(N, n_sched)

    u_lo, u_hi = model.bounds("inputs")
    for name, (lo, hi) in cfg.input_bounds.items():
        u_lo[model.index(name)], u_hi[model.index(name)] = lo, hi
    x_lo, x_hi = np.full(nx, -np.inf), np.full(nx, np.inf)
    for name, (lo, hi) in cfg.state_bounds.items():
        x_lo[model.index(name)], x_hi[model.index(name)] = lo, hi

    w: list[Any] = []
    lbw: list[float] = []
    ubw: list[float] = []
    g: list[Any] = []
    lbg: list[float] = []
    ubg: list[float] = []
    counter = [0]
    w_scale: list[float] = []
    sx = state_scale(model)
    su = np.maximum(np.maximum(np.abs(u_lo), np.abs(u_hi)), 1e-6)

    def new_var(name: str, n: int, lo: Any, hi: Any, scale: Any = 1.0) -> tuple[Any, np.ndarray]:
        """A decision variable, scaled to order one for the solver; returns its real value."""
        sc = np.broadcast_to(np.asarray(scale, dtype=float), (n,))
        v = ca.SX.sym(name, n)
        w.append(v)
        lbw.extend((np.broadcast_to(lo, (n,)) / sc).tolist())
        ubw.extend((np.broadcast_to(hi, (n,)) / sc).tolist())
        w_scale.extend(sc.tolist())
        idx = np.arange(counter[0], counter[0] + n)
        counter[0] += n
        return v * ca.DM(sc), idx

    # the scenario tree (one scenario, weight 1, when nominal)
    tree = cfg.robust.tree(model, N, move_of) if cfg.robust is not None else None
    n_scen = 1 if tree is None else tree.n_scenarios
    node_of = np.zeros((1, len(blocks)), dtype=int) + np.arange(len(blocks))
    if tree is not None:
        node_of = tree.node_of
        n_comb = tree.n_combinations
        p_scen = ca.SX.sym("p_scen", n_comb * model.n_p)
        P_scen = int(par.shape[0]) + np.arange(n_comb * model.n_p).reshape(n_comb, model.n_p)
        par = ca.vertcat(par, p_scen)
    else:
        P_scen = np.zeros((0, model.n_p), dtype=int)

    def p_of(s: int, k: int) -> Any:
        """The model parameters on interval k of scenario s."""
        if tree is None:
            return pm
        c = int(tree.comb_of[s, k])
        return p_scen[c * model.n_p : (c + 1) * model.n_p]

    XS = np.zeros((n_scen, N + 1, nx), dtype=int)
    US = np.zeros((n_scen, len(blocks), len(manip)), dtype=int)
    X0v, XS[:, 0] = new_var("X0", nx, -np.inf, np.inf, sx)
    g.append((X0v - x0) / sx)
    lbg += [0.0] * nx
    ubg += [0.0] * nx
    node_var: dict[int, tuple[Any, np.ndarray]] = {}  # tree node -> (move, indices)

    def full_input(moves: list[Any], k: int) -> Any:
        """All model inputs on interval k: manipulated from the move, the rest fixed or
        scheduled (see NMPCConfig for the precedence)."""
        parts: list[Any] = [None] * nu
        for j, i in enumerate(manip):
            parts[i] = moves[move_of[k]][j]
        for i in fixed:
            name = model.input_names[i]
            if int(i) in sched_col:
                parts[i] = u_sched[k * n_sched + sched_col[int(i)]]
            else:
                parts[i] = cfg.fixed_inputs.get(name, model.inputs[i].nominal)
        return ca.vertcat(*parts)

    def values(x: Any, u: Any, p: Any) -> dict[str, Any]:
        """Named states and outputs at (x, u) as CasADi expressions."""
        y = cm.h(x, u, p)
        out = {n: x[i] for i, n in enumerate(model.state_names)}
        out.update({n: y[i] for i, n in enumerate(model.output_names)})
        return out

    def named(vec: Any, names: tuple[str, ...]) -> Values:
        return Values(names, [vec[i] for i in range(len(names))])

    # the stage: one interval's dynamics from its local variables and data
    d = cfg.collocation_degree
    n_colloc = d if cfg.discretization != "rk4" else 0
    n_manip = len(manip)
    n_st = n_scen * N
    z_s = ca.SX.sym("z", nx * (1 + n_colloc) + n_manip)
    q_s = ca.SX.sym("q", model.n_p + 1 + n_sched)
    n_sb = len(cfg.soft_bounds)
    inner_tau, extra_tau = path_taus(cfg)
    n_extra_o = 0 if n_colloc else inner_tau.size * n_sb  # RK4: bounded values inside
    o_sym = ca.SX.sym("o", nx * (n_colloc + 1) + n_extra_o, n_st)
    stage_fn = _stage_function(model, cfg, cm, z_s, q_s, manip, fixed, sched_col, n_colloc)
    # the collocation polynomial at the extra path points, from [x_k, Xc_1..Xc_d]
    L_path = (
        _lagrange(np.append(0.0, ca.collocation_points(d, "radau")), extra_tau)
        if n_colloc
        else np.zeros((0, 1))
    )
    # back-offs (bound units), one per soft bound: parameters after everything else
    backoff = ca.SX.sym("backoff", n_sb)
    P_backoff = int(par.shape[0]) + np.arange(n_sb, dtype=int)
    par = ca.vertcat(par, backoff)
    z_idx = np.zeros((n_st, z_s.shape[0]), dtype=int)
    z_scale = np.concatenate([np.tile(sx, 1 + n_colloc), su[manip]])
    q_cols: list[Any] = []

    obj = cfg.objective
    J: Any = 0
    slacks: list[Any] = []
    slack_scales: list[float] = []
    w_spans = np.zeros((n_scen, N, 2), dtype=int)
    g_spans = np.zeros((n_scen, N, 2), dtype=int)
    for sc in range(n_scen):
        # this scenario's moves: tree nodes it shares with earlier scenarios exist already
        # (non-anticipativity by shared variables), the rest are created here, in order
        moves: list[Any] = []
        own = np.zeros(len(blocks), dtype=bool)  # moves first reached in this scenario
        for b in range(len(blocks)):
            node = int(node_of[sc, b])
            if node not in node_var:
                node_var[node] = new_var(f"U{b}", n_manip, u_lo[manip], u_hi[manip], su[manip])
                own[b] = True
            moves.append(node_var[node][0])
            US[sc, b] = node_var[node][1]
        Js: Any = 0  # this scenario's cost
        Xk = X0v
        for k in range(N):
            w_spans[sc, k, 0], g_spans[sc, k, 0] = counter[0], len(lbg)
            uk = full_input(moves, k)
            hk = h[k]
            pk = p_of(sc, k)
            # stage cost at the interval start, per hour
            v0 = values(Xk, uk, pk)
            L: Any = 0
            for name, wt in obj.stage.items():
                L += wt * v0[name]
            for name, wt in obj.input_cost.items():
                L += wt * uk[model.index(name)]
            for tr in obj.tracking:
                L += tr.weight * (v0[tr.name] - tr.target) ** 2
            if obj.stage_fn is not None:
                L += obj.stage_fn(
                    CASADI,
                    named(Xk, model.state_names),
                    named(uk, model.input_names),
                    named(pk, model.parameter_names),
                )
            Js += hk * L
            # move penalty and rate limits between consecutive intervals (manipulated
            # inputs only: a fixed or scheduled input is data, its steps are no moves)
            u_before = u_prev if k == 0 else full_input(moves, k - 1)
            for name, wt in obj.move.items():
                i = model.index(name)
                if i not in manip_set:
                    continue
                Js += wt * (uk[i] - u_before[i]) ** 2
            # a shared move's rate limits once, in the first scenario through its node
            # (repeated rows would make the constraints' gradients dependent)
            if (k == 0 or move_of[k] != move_of[k - 1]) and own[move_of[k]]:
                for name, r in cfg.rate_limits.items():
                    i = model.index(name)
                    if i not in manip_set:
                        continue
                    span = cfg.dt_h if k == 0 else hk  # the first move happens over one period
                    du = uk[i] - u_before[i]
                    g.append(ca.vertcat(du - r * span, -du - r * span))
                    lbg += [-np.inf, -np.inf]
                    ubg += [0.0, 0.0]
            # dynamics: the stage's outputs stand in for its call (inlined for IPOPT below)
            st = sc * N + k
            o_k = o_sym[:, st]
            z_parts = [XS[sc, k]]
            Xc: list[Any] = []
            for j in range(n_colloc):
                xc, xc_idx = new_var(f"Xc{k}_{j}", nx, -np.inf, np.inf, sx)
                z_parts.append(xc_idx)
                Xc.append(xc)
            z_idx[st] = np.concatenate([*z_parts, US[sc, move_of[k]]])
            q_cols.append(ca.vertcat(pk, hk, u_sched[k * n_sched : (k + 1) * n_sched]))
            if n_colloc:
                g.append(o_k[: nx * n_colloc] / ca.repmat(ca.DM(sx), n_colloc, 1))
                lbg += [0.0] * (nx * n_colloc)
                ubg += [0.0] * (nx * n_colloc)
            x_end = o_k[nx * n_colloc : nx * (n_colloc + 1)]
            X_start = Xk
            Xk, XS[sc, k + 1] = new_var(f"X{k + 1}", nx, x_lo, x_hi, sx)
            g.append((x_end - Xk) / sx)
            lbg += [0.0] * nx
            ubg += [0.0] * nx
            # soft bounds along the interval (module docstring): the bounded values at
            # its inner points, then at the new node; one slack per bound for all of them
            points: list[dict[str, Any]] = []
            if n_colloc:
                points += [values(Xc[j], uk, pk) for j in range(inner_tau.size)]
                Z = [X_start, *Xc]
                for i in range(extra_tau.size):
                    x_tau: Any = 0
                    for j in range(len(Z)):
                        x_tau = x_tau + float(L_path[i, j]) * Z[j]
                    points.append(values(x_tau, uk, pk))
            else:  # RK4: the stage's values at the inner substep ends, by bound
                o_in = o_k[nx * (n_colloc + 1) :]
                points += [
                    {sb.name: o_in[i * n_sb + b] for b, sb in enumerate(cfg.soft_bounds)}
                    for i in range(inner_tau.size)
                ]
            points.append(values(Xk, uk, pk))
            per_period = ca.fmax(hk / cfg.dt_h, 0.01)  # the penalty per control period
            for b, sb in enumerate(cfg.soft_bounds):
                s, _ = new_var(f"s_{sb.name}_{k}", 1, 0.0, np.inf)
                slacks.append(s)
                slack_scales.append(soft_scale(model, sb.name, (sb.lower, sb.upper)))
                Js += per_period * (sb.weight_l1 * s + sb.weight_l2 * s**2)
                for vk in points:
                    if np.isfinite(sb.lower):
                        g.append(vk[sb.name] + s - (sb.lower + backoff[b]))
                        lbg.append(0.0)
                        ubg.append(np.inf)
                    if np.isfinite(sb.upper):
                        g.append((sb.upper - backoff[b]) - vk[sb.name] + s)
                        lbg.append(0.0)
                        ubg.append(np.inf)
            w_spans[sc, k, 1], g_spans[sc, k, 1] = counter[0], len(lbg)
        pN = p_of(sc, N - 1)
        vN = values(Xk, full_input(moves, N - 1), pN)
        for name, wt in obj.terminal.items():
            Js += wt * vN[name]
        if obj.terminal_fn is not None:
            Js += obj.terminal_fn(
                CASADI, named(Xk, model.state_names), named(pN, model.parameter_names)
            )
        J += Js if tree is None else float(tree.weights[sc]) * Js

    wv = ca.vertcat(*w)
    g_lifted = ca.vertcat(*g)
    q_mat = ca.horzcat(*q_cols)
    stages = StageStructure(
        fn=stage_fn,
        z_idx=z_idx,
        z_scale=z_scale,
        q_fn=ca.Function("nmpc_stage_data", [par], [q_mat]),
        o_sym=o_sym,
        f_lifted=J,
        g_lifted=g_lifted,
    )
    _check_lifted(stages, wv)
    # the NLP proper: every stage call inlined (IPOPT and the step checks see one SX graph)
    z_all = ca.horzcat(*[wv[z_idx[i].tolist()] * ca.DM(z_scale) for i in range(n_st)])
    o_all = stage_fn.map(n_st)(z_all, q_mat)
    gv = ca.substitute(g_lifted, ca.vec(o_sym), ca.vec(o_all))
    S_idx = np.array([i for i in range(counter[0]) if str(wv[i]).startswith("s_")], dtype=int)
    layout = Layout(
        X=XS[0],
        U=np.array([node_var[n][1] for n in range(len(node_var))]).reshape(-1, n_manip),
        move_of=move_of,
        S=S_idx,
        n_w=counter[0],
        n_g=int(gv.shape[0]),
        manip=manip,
        fixed=fixed,
        n_par=int(par.shape[0]),
        scheduled=scheduled,
        P_sched=P_sched,
        w_spans=w_spans[0],
        g_spans=g_spans[0],
        XS=XS,
        US=US,
        w_spans_s=w_spans,
        g_spans_s=g_spans,
        P_scen=P_scen,
        tree=tree,
        P_backoff=P_backoff,
    )
    sv = ca.vertcat(*slacks) if slacks else ca.SX.zeros(1)
    sv_rel = sv / ca.DM(slack_scales) if slacks else sv
    return OCP(
        nlp={"x": wv, "f": J, "g": gv, "p": par},
        layout=layout,
        w_scale=np.array(w_scale),
        lbw=np.array(lbw),
        ubw=np.array(ubw),
        lbg=np.array(lbg, dtype=float),
        ubg=np.array(ubg, dtype=float),
        report_fn=ca.Function(
            "nmpc_report",
            [wv, par],
            [J, ca.mmax(sv), ca.mmax(sv_rel)],
            ["w", "p"],
            ["cost", "slack_max", "slack_rel_max"],
        ),
        stages=stages,
        bounded_fn=_bounded_function(model, cfg, cm),
    )


def _bounded_function(model: Model, cfg: NMPCConfig, cm: CasadiModel) -> ca.Function:
    """The soft-bounded variables at a state: ``(x, u, p) -> v`` (n_soft_bounds)."""
    x = ca.SX.sym("x", model.nx)
    u = ca.SX.sym("u", model.nu)
    p = ca.SX.sym("p", model.n_p)
    y = cm.h(x, u, p)
    named = {n: x[i] for i, n in enumerate(model.state_names)}
    named.update({n: y[i] for i, n in enumerate(model.output_names)})
    v = ca.vertcat(*[named[sb.name] for sb in cfg.soft_bounds]) if cfg.soft_bounds else ca.SX(0, 1)
    return ca.Function("nmpc_bounded", [x, u, p], [v], ["x", "u", "p"], ["v"])


def _stage_function(
    model: Model,
    cfg: NMPCConfig,
    cm: CasadiModel,
    z: Any,
    q: Any,
    manip: np.ndarray,
    fixed: np.ndarray,
    sched_col: dict[int, int],
    n_colloc: int,
) -> ca.Function:
    """One interval's dynamics: ``z = [x_start, collocation states.., move]`` and ``q = [p,
    h, scheduled inputs]`` (model units) to ``[collocation residuals (h f - x'), x_end]``."""
    nx, n_p = model.nx, model.n_p
    x0 = z[:nx]
    Xc = [z[nx * (1 + j) : nx * (2 + j)] for j in range(n_colloc)]
    move = z[nx * (1 + n_colloc) :]
    pm, hk, sched = q[:n_p], q[n_p], q[n_p + 1 :]
    parts: list[Any] = [None] * model.nu
    for j, i in enumerate(manip):
        parts[i] = move[j]
    for i in fixed:
        if int(i) in sched_col:
            parts[i] = sched[sched_col[int(i)]]
        else:
            parts[i] = cfg.fixed_inputs.get(model.input_names[i], model.inputs[i].nominal)
    u = ca.vertcat(*parts)
    if not n_colloc:
        ends = _rk4(cm.f, x0, u, pm, hk, cfg.rk4_substeps)
        inner = []  # the soft-bounded values at the inner substep ends, by point then bound
        for xi in ends[:-1] if cfg.bounds_between_nodes else []:
            y = cm.h(xi, u, pm)
            for sb in cfg.soft_bounds:
                if sb.name in model.state_names:
                    inner.append(xi[model.index(sb.name)])
                else:
                    inner.append(y[model.output_names.index(sb.name)])
        out = ca.vertcat(ends[-1], *inner)
    else:
        C, D = _radau(n_colloc)
        res = []
        for j in range(1, n_colloc + 1):
            xp = C[0, j] * x0
            for r in range(n_colloc):
                xp = xp + C[r + 1, j] * Xc[r]
            res.append(hk * cm.f(Xc[j - 1], u, pm) - xp)
        x_end = D[0] * x0
        for r in range(n_colloc):
            x_end = x_end + D[r + 1] * Xc[r]
        out = ca.vertcat(*res, x_end)
    return ca.Function("nmpc_stage", [z, q], [out], ["z", "q"], ["o"])


def _check_lifted(stages: StageStructure, w: Any) -> None:
    """The lifted NLP must be linear in the stage outputs with constant coefficients and
    its cost free of them: then the Lagrangian's curvature splits exactly into the lifted
    part and one block per stage (what the real-time iteration relies on)."""
    o = ca.vec(stages.o_sym)
    if ca.depends_on(stages.f_lifted, o):
        raise AssertionError("the NMPC cost depends on a stage output")
    jac = ca.jacobian(stages.g_lifted, o)
    if ca.depends_on(jac, ca.vertcat(w, o)):
        raise AssertionError("the NMPC constraints are not linear in the stage outputs")
