"""Interlocks: the supervisor's guard on raw measurements, below the estimator and the NMPC.

The NMPC acts on the estimate, and the estimate can be wrong exactly when it matters: a
contamination or a failing aerator the model does not know makes the filter gate the very
readings that show it (the DO, the off-gas), and the controller goes on feeding. A real
bioreactor has a hard-wired answer: when the DO stays below its alarm limit, cut the feed.
An interlock is that rule, declared in the recipe and checked at every measurement, not
only at the control period::

    [[interlocks]]
    name = "low-DO"
    sensor = "DO_probe"          # a measured output of the model
    below = 20.0                 # trips when `readings` readings in a row are below (or `above`)
    readings = 2                 # debounce: a single spike never trips it
    release = 25.0               # released once a reading is back above this (hysteresis)
    cut = { F = 0.5 }            # each named input to this fraction of its applied value

Rules (pure functions over a frozen :class:`InterlockState`, like the supervisor):

- A trip sets every named input to ``cut * applied`` at once, kept inside the input's
  absolute limits: a safety action does not wait for the rate limits, which protect the
  process from the controller, not from its interlocks. Until the interlock is released,
  that value caps the input whatever the mode or the plan (the plan may go lower).
- On release the cap goes; the rate limits bring the input back bumplessly.
- A non-finite reading never trips or releases anything and breaks a run of readings past
  the level (garbage is not evidence either way); readings of other sensors are ignored.
- Trips and releases are ``interlock`` events (an alarm the operator acknowledges); the
  setpoints a trip applies are a record of source ``interlock``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = [
    "Interlock",
    "InterlockState",
    "InterlockTrip",
    "initial_state",
    "parse_interlocks",
    "watch",
]


@dataclass(frozen=True)
class Interlock:
    """One interlock (see the module docstring); thresholds in the sensor's unit.

    Attributes:
        name: how events name it.
        sensor: the measured output it watches.
        threshold: the trip level; ``low`` True trips below it, False above it.
        low: the direction of the trip.
        readings: readings in a row past the threshold that trip it (>= 1).
        release: the level a reading must be back beyond to release it (hysteresis: above
            ``threshold`` for a low trip, below for a high one).
        cut: input name -> fraction (0..1) of its applied value set at the trip.
    """

    name: str
    sensor: str
    threshold: float
    low: bool
    readings: int
    release: float
    cut: Mapping[str, float] = field(default_factory=dict)

    def past(self, value: float) -> bool:
        """Whether ``value`` is past the trip level."""
        return value < self.threshold if self.low else value > self.threshold

    def released_by(self, value: float) -> bool:
        """Whether ``value`` is back beyond the release level."""
        return value >= self.release if self.low else value <= self.release


@dataclass(frozen=True)
class InterlockState:
    """Per interlock (in declaration order): readings in a row past the level, and the cap
    (input name -> upper value) of a tripped one (empty: not tripped)."""

    counts: tuple[int, ...] = ()
    caps: tuple[Mapping[str, float], ...] = ()

    def cap(self, name: str) -> float:
        """The lowest cap on input ``name`` of every tripped interlock (inf: none)."""
        return min((c[name] for c in self.caps if name in c), default=math.inf)

    @property
    def tripped(self) -> int:
        """How many interlocks are tripped."""
        return sum(1 for c in self.caps if c)


@dataclass(frozen=True)
class InterlockTrip:
    """What :func:`watch` decided at one reading: the new values of cut inputs (empty when
    nothing tripped) and the event messages (trips and releases)."""

    values: Mapping[str, float]
    messages: tuple[str, ...]


def initial_state(interlocks: Sequence[Interlock]) -> InterlockState:
    """No interlock tripped, no reading counted."""
    return InterlockState((0,) * len(interlocks), tuple({} for _ in interlocks))


def watch(
    interlocks: Sequence[Interlock],
    state: InterlockState,
    readings: Mapping[str, float],
    applied: Mapping[str, float],
    lower: Mapping[str, float],
) -> tuple[InterlockTrip, InterlockState]:
    """Count ``readings`` (sensor -> latest value) against each interlock; trip or release.

    ``applied``: the inputs applied now; ``lower``: each input's lower absolute limit (a cut
    never goes below it). Returns what to apply and say, and the next state.
    """
    if not state.counts:
        state = initial_state(interlocks)
    counts, caps = list(state.counts), list(state.caps)
    values: dict[str, float] = {}
    messages: list[str] = []
    for i, lock in enumerate(interlocks):
        value = readings.get(lock.sensor)
        if value is None:
            continue
        if not math.isfinite(value):
            counts[i] = 0
            continue
        if caps[i]:
            if lock.released_by(value):
                counts[i], caps[i] = 0, {}
                side = "above" if lock.low else "below"
                messages.append(
                    f"{lock.name} released: {lock.sensor} {value:.4g} back {side} "
                    f"{lock.release:g}; the rate limits bring the inputs back"
                )
            continue
        counts[i] = counts[i] + 1 if lock.past(value) else 0
        if counts[i] < lock.readings:
            continue
        cut = {}
        for name, fraction in lock.cut.items():
            now = min(applied[name], values.get(name, math.inf))
            cut[name] = max(lower[name], fraction * now)
        caps[i] = MappingProxyType(cut)
        values.update(cut)
        side = "below" if lock.low else "above"
        moves = ", ".join(f"{n} {applied[n]:.4g} -> {v:.4g}" for n, v in cut.items())
        messages.append(
            f"{lock.name} tripped: {lock.sensor} {value:.4g} {side} {lock.threshold:g} for "
            f"{lock.readings} readings in a row; {moves} (capped until released at "
            f"{lock.release:g})"
        )
    new = replace(state, counts=tuple(counts), caps=tuple(caps))
    return InterlockTrip(MappingProxyType(values), tuple(messages)), new


_KEYS = frozenset({"name", "sensor", "below", "above", "readings", "release", "cut"})


def parse_interlocks(
    doc: object,
    *,
    outputs: Sequence[str],
    inputs: Sequence[str],
    where: str = "interlocks",
) -> tuple[Interlock, ...]:
    """Check ``[[interlocks]]`` tables (raises ValueError naming ``where[i].key``)."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise ValueError(f"{where}: must be an array of tables ([[interlocks]])")
    found: list[Interlock] = []
    for i, t in enumerate(doc):
        at = f"{where}[{i}]"
        if not isinstance(t, Mapping):
            raise ValueError(f"{at}: must be a table")
        unknown = sorted(set(t) - _KEYS)
        if unknown:
            raise ValueError(f"{at}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        name = t.get("name", f"interlock-{i + 1}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}.name: must be a non-empty string, got {name!r}")
        sensor = t.get("sensor")
        if sensor not in outputs:
            raise ValueError(
                f"{at}.sensor: {sensor!r} is not a measured output (outputs: {', '.join(outputs)})"
            )
        if ("below" in t) == ("above" in t):
            raise ValueError(f"{at}: give exactly one of below or above")
        low = "below" in t
        threshold = _finite(t["below" if low else "above"], f"{at}.{'below' if low else 'above'}")
        readings = t.get("readings", 1)
        if isinstance(readings, bool) or not isinstance(readings, int) or readings < 1:
            raise ValueError(f"{at}.readings: must be an integer >= 1, got {readings!r}")
        release = _finite(t.get("release", threshold), f"{at}.release")
        if (low and release < threshold) or (not low and release > threshold):
            side = "below" if low else "above"
            raise ValueError(
                f"{at}.release: {release:g} must not be {side} the trip level {threshold:g}"
            )
        cut_doc = t.get("cut")
        if not isinstance(cut_doc, Mapping) or not cut_doc:
            raise ValueError(f"{at}.cut: must be a table input = fraction, e.g. {{ F = 0.5 }}")
        cut: dict[str, float] = {}
        for key, fraction in cut_doc.items():
            if key not in inputs:
                raise ValueError(
                    f"{at}.cut.{key}: not an input of the model (inputs: {', '.join(inputs)})"
                )
            f = _finite(fraction, f"{at}.cut.{key}")
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"{at}.cut.{key}: must be a fraction in [0, 1], got {f:g}")
            cut[key] = f
        found.append(
            Interlock(name, str(sensor), threshold, low, readings, release, MappingProxyType(cut))
        )
    names = [lock.name for lock in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate names {dup}")
    return tuple(found)


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    return float(value)
