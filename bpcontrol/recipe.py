"""Batch recipes: phases, loop periods, setpoint limits and the fallback profiles (TOML).

A recipe is what a process engineer signs off for one product: how long the batch runs,
how often the loop measures and re-plans, the limits every setpoint must keep, the charged
state at inoculation, and per phase the setpoint profile the supervisor falls back to when
the controller cannot be trusted. Example (after the E. coli pack's recipe,
``bpcontrol/data/packs/ecoli_fedbatch/recipe.toml``)::

    name = "E. coli fed-batch"
    model = "ecoli_fedbatch"
    duration_h = 30.0
    measurement_period_min = 1.0
    control_period_min = 10.0

    [initial]             # charged state at inoculation, state units
    S = 5.0

    [limits.F]            # input units; rate in units per hour
    lower = 0.0
    upper = 0.5
    rate_per_h = 0.2

    [[phases]]
    name = "batch"
    start_h = 0.0
    fallback = { F = 0.0, Q_air = 20.0, N_stir = 1200.0, T_set = 37.0 }

    [[phases]]
    name = "fed-batch"
    start_h = 6.0
    fallback = { F = { initial = 0.02, growth_per_h = 0.1, max = 0.06 } }

A phase's fallback lists only what changes (the rest is inherited from the phase before);
the first phase names every input. A profile, in the input's unit, is

- a number: held;
- ``{initial, growth_per_h, max}``: ``min(initial e^(growth (t - start)), max)`` (an
  exponential feed), ``start`` the start of the phase in force (an inherited exponential
  starts again from ``initial`` in each later phase);
- ``{steps = [[t0, v0], [t1, v1], ...]}``: a step table (zero-order hold): ``v_i`` from
  ``t_i`` hours after the start of the phase that writes the table until ``t_(i+1)``, the
  last value from then on. Times start at 0 and strictly increase (a water, base or oil
  addition, an aeration program, written as operators write them). An inherited table
  goes on with its own times: a later phase that does not name the input leaves it alone.

Every value a profile can take must lie inside the input's ``[limits]``. ``auto`` (a
boolean, default ``true``, not inherited: each phase says its own or is ``true``) tells
whether the NMPC may act in the phase: ``false`` runs the phase on the recipe alone (e.g.
the first 24 h of a penicillin batch), ``Recipe.auto_at(t)`` answers it for a time. A
third phase for the example above::

    [[phases]]
    name = "production"
    start_h = 20.0
    auto = false          # recipe only: the NMPC may not act from 20 h on
    fallback = { F = { steps = [[0.0, 0.06], [2.0, 0.04], [6.0, 0.03]] } }

The batch ends at ``duration_h`` (the "end" phase).

``[[interlocks]]`` (optional) are the supervisor's guards on raw measurements, checked at
every measurement whatever the estimator believes: e.g. cut the feed to half when the DO
probe reads below 20 % twice in a row (format and rules: :mod:`bpcontrol.interlocks`)::

    [[interlocks]]
    name = "low-DO"
    sensor = "DO_probe"
    below = 20.0
    readings = 2
    release = 25.0
    cut = { F = 0.5 }

Sane sizes: a batch lasts at most :data:`MAX_DURATION_H` hours and has at most
:data:`MAX_TICKS` measurement periods (``duration_h`` over the measurement period), so a
number that passes the finiteness checks but would overflow (``duration_h = 1e308``) or
need days of ticks (``measurement_period_min = 0.0001`` over 30 h) is refused with the
reason when the recipe is read, before anything runs.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from bpcontrol.interlocks import Interlock, parse_interlocks
from bpcontrol.run_length import MAX_DURATION_H, MAX_TICKS, check_run_length
from bpcontrol.supervisor import SetpointLimits
from bpcontrol.tomlfile import read_toml
from models import Model

__all__ = [
    "MAX_DURATION_H",
    "MAX_TICKS",
    "ExponentialProfile",
    "Phase",
    "Profile",
    "Recipe",
    "RecipeError",
    "StepProfile",
    "default_recipe_path",
    "load_recipe",
    "parse_recipe",
]


_MAX_EXPONENT = 700.0  # e^700 ~ 1e304: an exponential feed past it is at its max anyway


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ExponentialProfile:
    """``min(initial * exp(growth_per_h * (t - phase start)), max)`` in the input's unit."""

    initial: float
    growth_per_h: float
    max: float

    def at(self, dt_h: float) -> float:
        """Value ``dt_h`` hours after the phase started."""
        exponent = min(self.growth_per_h * dt_h, _MAX_EXPONENT)  # no OverflowError
        return min(self.initial * math.exp(exponent), self.max)

    def range(self) -> tuple[float, float]:
        """Smallest and largest value the profile can take (for any time after the start)."""
        start = min(self.initial, self.max)
        if self.growth_per_h > 0:
            return start, self.max
        if self.growth_per_h < 0:
            return 0.0, start
        return start, start


