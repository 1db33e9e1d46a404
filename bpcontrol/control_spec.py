"""The controller file of a process pack (``control.toml``): the NMPC and its supervision.

A process engineer states what to optimise and within which bounds by variable name; no
Python is needed (a model's derived outputs, such as total product ``P_total = P V``,
make economic objectives plain weights). Example (``bpcontrol/data/packs/ecoli_fedbatch``)::

    horizon = 20                   # intervals of one control period each
    horizon_mode = "receding"      # or "batch_end": the horizon shrinks to the batch end
    solver = "ipopt"               # or "rti" (one SQP iteration per step)
    # qp_solver = "condensed"      # rti's QP: condensed to the moves (default), or a CasADi
    #                              # conic plugin on the sparse QP ("qrqp", "qpoases", ...)
    # jit = true                   # rti: compile the linearization (the fast path, seconds
    #                              # once per machine; falls back to CasADi's VM, warned)
    discretization = "collocation" # or "rk4"
    collocation_degree = 3
    # path_points = 2              # soft bounds also at this many evenly spaced points
    #                              # inside each interval (besides node and collocation
    #                              # points, which always hold them; rk4: substep ends)
    smoothing = 1e-3               # smooth min/max kinks in the controller's model copy
    # smoothing_kind = "one-sided" # exact on min/max's first argument's branch; the
    #                              # default "symmetric" is eps/2 off on both sides
    max_iter = 500
    # manipulated = ["F", "T_set"] # default: every input; the others follow the recipe
    # control_period_min = 10      # default: the recipe's
    # deadline_s = 2.0             # wall s per solve, in (0, 86400]; default: problem size
    auto_resume_after = 3          # good shadow plans before AUTO returns (0: never)

    [objective]                    # minimised; a negative weight rewards
    terminal = { P_total = -1.0 }  # states or outputs at the horizon end
    stage = {}                     # states or outputs, integrated per hour
    input_cost = { Q_air = 1e-3 }  # inputs, per hour
    move = { F = 10.0 }            # squared change of an input between intervals
    tracking = [ { name = "T", target = 30.0, weight = 1.0 } ]

    [soft_bounds.DO]               # exact L1 penalty (weight above the multiplier) + L2
    lower = 31.0
    weight_l1 = 100.0
    weight_l2 = 1.0
    # backoff_sigma = 2.0           # plan the bound k estimate-sigmas inside (default 0)
    unit = "%"                     # optional; must match the model's unit

    [state_bounds.V]               # hard bounds on predicted states (prefer soft ones)
    upper = 10.0
    # model_state_bounds = true    # every predicted state inside the model's range

An economic optimiser exploits any unphysical prediction (growth on negative substrate,
say, when a model's kinetics allow it): bound such states here (``lower = 0.0``), or set
``model_state_bounds = true`` to keep every predicted state inside the model's declared
range. That is off by default: hard bounds on all states made every E. coli plan
infeasible (the smoothed kinetics dip below zero between collocation points).

    [rate_limits]                  # per hour; default: the recipe's limits.<input>.rate_per_h
    F = 0.2

    [ipopt]                        # IPOPT options by name
    warm_start_init_point = "yes"

    [robust]                       # multi-stage robust NMPC (bpcontrol.nmpc.RobustConfig)
    n_robust = 1                   # intervals the scenario tree branches at (robust horizon)
    values = { mu_max = [0.7, 0.56, 0.84] }   # first value: the nominal scenario
    sigma_factors = { Y_xs = 2.0 } # (p, p + 2 sigma, p - 2 sigma) from the estimator
    weights = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # per combination; default equal

Setpoint limits (the inputs' bounds) are the recipe's, so the controller plans inside what
the supervisor will accept. Every problem is one :class:`ControlSpecError` line naming the
file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bpcontrol.nmpc import (
    NMPCConfig,
    NMPCConfigError,
    Objective,
    RobustConfig,
    SoftBound,
    Tracking,
)
from bpcontrol.recipe import MAX_DURATION_H, Recipe
from models import Model

__all__ = [
    "ControlSpec",
    "ControlSpecError",
    "default_deadline_s",
    "nmpc_config",
    "parse_control",
]


class ControlSpecError(ValueError):
    """A controller file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class TrackingSpec(_Strict):
    """Quadratic tracking of a state or output: ``weight (value - target)^2`` per hour."""

    name: str
    target: float
    weight: float = Field(gt=0)


