"""NMPC configuration: horizon, objective, constraints and solver, checked before any solve."""

from __future__ import annotations

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
    """

    name: str
    lower: float = -math.inf
    upper: float = math.inf
    weight_l1: float = 1e3
    weight_l2: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Tracking:
    """Quadratic tracking of a state or output: weight * (value - target)^2 per hour."""

    name: str
    target: float
    weight: float


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
    compiles the RTI linearization with the system C compiler (about 3x faster steps; the
    first build of a configuration on a machine can take a minute, later ones load it from
    the cache, see ``bpcontrol.nmpc._rti``).
    ``qp_fallback``: QP solver for an RTI step whose ``qp_solver`` result fails the
    feasibility check (``None``: report the step as failed instead).
    ``smoothing`` (> 0) replaces the model's min/max kinks by smooth ones of that width in
    the controller's copy (Newton solvers stall on kinks; the plant stays exact).
    ``ipopt_options``: extra IPOPT options by name without the ``ipopt.`` prefix (e.g.
    ``{"warm_start_init_point": "yes"}``); they override the defaults.
    ``initial_inputs(t_h)`` gives all model inputs of a recipe, used to build the first
    guess (a feasible recipe makes the first full solve far more reliable).
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
    solver: Literal["rti", "ipopt"] = "rti"
    qp_solver: str = "qrqp"
    qp_fallback: str | None = "qpoases"
    smoothing: float = 0.0
    initial_inputs: Callable[[float], Any] | None = None
    input_schedule: Callable[[float], Any] | None = None
    jit: bool = False
    max_iter: int = 200
    time_limit_s: float = 5.0
    slack_tolerance: float = 1e-6
    ipopt_options: Mapping[str, Any] = field(default_factory=dict)

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
            if qp is not None and not (isinstance(qp, str) and ca.has_conic(qp)):
                raise NMPCConfigError(
                    f"{label}: unknown QP solver {qp!r} (CasADi conic plugins, e.g. qrqp, "
                    "qpoases, osqp)"
                )
        if not (math.isfinite(self.smoothing) and self.smoothing >= 0):
            raise NMPCConfigError(f"smoothing must be >= 0, got {self.smoothing}")
        if not self.time_limit_s > 0:
            raise NMPCConfigError("time_limit_s must be > 0")
        if self.input_schedule is not None:
            if not callable(self.input_schedule):
                raise NMPCConfigError(
                    f"input_schedule must be a function of time (h), got {self.input_schedule!r}"
                )
            schedule_at(self.input_schedule, model, t0_h)  # at the batch start


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
