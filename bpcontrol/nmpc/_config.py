"""NMPC configuration: horizon, objective, constraints and solver, checked before any solve."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import casadi as ca
import numpy as np

from models import Model


class NMPCConfigError(ValueError):
    """The controller configuration does not fit the model; raised before any solve."""


@dataclass(frozen=True, kw_only=True)
class SoftBound:
    """A soft bound on a state or output, with an exact L1 penalty (plus a small L2 term).

    The L1 weight must exceed the constraint's Lagrange multiplier for the penalty to be
    exact (Fletcher 1987, Practical Methods of Optimization, ch. 14): then the optimum is
    the hard-constrained one whenever that is feasible, and the problem always has one.

    The bound holds along the whole interval, not only at the shooting nodes: at the node,
    every collocation point and ``NMPCConfig.path_points`` evenly spaced points of the
    collocation polynomial inside it (RK4: at every substep's end), with one slack per
    interval for all of them (the interval's largest violation), its penalty per control
    period (scaled by the interval's length over ``dt_h``).

    ``backoff_sigma`` (k >= 0, default 0) tightens the bound for estimation uncertainty: the
    planned bound is ``lower + k sigma`` and ``upper - k sigma``, with ``sigma`` the
    estimate's standard deviation of the bounded variable (of a state: its own; of an
    output: first order, ``sqrt(sum_i (dy/dx_i sigma_i)^2)`` from the states' standard
    deviations at the estimate), the same over the horizon. An estimate without state
    standard deviations (``x_sigma``) plans on the bound itself and the plan says so.
    """

    name: str
    lower: float = -math.inf
    upper: float = math.inf
    weight_l1: float = 1e3
    weight_l2: float = 1.0
    backoff_sigma: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Tracking:
    """Quadratic tracking of a state or output: weight * (value - target)^2 per hour."""

    name: str
    target: float
    weight: float


MAX_SCENARIOS = 100
"""Most scenarios (leaves of the tree) a robust problem may have: each one is a copy of
the whole trajectory, so the NLP and its solve grow linearly with them."""


@dataclass(frozen=True, kw_only=True)
class RobustConfig:
    """Multi-stage (scenario-tree) robust NMPC over uncertain model parameters.

    Lucia, Finkler, Engell (2013) J. Process Control 23:1306-1319; do-mpc's ``n_robust``.
    Each uncertain parameter takes a few values; a *combination* is one value of every
    uncertain parameter (all combinations, in ``itertools.product`` order of the names as
    given, the first value of each first). The tree branches into every combination at
    each of the first ``n_robust`` intervals and then holds its branch's values to the
    horizon end, so it has ``n_combinations ** n_robust`` scenarios (leaves). A move is
    shared by all scenarios that agree up to its interval (non-anticipativity: the first
    move is one decision for all of them; from interval ``n_robust`` on each scenario has
    its own moves). The cost is the weighted sum of the scenarios' costs; every scenario
    meets the hard and soft bounds. Scenario 0 (the first value of every parameter, or the
    estimate itself for sampled ones) is the nominal one the plan reports.

    ``values``: per parameter, its values in the parameter's unit (absolute; they replace
    the estimate's value for that parameter). ``sigma_factors``: per parameter a factor
    ``c``: its values are ``(p, p + c sigma, p - c sigma)`` around the estimate ``p``
    with the estimator's standard deviation ``sigma`` of that parameter (``p_sigma`` of
    the estimate, see :class:`bpcontrol.nmpc.StateEstimate`), clipped to the parameter's
    bounds; an estimate without a sigma for it gives ``sigma = 0`` (the plan's message
    says so). ``weights``: one per combination (same order), a scenario's weight being
    the product over its branches; normalised to sum 1; default equal.
    """

    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    sigma_factors: Mapping[str, float] = field(default_factory=dict)
    n_robust: int = 1
    weights: tuple[float, ...] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The uncertain parameters: first those with values, then the sampled ones."""
        return (*self.values, *self.sigma_factors)

    @property
    def n_combinations(self) -> int:
        """Combinations of one value per uncertain parameter (branches per tree node)."""
        n = 1
        for vals in self.values.values():
            n *= len(vals)
        return n * 3 ** len(self.sigma_factors)

    @property
    def n_scenarios(self) -> int:
        """Leaves of the tree: ``n_combinations ** n_robust``."""
        return self.n_combinations ** max(self.n_robust, 0)

    def validate(self, model: Model, horizon: int) -> None:
        """Raise :class:`NMPCConfigError` on the first problem, naming the key."""
        params = model.parameter_names
        if not self.names:
            raise NMPCConfigError(
                "robust: no uncertain parameter (give robust.values or robust.sigma_factors)"
            )
        for label, keys in (("values", self.values), ("sigma_factors", self.sigma_factors)):
            for name in keys:
                if name not in params:
                    raise NMPCConfigError(
                        f"robust.{label}: {name!r} is not a parameter of {model.name!r}; "
                        f"parameters: {', '.join(params)}"
                    )
        for name in set(self.values) & set(self.sigma_factors):
            raise NMPCConfigError(f"robust: parameter {name!r} is in both values and sigma_factors")
        for name, vals in self.values.items():
            par = model.parameters[model.index(name)]
            if len(vals) < 1:
                raise NMPCConfigError(f"robust.values.{name} lists no value")
            for v in vals:
                if not (isinstance(v, int | float) and math.isfinite(v)):
                    raise NMPCConfigError(f"robust.values.{name}: {v!r} is not a finite number")
                if not par.lower <= v <= par.upper:
                    raise NMPCConfigError(
                        f"robust.values.{name}: {v:g} leaves the parameter's range "
                        f"[{par.lower:g}, {par.upper:g}] {par.unit}"
                    )
        for name, c in self.sigma_factors.items():
            if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
                raise NMPCConfigError(f"robust.sigma_factors.{name} must be > 0, got {c!r}")
        if not (isinstance(self.n_robust, int) and 1 <= self.n_robust <= horizon):
            raise NMPCConfigError(
                f"robust.n_robust must be in [1, horizon = {horizon}], got {self.n_robust!r}"
            )
        n_comb = self.n_combinations
        if self.weights is not None:
            if len(self.weights) != n_comb:
                raise NMPCConfigError(
                    f"robust.weights: {len(self.weights)} given, the tree has {n_comb} "
                    "combinations (one weight each, in product order)"
                )
            for w in self.weights:
                if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                    raise NMPCConfigError(f"robust.weights: {w!r} is not a number > 0")
        if self.n_scenarios > MAX_SCENARIOS:
            sizes = [len(v) for v in self.values.values()] + [3] * len(self.sigma_factors)
            raise NMPCConfigError(
                f"robust: {' x '.join(map(str, sizes))} = {n_comb} combinations, "
                f"n_robust {self.n_robust}: {self.n_scenarios} scenarios, above the limit of "
                f"{MAX_SCENARIOS}; use fewer values or a smaller n_robust"
            )

    def tree(self, model: Model, horizon: int, move_of: np.ndarray | None = None) -> ScenarioTree:
        """The scenario tree over ``horizon`` intervals (``move_of``: interval -> move
        block, default one move per interval). Call :meth:`validate` first."""
        r = self.n_robust
        n_comb = self.n_combinations
        mv = np.arange(horizon) if move_of is None else np.asarray(move_of, dtype=int)
        paths = np.array(list(itertools.product(range(n_comb), repeat=r)), dtype=int)
        S = paths.shape[0]
        w_comb = np.ones(n_comb) if self.weights is None else np.asarray(self.weights, float)
        weights = np.prod(w_comb[paths], axis=1)
        weights = weights / weights.sum()
        comb_of = paths[:, np.minimum(np.arange(horizon), r - 1)]
        # a move block starting at interval k is decided knowing the branches before k
        n_moves = int(mv.max()) + 1
        starts = np.array([int(np.argmax(mv == b)) for b in range(n_moves)])
        node_of = np.zeros((S, n_moves), dtype=int)
        nodes: dict[tuple[int, tuple[int, ...]], int] = {}
        for s in range(S):
            for b in range(n_moves):
                key = (b, tuple(paths[s, : min(int(starts[b]), r)]))
                node_of[s, b] = nodes.setdefault(key, len(nodes))
        # the values of each uncertain parameter per combination
        levels: list[list[tuple[str, float | int]]] = [
            [("value", float(v)) for v in vals] for vals in self.values.values()
        ]
        levels += [[("sigma", 0), ("sigma", 1), ("sigma", -1)] for _ in self.sigma_factors]
        combos = list(itertools.product(*levels))
        return ScenarioTree(
            names=self.names,
            index=np.array([model.index(n) for n in self.names], dtype=int),
            combos=tuple(tuple(c) for c in combos),
            factors=np.array(
                [0.0] * len(self.values) + [float(c) for c in self.sigma_factors.values()]
            ),
            lower=np.array([model.parameters[model.index(n)].lower for n in self.names]),
            upper=np.array([model.parameters[model.index(n)].upper for n in self.names]),
            paths=paths,
            weights=weights,
            comb_of=comb_of,
            node_of=node_of,
            n_nodes=len(nodes),
        )


@dataclass(frozen=True)
class ScenarioTree:
    """The structure of a robust problem (from :meth:`RobustConfig.tree`), pure data.

    ``paths`` (S, n_robust): the combination taken at each branching; ``comb_of`` (S, N):
    the combination whose parameter values interval ``k`` of scenario ``s`` uses;
    ``node_of`` (S, n_moves): the tree node (shared decision variable) of each scenario's
    move; scenarios with the same node share that move. ``weights`` (S,) sum to 1.
    """

    names: tuple[str, ...]
    index: np.ndarray  # model parameter index of each uncertain parameter
    combos: tuple[tuple[tuple[str, float | int], ...], ...]  # per combination, per name
    factors: np.ndarray  # sigma factor per uncertain parameter (0 for given values)
    lower: np.ndarray
    upper: np.ndarray
    paths: np.ndarray
    weights: np.ndarray
    comb_of: np.ndarray
    node_of: np.ndarray
    n_nodes: int

    @property
    def n_scenarios(self) -> int:
        return int(self.paths.shape[0])

    @property
    def n_combinations(self) -> int:
        return len(self.combos)

    def parameter_sets(self, p: np.ndarray, p_sigma: np.ndarray | None = None) -> np.ndarray:
        """The full parameter vector of every combination, (n_combinations, n_p): the
        estimate ``p`` with the uncertain parameters replaced by their values (sampled ones
        ``p + c k sigma``, k in {0, 1, -1}, clipped to the parameter's bounds; ``p_sigma``
        the estimate's standard deviations per model parameter, None or NaN: 0)."""
        p = np.asarray(p, dtype=float)
        sig = np.zeros(p.size) if p_sigma is None else np.nan_to_num(np.asarray(p_sigma, float))
        out = np.tile(p, (len(self.combos), 1))
        for c, combo in enumerate(self.combos):
            for j, (kind, v) in enumerate(combo):
                i = int(self.index[j])
                if kind == "value":
                    out[c, i] = float(v)
                else:
                    val = p[i] + float(v) * self.factors[j] * abs(float(sig[i]))
                    out[c, i] = min(max(val, self.lower[j]), self.upper[j])
        return out


StageFn = Callable[..., Any]  # (m, x, u, p) -> expression; per hour
TerminalFn = Callable[..., Any]  # (m, x, p) -> expression


@dataclass(frozen=True, kw_only=True)
class Objective:
    """Cost to minimise over the horizon (negative weights reward, e.g. product).

    ``terminal``: linear weights on states/outputs at the horizon end; ``stage``: linear
    weights integrated over the horizon (per hour, rectangle rule at interval starts);
    ``input_cost``: linear weights on inputs per hour (feed, air, energy); ``move``: weight
    on each squared input change (do-mpc's ``rterm``); ``tracking``: quadratic terms;
    ``terminal_fn(m, x, p)`` and ``stage_fn(m, x, u, p)``: any expression in the math
    namespace, e.g. total product ``-x.P * x.V``.
    """

    terminal: Mapping[str, float] = field(default_factory=dict)
    stage: Mapping[str, float] = field(default_factory=dict)
    input_cost: Mapping[str, float] = field(default_factory=dict)
    move: Mapping[str, float] = field(default_factory=dict)
    tracking: tuple[Tracking, ...] = ()
    terminal_fn: TerminalFn | None = None
    stage_fn: StageFn | None = None


@dataclass(frozen=True, kw_only=True)
class NMPCConfig:
    """Everything that defines the optimal control problem and how it is solved.

    Time in hours. ``dt_h`` is the control period (length of the first interval).
    ``horizon_mode``: ``receding`` (N intervals of ``dt_h``, cut at ``batch_end_h`` once it is
    within reach) or ``batch_end`` (shrinking:
    the N intervals cover the time left to ``batch_end_h``, the first one ``dt_h`` long).
    ``manipulated``: inputs the controller chooses (default all). Each other input, on each
    interval of the horizon, is (in this order of precedence) its ``fixed_inputs`` value
    if named there (a constant), else ``input_schedule(t_k)`` at the interval's start time
    ``t_k`` if a schedule is given, else its nominal value. ``input_schedule(t_h)`` gives
    all model inputs at process time ``t_h`` (h), in model order (e.g. ``Recipe.fallback``:
    water, base, oil, discharges, aeration the recipe programs and the controller does not
    choose); the controller knows their changes ahead over the whole horizon instead of
    holding today's value. ``rate_limits``: max |change| per hour of an input.
    ``rate_limits`` and ``objective.move`` act on manipulated inputs only (the others are
    data, not decisions: a scheduled step is no move).
    ``state_bounds``: hard bounds on states at the predicted nodes (not the measured first
    node, so a disturbed estimate never makes the problem infeasible; use ``soft_bounds``
    where a hard bound could be unreachable).
    ``move_blocks``: lengths of blocks of intervals sharing one move (sum = horizon).
    ``solver``: ``rti`` (one SQP iteration per step, QP by ``qp_solver``, after a full
    ``ipopt`` solve on the first step) or ``ipopt`` (full solve each step). ``jit``
    compiles the RTI linearization with the system C compiler (the fast path: about 3x
    faster linearization; one to a few seconds the first time a configuration is built on
    a machine, later ones load it from the cache, see ``bpcontrol.nmpc._rti``).
    ``qp_solver``: ``condensed`` (default: the QP reduced to the moves and slacks and
    solved by dense qpOASES, ``bpcontrol.nmpc._condensing``; exact, dependable, fastest
    for a few dozen moves) or a CasADi conic plugin on the sparse QP (``qrqp``,
    ``qpoases``, ...; better for many moves, e.g. a large scenario tree).
    ``qp_fallback``: QP solver for an RTI step whose ``qp_solver`` result fails the
    feasibility check (``None``: report the step as failed instead).
    ``smoothing`` (> 0) replaces the model's min/max kinks by smooth ones of that width in
    the controller's copy (Newton solvers stall on kinks; the plant stays exact);
    ``smoothing_kind``: ``symmetric`` (default: within eps/2 of the kink on both sides) or
    ``one-sided`` (exact on the first argument's branch, so ``fmax(A, 0)`` is exact for
    A >= 0, see :class:`models.OneSidedSmoothCasadiMath`); which solves faster depends on
    the model (docs/packs.md).
    ``ipopt_options``: extra IPOPT options by name without the ``ipopt.`` prefix (e.g.
    ``{"warm_start_init_point": "yes"}``); they override the defaults.
    ``robust``: a scenario tree over uncertain parameters (:class:`RobustConfig`); None:
    the nominal problem on the estimate's parameters.
    ``initial_inputs(t_h)`` gives all model inputs of a recipe, used to build the first
    guess (a feasible recipe makes the first full solve far more reliable).
    ``path_points``: evenly spaced points inside every interval where the soft bounds
    hold besides the node and the collocation points (collocation only; the state there
    from the collocation polynomial, so they cost constraint rows, not variables): a fast
    state (DO) can dip between the collocation points while the nodes sit on the bound.
    ``bounds_between_nodes``: False holds the soft bounds at the nodes only (no interior
    points): an easier problem whose solution starts the full one (the oracle's
    continuation, ``hil.runner.oracle_product``), never a controller's setting.
    ``slack_tolerance``: a plan is reported ``infeasible-softened`` only when a soft
    bound's slack exceeds this fraction of the bound's scale (its largest finite value,
    or a state's typical magnitude if larger; ``_ocp.soft_scale``), so the barrier's
    residual slack of ~1e-6 on a 30 % DO bound is no infeasibility.
    """

    horizon: int = 20
    dt_h: float = 1.0
    horizon_mode: Literal["receding", "batch_end"] = "receding"
    batch_end_h: float | None = None
    manipulated: tuple[str, ...] | None = None
    fixed_inputs: Mapping[str, float] = field(default_factory=dict)
    input_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    rate_limits: Mapping[str, float] = field(default_factory=dict)
    state_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    soft_bounds: tuple[SoftBound, ...] = ()
    objective: Objective = field(default_factory=Objective)
    move_blocks: tuple[int, ...] | None = None
    discretization: Literal["rk4", "collocation"] = "rk4"
    rk4_substeps: int = 4
    collocation_degree: int = 3
    path_points: int = 0
    bounds_between_nodes: bool = True
    solver: Literal["rti", "ipopt"] = "rti"
    qp_solver: str = "condensed"
    qp_fallback: str | None = "qpoases"
    smoothing: float = 0.0
    smoothing_kind: Literal["one-sided", "symmetric"] = "symmetric"
    initial_inputs: Callable[[float], Any] | None = None
    input_schedule: Callable[[float], Any] | None = None
    jit: bool = False
    max_iter: int = 200
    time_limit_s: float = 5.0
    slack_tolerance: float = 1e-6
    ipopt_options: Mapping[str, Any] = field(default_factory=dict)
    robust: RobustConfig | None = None

    def validate(self, model: Model, *, t0_h: float = 0.0) -> None:
        """Raise :class:`NMPCConfigError` on the first problem, naming it."""
        if self.horizon < 1:
            raise NMPCConfigError(f"horizon must be >= 1 interval, got {self.horizon}")
        if not (math.isfinite(self.dt_h) and self.dt_h > 0):
            raise NMPCConfigError(f"dt_h must be > 0 h, got {self.dt_h}")
        if self.horizon_mode not in ("receding", "batch_end"):
            raise NMPCConfigError(
                f"horizon_mode must be receding or batch_end, not {self.horizon_mode!r}"
            )
        if self.batch_end_h is not None:
            if not self.batch_end_h > t0_h:
                raise NMPCConfigError(f"batch_end_h {self.batch_end_h} h is not after t0 {t0_h} h")
            if (
                self.horizon_mode == "receding"
                and t0_h + self.horizon * self.dt_h > self.batch_end_h + 1e-9
            ):
                raise NMPCConfigError(
                    f"horizon {self.horizon} x {self.dt_h} h reaches beyond the batch end "
                    f"({self.batch_end_h} h); shorten it or use horizon_mode='batch_end'"
                )
        elif self.horizon_mode == "batch_end":
            raise NMPCConfigError("horizon_mode='batch_end' needs batch_end_h")
        inputs = set(model.input_names)
        names = set(model.state_names) | set(model.output_names)
        for label, keys in (
            ("manipulated", self.manipulated or ()),
            ("fixed_inputs", self.fixed_inputs),
            ("input_bounds", self.input_bounds),
            ("rate_limits", self.rate_limits),
            ("objective.move", self.objective.move),
            ("objective.input_cost", self.objective.input_cost),
        ):
            for k in keys:
                if k not in inputs:
                    raise NMPCConfigError(
                        f"{label}: unknown input {k!r}; inputs of {model.name!r}: "
                        f"{', '.join(model.input_names)}"
                    )
        if self.manipulated is not None and not self.manipulated:
            raise NMPCConfigError("manipulated lists no input")
        for k in set(self.fixed_inputs) & set(self.manipulated or model.input_names):
            raise NMPCConfigError(f"input {k!r} is both manipulated and fixed")
        for k, (lo, hi) in self.input_bounds.items():
            u = model.inputs[model.index(k)]
            if not lo <= hi:
                raise NMPCConfigError(f"input_bounds[{k!r}] is inverted: [{lo}, {hi}]")
            if lo < u.lower or hi > u.upper:
                raise NMPCConfigError(
                    f"input_bounds[{k!r}] = [{lo}, {hi}] leaves the model's range "
                    f"[{u.lower}, {u.upper}] {u.unit}"
                )
        for k, (lo, hi) in self.state_bounds.items():
            if k not in model.state_names:
                raise NMPCConfigError(
                    f"state_bounds: unknown state {k!r}; states of {model.name!r}: "
                    f"{', '.join(model.state_names)} (bound outputs with soft_bounds)"
                )
            if not lo <= hi:
                raise NMPCConfigError(f"state_bounds[{k!r}] is inverted: [{lo}, {hi}]")
        for k, r in self.rate_limits.items():
            if not r > 0:
                raise NMPCConfigError(f"rate_limits[{k!r}] must be > 0 per hour, got {r}")
        for sb in self.soft_bounds:
            if sb.name not in names:
                raise NMPCConfigError(f"soft bound on unknown state or output {sb.name!r}")
            if not sb.lower <= sb.upper:
                raise NMPCConfigError(
                    f"soft bound on {sb.name!r} is inverted: [{sb.lower}, {sb.upper}]"
                )
            if sb.weight_l1 <= 0 or sb.weight_l2 < 0:
                raise NMPCConfigError(f"soft bound on {sb.name!r}: weights must be positive")
            if not (math.isfinite(sb.backoff_sigma) and sb.backoff_sigma >= 0):
                raise NMPCConfigError(
                    f"soft bound on {sb.name!r}: backoff_sigma must be >= 0, got {sb.backoff_sigma}"
                )
        if not 0 <= self.path_points <= 50:
            raise NMPCConfigError(f"path_points must be in [0, 50], got {self.path_points}")
        obj = self.objective
        for label, keys in (("objective.terminal", obj.terminal), ("objective.stage", obj.stage)):
            for k in keys:
                if k not in names:
                    raise NMPCConfigError(f"{label}: unknown state or output {k!r}")
        for tr in obj.tracking:
            if tr.name not in names:
                raise NMPCConfigError(f"objective.tracking: unknown state or output {tr.name!r}")
        if self.move_blocks is not None and (
            sum(self.move_blocks) != self.horizon or min(self.move_blocks) < 1
        ):
            raise NMPCConfigError(
                f"move_blocks {self.move_blocks} must be positive and sum to the "
                f"horizon {self.horizon}"
            )
        if self.discretization not in ("rk4", "collocation"):
            raise NMPCConfigError(f"unknown discretization {self.discretization!r}")
        if self.solver not in ("rti", "ipopt"):
            raise NMPCConfigError(f"unknown solver {self.solver!r}; use 'rti' or 'ipopt'")
        for label, qp in (("qp_solver", self.qp_solver), ("qp_fallback", self.qp_fallback)):
            if qp is not None and not (
                isinstance(qp, str) and (qp == "condensed" or ca.has_conic(qp))
            ):
                raise NMPCConfigError(
                    f"{label}: unknown QP solver {qp!r} ('condensed', or a CasADi conic "
                    "plugin, e.g. qrqp, qpoases, osqp)"
                )
        if not (math.isfinite(self.smoothing) and self.smoothing >= 0):
            raise NMPCConfigError(f"smoothing must be >= 0, got {self.smoothing}")
        if self.smoothing_kind not in ("one-sided", "symmetric"):
            raise NMPCConfigError(
                f"smoothing_kind must be 'one-sided' or 'symmetric', got {self.smoothing_kind!r}"
            )
        if not self.time_limit_s > 0:
            raise NMPCConfigError("time_limit_s must be > 0")
        if self.input_schedule is not None:
            if not callable(self.input_schedule):
                raise NMPCConfigError(
                    f"input_schedule must be a function of time (h), got {self.input_schedule!r}"
                )
            schedule_at(self.input_schedule, model, t0_h)  # at the batch start
        if self.robust is not None:
            if not isinstance(self.robust, RobustConfig):
                raise NMPCConfigError(f"robust must be a RobustConfig, got {self.robust!r}")
            self.robust.validate(model, self.horizon)


def schedule_at(schedule: Callable[[float], Any], model: Model, t_h: float) -> np.ndarray:
    """``schedule(t_h)`` as a finite float vector of all model inputs (else NMPCConfigError).

    Called at configuration time (the batch start) and by the controller for every interval
    start of every step; a schedule that raises or returns garbage is named, never applied.
    """
    where = f"input_schedule({t_h:g} h)"
    try:
        raw = schedule(float(t_h))
        u = np.asarray(raw, dtype=float)
    except Exception as exc:
        raise NMPCConfigError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    if u.shape != (model.nu,):
        raise NMPCConfigError(
            f"{where} returned shape {u.shape}, expected ({model.nu},): one value per model "
            f"input ({', '.join(model.input_names)})"
        )
    bad = [n for n, v in zip(model.input_names, u, strict=True) if not math.isfinite(v)]
    if bad:
        raise NMPCConfigError(f"{where} is not finite for {', '.join(bad)}")
    return u