class ObjectiveSpec(_Strict):
    """Linear and quadratic objective terms by variable name (see the module docstring)."""

    terminal: dict[str, float] = {}
    stage: dict[str, float] = {}
    input_cost: dict[str, float] = {}
    move: dict[str, float] = {}
    tracking: list[TrackingSpec] = []


class SoftBoundSpec(_Strict):
    """A soft bound on a state or output (units of that variable)."""

    lower: float | None = None
    upper: float | None = None
    weight_l1: float = Field(default=1e3, gt=0)
    weight_l2: float = Field(default=1.0, ge=0)
    backoff_sigma: float = Field(default=0.0, ge=0, le=10)
    unit: str | None = None


class HardBoundSpec(_Strict):
    """A hard bound on a predicted state (units of that state)."""

    lower: float | None = None
    upper: float | None = None
    unit: str | None = None


class RobustSpec(_Strict):
    """The ``[robust]`` table: a scenario tree over uncertain parameters (see
    :class:`bpcontrol.nmpc.RobustConfig`; values in the parameters' units)."""

    n_robust: int = Field(default=1, ge=1)
    values: dict[str, list[float]] = {}
    sigma_factors: dict[str, float] = {}
    weights: list[float] | None = None


class ControlSpec(_Strict):
    """A parsed controller file (see the module docstring for every key)."""

    horizon: int = Field(default=20, ge=1, le=2000)
    horizon_mode: Literal["receding", "batch_end"] = "receding"
    control_period_min: float | None = Field(default=None, gt=0, le=MAX_DURATION_H * 60.0)
    manipulated: list[str] | None = None
    solver: Literal["ipopt", "rti"] = "ipopt"
    qp_solver: str = "condensed"
    jit: bool = False
    discretization: Literal["rk4", "collocation"] = "collocation"
    collocation_degree: int = Field(default=3, ge=1, le=9)
    rk4_substeps: int = Field(default=4, ge=1, le=100)
    path_points: int = Field(default=0, ge=0, le=50)
    smoothing: float = Field(default=0.0, ge=0)
    smoothing_kind: Literal["one-sided", "symmetric"] = "symmetric"
    max_iter: int = Field(default=500, ge=1, le=100_000)
    slack_tolerance: float = Field(default=1e-6, gt=0)
    deadline_s: float | None = Field(default=None, gt=0, le=86_400)
    auto_resume_after: int = Field(default=3, ge=0)
    objective: ObjectiveSpec = ObjectiveSpec()
    soft_bounds: dict[str, SoftBoundSpec] = {}
    state_bounds: dict[str, HardBoundSpec] = {}
    model_state_bounds: bool = False
    rate_limits: dict[str, float] = {}
    ipopt: dict[str, str | int | float] = {}
    robust: RobustSpec | None = None


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def parse_control(doc: Mapping[str, Any], model: Model, *, source: str) -> ControlSpec:
    """Validate a parsed controller document for ``model`` (raises :class:`ControlSpecError`)."""
    try:
        spec = ControlSpec.model_validate(dict(doc))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            raise ControlSpecError(f"{source}: unknown key {key}{_allowed(parent)}") from None
        raise ControlSpecError(
            f"{source}: {key}: {err['msg'].lower()}, got {err.get('input')!r}"
        ) from None
    _check_names(spec, model, source)
    return spec


def _allowed(parent: tuple[Any, ...]) -> str:
    """``; allowed: ...`` for the table at ``parent`` when it has fixed keys."""
    cls: Any = ControlSpec
    for part in parent:
        field = cls.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            break
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            # a table keyed by variable name holds a fixed-key spec
            # (or an optional table, ``RobustSpec | None``)
            args = getattr(ann, "__args__", ())
            cls = next(
                (a for a in reversed(args) if isinstance(a, type) and issubclass(a, BaseModel)),
                None,
            )
        if cls is None:
            return ""
    if cls is None or not hasattr(cls, "model_fields"):
        return ""
    return f"; allowed: {', '.join(cls.model_fields)}"