# a step whose time lies within this of the query time has started (interval start times
# are sums of control periods and carry rounding; the same slack as Recipe.phase_at)
_TIME_EPS_H = 1e-9


@dataclass(frozen=True)
class StepProfile:
    """A step table (zero-order hold) in the input's unit: ``values[i]`` from ``times[i]``.

    ``times`` are hours since the phase start, the first 0, strictly increasing; the last
    value holds to the end of the phase. Used for additions and programs that operators
    write as a table of changes (water, base, oil, aeration), which an exponential or a
    constant cannot express.
    """

    times: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.times) != len(self.values) or not self.times:
            raise ValueError("a step profile needs as many times as values, at least one")
        if self.times[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(self.times)):
            raise ValueError("step times must start at 0 h and strictly increase")

    def at(self, dt_h: float) -> float:
        """Value ``dt_h`` hours after the phase started (the first value before it)."""
        i = bisect.bisect_right(self.times, dt_h + _TIME_EPS_H) - 1
        return self.values[max(i, 0)]

    def range(self) -> tuple[float, float]:
        """Smallest and largest value of the table."""
        return min(self.values), max(self.values)


Profile = float | ExponentialProfile | StepProfile


@dataclass(frozen=True)
class Phase:
    """A named part of the batch starting at ``start_h`` with its fallback profile per input.

    ``auto``: whether the NMPC may act in this phase (``False``: the recipe alone drives
    the inputs, e.g. an early phase the model does not describe well). ``steps_from_h``:
    process time (h) each step table counts from, the start of the phase that wrote it (an
    inherited table goes on with its own times; absent names count from ``start_h``).
    """

    name: str
    start_h: float
    fallback: Mapping[str, Profile]
    auto: bool = True
    steps_from_h: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def value(self, name: str, t_h: float) -> float:
        """The fallback setpoint of input ``name`` at process time ``t_h`` (h)."""
        profile = self.fallback[name]
        if isinstance(profile, StepProfile):
            return profile.at(t_h - self.steps_from_h.get(name, self.start_h))
        if isinstance(profile, ExponentialProfile):
            return profile.at(t_h - self.start_h)
        return float(profile)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe for one model (see the module docstring for the file format)."""

    name: str
    model: str
    input_names: tuple[str, ...]
    duration_h: float
    measurement_period_h: float
    control_period_h: float
    initial: Mapping[str, float]
    limits: Mapping[str, SetpointLimits]
    phases: tuple[Phase, ...]
    source: str = field(default="")
    interlocks: tuple[Interlock, ...] = ()

    def phase_at(self, t_h: float) -> Phase:
        """The phase in force at ``t_h`` (h): the last one that started by then."""
        current = self.phases[0]
        for phase in self.phases:
            if phase.start_h <= t_h + 1e-9:
                current = phase
        return current

    def fallback(self, t_h: float) -> np.ndarray:
        """The fallback setpoints at ``t_h`` (h), one per input in model order.

        Also the schedule the NMPC follows for the inputs it does not manipulate
        (``NMPCConfig.input_schedule``).
        """
        phase = self.phase_at(t_h)
        return np.array([phase.value(n, t_h) for n in self.input_names], dtype=float)

    def auto_at(self, t_h: float) -> bool:
        """Whether the NMPC may act at ``t_h`` (h): the ``auto`` flag of the phase then."""
        return self.phase_at(t_h).auto

    def initial_state(self, model: Model) -> np.ndarray:
        """The model's nominal state with the recipe's charged values."""
        x0 = model.x0.copy()
        for name, value in self.initial.items():
            x0[model.index(name)] = value
        return x0

    @property
    def steps_per_control(self) -> int:
        """Measurement periods per control period."""
        return round(self.control_period_h / self.measurement_period_h)


def default_recipe_path(model_name: str) -> Path:
    """The recipe of the pack shipped for a built-in model (``bpcontrol/data/packs/<model>``)."""
    path = Path(str(resources.files("bpcontrol") / "data" / "packs" / model_name / "recipe.toml"))
    if not path.is_file():
        raise RecipeError(f"no recipe ships for model {model_name!r}; pass --recipe FILE")
    return path


def load_recipe(path: str | Path, model: Model) -> Recipe:
    """Read and validate a recipe TOML file for ``model`` (raises :class:`RecipeError`)."""
    path = Path(path)
    doc = read_toml(path, "recipe", RecipeError)
    return parse_recipe(doc, model, source=str(path))


_TOP_KEYS = {
    "name",
    "model",
    "duration_h",
    "measurement_period_min",
    "control_period_min",
    "initial",
    "limits",
    "phases",
    "interlocks",
}


def parse_recipe(doc: Mapping[str, Any], model: Model, *, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe document for ``model`` (raises :class:`RecipeError`)."""

    def fail(msg: str) -> RecipeError:
        return RecipeError(f"{source}: {msg}")

    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
    model_name = doc.get("model", model.name)
    if model_name != model.name:
        raise fail(f"recipe is for model {model_name!r}, not {model.name!r}")
    duration = _positive(doc, "duration_h", fail)
    meas = _positive(doc, "measurement_period_min", fail) / 60.0
    ctrl = _positive(doc, "control_period_min", fail) / 60.0
    try:
        check_run_length(
            duration,
            "duration_h",
            step_h=meas,
            steps=f"measurement periods of measurement_period_min = {meas * 60:g} min",
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if ctrl > duration:  # before the ratio: ctrl <= duration keeps it <= MAX_TICKS
        raise fail(
            f"control_period_min = {ctrl * 60:g} is longer than the batch "
            f"(duration_h = {duration:g})"
        )
    ratio = ctrl / meas
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise fail(
            "control_period_min must be a whole multiple of measurement_period_min, "
            f"got {ctrl * 60:g} and {meas * 60:g}"
        )

    initial = _table(doc, "initial", fail)
    x_lo, x_hi = model.bounds("states")
    for name, value in initial.items():
        if name not in model.state_names:
            raise fail(f"[initial] names unknown state {name!r}; states: {model.state_names}")
        v = _number(value, f"initial.{name}", fail)
        i = model.index(name)
        if not x_lo[i] <= v <= x_hi[i]:
            raise fail(f"initial.{name} = {v:g} is outside [{x_lo[i]:g}, {x_hi[i]:g}]")

    inputs = model.input_names
    limits = _limits(_table(doc, "limits", fail), model, fail)
    phases = _phases(doc.get("phases"), inputs, limits, duration, fail)
    measured = tuple(o.name for o in model.outputs if not o.derived)
    try:
        interlocks = parse_interlocks(doc.get("interlocks"), outputs=measured, inputs=inputs)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return Recipe(
        name=str(doc.get("name", model.name)),
        model=model.name,
        input_names=inputs,
        duration_h=duration,
        measurement_period_h=meas,
        control_period_h=ctrl,
        initial=MappingProxyType({k: float(v) for k, v in initial.items()}),
        limits=MappingProxyType(limits),
        phases=phases,
        source=source,
        interlocks=interlocks,
    )


def _number(value: Any, where: str, fail: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{where} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise fail(f"{where} must be finite, got {v}")
    return v


def _positive(doc: Mapping[str, Any], key: str, fail: Any) -> float:
    if key not in doc:
        raise fail(f"missing {key}")
    v = _number(doc[key], key, fail)
    if v <= 0:
        raise fail(f"{key} must be > 0, got {v:g}")
    return v


def _table(doc: Mapping[str, Any], key: str, fail: Any) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise fail(f"[{key}] must be a table")
    return value


def _limits(doc: Mapping[str, Any], model: Model, fail: Any) -> dict[str, SetpointLimits]:
    lo_u, hi_u = model.bounds("inputs")
    limits: dict[str, SetpointLimits] = {}
    for name in doc:
        if name not in model.input_names:
            raise fail(f"[limits] names unknown input {name!r}; inputs: {model.input_names}")
    for i, name in enumerate(model.input_names):
        table = doc.get(name)
        if not isinstance(table, Mapping):
            raise fail(f"missing [limits.{name}] (lower, upper, rate_per_h)")
        extra = sorted(set(table) - {"lower", "upper", "rate_per_h"})
        if extra:
            raise fail(f"[limits.{name}] has unknown keys {extra}")
        lo = _number(table.get("lower", lo_u[i]), f"limits.{name}.lower", fail)
        hi = _number(table.get("upper", hi_u[i]), f"limits.{name}.upper", fail)
        rate = table.get("rate_per_h", math.inf)
        rate = math.inf if rate == "inf" else rate
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool)):
            raise fail(f"limits.{name}.rate_per_h must be a number, got {rate!r}")
        if lo < lo_u[i] or hi > hi_u[i]:
            raise fail(
                f"limits.{name} [{lo:g}, {hi:g}] leave the model's range [{lo_u[i]:g}, {hi_u[i]:g}]"
            )
        try:
            limits[name] = SetpointLimits(lo, hi, float(rate))
        except ValueError as exc:
            raise fail(f"limits.{name}: {exc}") from None
    return limits


