"""The supervisor: the only path from the controller and the operators to the actuators.

``Supervisor(config)`` holds only a validated :class:`SupervisorConfig`; everything that
changes lives in a frozen :class:`SupervisorState` that goes in and comes out of pure
functions (``init(...) -> State``, ``step(state, ...) -> (out, State)``), so a run can be
replayed from the historian:

- :meth:`Supervisor.init` gives the first state;
- :meth:`Supervisor.step` picks the source of the next setpoints by mode (and by whether
  the recipe phase allows the controller), clamps them to the absolute limits and to the
  rate-of-change limits, and returns a :class:`SupervisorOutput` (the
  :class:`SetpointRecord`, events, and the audit of a decision it took itself) with the
  next state. It never raises on a bad plan or a failing recipe; it falls back instead;
- :meth:`Supervisor.command` carries out an operator command (:mod:`bpcontrol.commands`:
  :class:`SetMode`, :class:`SetSetpoint`, :class:`SetLimits`; an
  :class:`AcknowledgeAlarm` is the loop's, :mod:`bpcontrol.alarms`) and returns a
  :class:`CommandOutcome` (the :class:`AuditRecord` and events) with the next state; a
  refused command returns the state unchanged (the same object) and says why, whatever was
  sent. :meth:`Supervisor.request_mode`, :meth:`Supervisor.set_operator_setpoint` and
  :meth:`Supervisor.set_limits` are its keyword-argument spellings.

Rules (decided here, relied on by the loop, the live API and the HIL suite):

- Modes: AUTO applies the NMPC plan; MANUAL applies the operator setpoints; HOLD keeps the
  applied values; FALLBACK applies the recipe profile ``config.fallback(t_h)``.
- A recipe phase may forbid the controller (``controller_allowed=False`` in
  :meth:`Supervisor.step`, from ``Phase.auto``): AUTO then applies the recipe profile with
  source ``"recipe"``, without looking at the plan, without an event and without leaving
  AUTO; when a phase allowing the controller begins, the plan takes over at the rate
  limits. MANUAL, HOLD and FALLBACK are not affected.
- In AUTO (controller allowed), a plan that is missing, not ok, non-finite or of the wrong
  shape, a solve that took longer than ``controller_deadline_s`` (or whose time is NaN),
  or an unhealthy estimate switches to FALLBACK within the same step, with a
  ``"fallback"`` event naming every cause. ``solve_time_s=None`` means "not measured" and
  is not late.
- Return to AUTO: an operator requests it; or, when ``config.auto_resume_after`` is set and
  the supervisor fell back by itself, the supervisor returns after that many consecutive
  steps whose (shadow) plan it would have accepted, within that step, with an audit record
  (``who="supervisor"``) and a ``"mode-change"`` event. An operator's FALLBACK is never
  left by itself (no flapping against a person's decision).
- Bumpless transfer: every step moves each input from the applied value by at most
  ``rate_per_h * dt``, whatever the mode or a mode switch; so the first setpoint after any
  switch (FALLBACK -> AUTO, recipe phase -> controller phase) starts from the applied
  values.
- Invariant: the applied values are always inside the current absolute limits. ``init``
  refuses a start outside them, and ``set_limits`` refuses limits that would exclude the
  applied value (move the setpoint first), so absolute and rate limits never conflict.
- MANUAL needs no setpoints beforehand: entering MANUAL seeds the operator setpoints with
  the applied values (so MANUAL starts where the plant is, never at stale values), and
  operator setpoints can only be written while in MANUAL.
- Every command needs a non-empty ``who`` and ``why`` and a finite ``t_h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from bpcontrol.commands import (
    AcknowledgeAlarm,
    Command,
    SetLimits,
    SetMode,
    SetSetpoint,
    describe,
)
from bpcontrol.interlocks import Interlock, InterlockState, initial_state
from bpcontrol.interlocks import watch as watch_interlocks
from bpcontrol.records import (
    AuditRecord,
    EventKind,
    EventRecord,
    Mode,
    SetpointRecord,
    SetpointSource,
    storable_text,
)

__all__ = [
    "CommandOutcome",
    "Mode",
    "SetpointLimits",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorOutput",
    "SupervisorState",
]


_CLAMP_REPORT_TOL: Final = 1e-9
"""Relative change below which a clamp is solver rounding and is not reported as clamped."""

_SOURCE: Final[dict[Mode, SetpointSource]] = {
    Mode.AUTO: SetpointSource.NMPC,
    Mode.MANUAL: SetpointSource.OPERATOR,
    Mode.HOLD: SetpointSource.HOLD,
    Mode.FALLBACK: SetpointSource.FALLBACK,
}

_SUPERVISOR: Final = "supervisor"
"""``who`` of the supervisor's own decisions (auto-resume) and ``source`` of its events."""


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
        auto_resume_after: after the supervisor fell back by itself, return to AUTO once
            this many steps in a row brought a plan AUTO would accept (the controller keeps
            solving in the shadow); ``None`` (default) leaves the return to an operator.
        interlocks: guards on raw measurements (:mod:`bpcontrol.interlocks`), checked by
            :meth:`Supervisor.watch` at every measurement.
    """

    input_names: tuple[str, ...]
    limits: Mapping[str, SetpointLimits]
    fallback: Callable[[float], np.ndarray]
    controller_deadline_s: float
    hard_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    auto_resume_after: int | None = None
    interlocks: tuple[Interlock, ...] = ()

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
        n = self.auto_resume_after
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"auto_resume_after must be an integer >= 1 or None, got {n!r}")
        object.__setattr__(self, "interlocks", tuple(self.interlocks))
        for lock in self.interlocks:
            unknown = sorted(set(lock.cut) - set(names))
            if unknown:
                raise ValueError(f"interlock {lock.name!r} cuts unknown inputs {unknown}")


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
        good_plans: consecutive steps, since the supervisor fell back by itself, whose plan
            AUTO would have accepted (counts toward ``auto_resume_after``).
        interlock: the interlocks' counts and the caps of tripped ones.
    """

    mode: Mode
    applied: tuple[float, ...]
    operator: tuple[float, ...]
    limits: tuple[SetpointLimits, ...]
    t_h: float
    fallback_cause: str = ""
    good_plans: int = 0
    interlock: InterlockState = field(default_factory=InterlockState)

    @property
    def u(self) -> np.ndarray:
        """The applied setpoints as a vector."""
        return np.array(self.applied, dtype=float)