def _check_names(spec: ControlSpec, model: Model, source: str) -> None:
    def fail(key: str, msg: str) -> ControlSpecError:
        return ControlSpecError(f"{source}: {key}: {msg}")

    inputs = model.input_names
    values = (*model.state_names, *model.output_names)
    obj = spec.objective
    for label, keys, allowed, what in (
        ("manipulated", spec.manipulated or (), inputs, "an input"),
        ("rate_limits", spec.rate_limits, inputs, "an input"),
        ("objective.input_cost", obj.input_cost, inputs, "an input"),
        ("objective.move", obj.move, inputs, "an input"),
        ("objective.terminal", obj.terminal, values, "a state or output"),
        ("objective.stage", obj.stage, values, "a state or output"),
        ("soft_bounds", spec.soft_bounds, values, "a state or output"),
        ("state_bounds", spec.state_bounds, model.state_names, "a state"),
    ):
        for name in keys:
            if name not in allowed:
                raise fail(
                    f"{label}.{name}" if label != "manipulated" else label,
                    f"{name!r} is not {what} of model {model.name!r}; known: {', '.join(allowed)}",
                )
    for k, tr in enumerate(obj.tracking):
        if tr.name not in values:
            raise fail(f"objective.tracking[{k}].name", f"unknown state or output {tr.name!r}")
    if spec.manipulated is not None:
        if not spec.manipulated:
            raise fail("manipulated", "lists no input (leave it out to manipulate all)")
        if len(set(spec.manipulated)) != len(spec.manipulated):
            raise fail("manipulated", f"names an input twice: {list(spec.manipulated)}")
    for name, rate in spec.rate_limits.items():
        if not rate > 0:
            raise fail(f"rate_limits.{name}", f"must be > 0 per hour, got {rate}")
    for table, bounds in (("soft_bounds", spec.soft_bounds), ("state_bounds", spec.state_bounds)):
        for name, b in bounds.items():
            unit = model.outputs[model.index(name)].unit if model.kind(name) == "output" else None
            unit = unit or model.states[model.index(name)].unit
            if b.unit is not None and b.unit != unit:
                raise fail(f"{table}.{name}.unit", f"is {b.unit!r}, the model's unit is {unit!r}")
            if b.lower is None and b.upper is None:
                raise fail(f"{table}.{name}", "needs lower or upper")
            if b.lower is not None and b.upper is not None and b.lower > b.upper:
                raise fail(f"{table}.{name}", f"is inverted: [{b.lower}, {b.upper}]")


def default_deadline_s(spec: ControlSpec, model: Model, control_period_h: float) -> float:
    """Wall time (s) a solve may take before the supervisor falls back, from the problem size.

    About 3 ms per decision variable of the transcribed problem (measured: the E. coli
    NLP of 640 variables solves in 0.05-0.5 s warm-started, and its first cold solve in
    about 1.5 s), at least 1 s, at most a quarter of the control period (live, the plan
    must arrive long before the next one is due).
    """
    nodes = spec.collocation_degree + 1 if spec.discretization == "collocation" else 1
    n_vars = spec.horizon * (model.nx * nodes + model.nu) * _n_scenarios(spec)
    return float(min(max(1.0, 3e-3 * n_vars), 0.25 * control_period_h * 3600.0))


def _n_scenarios(spec: ControlSpec) -> int:
    """Scenarios of the robust tree (1 without ``[robust]``); a bad table counts 1 here,
    :func:`nmpc_config` reports it."""
    r = spec.robust
    if r is None:
        return 1
    n = 3 ** len(r.sigma_factors)
    for vals in r.values.values():
        n *= max(len(vals), 1)
    return max(1, min(n**r.n_robust, 10**6))


def _robust(spec: RobustSpec | None) -> RobustConfig | None:
    if spec is None:
        return None
    return RobustConfig(
        values={n: tuple(v) for n, v in spec.values.items()},
        sigma_factors=dict(spec.sigma_factors),
        n_robust=spec.n_robust,
        weights=None if spec.weights is None else tuple(spec.weights),
    )


def control_period_h(spec: ControlSpec, recipe: Recipe) -> float:
    """The control period (h): the controller file's, else the recipe's."""
    if spec.control_period_min is None:
        return recipe.control_period_h
    return spec.control_period_min / 60.0