def _profile(value: Any, where: str, limit: SetpointLimits, fail: Any) -> Profile:
    if isinstance(value, Mapping):
        if "steps" in value:
            if set(value) != {"steps"}:
                extra = sorted(set(value) - {"steps"})
                raise fail(f"{where} is a step table and takes only 'steps', not {extra}")
            return _steps(value["steps"], f"{where}.steps", limit, fail)
        keys = {"initial", "growth_per_h", "max"}
        if set(value) != keys:
            raise fail(
                f"{where} must be a number, a table with exactly {sorted(keys)} or "
                "{ steps = [[hours, value], ...] }"
            )
        prof = ExponentialProfile(
            _number(value["initial"], f"{where}.initial", fail),
            _number(value["growth_per_h"], f"{where}.growth_per_h", fail),
            _number(value["max"], f"{where}.max", fail),
        )
        if prof.initial < 0:
            raise fail(f"{where}.initial must be >= 0")
        return prof
    return _number(value, where, fail)


def _steps(raw: Any, where: str, limit: SetpointLimits, fail: Any) -> StepProfile:
    """A step table ``[[hours since the phase start, value], ...]``, every entry checked."""
    if not isinstance(raw, list) or not raw:
        raise fail(f"{where} must be a non-empty list of [hours, value] pairs, got {raw!r}")
    times: list[float] = []
    values: list[float] = []
    for j, pair in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise fail(f"{at} must be a [hours, value] pair, got {pair!r}")
        t = _number(pair[0], f"{at} time", fail)
        v = _number(pair[1], f"{at} value", fail)
        if j == 0 and t != 0.0:
            raise fail(f"{at} is at {t:g} h; the first step must be at 0 h (the phase start)")
        if j > 0 and t <= times[-1]:
            raise fail(
                f"{at} is at {t:g} h, not after the step before ({times[-1]:g} h); "
                "step times must strictly increase"
            )
        if not limit.lower <= v <= limit.upper:
            raise fail(f"{at} value {v:g} is outside its limits [{limit.lower:g}, {limit.upper:g}]")
        times.append(t)
        values.append(v)
    return StepProfile(tuple(times), tuple(values))


