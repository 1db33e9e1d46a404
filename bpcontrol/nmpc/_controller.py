"""The NMPC: a compiled problem plus pure ``init``/``step`` functions that never raise in the loop.

``NMPC(model, config)`` validates and compiles once. ``init(x0)`` gives an
:class:`NMPCState` (warm start, previous plan); ``step(state, estimate, t)`` returns a
:class:`Plan` and the next state. A failed, late or nonsensical solve never escapes as an
exception: the plan is then the previous plan shifted by one period, and its status says so.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import casadi as ca
import numpy as np

from bpcontrol.nmpc._buffered import BufferedFunction
from bpcontrol.nmpc._condensing import CONDENSED
from bpcontrol.nmpc._config import NMPCConfig, schedule_at
from bpcontrol.nmpc._ocp import OCP, build_ocp
from bpcontrol.nmpc._rti import RealTimeIteration
from models import Model


class SolveStatus(enum.Enum):
    """Outcome of one controller step."""

    SOLVED = "solved"
    SOLVED_INACCURATE = "solved-inaccurate"
    TIME_LIMIT = "time-limit"
    INFEASIBLE_SOFTENED = "infeasible-softened"
    FAILED = "failed"

    @property
    def usable(self) -> bool:
        """True when the plan comes from this step's solve (not a shifted old plan)."""
        return self in (
            SolveStatus.SOLVED,
            SolveStatus.SOLVED_INACCURATE,
            SolveStatus.INFEASIBLE_SOFTENED,
        )


class Estimate(Protocol):
    """What the controller needs from an estimate: states and full parameter vector."""

    @property
    def x(self) -> np.ndarray: ...

    @property
    def p(self) -> np.ndarray: ...


@dataclass(frozen=True)
class StateEstimate:
    """A plain estimate (perfect state knowledge, or an estimator's report)."""

    x: np.ndarray
    p: np.ndarray
    p_sigma: np.ndarray | None = None
    """Standard deviation of each model parameter (n_p; NaN or 0 where not estimated):
    robust NMPC samples ``sigma_factors`` scenarios from it (see ``RobustConfig``)."""
    x_sigma: np.ndarray | None = None
    """Standard deviation of each state (nx, state units; None: not known): the soft
    bounds' back-off (``SoftBound.backoff_sigma``) is that many of the bounded variable's."""


@dataclass(frozen=True)
class Plan:
    """Next setpoints, predicted trajectories and how the solve went.

    ``u_next``: all model inputs for the coming period; ``U`` (N, nu) inputs per interval:
    the manipulated ones as planned, the others as the prediction assumed them
    (``fixed_inputs``, ``input_schedule`` at the interval start, or nominal); ``X``
    (N+1, nx) predicted states at ``t_nodes`` (h). With a scenario tree (robust NMPC)
    ``X`` and ``U`` are the nominal scenario's (scenario 0: the first value of every
    uncertain parameter), ``u_next`` is common to all scenarios, ``scenario_X`` (S, N+1,
    nx) has every scenario's states and ``scenario_moves`` (S, n_moves, n_manipulated)
    its planned moves; both are None without a tree. ``cost`` is the weighted sum over the
    scenarios.
    """

    t: float
    u_next: np.ndarray
    U: np.ndarray
    X: np.ndarray
    t_nodes: np.ndarray
    status: SolveStatus
    iterations: int
    solve_time_s: float
    cost: float
    slack_max: float
    message: str = ""
    scenario_X: np.ndarray | None = None
    scenario_moves: np.ndarray | None = None

    def setpoints(self, input_names: tuple[str, ...]) -> dict[str, float]:
        """The next setpoints by input name."""
        return dict(zip(input_names, map(float, self.u_next), strict=True))


@dataclass(frozen=True)
class NMPCState:
    """Memory between steps: the last solution (scaled solver variables ``w`` and the
    multipliers ``lam_x``, ``lam_g``; the next step shifts them one interval ahead as
    its warm start), the last plan and the last applied input."""

    w: np.ndarray | None
    lam_x: np.ndarray | None
    lam_g: np.ndarray | None
    plan: Plan | None
    u_prev: np.ndarray
    steps: int = 0