def nmpc_config(
    spec: ControlSpec, model: Model, recipe: Recipe, *, source: str = "control"
) -> NMPCConfig:
    """The :class:`NMPCConfig` of ``spec`` for ``model`` within ``recipe``'s limits.

    Input bounds are the recipe's setpoint limits, rate limits the recipe's unless the
    controller file states tighter ones; the recipe's profile builds the first guess and,
    for inputs the controller does not manipulate, is their schedule over the horizon.
    Raises :class:`ControlSpecError` when the result does not fit the model.
    """
    dt_h = control_period_h(spec, recipe)
    limits = recipe.limits
    rates = {n: lim.rate_per_h for n, lim in limits.items() if math.isfinite(lim.rate_per_h)}
    for name, rate in spec.rate_limits.items():
        rates[name] = min(rate, rates.get(name, math.inf))
    obj = spec.objective
    deadline = spec.deadline_s or default_deadline_s(spec, model, dt_h)
    horizon = spec.horizon
    if spec.horizon_mode == "receding":
        horizon = max(1, min(horizon, int(recipe.duration_h / dt_h + 1e-9)))
    # the inputs the controller does not manipulate follow the recipe over the horizon
    schedule = recipe.fallback if spec.manipulated is not None else None
    config = NMPCConfig(
        horizon=horizon,
        dt_h=dt_h,
        horizon_mode=spec.horizon_mode,
        batch_end_h=recipe.duration_h,
        manipulated=None if spec.manipulated is None else tuple(spec.manipulated),
        input_bounds={n: (lim.lower, lim.upper) for n, lim in limits.items()},
        rate_limits=rates,
        state_bounds=_state_bounds(spec, model),
        soft_bounds=tuple(
            SoftBound(
                name=n,
                lower=-math.inf if b.lower is None else b.lower,
                upper=math.inf if b.upper is None else b.upper,
                weight_l1=b.weight_l1,
                weight_l2=b.weight_l2,
                backoff_sigma=b.backoff_sigma,
            )
            for n, b in spec.soft_bounds.items()
        ),
        objective=Objective(
            terminal=dict(obj.terminal),
            stage=dict(obj.stage),
            input_cost=dict(obj.input_cost),
            move=dict(obj.move),
            tracking=tuple(
                Tracking(name=t.name, target=t.target, weight=t.weight) for t in obj.tracking
            ),
        ),
        discretization=spec.discretization,
        rk4_substeps=spec.rk4_substeps,
        collocation_degree=spec.collocation_degree,
        path_points=spec.path_points,
        solver=spec.solver,
        qp_solver=spec.qp_solver,
        jit=spec.jit,
        smoothing=spec.smoothing,
        smoothing_kind=spec.smoothing_kind,
        initial_inputs=recipe.fallback,
        max_iter=spec.max_iter,
        time_limit_s=deadline,
        slack_tolerance=spec.slack_tolerance,
        ipopt_options=dict(spec.ipopt),
        input_schedule=schedule,
        robust=_robust(spec.robust),
    )
    try:
        config.validate(model)
    except NMPCConfigError as exc:
        raise ControlSpecError(f"{source}: {exc}") from None
    return config


def _state_bounds(spec: ControlSpec, model: Model) -> dict[str, tuple[float, float]]:
    """Hard state bounds: the model's declared ranges (unless turned off), tightened by the
    controller file's ``[state_bounds]``."""
    bounds: dict[str, tuple[float, float]] = {}
    if spec.model_state_bounds:
        bounds = {s.name: (s.lower, s.upper) for s in model.states}
    for name, b in spec.state_bounds.items():
        lo, hi = bounds.get(name, (-math.inf, math.inf))
        bounds[name] = (
            lo if b.lower is None else max(lo, b.lower),
            hi if b.upper is None else min(hi, b.upper),
        )
    return bounds


ORACLE_SMOOTHING = (0.002, 0.005, 0.01)
"""Wider smoothing widths the oracle also tries when the controller smooths kinks (IPOPT
converges more easily there; each solution is judged on the exact model)."""


def oracle_configs(
    config: NMPCConfig, duration_h: float, *, intervals: int = 60
) -> list[NMPCConfig]:
    """The whole-batch open-loop problems of ``config`` (the oracle the closed loop is
    measured against): ``intervals`` equal steps to the end, full IPOPT from the recipe,
    no real-time limit, collocation of degree >= 3 (an oracle interval is long: degree 2
    is exploited there, its prediction missing the true product), one problem per
    smoothing width (the controller's and, when it smooths at all, wider ones). Always
    nominal (no ``robust`` tree): the oracle knows the plant's true parameters."""
    base = replace(
        config,
        horizon=intervals,
        dt_h=duration_h / intervals,
        horizon_mode="batch_end",
        move_blocks=None,
        solver="ipopt",
        max_iter=3000,
        time_limit_s=1800.0,
        ipopt_options={},
        collocation_degree=max(3, config.collocation_degree),
        robust=None,
    )
    widths = [base.smoothing]
    if base.smoothing > 0:
        widths += [w for w in ORACLE_SMOOTHING if w > base.smoothing]
    return [replace(base, smoothing=w) for w in widths]