@dataclass(frozen=True)
class SupervisorOutput:
    """What one :meth:`Supervisor.step` decided, to apply and to record (in this order).

    Attributes:
        setpoint: the setpoints to apply, with their source and the clamped inputs.
        audits: the supervisor's own mode decisions (auto-resume), as audit records.
        events: fallbacks, mode changes and recipe problems of this step.
    """

    setpoint: SetpointRecord
    audits: tuple[AuditRecord, ...] = ()
    events: tuple[EventRecord, ...] = ()


@dataclass(frozen=True)
class CommandOutcome:
    """The answer to one operator command: its audit record and the events it caused."""

    audit: AuditRecord
    events: tuple[EventRecord, ...] = ()

    @property
    def accepted(self) -> bool:
        """Whether the command was carried out."""
        return self.audit.accepted


def _field(command: object, name: str) -> object:
    """An attribute of whatever was submitted ("" when it has none or reading it fails)."""
    try:
        return getattr(command, name, "")
    except Exception:
        return ""


def _who_why_problem(who: object, why: object, t_h: float) -> str:
    if not (isinstance(who, str) and who.strip()):
        return "who is required (the person or system making the change)"
    if not (isinstance(why, str) and why.strip()):
        return "why is required (the reason for the change)"
    if not (isinstance(t_h, int | float) and math.isfinite(t_h)):
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
        return SupervisorState(
            mode, applied, applied, limits, float(t0), interlock=initial_state(cfg.interlocks)
        )

    def watch(
        self, state: SupervisorState, t_h: float, readings: Mapping[str, float]
    ) -> tuple[SetpointRecord | None, tuple[EventRecord, ...], SupervisorState]:
        """Check the interlocks against this measurement's ``readings`` (sensor -> value).

        Returns the setpoints a trip applies at ``t_h`` (h), source ``interlock`` (None
        when nothing tripped), the trip and release events, and the next state. Raises
        ValueError when ``t_h`` is not finite or earlier than the last step.
        """
        cfg = self.config
        if not cfg.interlocks:
            return None, (), state
        if not math.isfinite(t_h) or t_h < state.t_h:
            raise ValueError(f"t_h must be finite and >= the last step {state.t_h}, got {t_h}")
        names = cfg.input_names
        applied = dict(zip(names, state.applied, strict=True))
        lower = {n: lim.lower for n, lim in zip(names, state.limits, strict=True)}
        trip, locks = watch_interlocks(cfg.interlocks, state.interlock, readings, applied, lower)
        events = tuple(EventRecord(t_h, EventKind.INTERLOCK, m, _SUPERVISOR) for m in trip.messages)
        if not trip.values:
            return None, events, replace(state, interlock=locks)
        values = tuple(trip.values.get(n, v) for n, v in zip(names, state.applied, strict=True))
        record = SetpointRecord(
            t_h, dict(zip(names, values, strict=True)), SetpointSource.INTERLOCK, ()
        )
        return record, events, replace(state, applied=values, t_h=float(t_h), interlock=locks)

    def step(
        self,
        state: SupervisorState,
        t_h: float,
        *,
        plan_u: np.ndarray | None,
        plan_ok: bool,
        solve_time_s: float | None,
        estimate_ok: bool,
        controller_allowed: bool = True,
        link_ok: bool = True,
    ) -> tuple[SupervisorOutput, SupervisorState]:
        """The setpoints to apply at ``t_h`` (h) and the next state.

        ``plan_u``: the NMPC's next inputs (``Plan.u_next``) or None; ``plan_ok``: whether
        the plan comes from this step's solve (``Plan.status.usable``); ``solve_time_s``:
        wall time of the solve (None when not measured); ``estimate_ok``: whether the
        estimate is healthy; ``controller_allowed``: whether the recipe phase lets the
        controller act (False: AUTO follows the recipe with source ``"recipe"``);
        ``link_ok``: False when the link to the device was lost since the last step
        (:class:`bpcontrol.interfaces.PlantLinkLostError`), a cause for FALLBACK. Only AUTO,
        and a FALLBACK counting toward auto-resume, look at the plan. Raises ValueError only
        when ``t_h`` is not finite or earlier than the last step (a clock fault in the
        caller).
        """
        cfg = self.config
        if not math.isfinite(t_h) or t_h < state.t_h:
            raise ValueError(f"t_h must be finite and >= the last step {state.t_h}, got {t_h}")
        events: list[EventRecord] = []
        audits: list[AuditRecord] = []
        mode, cause, good = state.mode, state.fallback_cause, state.good_plans
        causes = self.plan_problems(plan_u, plan_ok, solve_time_s, estimate_ok)
        if not link_ok:
            causes.insert(0, "plant link lost")
        resume_after = cfg.auto_resume_after

        if mode is Mode.AUTO and controller_allowed and causes:
            mode, cause, good = Mode.FALLBACK, "; ".join(causes), 0
            back = (
                f"AUTO returns by itself after {resume_after} usable plans in a row, or request it."
                if resume_after is not None
                else "Request AUTO once the controller is healthy again."
            )
            events.append(
                EventRecord(
                    t_h,
                    EventKind.FALLBACK,
                    f"AUTO -> FALLBACK (recipe profile): {cause}. {back}",
                    _SUPERVISOR,
                )
            )
        elif mode is Mode.FALLBACK and cause and resume_after is not None:
            good = 0 if causes else good + 1
            if good >= resume_after:
                why = f"controller healthy again: {resume_after} usable plans in a row"
                action = f"mode {Mode.FALLBACK.name} -> {Mode.AUTO.name}"
                audits.append(AuditRecord(t_h, _SUPERVISOR, why, action, True))
                events.append(
                    EventRecord(
                        t_h, EventKind.MODE_CHANGE, f"{action} by {_SUPERVISOR}: {why}", _SUPERVISOR
                    )
                )
                mode, cause, good = Mode.AUTO, "", 0

        source = _SOURCE[mode]
        target: np.ndarray
        if mode is Mode.AUTO and controller_allowed:
            target = np.asarray(plan_u, dtype=float)
        elif mode is Mode.MANUAL:
            target = np.array(state.operator, dtype=float)
        elif mode is Mode.HOLD:
            target = state.u
        else:  # FALLBACK, or AUTO in a phase that forbids the controller
            if mode is Mode.AUTO:
                source = SetpointSource.RECIPE
            recipe, problem = self._recipe(t_h)
            if problem:
                events.append(
                    EventRecord(
                        t_h,
                        EventKind.FALLBACK_RECIPE_INVALID,
                        f"{problem}; holding the applied setpoints. Fix the recipe profile.",
                        _SUPERVISOR,
                    )
                )
                target = state.u
            else:
                target = recipe

        applied, clamped = self._clamp(state, target, t_h - state.t_h)
        if state.interlock.tripped:
            applied = self._capped(state, applied)
        record = SetpointRecord(
            t_h, dict(zip(cfg.input_names, applied, strict=True)), source, clamped
        )
        new_state = replace(
            state,
            mode=mode,
            applied=applied,
            t_h=float(t_h),
            fallback_cause=cause,
            good_plans=good,
        )
        return SupervisorOutput(record, tuple(audits), tuple(events)), new_state

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
            try:
                u = np.asarray(plan_u, dtype=float)
            except (TypeError, ValueError) as exc:  # garbage from a faulty controller
                u = None
                causes.append(f"plan unreadable ({type(exc).__name__}: {exc})")
            if u is None:
                pass
            elif u.shape != (n,):
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

    def _capped(self, state: SupervisorState, applied: tuple[float, ...]) -> tuple[float, ...]:
        """``applied`` under the caps of tripped interlocks (never below the lower limit)."""
        return tuple(
            min(v, max(state.interlock.cap(n), lim.lower))
            for n, v, lim in zip(self.config.input_names, applied, state.limits, strict=True)
        )

    # ------------------------------------------------------------------ operator commands

    def command(
        self, state: SupervisorState, command: Command, *, t_h: float
    ) -> tuple[CommandOutcome, SupervisorState]:
        """Carry out an operator ``command`` at process time ``t_h`` (h).

        Returns the outcome (the audit record, accepted or refused with a reason, and any
        events) and the next state; a refused command returns ``state`` itself. Never
        raises, whatever was passed as ``command`` (an API hands over what a client sent).
        """
        action = describe(command, state.mode)
        who, why = _field(command, "who"), _field(command, "why")
        if isinstance(command, AcknowledgeAlarm):
            reason = (
                "alarms are acknowledged by the loop, which owns them (ControlLoop.submit, "
                "bpcontrol.alarms); the supervisor changed nothing"
            )
            return self._refuse(state, t_h, who, why, action, reason)
        if not isinstance(command, SetMode | SetSetpoint | SetLimits):
            reason = (
                f"not an operator command ({type(command).__name__}); send SetMode, "
                "SetSetpoint or SetLimits"
            )
            return self._refuse(state, t_h, who, why, action, reason)
        problem = _who_why_problem(who, why, t_h)
        if problem:
            return self._refuse(state, t_h, who, why, action, problem)
        if isinstance(command, SetMode):
            return self._set_mode(state, command, action, t_h)
        if isinstance(command, SetSetpoint):
            return self._set_setpoint(state, command, action, t_h)
        return self._set_limits(state, command, action, t_h)

    def request_mode(
        self, state: SupervisorState, mode: Mode | str, *, who: str, why: str, t_h: float
    ) -> tuple[CommandOutcome, SupervisorState]:
        """:meth:`command` with :class:`SetMode` (``mode`` a Mode or its value)."""
        return self.command(state, SetMode(mode, who, why), t_h=t_h)

    def set_operator_setpoint(
        self,
        state: SupervisorState,
        name: str,
        value: float,
        *,
        who: str,
        why: str,
        t_h: float,
    ) -> tuple[CommandOutcome, SupervisorState]:
        """:meth:`command` with :class:`SetSetpoint` (MANUAL only, inside the limits)."""
        return self.command(state, SetSetpoint(name, value, who, why), t_h=t_h)

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
    ) -> tuple[CommandOutcome, SupervisorState]:
        """:meth:`command` with :class:`SetLimits`."""
        return self.command(state, SetLimits(name, lower, upper, rate_per_h, who, why), t_h=t_h)

    @staticmethod
    def _refuse(
        state: SupervisorState, t_h: float, who: object, why: object, action: str, reason: str
    ) -> tuple[CommandOutcome, SupervisorState]:
        ok_time = isinstance(t_h, int | float) and math.isfinite(t_h)
        t = float(t_h) if ok_time else state.t_h
        audit = AuditRecord(
            t,
            storable_text(who),
            storable_text(why),
            storable_text(action),
            False,
            storable_text(reason),
        )
        return CommandOutcome(audit), state

    @staticmethod
    def _accept(
        new_state: SupervisorState,
        t_h: float,
        who: str,
        why: str,
        action: str,
        events: tuple[EventRecord, ...] = (),
    ) -> tuple[CommandOutcome, SupervisorState]:
        audit = AuditRecord(
            float(t_h), storable_text(who), storable_text(why), storable_text(action), True, ""
        )
        return CommandOutcome(audit, events), new_state

    def _set_mode(
        self, state: SupervisorState, cmd: SetMode, action: str, t_h: float
    ) -> tuple[CommandOutcome, SupervisorState]:
        """Every switch is allowed; it is bumpless because the next :meth:`step` moves from
        the applied values at the rate limits. Entering MANUAL seeds the operator setpoints
        with the applied values."""
        new_mode = cmd.target()
        if new_mode is None:
            choices = [m.value for m in Mode]
            reason = f"unknown mode {cmd.mode!r}; use {choices}"
            return self._refuse(state, t_h, cmd.who, cmd.why, action, reason)
        if new_mode is state.mode:
            return self._accept(state, t_h, cmd.who, cmd.why, action)
        operator = state.applied if new_mode is Mode.MANUAL else state.operator
        new_state = replace(
            state, mode=new_mode, operator=operator, fallback_cause="", good_plans=0
        )
        event = EventRecord(
            t_h,
            EventKind.MODE_CHANGE,
            storable_text(f"{action} by {cmd.who}: {cmd.why}"),
            "operator",
        )
        return self._accept(new_state, t_h, cmd.who, cmd.why, action, (event,))

    def _input_index(self, name: object) -> int | None:
        """The position of input ``name``, or None when there is no such input."""
        names = self.config.input_names
        return names.index(name) if isinstance(name, str) and name in names else None

    def _set_setpoint(
        self, state: SupervisorState, cmd: SetSetpoint, action: str, t_h: float
    ) -> tuple[CommandOutcome, SupervisorState]:
        """Refused outside MANUAL, outside the limits, or for a value that is no number."""
        who, why = cmd.who, cmd.why
        i = self._input_index(cmd.name)
        if i is None:
            reason = f"unknown input {cmd.name!r}; inputs are {self.config.input_names}"
            return self._refuse(state, t_h, who, why, action, reason)
        try:
            v = float(cmd.value)
        except (TypeError, ValueError, OverflowError):
            reason = f"value {cmd.value!r} is not a number"
            return self._refuse(state, t_h, who, why, action, reason)
        if not math.isfinite(v):
            return self._refuse(state, t_h, who, why, action, f"value must be finite, got {v}")
        lim = state.limits[i]
        if not lim.contains(v):
            reason = f"{v} is outside the limits of {cmd.name!r} [{lim.lower}, {lim.upper}]"
            return self._refuse(state, t_h, who, why, action, reason)
        if state.mode is not Mode.MANUAL:
            reason = (
                f"operator setpoints apply only in MANUAL (mode is {state.mode.name}); "
                "request MANUAL first"
            )
            return self._refuse(state, t_h, who, why, action, reason)
        operator = (*state.operator[:i], v, *state.operator[i + 1 :])
        return self._accept(replace(state, operator=operator), t_h, who, why, action)

    def _set_limits(
        self, state: SupervisorState, cmd: SetLimits, action: str, t_h: float
    ) -> tuple[CommandOutcome, SupervisorState]:
        """Refused when invalid (inverted, non-finite, rate <= 0), outside the input's hard
        bounds, or when the applied value would lie outside them (move the setpoint
        first)."""
        who, why = cmd.who, cmd.why
        i = self._input_index(cmd.name)
        if i is None:
            reason = f"unknown input {cmd.name!r}; inputs are {self.config.input_names}"
            return self._refuse(state, t_h, who, why, action, reason)
        try:
            lo, hi, rate = float(cmd.lower), float(cmd.upper), float(cmd.rate_per_h)
        except (TypeError, ValueError, OverflowError):
            reason = "lower, upper and rate_per_h must be numbers"
            return self._refuse(state, t_h, who, why, action, reason)
        problem = _limits_problem(lo, hi, rate)
        if problem:
            return self._refuse(state, t_h, who, why, action, problem)
        name = cmd.name
        if name in self.config.hard_bounds:
            blo, bhi = self.config.hard_bounds[name]
            if lo < blo or hi > bhi:
                reason = f"limits leave the hard bounds of {name!r} [{blo}, {bhi}]"
                return self._refuse(state, t_h, who, why, action, reason)
        if not lo <= state.applied[i] <= hi:
            reason = (
                f"the applied value {state.applied[i]} of {name!r} would lie outside "
                f"[{lo}, {hi}]; move the setpoint inside first"
            )
            return self._refuse(state, t_h, who, why, action, reason)
        limits = (*state.limits[:i], SetpointLimits(lo, hi, rate), *state.limits[i + 1 :])
        event = EventRecord(
            t_h, EventKind.LIMITS_CHANGE, storable_text(f"{action} by {who}: {why}"), "operator"
        )
        return self._accept(replace(state, limits=limits), t_h, who, why, action, (event,))
