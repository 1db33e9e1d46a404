"""The supervisor: the only path from the controller and the operators to the actuators.

``Supervisor(config)`` holds only a validated :class:`SupervisorConfig`; everything that
changes lives in a frozen :class:`SupervisorState` that goes in and comes out of pure
functions, so a run can be replayed from the historian:

- :meth:`Supervisor.init` gives the first state;
- :meth:`Supervisor.step` picks the source of the next setpoints by mode, clamps them to the
  absolute limits and to the rate-of-change limits, and returns a :class:`SetpointRecord`
  plus events. It never raises on a bad plan or a failing recipe; it falls back instead;
- :meth:`Supervisor.request_mode`, :meth:`Supervisor.set_operator_setpoint` and
  :meth:`Supervisor.set_limits` are the operator writes. Each returns an
  :class:`AuditRecord`; a refused write returns the state unchanged (the same object) and
  says why.

Rules (decided here, relied on by the loop, the live API and the HIL suite):

- Modes: AUTO applies the NMPC plan; MANUAL applies the operator setpoints; HOLD keeps the
  applied values; FALLBACK applies the recipe profile ``config.fallback(t_h)``.
- In AUTO, a plan that is missing, not ok, non-finite or of the wrong shape, a solve that
  took longer than ``controller_deadline_s`` (or whose time is NaN), or an unhealthy
  estimate switches to FALLBACK within the same step, with a ``"fallback"`` event naming
  every cause. ``solve_time_s=None`` means "not measured" and is not late. The supervisor
  never returns to AUTO by itself: an operator requests it (no flapping).
- Bumpless transfer: every step moves each input from the applied value by at most
  ``rate_per_h * dt``, whatever the mode or a mode switch; so the first setpoint after any
  switch (FALLBACK -> AUTO included) starts from the applied values.
- Invariant: the applied values are always inside the current absolute limits. ``init``
  refuses a start outside them, and ``set_limits`` refuses limits that would exclude the
  applied value (move the setpoint first), so absolute and rate limits never conflict.
- MANUAL needs no setpoints beforehand: entering MANUAL seeds the operator setpoints with
  the applied values (so MANUAL starts where the plant is, never at stale values), and
  operator setpoints can only be written while in MANUAL.
- Every write needs a non-empty ``who`` and ``why`` and a finite ``t_h``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from bpcontrol.records import AuditRecord, EventRecord, SetpointRecord, SetpointSource

__all__ = [
    "Mode",
    "SetpointLimits",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorState",
]


_CLAMP_REPORT_TOL: Final = 1e-9
"""Relative change below which a clamp is solver rounding and is not reported as clamped."""


class Mode(enum.Enum):
    """Who drives the setpoints."""

    AUTO = "auto"
    """The NMPC plan."""
    MANUAL = "manual"
    """The operator setpoints."""
    HOLD = "hold"
    """The applied values, frozen."""
    FALLBACK = "fallback"
    """The recipe profile (entered automatically when the controller cannot be trusted)."""


_SOURCE: Final[dict[Mode, SetpointSource]] = {
    Mode.AUTO: "nmpc",
    Mode.MANUAL: "operator",
    Mode.HOLD: "hold",
    Mode.FALLBACK: "fallback",
}


@dataclass(frozen=True)
class SetpointLimits:
    """Limits on one input, in that input's unit.

    Attributes:
        lower: lowest allowed setpoint.
        upper: highest allowed setpoint (``>= lower``).
        rate_per_h: largest change per hour of process time (``> 0``; ``inf`` for none).
    """

    lower: float
    upper: float
    rate_per_h: float

    def __post_init__(self) -> None:
        problem = _limits_problem(self.lower, self.upper, self.rate_per_h)
        if problem:
            raise ValueError(problem)

    def contains(self, value: float) -> bool:
        """True when ``value`` lies within ``[lower, upper]``."""
        return self.lower <= value <= self.upper


def _limits_problem(lower: float, upper: float, rate_per_h: float) -> str:
    """Why these limits are invalid, or "" when they are fine."""
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return f"lower and upper must be finite, got [{lower}, {upper}]"
    if lower > upper:
        return f"inverted limits: lower {lower} > upper {upper}"
    if math.isnan(rate_per_h) or rate_per_h <= 0:
        return f"rate_per_h must be > 0 (use inf for no rate limit), got {rate_per_h}"
    return ""


@dataclass(frozen=True)
class SupervisorConfig:
    """What the supervisor needs to know, validated on construction.

    Attributes:
        input_names: the model inputs in vector order (the order of ``plan_u`` and of the
            recipe's output).
        limits: limits per input name; every input needs one, unknown names are refused.
        fallback: the recipe profile, process time (h) -> all inputs, shape
            ``(len(input_names),)``.
        controller_deadline_s: a solve that took longer than this (s, wall time) is late.
        hard_bounds: optional range per input that no limits may leave (the model's input
            bounds, the equipment's range); inputs not named are unbounded.
    """

    input_names: tuple[str, ...]
    limits: Mapping[str, SetpointLimits]
    fallback: Callable[[float], np.ndarray]
    controller_deadline_s: float
    hard_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(self.input_names)
        object.__setattr__(self, "input_names", names)
        if not names:
            raise ValueError("input_names must name at least one input")
        if len(set(names)) != len(names):
            raise ValueError(f"input_names has duplicates: {names}")
        for what, mapping in (("limits", self.limits), ("hard_bounds", self.hard_bounds)):
            unknown = sorted(set(mapping) - set(names))
            if unknown:
                raise ValueError(f"{what} names unknown inputs {unknown}; inputs are {names}")
        missing = [n for n in names if n not in self.limits]
        if missing:
            raise ValueError(f"limits missing for inputs {missing}")
        for name, lim in self.limits.items():
            if not isinstance(lim, SetpointLimits):
                raise ValueError(f"limits[{name!r}] must be a SetpointLimits, got {lim!r}")
        for name, (lo, hi) in self.hard_bounds.items():
            if math.isnan(lo) or math.isnan(hi) or lo > hi:
                raise ValueError(f"hard_bounds[{name!r}] invalid: [{lo}, {hi}]")
            lim = self.limits[name]
            if lim.lower < lo or lim.upper > hi:
                raise ValueError(
                    f"limits for {name!r} [{lim.lower}, {lim.upper}] leave its hard bounds "
                    f"[{lo}, {hi}]"
                )
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))
        object.__setattr__(self, "hard_bounds", MappingProxyType(dict(self.hard_bounds)))
        if not callable(self.fallback):
            raise ValueError("fallback must be a callable recipe profile t_h -> inputs")
        d = self.controller_deadline_s
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"controller_deadline_s must be finite and > 0, got {d}")


@dataclass(frozen=True)
class SupervisorState:
    """Everything that changes, as a hashable value (tuples in input order).

    Attributes:
        mode: the current mode.
        applied: the setpoints last applied, one per input (input units).
        operator: the operator setpoints used in MANUAL (input units).
        limits: the limits in force (start from the config, changed by ``set_limits``).
        t_h: process time (h) of the last applied setpoints.
        fallback_cause: why the supervisor fell back (empty unless it did so itself).
    """

    mode: Mode
    applied: tuple[float, ...]
    operator: tuple[float, ...]
    limits: tuple[SetpointLimits, ...]
    t_h: float
    fallback_cause: str = ""

    @property
    def u(self) -> np.ndarray:
        """The applied setpoints as a vector."""
        return np.array(self.applied, dtype=float)


def _bad_write(
    state: SupervisorState, t_h: float, who: str, why: str, action: str, reason: str
) -> tuple[SupervisorState, AuditRecord, list[EventRecord]]:
    t = t_h if math.isfinite(t_h) else state.t_h
    return state, AuditRecord(t, who, why, action, False, reason), []


def _who_why_problem(who: str, why: str, t_h: float) -> str:
    if not (isinstance(who, str) and who.strip()):
        return "who is required (the person or system making the change)"
    if not (isinstance(why, str) and why.strip()):
        return "why is required (the reason for the change)"
    if not math.isfinite(t_h):
        return f"t_h must be a finite process time in hours, got {t_h}"
    return ""


class Supervisor:
    """Pure mode, limit and rate rules over a :class:`SupervisorConfig` (see module doc)."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config

    # ------------------------------------------------------------------ loop

    def init(self, u0: Any, t0: float, mode: Mode = Mode.AUTO) -> SupervisorState:
        """The first state: ``u0`` applied at ``t0`` (h). Raises ValueError on bad input."""
        cfg = self.config
        if not isinstance(mode, Mode):
            raise ValueError(f"mode must be a Mode, got {mode!r}")
        if not math.isfinite(t0):
            raise ValueError(f"t0 must be a finite process time in hours, got {t0}")
        u = np.asarray(u0, dtype=float)
        if u.shape != (len(cfg.input_names),):
            raise ValueError(f"u0 must have shape ({len(cfg.input_names)},), got {u.shape}")
        limits = tuple(cfg.limits[n] for n in cfg.input_names)
        for name, value, lim in zip(cfg.input_names, u, limits, strict=True):
            if not lim.contains(float(value)):
                raise ValueError(
                    f"u0[{name!r}] = {value} is outside its limits [{lim.lower}, {lim.upper}]"
                )
        applied = tuple(float(v) for v in u)
        return SupervisorState(mode, applied, applied, limits, float(t0))

    def step(
        self,
        state: SupervisorState,
        t_h: float,
        *,
        plan_u: np.ndarray | None,
        plan_ok: bool,
        solve_time_s: float | None,
        estimate_ok: bool,
    ) -> tuple[SupervisorState, SetpointRecord, list[EventRecord]]:
        """The setpoints to apply at ``t_h`` (h), the next state and any events.

        ``plan_u``: the NMPC's next inputs (``Plan.u_next``) or None; ``plan_ok``: whether
        the plan comes from this step's solve (``Plan.status.usable``); ``solve_time_s``:
        wall time of the solve (None when not measured); ``estimate_ok``: whether the
        estimate is healthy. Only AUTO looks at them. Raises ValueError only when ``t_h`` is
        not finite or earlier than the last step (a clock fault in the caller).
        """
        cfg = self.config
        if not math.isfinite(t_h) or t_h < state.t_h:
            raise ValueError(f"t_h must be finite and >= the last step {state.t_h}, got {t_h}")
        events: list[EventRecord] = []
        mode, cause = state.mode, state.fallback_cause

        if mode is Mode.AUTO:
            causes = self.plan_problems(plan_u, plan_ok, solve_time_s, estimate_ok)
            if causes:
                mode, cause = Mode.FALLBACK, "; ".join(causes)
                events.append(
                    EventRecord(
                        t_h,
                        "fallback",
                        f"AUTO -> FALLBACK (recipe profile): {cause}. "
                        "Request AUTO once the controller is healthy again.",
                        "supervisor",
                    )
                )

        target: np.ndarray
        if mode is Mode.AUTO:
            target = np.asarray(plan_u, dtype=float)
        elif mode is Mode.MANUAL:
            target = np.array(state.operator, dtype=float)
        elif mode is Mode.HOLD:
            target = state.u
        else:
            recipe, problem = self._recipe(t_h)
            if problem:
                events.append(
                    EventRecord(
                        t_h,
                        "fallback-recipe-invalid",
                        f"{problem}; holding the applied setpoints. Fix the recipe profile.",
                        "supervisor",
                    )
                )
                target = state.u
            else:
                target = recipe

        applied, clamped = self._clamp(state, target, t_h - state.t_h)
        record = SetpointRecord(
            t_h,
            dict(zip(cfg.input_names, applied, strict=True)),
            _SOURCE[mode],
            clamped,
        )
        new_state = replace(state, mode=mode, applied=applied, t_h=float(t_h), fallback_cause=cause)
        return new_state, record, events

    def plan_problems(
        self,
        plan_u: np.ndarray | None,
        plan_ok: bool,
        solve_time_s: float | None,
        estimate_ok: bool,
    ) -> list[str]:
        """Why AUTO may not apply this plan (the causes :meth:`step` names); [] if it may."""
        causes: list[str] = []
        if not estimate_ok:
            causes.append("estimate unhealthy")
        n = len(self.config.input_names)
        if plan_u is None:
            causes.append("no plan")
        else:
            u = np.asarray(plan_u, dtype=float)
            if u.shape != (n,):
                causes.append(f"plan has shape {u.shape}, expected ({n},)")
            elif not np.all(np.isfinite(u)):
                bad = [
                    m for m, v in zip(self.config.input_names, u, strict=True) if not np.isfinite(v)
                ]
                causes.append(f"plan not finite for {bad}")
        if not plan_ok:
            causes.append("controller failed (plan not usable)")
        d = self.config.controller_deadline_s
        if solve_time_s is not None and not solve_time_s <= d:  # NaN counts as late
            causes.append(f"controller late: solve took {solve_time_s} s > deadline {d} s")
        return causes

    def _recipe(self, t_h: float) -> tuple[np.ndarray, str]:
        n = len(self.config.input_names)
        try:
            u = np.asarray(self.config.fallback(t_h), dtype=float)
        except Exception as exc:  # the loop must survive a broken recipe
            return np.empty(0), f"recipe profile raised {type(exc).__name__}: {exc}"
        if u.shape != (n,):
            return u, f"recipe profile gave shape {u.shape}, expected ({n},)"
        if not np.all(np.isfinite(u)):
            return u, f"recipe profile gave non-finite values {u.tolist()}"
        return u, ""

    def _clamp(
        self, state: SupervisorState, target: np.ndarray, dt_h: float
    ) -> tuple[tuple[float, ...], tuple[str, ...]]:
        """Clamp to the absolute limits, then to ``applied +- rate * dt``.

        The applied values lie inside the limits (the state's invariant), so the two
        intervals always intersect and the result honours both.
        """
        applied: list[float] = []
        clamped: list[str] = []
        for name, want, prev, lim in zip(
            self.config.input_names, target, state.applied, state.limits, strict=True
        ):
            move = lim.rate_per_h * dt_h if dt_h > 0 else 0.0
            lo = max(lim.lower, prev - move)
            hi = min(lim.upper, prev + move)
            value = min(max(float(want), lo), hi)
            applied.append(value)
            if abs(value - want) > _CLAMP_REPORT_TOL * max(1.0, abs(want)):  # not rounding
                clamped.append(name)
        return tuple(applied), tuple(clamped)

    # ------------------------------------------------------------------ operator writes

    def request_mode(
        self, state: SupervisorState, mode: Mode | str, *, who: str, why: str, t_h: float
    ) -> tuple[SupervisorState, AuditRecord, list[EventRecord]]:
        """Switch to ``mode`` (a Mode or its value, e.g. ``"manual"``).

        Every switch is allowed with who, why and a finite time; the switch is bumpless
        because the next :meth:`step` moves from the applied values at the rate limits.
        Entering MANUAL seeds the operator setpoints with the applied values.
        """
        action = f"mode {state.mode.name} -> {getattr(mode, 'name', mode)}"
        problem = _who_why_problem(who, why, t_h)
        if problem:
            return _bad_write(state, t_h, who, why, action, problem)
        try:
            new_mode = Mode(mode)
        except (TypeError, ValueError):
            choices = [m.value for m in Mode]
            return _bad_write(state, t_h, who, why, action, f"unknown mode {mode!r}; use {choices}")
        action = f"mode {state.mode.name} -> {new_mode.name}"
        if new_mode is state.mode:
            return state, AuditRecord(t_h, who, why, action, True, ""), []
        operator = state.applied if new_mode is Mode.MANUAL else state.operator
        new_state = replace(state, mode=new_mode, operator=operator, fallback_cause="")
        event = EventRecord(t_h, "mode-change", f"{action} by {who}: {why}", "operator")
        return new_state, AuditRecord(t_h, who, why, action, True, ""), [event]

    def _input_write_problem(self, name: str, who: str, why: str, t_h: float) -> str:
        """Why a write to input ``name`` is refused before its value is looked at ("": none)."""
        problem = _who_why_problem(who, why, t_h)
        if not problem and name not in self.config.input_names:
            problem = f"unknown input {name!r}; inputs are {self.config.input_names}"
        return problem

    def set_operator_setpoint(
        self,
        state: SupervisorState,
        name: str,
        value: float,
        *,
        who: str,
        why: str,
        t_h: float,
    ) -> tuple[SupervisorState, AuditRecord, list[EventRecord]]:
        """Set the MANUAL setpoint of one input (refused outside MANUAL or the limits)."""
        action = f"setpoint {name} = {value}"
        names = self.config.input_names
        problem = self._input_write_problem(name, who, why, t_h)
        if problem:
            return _bad_write(state, t_h, who, why, action, problem)
        try:
            v = float(value)
        except (TypeError, ValueError):
            return _bad_write(state, t_h, who, why, action, f"value {value!r} is not a number")
        if not math.isfinite(v):
            return _bad_write(state, t_h, who, why, action, f"value must be finite, got {v}")
        i = names.index(name)
        lim = state.limits[i]
        if not lim.contains(v):
            reason = f"{v} is outside the limits of {name!r} [{lim.lower}, {lim.upper}]"
            return _bad_write(state, t_h, who, why, action, reason)
        if state.mode is not Mode.MANUAL:
            reason = (
                f"operator setpoints apply only in MANUAL (mode is {state.mode.name}); "
                "request MANUAL first"
            )
            return _bad_write(state, t_h, who, why, action, reason)
        operator = (*state.operator[:i], v, *state.operator[i + 1 :])
        return replace(state, operator=operator), AuditRecord(t_h, who, why, action, True, ""), []

    def set_limits(
        self,
        state: SupervisorState,
        name: str,
        *,
        lower: float,
        upper: float,
        rate_per_h: float,
        who: str,
        why: str,
        t_h: float,
    ) -> tuple[SupervisorState, AuditRecord, list[EventRecord]]:
        """Change the limits of one input.

        Refused when invalid (inverted, non-finite, rate <= 0), outside the input's hard
        bounds, or when the applied value would lie outside them (move the setpoint first).
        """
        action = f"limits {name} = [{lower}, {upper}], rate {rate_per_h}/h"
        names = self.config.input_names
        problem = self._input_write_problem(name, who, why, t_h)
        if problem:
            return _bad_write(state, t_h, who, why, action, problem)
        try:
            lo, hi, rate = float(lower), float(upper), float(rate_per_h)
        except (TypeError, ValueError):
            return _bad_write(
                state, t_h, who, why, action, "lower, upper and rate_per_h must be numbers"
            )
        problem = _limits_problem(lo, hi, rate)
        if problem:
            return _bad_write(state, t_h, who, why, action, problem)
        if name in self.config.hard_bounds:
            blo, bhi = self.config.hard_bounds[name]
            if lo < blo or hi > bhi:
                reason = f"limits leave the hard bounds of {name!r} [{blo}, {bhi}]"
                return _bad_write(state, t_h, who, why, action, reason)
        i = names.index(name)
        if not lo <= state.applied[i] <= hi:
            reason = (
                f"the applied value {state.applied[i]} of {name!r} would lie outside "
                f"[{lo}, {hi}]; move the setpoint inside first"
            )
            return _bad_write(state, t_h, who, why, action, reason)
        limits = (*state.limits[:i], SetpointLimits(lo, hi, rate), *state.limits[i + 1 :])
        event = EventRecord(t_h, "limits-change", f"{action} by {who}: {why}", "operator")
        return replace(state, limits=limits), AuditRecord(t_h, who, why, action, True, ""), [event]