def _phases(
    raw: Any,
    inputs: tuple[str, ...],
    limits: Mapping[str, SetpointLimits],
    duration: float,
    fail: Any,
) -> tuple[Phase, ...]:
    if not isinstance(raw, list) or not raw:
        raise fail("needs at least one [[phases]] entry (name, start_h, fallback)")
    phases: list[Phase] = []
    inherited: dict[str, Profile] = {}
    steps_from: dict[str, float] = {}  # input -> start of the phase that wrote its step table
    for k, entry in enumerate(raw):
        where = f"phases[{k}]"
        if not isinstance(entry, Mapping):
            raise fail(f"{where} must be a table")
        extra = sorted(set(entry) - {"name", "start_h", "fallback", "auto"})
        if extra:
            raise fail(f"{where} has unknown keys {extra}")
        auto = entry.get("auto", True)
        if not isinstance(auto, bool):
            raise fail(f"{where}.auto must be true or false, got {auto!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise fail(f"{where}.name must be a non-empty string")
        start = _number(entry.get("start_h"), f"{where}.start_h", fail)
        if k == 0 and start != 0.0:
            raise fail(f"the first phase must start at 0 h, not {start:g}")
        if phases and start <= phases[-1].start_h:
            raise fail(f"{where} ({name}) starts at {start:g} h, not after the phase before")
        if start >= duration:
            raise fail(f"{where} ({name}) starts at {start:g} h, at or after the batch end")
        fallback = entry.get("fallback", {})
        if not isinstance(fallback, Mapping):
            raise fail(f"{where}.fallback must be a table of input profiles")
        for key in fallback:
            if key not in inputs:
                raise fail(f"{where}.fallback names unknown input {key!r}; inputs: {inputs}")
        inherited = {
            **inherited,
            **{
                n: _profile(v, f"{where}.fallback.{n}", limits[n], fail)
                for n, v in fallback.items()
            },
        }
        missing = [n for n in inputs if n not in inherited]
        if missing:
            raise fail(f"{where} ({name}) has no fallback for {missing}")
        for n, prof in inherited.items():
            if isinstance(prof, (ExponentialProfile, StepProfile)):
                lo, hi = prof.range()
            else:
                lo, hi = prof, prof
            lim = limits[n]
            if lo < lim.lower or hi > lim.upper:
                raise fail(
                    f"{where} ({name}) fallback {n} reaches [{lo:g}, {hi:g}], outside its "
                    f"limits [{lim.lower:g}, {lim.upper:g}]"
                )
        for n in fallback:
            steps_from.pop(n, None)
            if isinstance(inherited[n], StepProfile):
                steps_from[n] = start
        phases.append(
            Phase(
                name,
                start,
                MappingProxyType(dict(inherited)),
                auto=auto,
                steps_from_h=MappingProxyType(dict(steps_from)),
            )
        )
    return tuple(phases)