_QUIET = {"print_time": False}
_Shifted = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
_RETRY = frozenset(
    {
        "Infeasible_Problem_Detected",
        "Restoration_Failed",
        "Error_In_Step_Computation",
        "Search_Direction_Becomes_Too_Small",
        "Diverging_Iterates",
        "Invalid_Number_Detected",
    }
)
"""IPOPT endings of a warm-started solve that a second try with the adaptive barrier
update may fix (once, within the wall-time limit, before the step falls back)."""
_WARM_ONLY = frozenset(
    f"ipopt.{k}"
    for k in (
        "warm_start_init_point",
        "warm_start_bound_push",
        "warm_start_bound_frac",
        "warm_start_mult_bound_push",
        "warm_start_slack_bound_push",
        "warm_start_slack_bound_frac",
        "mu_init",
    )
)


class NMPC:
    """Nonlinear MPC compiled for one model and configuration (immutable)."""

    def __init__(self, model: Model, config: NMPCConfig, *, t0_h: float = 0.0) -> None:
        config.validate(model, t0_h=t0_h)
        self.model = model
        self.config = config
        self.ocp: OCP = build_ocp(model, config)
        self._integrators: dict[float, ca.Function] = {}
        self._shift_src = self._shift_sources()
        manip = self.ocp.layout.manip
        self._u_lo = self.ocp.lbw[self.ocp.layout.U[0]] * self.ocp.w_scale[self.ocp.layout.U[0]]
        self._u_hi = self.ocp.ubw[self.ocp.layout.U[0]] * self.ocp.w_scale[self.ocp.layout.U[0]]
        assert self._u_lo.shape == (len(manip),)
        cfg = config
        ipopt_opts: dict[str, Any] = {
            **_QUIET,
            "ipopt.print_level": 0,
            "ipopt.sb": "yes",
            "ipopt.max_iter": cfg.max_iter,
            "ipopt.max_wall_time": cfg.time_limit_s,
            "ipopt.tol": 1e-8,
            "ipopt.acceptable_tol": 1e-6,
            **{f"ipopt.{k}": v for k, v in cfg.ipopt_options.items()},
        }
        self._ipopt = ca.nlpsol("nmpc_ipopt", "ipopt", self.ocp.nlp, ipopt_opts)
        # without multipliers to start from (the first solve, after a failure) the
        # warm-start options (a tiny initial barrier, bound pushes of 1e-9) cost hundreds
        # of iterations: a second instance solves those from IPOPT's own defaults
        cold_opts = {k: v for k, v in ipopt_opts.items() if k not in _WARM_ONLY}
        self._ipopt_cold = self._ipopt
        # the same NLP: share the derivative functions (0.1 s instead of 0.45 s here)
        self._shared = {
            opt: self._ipopt.get_function(name)
            for opt, name in (
                ("hess_lag", "nlp_hess_l"),
                ("jac_g", "nlp_jac_g"),
                ("grad_f", "nlp_grad_f"),
            )
        }
        if cold_opts != ipopt_opts:
            self._ipopt_cold = ca.nlpsol(
                "nmpc_ipopt_cold", "ipopt", self.ocp.nlp, {**cold_opts, **self._shared}
            )
        # for a warm start that ends in a local infeasibility (see _RETRY): IPOPT's
        # defaults with the adaptive barrier update, built on first need
        self._retry_opts = {**cold_opts, "ipopt.mu_strategy": "adaptive"}
        self._ipopt_retry: Any = None
        # cost and slacks of a solution, evaluated in place (no DM per step)
        self._report = BufferedFunction(self.ocp.report_fn)
        self._sigma_fns: tuple[ca.Function, ca.Function] | None = None  # on the first back-off
        self._rti: RealTimeIteration | None = None
        if cfg.solver == "rti":
            qps = [cfg.qp_solver]
            if cfg.qp_fallback is not None and cfg.qp_fallback != cfg.qp_solver:
                qps.append(cfg.qp_fallback)
            self._rti = RealTimeIteration(self.ocp, [(q, _qp_options(q)) for q in qps], jit=cfg.jit)

    # --- helpers -------------------------------------------------------------------
    def interval_lengths(self, t: float) -> np.ndarray:
        """Interval lengths (h) of the horizon starting at ``t``.

        ``receding``: N intervals of ``dt_h``, cut at the batch end once it is within reach
        (the horizon shrinks to the end). ``batch_end``: the N intervals always reach the
        batch end, the first one ``dt_h`` long and the rest spread over the time left.
        """
        cfg = self.config
        N, dt = cfg.horizon, cfg.dt_h
        if cfg.batch_end_h is None:
            return np.full(N, dt)
        remaining = max(cfg.batch_end_h - t, 0.0)
        if cfg.horizon_mode == "batch_end" and remaining >= N * dt:
            h = np.full(N, (remaining - dt) / max(N - 1, 1))
            h[0] = dt
            return h if N > 1 else np.array([remaining])
        return np.clip(remaining - dt * np.arange(N), 0.0, dt)

    def scheduled_inputs(self, t: float, h: np.ndarray) -> np.ndarray:
        """The scheduled inputs per interval, (N, len(layout.scheduled)), model units.

        ``input_schedule`` at each interval's start ``t + h_0 + ... + h_(k-1)`` (h); an
        empty array without a schedule. Raises ``NMPCConfigError`` (a ``ValueError``) if
        the schedule fails or gives a non-finite or wrong-sized vector.
        """
        lay = self.ocp.layout
        schedule = self.config.input_schedule
        if schedule is None or lay.scheduled.size == 0:
            return np.zeros((self.config.horizon, lay.scheduled.size))
        starts = t + np.concatenate([[0.0], np.cumsum(h)[:-1]])
        return np.array(
            [schedule_at(schedule, self.model, float(tk))[lay.scheduled] for tk in starts]
        )

    def parameters(
        self,
        x: np.ndarray,
        u_prev: np.ndarray,
        p: np.ndarray,
        h: np.ndarray,
        scheduled: np.ndarray,
        p_sigma: np.ndarray | None = None,
        backoff: np.ndarray | None = None,
    ) -> np.ndarray:
        """The NLP's parameter vector (see :mod:`bpcontrol.nmpc._ocp` for the layout); with
        a scenario tree, every combination's parameters from ``p`` and ``p_sigma``
        (:meth:`bpcontrol.nmpc.ScenarioTree.parameter_sets`); ``backoff`` per soft bound
        (bound units, default 0: see :meth:`backoffs`)."""
        lay = self.ocp.layout
        extra = lay.P_sched.size + lay.P_scen.size + lay.P_backoff.size
        par = np.concatenate([x, u_prev, p, h, np.zeros(extra)])
        par[lay.P_sched] = scheduled
        if lay.tree is not None:
            par[lay.P_scen] = lay.tree.parameter_sets(p, p_sigma)
        if backoff is not None:
            par[lay.P_backoff] = backoff
        assert par.size == lay.n_par
        return par

    def backoffs(
        self, x: np.ndarray, u: np.ndarray, p: np.ndarray, x_sigma: np.ndarray | None
    ) -> tuple[np.ndarray, str]:
        """Each soft bound's back-off (bound units): ``backoff_sigma`` times the bounded
        variable's standard deviation (``SoftBound``), and a note when a bound asks for one
        but the estimate has no (finite) state standard deviations.

        The standard deviation is first order in the states' (taken as independent), the
        larger of two: the variable's now, and the variable's one control period ahead
        under the inputs ``u`` held (the model's sensitivity of ``v(x(t + dt))`` to
        ``x(t)``, CVODES forward sensitivities). The second carries the uncertainty of
        the states a fast variable follows: the E. coli DO settles within minutes to what
        biomass, glucose and acetate demand, so its own sigma (0.1-0.4 %) says little of
        its error in the next interval (measured at 5.7-5.9 h: acetate 0.03 g/L off, DO
        predicted 2-5 % high, where this sigma was 0.25-0.8 %).
        """
        k = np.array([sb.backoff_sigma for sb in self.config.soft_bounds], dtype=float)
        if not np.any(k > 0):
            return np.zeros(k.size), ""
        if x_sigma is None:
            return np.zeros(k.size), "no back-off: the estimate has no state sigma"
        xs = np.asarray(x_sigma, dtype=float)
        if xs.shape != (self.model.nx,):
            raise ValueError(f"estimate x_sigma has shape {xs.shape}, not ({self.model.nx},)")
        if not np.all(np.isfinite(xs)):
            return np.zeros(k.size), "no back-off: the estimate's state sigma is not finite"
        if self._sigma_fns is None:
            self._sigma_fns = (self._bound_sigma_function(True), self._bound_sigma_function(False))
        note = ""
        try:
            sigma = np.asarray(self._sigma_fns[0](x, u, p, np.abs(xs))).ravel()
        except RuntimeError as exc:  # the period-ahead integration failed at this estimate
            sigma = np.asarray(self._sigma_fns[1](x, u, p, np.abs(xs))).ravel()
            first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "?"
            note = (
                f"back-off from the sigma now only: the period-ahead sensitivity failed ({first})"
            )
        if not np.all(np.isfinite(sigma)):
            return np.zeros(k.size), "no back-off: the bounds' sigma is not finite"
        return k * sigma, note

    def _bound_sigma_function(self, ahead: bool) -> ca.Function:
        """``(x, u, p, x_sigma) -> sigma`` of the soft-bounded variables, now and (``ahead``)
        one control period ahead, the larger (see :meth:`backoffs`)."""
        m = self.model
        x, u, p = ca.MX.sym("x", m.nx), ca.MX.sym("u", m.nu), ca.MX.sym("p", m.n_p)
        xs = ca.MX.sym("x_sigma", m.nx)
        bounded = self.ocp.bounded_fn
        values = [bounded(x, u, p)]
        if ahead:
            # the plant's tolerances (1e-10): with 1e-8/1e-6 the E. coli DO back-off came
            # out smaller and the -20 % acceptance scenario's DO fell to 5 % at 6.2 h
            step = m.to_casadi().integrator(self.config.dt_h)
            values.append(bounded(step(x, u, p), u, p))
        out = []
        for v in values:
            J = ca.jacobian(v, x) * ca.repmat(xs.T, v.shape[0], 1)
            out.append(ca.sqrt(ca.sum2(J * J)))
        sigma = out[0] if len(out) == 1 else ca.fmax(out[0], out[1])
        return ca.Function("nmpc_bound_sigma", [x, u, p, xs], [sigma])

    def initial_guess(
        self,
        x0: np.ndarray,
        u: np.ndarray,
        h: np.ndarray,
        p: np.ndarray,
        t: float = 0.0,
        *,
        scheduled: np.ndarray | None = None,
        p_sigma: np.ndarray | None = None,
    ) -> np.ndarray:
        """A start for the first solve: simulate the recipe (or hold ``u``) over the horizon.

        Nodes get the simulated states, collocation points the state at their interval's
        end, moves the recipe's inputs. With an ``input_schedule`` the simulation uses the
        inputs the OCP will see for everything not manipulated (``scheduled``, from
        :meth:`scheduled_inputs` if not given, and ``fixed_inputs``), so the guess starts
        with no gaps from them. With a scenario tree every scenario is simulated with its
        own parameters (``p`` and ``p_sigma`` as in :meth:`parameters`).
        """
        lay = self.ocp.layout
        recipe = self.config.initial_inputs
        if self.config.input_schedule is not None and scheduled is None:
            scheduled = self.scheduled_inputs(t, h)
        pinned = [(self.model.index(n), float(v)) for n, v in self.config.fixed_inputs.items()]
        w = np.zeros(lay.n_w)
        w[lay.X[0]] = x0
        tree = lay.tree
        p_sets = [p] if tree is None else list(tree.parameter_sets(p, p_sigma))
        node = np.zeros(lay.n_w, dtype=bool)  # nodes and slacks; the rest: collocation
        node[lay.XS.ravel()] = True
        node[lay.S] = True
        for sc in range(lay.XS.shape[0]):
            x, tk = x0.copy(), t
            for k in range(self.config.horizon):
                uk = np.asarray(recipe(tk), dtype=float) if recipe is not None else u
                if scheduled is not None:
                    uk = uk.copy()
                    uk[lay.scheduled] = scheduled[k]
                    for i, v in pinned:
                        uk[i] = v
                if k == 0 or lay.move_of[k] != lay.move_of[k - 1]:
                    w[lay.US[sc, lay.move_of[k]]] = uk[lay.manip]
                if h[k] > 0:
                    pk = p if tree is None else p_sets[int(tree.comb_of[sc, k])]
                    x = np.asarray(self._integrator(float(h[k]))(x, uk, pk)).ravel()
                w[lay.XS[sc, k + 1]] = x
                span = np.arange(*lay.w_spans_s[sc, k])
                inner = span[~node[span]]  # the interval's collocation states
                w[inner] = np.resize(x, inner.size)
                tk += float(h[k])
        return w

    def _integrator(self, dt_h: float) -> ca.Function:
        key = round(dt_h, 12)
        if key not in self._integrators:
            self._integrators[key] = self.model.to_casadi().integrator(dt_h)
        return self._integrators[key]

    # --- pure interface ------------------------------------------------------------
    def init(self, x0: np.ndarray, u0: np.ndarray | None = None) -> NMPCState:
        """Initial controller state; the first step makes a full solve."""
        u = self.model.u0.copy() if u0 is None else np.asarray(u0, dtype=float).copy()
        for name, v in self.config.fixed_inputs.items():
            u[self.model.index(name)] = v
        return NMPCState(w=None, lam_x=None, lam_g=None, plan=None, u_prev=u)

    def input_bounds(
        self, limits: Mapping[str, tuple[float, float]] | None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(lbw, ubw, note): the NLP's variable bounds with the manipulated inputs' bounds
        narrowed to ``limits`` (input name -> (lower, upper), model units; the supervisor's
        limits in force) on every move. The config's bounds stay the outer limits; a name
        that is not manipulated is ignored, and an interval that would be empty keeps the
        config's bounds, said in ``note``."""
        if not limits:
            return self.ocp.lbw, self.ocp.ubw, ""
        lay, scale = self.ocp.layout, self.ocp.w_scale
        lbw, ubw = self.ocp.lbw.copy(), self.ocp.ubw.copy()
        notes = []
        for j, i in enumerate(lay.manip):
            name = self.model.input_names[i]
            if name not in limits:
                continue
            lo = max(float(limits[name][0]), float(self._u_lo[j]))
            hi = min(float(limits[name][1]), float(self._u_hi[j]))
            if not lo <= hi:
                notes.append(f"limits of {name} {tuple(limits[name])} miss its bounds")
                continue
            cols = lay.U[:, j]
            lbw[cols], ubw[cols] = lo / scale[cols], hi / scale[cols]
        return lbw, ubw, "; ".join(notes)

    def step(
        self,
        state: NMPCState,
        estimate: Estimate,
        t: float,
        *,
        u_applied: np.ndarray | None = None,
        input_bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> tuple[Plan, NMPCState]:
        """One control step at time ``t`` (h). Never raises for numerical trouble.

        ``input_bounds`` (input name -> (lower, upper), model units) narrows the planned
        inputs to the limits in force (the supervisor's, which an operator may change):
        see :meth:`input_bounds`.
        """
        u_prev = state.u_prev if u_applied is None else np.asarray(u_applied, dtype=float)
        t0 = time.perf_counter()
        try:
            lbw, ubw, bounds_note = self.input_bounds(input_bounds)
            x, p = np.asarray(estimate.x, dtype=float), np.asarray(estimate.p, dtype=float)
            if x.shape != (self.model.nx,) or p.shape != (self.model.n_p,):
                raise ValueError("estimate has the wrong shape")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):
                raise ValueError("estimate is not finite")
            h = self.interval_lengths(t)
            sched = self.scheduled_inputs(t, h)  # the recipe ahead, at the interval starts
            p_sigma, sigma_note = self._parameter_sigma(estimate)
            backoff, backoff_note = self.backoffs(x, u_prev, p, getattr(estimate, "x_sigma", None))
            par = self.parameters(x, u_prev, p, h, sched, p_sigma, backoff)
            scale = self.ocp.w_scale
            lam_x0: np.ndarray | None = None
            lam_g0: np.ndarray | None = None
            if state.w is None:
                guess = self.initial_guess(x, u_prev, h, p, t, scheduled=sched, p_sigma=p_sigma)
                w0 = guess / scale
            else:
                w0, lam_x0, lam_g0 = self._shift(state.w, state.lam_x, state.lam_g)
                w0[self.ocp.layout.X[0]] = x / scale[self.ocp.layout.X[0]]
            if self._rti is not None and lam_x0 is not None and lam_g0 is not None:
                bounds = None if lbw is self.ocp.lbw else (lbw, ubw)
                rti = self._rti(w0, par, lam_x0, lam_g0, bounds=bounds)
                w, lam_x, lam_g = rti.w, rti.lam_x, rti.lam_g
                stats: dict[str, Any] = {
                    "success": rti.success,
                    "return_status": rti.status,
                    "qp_solver": rti.solver,
                    "iter_count": 1,
                }
                use_rti = True
            else:
                args: dict[str, Any] = dict(
                    x0=w0,
                    p=par,
                    lbx=lbw,
                    ubx=ubw,
                    lbg=self.ocp.lbg,
                    ubg=self.ocp.ubg,
                )
                solver = self._ipopt_cold
                if lam_x0 is not None and lam_g0 is not None:
                    args.update(lam_x0=lam_x0, lam_g0=lam_g0)
                    solver = self._ipopt
                sol = solver(**args)
                stats = solver.stats()
                warm_status = str(stats.get("return_status", ""))
                if (
                    "lam_x0" in args
                    and warm_status in _RETRY
                    and time.perf_counter() - t0 < self.config.time_limit_s
                ):
                    # a warm start near active state bounds can end in a local
                    # infeasibility of the barrier problem (do-mpc's reactor with Radau
                    # collocation, X approaching its bound: "Infeasible_Problem_Detected"
                    # on 2 to 6 of 150 steps); from the same point with the multipliers
                    # and the adaptive barrier update it solves (13 iterations there), so
                    # try that once before the step falls back
                    if self._ipopt_retry is None:
                        self._ipopt_retry = ca.nlpsol(
                            "nmpc_ipopt_retry",
                            "ipopt",
                            self.ocp.nlp,
                            {**self._retry_opts, **self._shared},
                        )
                    sol = self._ipopt_retry(**args)
                    stats = dict(self._ipopt_retry.stats())
                    stats["retried_after"] = warm_status
                w = np.asarray(sol["x"]).ravel()
                lam_x = np.asarray(sol["lam_x"]).ravel()
                lam_g = np.asarray(sol["lam_g"]).ravel()
                use_rti = False
            elapsed = time.perf_counter() - t0
            if not np.all(np.isfinite(w)):
                raise FloatingPointError("solver returned non-finite values")
            cost, slack, slack_rel = (float(r[0]) for r in self._report(w, par))
            report = (cost, slack, slack_rel)
            status, iters, msg = self._status(stats, use_rti, elapsed, report)
            if "retried_after" in stats:
                warm_end = stats["retried_after"]
                msg = f"{msg} (adaptive barrier after the warm start ended {warm_end})"
            if status is SolveStatus.FAILED:
                raise RuntimeError(msg)
            for note in (bounds_note, sigma_note, backoff_note):
                if note:
                    msg = f"{msg}; {note}"
            u_lo = lbw[self.ocp.layout.U[0]] * self.ocp.w_scale[self.ocp.layout.U[0]]
            u_hi = ubw[self.ocp.layout.U[0]] * self.ocp.w_scale[self.ocp.layout.U[0]]
            plan = self._plan(t, w, par, h, status, iters, elapsed, msg, report, (u_lo, u_hi))
            new_state = NMPCState(
                w=w,
                lam_x=lam_x,
                lam_g=lam_g,
                plan=plan,
                u_prev=plan.u_next,
                steps=state.steps + 1,
            )
            return plan, new_state
        except Exception as exc:  # the loop must never see a controller exception
            elapsed = time.perf_counter() - t0
            plan = self._fallback_plan(state, t, elapsed, f"{type(exc).__name__}: {exc}")
            return plan, replace(
                state,
                w=None,
                lam_x=None,
                lam_g=None,
                plan=plan,
                u_prev=plan.u_next,
                steps=state.steps + 1,
            )

    # --- internals -----------------------------------------------------------------
    def _status(
        self,
        stats: dict[str, Any],
        rti: bool,
        elapsed: float,
        report: tuple[float, float, float],
    ) -> tuple[SolveStatus, int, str]:
        ret = str(stats.get("return_status", ""))
        iters = int(stats.get("iter_count", 1 if rti else 0))
        has_slack = bool(self.ocp.layout.S.size)
        slack = report[1] if has_slack else 0.0
        slack_rel = report[2] if has_slack else 0.0
        if rti:
            ok = bool(stats.get("success"))
            status = SolveStatus.SOLVED if ok else SolveStatus.FAILED
            if not ok:
                msg = f"QP failed: {ret}"
            elif ret == "solved":
                msg = "real-time iteration"
            else:  # the fallback QP solver delivered the step
                msg = f"real-time iteration, QP by {stats.get('qp_solver')} ({ret})"
        elif ret in ("Solve_Succeeded",):
            status, msg = SolveStatus.SOLVED, ret
        elif ret in ("Solved_To_Acceptable_Level", "Maximum_Iterations_Exceeded"):
            status, msg = SolveStatus.SOLVED_INACCURATE, ret
        elif ret == "Maximum_WallTime_Exceeded" or elapsed > self.config.time_limit_s:
            status, msg = (
                SolveStatus.TIME_LIMIT,
                f"{ret}: wall-time limit {self.config.time_limit_s} s",
            )
        else:
            status, msg = SolveStatus.FAILED, f"IPOPT: {ret}"
        if status is SolveStatus.TIME_LIMIT:
            # an unconverged iterate is not trusted: fall back to the shifted plan
            return SolveStatus.FAILED, iters, msg
        if (
            status in (SolveStatus.SOLVED, SolveStatus.SOLVED_INACCURATE)
            and slack_rel > self.config.slack_tolerance
        ):
            return (
                SolveStatus.INFEASIBLE_SOFTENED,
                iters,
                f"soft bounds violated by up to {slack:.3g} (bound units; "
                f"{slack_rel:.3g} of the bound's scale)",
            )
        return status, iters, msg

    def _plan(
        self,
        t: float,
        w: np.ndarray,
        par: np.ndarray,
        h: np.ndarray,
        status: SolveStatus,
        iters: int,
        elapsed: float,
        msg: str,
        report: tuple[float, float, float],
        u_bounds: tuple[np.ndarray, np.ndarray],
    ) -> Plan:
        lay = self.ocp.layout
        w = w * self.ocp.w_scale
        X = w[lay.X]
        U = np.tile(par[self.model.nx : self.model.nx + self.model.nu], (self.config.horizon, 1))
        for i in lay.fixed:
            U[:, i] = self.config.fixed_inputs.get(
                self.model.input_names[i], self.model.inputs[i].nominal
            )
        U[:, lay.scheduled] = par[lay.P_sched]  # what the prediction assumed
        # IPOPT may end a hair outside a bound (bound_relax_factor); the plan never does
        U[:, lay.manip] = np.clip(w[lay.U[lay.move_of]], *u_bounds)
        return Plan(
            t=t,
            u_next=U[0].copy(),
            U=U,
            X=X,
            t_nodes=t + np.concatenate([[0.0], np.cumsum(h)]),
            status=status,
            iterations=iters,
            solve_time_s=elapsed,
            cost=report[0],
            slack_max=report[1] if lay.S.size else 0.0,
            message=msg,
            scenario_X=None if lay.tree is None else w[lay.XS],
            scenario_moves=None if lay.tree is None else w[lay.US],
        )

    def _parameter_sigma(self, estimate: Estimate) -> tuple[np.ndarray | None, str]:
        """The estimate's parameter standard deviations (``p_sigma``, optional) for a tree
        with sampled parameters, and a note when they are missing (the sampled scenarios
        then sit at the estimate)."""
        tree = self.ocp.layout.tree
        if tree is None or not np.any(tree.factors > 0):
            return None, ""
        raw = getattr(estimate, "p_sigma", None)
        if raw is None:
            return None, "robust: the estimate has no parameter sigma, sampled scenarios at p"
        sigma = np.asarray(raw, dtype=float)
        if sigma.shape != (self.model.n_p,):
            raise ValueError(f"estimate p_sigma has shape {sigma.shape}, not ({self.model.n_p},)")
        sampled = tree.index[tree.factors > 0]
        missing = [self.model.parameter_names[i] for i in sampled if not np.isfinite(sigma[i])]
        note = f"robust: no sigma for {', '.join(missing)} in the estimate" if missing else ""
        return sigma, note

    def _shift(self, w: np.ndarray, lam_x: np.ndarray | None, lam_g: np.ndarray | None) -> _Shifted:
        """Warm start for the next period: the last solution and its multipliers one
        interval ahead (nodes, moves, collocation states, slacks and every interval's
        constraint rows), so the next solve starts nearly feasible and nearly optimal.
        The last interval repeats itself. Returns copies."""
        w_src, g_src = self._shift_src
        return (
            w[w_src],
            None if lam_x is None else lam_x[w_src],
            None if lam_g is None else lam_g[g_src],
        )

    def _shift_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """Index maps (into w and g) of the shift; identity where no shift applies."""
        lay = self.ocp.layout
        w_src, g_src = np.arange(lay.n_w), np.arange(lay.n_g)
        if self.config.horizon_mode != "receding" or self.config.move_blocks is not None:
            return w_src, g_src
        if lay.tree is not None:
            return self._tree_shift_sources(w_src, g_src)
        w_src[lay.X[:-1].ravel()] = lay.X[1:].ravel()
        w_src[lay.U[:-1].ravel()] = lay.U[1:].ravel()
        w_len = np.diff(lay.w_spans, axis=1).ravel()
        g_len = np.diff(lay.g_spans, axis=1).ravel()
        if np.all(w_len == w_len[0]) and np.all(g_len == g_len[0]):
            for k in range(len(w_len) - 1):
                w_src[slice(*lay.w_spans[k])] = np.arange(*lay.w_spans[k + 1])
                g_src[slice(*lay.g_spans[k])] = np.arange(*lay.g_spans[k + 1])
        return w_src, g_src

    def _tree_shift_sources(
        self, w_src: np.ndarray, g_src: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shift of a scenario tree: every scenario's nodes, moves and intervals one
        interval ahead. A move shared by several scenarios (a tree node) takes its
        successor in the first of them (the nominal one for the root). A scenario's
        interval with fewer rows than the next one (the rate-limit rows of a shared move
        are written once, in the first scenario through it; they come first in an
        interval) takes the next interval's last rows."""
        lay = self.ocp.layout
        for sc in reversed(range(lay.XS.shape[0])):  # scenario 0 writes the shared ones last
            w_src[lay.XS[sc, :-1].ravel()] = lay.XS[sc, 1:].ravel()
            w_src[lay.US[sc, :-1].ravel()] = lay.US[sc, 1:].ravel()
            for spans, src in ((lay.w_spans_s[sc], w_src), (lay.g_spans_s[sc], g_src)):
                for k in range(spans.shape[0] - 1):
                    (a, b), (c, d) = spans[k], spans[k + 1]
                    if b - a <= d - c:
                        src[a:b] = np.arange(d - (b - a), d)
        return w_src, g_src

    def _fallback_plan(self, state: NMPCState, t: float, elapsed: float, msg: str) -> Plan:
        prev = state.plan
        U: np.ndarray
        X: np.ndarray
        t_nodes: np.ndarray
        if prev is not None:
            U = np.vstack([prev.U[1:], prev.U[-1:]])
            X = np.vstack([prev.X[1:], prev.X[-1:]])
            t_nodes = prev.t_nodes + (t - prev.t)
        else:
            U = np.tile(state.u_prev, (self.config.horizon, 1))
            X = np.full((self.config.horizon + 1, self.model.nx), np.nan)
            t_nodes = t + self.config.dt_h * np.arange(self.config.horizon + 1)
            # the scheduled inputs are known even without a plan (a failing schedule: hold)
            with contextlib.suppress(ValueError):
                U[:, self.ocp.layout.scheduled] = self.scheduled_inputs(t, np.diff(t_nodes))
        return Plan(
            t=t,
            u_next=U[0].copy(),
            U=U,
            X=X,
            t_nodes=t_nodes,
            status=SolveStatus.FAILED,
            iterations=0,
            solve_time_s=elapsed,
            cost=float("nan"),
            slack_max=float("nan"),
            message=f"{msg}; using the previous plan shifted by one period",
        )


def _qp_options(name: str) -> dict[str, Any]:
    if name == CONDENSED:
        return {}
    if name == "qrqp":
        return {
            "print_iter": False,
            "print_header": False,
            "print_info": False,
            "error_on_fail": False,
        }
    if name == "qpoases":
        # equalities (the dynamics) active from the start: ~20x faster on collocation QPs
        return {
            "printLevel": "none",
            "enableEqualities": True,
            "sparse": True,
            "error_on_fail": False,
        }
    if name == "osqp":
        return {"osqp": {"verbose": False}, "error_on_fail": False}
    return {"error_on_fail": False}
