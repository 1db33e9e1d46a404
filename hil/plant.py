"""An in-process simulated plant for the closed loop (implements ``bpcontrol.interfaces.Plant``).

``SimulatedPlant`` is the true model with its own parameters, integrated with SUNDIALS
CVODES (adaptive, tolerances 1e-12: it restarts at every sampling instant, and at
1e-10 the restarts add up to ~1e-7 relative error over a few hours) and observed through
simulated instruments:

- the plant advances lazily: ``read(t_h)`` and ``apply(t_h, ...)`` first integrate from
  the plant's time to ``t_h`` (time never goes backwards) with the inputs held since the
  last ``apply`` (zero-order hold). The integration always stops at the online sampling
  instants ``k period_h`` and at the times of ``apply`` calls, and nowhere else, so the
  true trajectory depends only on the setpoints applied (when and what), never on when
  or how often the loop reads;
- online probes (``online``: output -> noise std) are sampled at every instant
  ``k period_h``; a ``read`` returns one reading per sensor for every instant passed
  since the previous ``read`` (several when the loop read late, none when no instant
  passed), with ``t_sample`` = the instant. A reading at ``t`` is
  ``y(t - delay) + drift (t - t0_h) + sigma e``, ``e ~ N(0, 1)``, clipped to the output's
  physical range, where ``y(s)`` is the true output at ``s`` under the inputs held over
  the interval that ends at ``s`` (the same convention as :mod:`hil.synthetic`);
  ``delay_h`` models transport or probe lag (``y`` before ``t0_h`` is ``y(t0_h)``) and
  ``drift`` a calibration bias growing linearly (units per h);
- offline assays (:class:`hil.synthetic.OfflineAssays`): a sample every 2-4 h (uniformly
  random, on the sampling grid), assay error relative plus absolute, the result arriving
  1-3 h later (rounded up to the grid); it is returned by the first ``read`` at or after
  its arrival, with ``t_sample`` = the sample time;
- ``apply`` checks every input (all required, finite), clips to the model's input
  bounds (the device range) and returns the values it holds (the confirmation);
- process noise (``process_noise``: state -> std per sqrt(h), state units; off by
  default): an unmodelled disturbance of the true states, a random walk. At every online
  sampling instant ``t_k`` the integrated state jumps by ``sigma sqrt(t_k - t_{k-1}) e``,
  ``e ~ N(0, I)`` (``t_{k-1}``: the previous instant, or ``t0_h``), and is clipped to the
  states' declared bounds; the outputs there, readings and assays included, see the
  disturbed state. Over a time ``T`` a state thus wanders by ``sigma sqrt(T)`` (std), the
  discrete form of the continuous-time white noise an EKF's ``process_sigma`` models.
  Only the instants carry it, so the trajectory still depends on the setpoints alone.

A run is a pure function of the configuration, the seed and the sequence of ``apply``
calls: online noise, offline draws and process noise come from three seeded streams
consumed in time order, whatever the read pattern. Without process noise its stream is
never drawn from, and a run is the same as before the option existed.

>>> from models import load_model
>>> from hil.plant import ecoli_plant
>>> model = load_model("ecoli_fedbatch")
>>> plant = ecoli_plant(model, seed=1)
>>> held = plant.apply(0.0, {"F": 0.0, "Q_air": 20.0, "N_stir": 1200.0, "T_set": 37.0})
>>> sorted({r.sensor for r in plant.read(0.05)})
['DO_probe', 'V_meas', 'y_CO2_out', 'y_O2_out']
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import casadi as ca
import numpy as np
import numpy.typing as npt

from estimators import Reading
from hil.synthetic import OfflineAssays, true_parameters
from models import Model, SimulationError

__all__ = [
    "ECOLI_PLANT_FACTORS",
    "PlantTruth",
    "SimulatedPlant",
    "ecoli_plant",
]

_EPS_H = 1e-9  # h: times closer than this are the same instant


class PlantTruth(NamedTuple):
    """The plant's true trajectory at every online sampling instant passed so far.

    ``t`` (n,) instants (h); ``x`` (n, nx) true states there; ``u`` (n, nu) the inputs
    held from ``t[k]`` on (after any ``apply`` at ``t[k]``).
    """

    t: np.ndarray
    x: np.ndarray
    u: np.ndarray


class _Sensor(NamedTuple):
    name: str
    j: int  # output index
    sigma: float
    drift: float  # units per h
    delay_h: float


class _Sample(NamedTuple):
    k_sample: int
    k_arrive: int
    errors: np.ndarray


class SimulatedPlant:
    """The true model, integrated finely, seen through noisy, drifting, lagging sensors.

    Args:
        model: the plant's kinetic model.
        x0: true initial state, a vector or ``{state: value}`` over the nominal state.
        u0: inputs held until the first ``apply`` (vector or mapping; default nominal).
        p_true: the plant's parameters, a vector or ``{parameter: value}`` over nominal.
        parameter_factors: multipliers of the nominal parameters (instead of ``p_true``).
        online: ``{output: noise std}`` of the online probes (output units).
        period_h: online sampling period (h), 1 min by default.
        offline: offline assay schedule and error, or None for no assays.
        drift: ``{online sensor: bias growth}`` (output units per h, from ``t0_h``).
        delay_h: ``{online sensor: lag}`` (h): the reading shows the output that long ago.
        process_noise: ``{state: std per sqrt(h)}`` (state units) of a random-walk
            disturbance of the true states at every sampling instant (module docstring);
            None or all zeros: the noise-free plant.
        parameter_changes: ``(t_h, {parameter: factor})`` pairs: from the sampling instant
            at or after ``t_h`` on, each named parameter is its initial true value times the
            factor (a later change of the same parameter replaces an earlier one; factor 1
            restores it). A scheduled fault of the plant itself: a wrong feed
            concentration, a contamination-like change of growth. Changes sit on the
            sampling grid, so every integration step lies under one parameter set and the
            run stays a pure function of the configuration, the seed and the setpoints.
        seed: seeds the noise, the offline schedule and the process noise.
        t0_h: process time of the initial state (h).
        clip_to_range: clip readings to the outputs' physical ranges.
        rtol, atol: CVODES tolerances.

    Raises:
        ValueError: an argument does not fit the model (the message names it).
    """

    def __init__(
        self,
        model: Model,
        *,
        seed: int,
        x0: npt.ArrayLike | Mapping[str, float] | None = None,
        u0: npt.ArrayLike | Mapping[str, float] | None = None,
        p_true: npt.ArrayLike | Mapping[str, float] | None = None,
        parameter_factors: Mapping[str, float] | None = None,
        online: Mapping[str, float] | None = None,
        period_h: float = 1.0 / 60.0,
        offline: OfflineAssays | None = None,
        drift: Mapping[str, float] | None = None,
        delay_h: Mapping[str, float] | None = None,
        process_noise: Mapping[str, float] | None = None,
        parameter_changes: Sequence[tuple[float, Mapping[str, float]]] = (),
        t0_h: float = 0.0,
        clip_to_range: bool = True,
        rtol: float = 1e-12,
        atol: float = 1e-12,
    ) -> None:
        self._model = model
        if not (_is_real(period_h) and math.isfinite(period_h) and period_h > 0):
            raise ValueError(f"period_h must be a positive finite number, got {period_h!r}")
        if not (_is_real(t0_h) and math.isfinite(t0_h)):
            raise ValueError(f"t0_h must be a finite number, got {t0_h!r}")
        for label, tol in (("rtol", rtol), ("atol", atol)):
            if not (_is_real(tol) and 0 < tol < 1):
                raise ValueError(f"{label} must be in (0, 1), got {tol!r}")
        self._period = float(period_h)
        self._p = self._parameters(p_true, parameter_factors)
        self._p_changes = self._schedule(parameter_changes, float(t0_h))
        self._p_k: list[int] = [k for k, _ in self._p_changes]  # instants of the changes
        self._p_sets: list[np.ndarray] = [p for _, p in self._p_changes]
        self._x0 = _vector(x0, model.x0, model.state_names, "x0")
        lo_x, hi_x = model.bounds("states")
        bad = np.flatnonzero((self._x0 < lo_x) | (self._x0 > hi_x))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"x0: state {model.state_names[i]!r} = {self._x0[i]:g} is outside "
                f"[{lo_x[i]:g}, {hi_x[i]:g}]"
            )
        u_init = _vector(u0, model.u0, model.input_names, "u0")
        self._u_lo, self._u_hi = model.bounds("inputs")
        self._u_init = np.clip(u_init, self._u_lo, self._u_hi)
        self._y_lo, self._y_hi = model.bounds("outputs")
        self._clip = bool(clip_to_range)
        self._sensors = self._online_sensors(online or {}, drift or {}, delay_h or {})
        self._x_lo, self._x_hi = lo_x, hi_x
        self._q_sigma = self._process_sigma(process_noise)
        if offline is not None:
            offline.validate(model, (s.name for s in self._sensors))
        self._offline = offline
        self._seed = int(seed)
        self._tolerances = (float(rtol), float(atol))

        cas = model.to_casadi()
        self._h = cas.h
        dt = ca.SX.sym("dt_h")
        dae = {"x": cas.x, "p": ca.vertcat(cas.u, cas.p, dt), "ode": dt * cas.xdot}
        opts = {
            "abstol": float(atol),
            "reltol": float(rtol),
            "max_num_steps": 100000,
            "show_eval_warnings": False,
            "disable_internal_warnings": True,
        }
        # one integrator over s in [0, 1] for every interval length dt (a parameter)
        integrator = ca.integrator(f"{model.name}_plant", "cvodes", dae, 0.0, 1.0, opts)
        # one call per step: (x, u, dt) -> (x after dt, outputs there under u)
        x_sym, u_sym, dt_sym = ca.MX.sym("x", model.nx), ca.MX.sym("u", model.nu), ca.MX.sym("dt")
        p_sym = ca.MX.sym("p", model.n_p)
        xf = integrator(x0=x_sym, p=ca.vertcat(u_sym, p_sym, dt_sym))["xf"]
        self._step_fn = ca.Function(
            f"{model.name}_plant_step",
            [x_sym, u_sym, p_sym, dt_sym],
            [xf, cas.h(xf, u_sym, p_sym)],
            ["x", "u", "p", "dt"],
            ["xf", "y"],
        )

        # time and committed trajectory (knots at sampling instants and apply times)
        t0 = self._snap(float(t0_h))
        self._t0 = t0
        self._t_now = t0
        self._t_state = t0
        self._x = self._x0.copy()
        self._k0 = math.ceil(t0 / self._period - _EPS_H / self._period)
        self._k_next = self._k0  # first sampling instant not yet passed
        self._grid_x: list[np.ndarray] = []
        self._grid_y: list[np.ndarray] = []
        self._knot_t: list[float] = []  # off-grid knots: apply times between instants
        self._knot_x: list[np.ndarray] = []
        self._apply_t: list[float] = [t0]
        self._apply_u: list[np.ndarray] = [self._u_init.copy()]
        self._u = self._u_init.copy()
        if abs(t0 - self._k0 * self._period) <= _EPS_H:
            self._grid_x.append(self._x.copy())
            self._grid_y.append(self._output(self._x, self._u_init, t0))
            self._k_next += 1

        # the first two children are those of spawn(2): adding a stream changed no draw
        online_seq, offline_seq, process_seq = np.random.SeedSequence(self._seed).spawn(3)
        self._rng_online = np.random.default_rng(online_seq)
        self._rng_offline = np.random.default_rng(offline_seq)
        self._rng_process = np.random.default_rng(process_seq)
        self._k_read = self._k0  # first instant whose readings were not returned yet
        self._pending: list[tuple[int, int, Reading]] = []  # (k_arrive, order, reading)
        self._n_assays = 0
        self._next_sample: _Sample | None = None
        if offline is not None:
            self._next_sample = self._draw_sample(self._k0)
            self._take_samples()

    # --- the Plant protocol ------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs the plant accepts, in model order."""
        return self._model.input_names

    def read(self, t_h: float) -> Sequence[Reading]:
        """Readings that became available by ``t_h`` (h) since the last call, in order of
        arrival (online readings before assays arriving at the same instant).

        Raises ``ValueError`` when ``t_h`` is before the plant's time, and
        :class:`models.SimulationError` when the integration fails (state unchanged).
        """
        t = self._check_time(t_h)
        self._advance(t)
        self._t_now = max(self._t_now, t)
        out: list[tuple[int, int, Reading]] = []
        for k in range(self._k_read, self._k_next):
            tk = k * self._period
            noise = self._rng_online.standard_normal(len(self._sensors))
            y_now = self._grid_y[k - self._k0]
            for s, e in zip(self._sensors, noise, strict=True):
                y = y_now[s.j] if s.delay_h == 0.0 else self._output_at(tk - s.delay_h)[s.j]
                value = y + s.drift * (tk - self._t0) + s.sigma * e
                out.append((k, -1, Reading(s.name, self._reading(s.j, value), tk)))
        self._k_read = self._k_next
        arrived = [a for a in self._pending if a[0] < self._k_next]
        if arrived:
            self._pending = [a for a in self._pending if a[0] >= self._k_next]
            out.extend(arrived)
        out.sort(key=lambda a: (a[0], a[1]))
        return [r for _, _, r in out]

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Hold ``setpoints`` (every input, model units) from ``t_h`` (h) on.

        Values are clipped to the model's input bounds; returns ``{input: held value}``.
        Raises ``ValueError`` (plant unchanged) for a time before the plant's time, an
        unknown or missing input, or a non-finite value.
        """
        t = self._check_time(t_h)
        u = self._setpoint_vector(setpoints)
        self._advance(t)
        if t - self._t_state > _EPS_H:
            x, _ = self._step(self._x, self._u, self._t_state, t)
            self._knot_t.append(t)
            self._knot_x.append(x)
            self._x, self._t_state = x, t
        self._t_now = max(self._t_now, t)
        u = np.clip(u, self._u_lo, self._u_hi)
        if self._apply_t[-1] >= t - _EPS_H:  # a second apply at the same instant wins
            self._apply_u[-1] = u
        else:
            self._apply_t.append(t)
            self._apply_u.append(u)
        self._u = u
        return {name: float(v) for name, v in zip(self.input_names, u, strict=True)}

    def restarted(self, **changes: Any) -> SimulatedPlant:
        """A new plant at the start of this one's run, with this one's configuration except
        for ``changes`` (keyword arguments of :class:`SimulatedPlant`, e.g. ``seed`` or
        ``process_noise``); this plant is left as it is.

        Unchanged, it is the same run again: the same truth and readings for the same calls.
        """
        config: dict[str, Any] = {
            "seed": self._seed,
            "x0": self._x0.copy(),
            "u0": self._u_init.copy(),
            "p_true": self._p.copy(),
            "online": {s.name: s.sigma for s in self._sensors},
            "period_h": self._period,
            "offline": self._offline,
            "drift": {s.name: s.drift for s in self._sensors if s.drift != 0.0},
            "delay_h": {s.name: s.delay_h for s in self._sensors if s.delay_h != 0.0},
            "process_noise": self.process_noise,
            "parameter_changes": self.parameter_changes,
            "t0_h": self._t0,
            "clip_to_range": self._clip,
            "rtol": self._tolerances[0],
            "atol": self._tolerances[1],
        }
        if "parameter_factors" in changes:
            del config["p_true"]
        config.update(changes)
        return SimulatedPlant(self._model, **config)

    # --- truth and introspection ---------------------------------------------------------
    @property
    def model(self) -> Model:
        return self._model

    @property
    def t_h(self) -> float:
        """The plant's time: the latest ``t_h`` it was read or actuated at (h)."""
        return self._t_now

    @property
    def period_h(self) -> float:
        return self._period

    @property
    def x(self) -> np.ndarray:
        """The true state at the plant's time :attr:`t_h` (a copy)."""
        if self._t_now - self._t_state > _EPS_H:
            return self._step(self._x, self._u, self._t_state, self._t_now)[0]
        return self._x.copy()

    @property
    def u(self) -> np.ndarray:
        """The inputs held now (a copy)."""
        return self._u.copy()

    @property
    def p_true(self) -> np.ndarray:
        """The plant's true parameters (model order, a copy)."""
        return self._p.copy()

    @property
    def parameter_changes(self) -> tuple[tuple[float, dict[str, float]], ...]:
        """The scheduled parameter changes as given (``(t_h, {parameter: factor})``)."""
        return tuple((t, dict(f)) for t, f in self._p_given)

    def p_at(self, t_h: float) -> np.ndarray:
        """The true parameters in force over the sampling interval that starts at or
        contains ``t_h`` (h; a change at an instant applies from that instant on)."""
        k = math.floor(self._snap(float(t_h)) / self._period + _EPS_H)
        i = bisect.bisect_right(self._p_k, k) - 1
        return (self._p if i < 0 else self._p_sets[i]).copy()

    @property
    def online_sensors(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._sensors)

    @property
    def process_noise(self) -> dict[str, float]:
        """``{state: std per sqrt(h)}`` of the process noise, the states that have it."""
        names = self._model.state_names
        return {names[i]: float(s) for i, s in enumerate(self._q_sigma) if s > 0.0}

    def truth(self) -> PlantTruth:
        """True states and held inputs at every sampling instant passed so far."""
        n = len(self._grid_x)
        t = (self._k0 + np.arange(n)) * self._period
        x = np.array(self._grid_x).reshape(n, self._model.nx)
        idx = np.searchsorted(self._apply_t, t + _EPS_H, side="right") - 1
        u = np.array(self._apply_u)[np.maximum(idx, 0)].reshape(n, self._model.nu)
        return PlantTruth(t=t, x=x, u=u)

    def output_at(self, t_h: float) -> np.ndarray:
        """The noise-free true outputs at a past time ``t_h`` (h, clamped to the start),
        under the inputs held over the interval ending there."""
        t = self._snap(float(t_h))
        if t > self._t_state + _EPS_H:
            raise ValueError(f"output_at({t_h}): the plant is only at {self._t_state} h")
        return self._output_at(t).copy()

    # --- internals -----------------------------------------------------------------------
    def _parameters(
        self,
        p_true: npt.ArrayLike | Mapping[str, float] | None,
        factors: Mapping[str, float] | None,
    ) -> np.ndarray:
        model = self._model
        if p_true is not None and factors:
            raise ValueError("give p_true or parameter_factors, not both")
        for name, value in (factors or {}).items():
            if not (_is_real(value) and math.isfinite(value)):
                raise ValueError(f"parameter_factors[{name!r}] must be finite, got {value!r}")
        if factors:
            return true_parameters(model, factors=factors)
        return _vector(p_true, model.p0, model.parameter_names, "p_true")

    def _schedule(
        self, changes: Sequence[tuple[float, Mapping[str, float]]], t0: float
    ) -> list[tuple[int, np.ndarray]]:
        """The parameter sets in force from each change's sampling instant on, in time order."""
        model = self._model
        given: list[tuple[float, dict[str, float]]] = []
        for item in changes:
            try:
                t, factors = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"parameter_changes: each entry must be (t_h, {{parameter: factor}}), got "
                    f"{item!r}"
                ) from None
            if not (_is_real(t) and math.isfinite(t) and t >= t0):
                raise ValueError(f"parameter_changes: time {t!r} must be finite and >= t0_h")
            if not isinstance(factors, Mapping) or not factors:
                raise ValueError(f"parameter_changes at {t} h: needs {{parameter: factor}}")
            for name, f in factors.items():
                if name not in model.parameter_names:
                    raise ValueError(
                        f"parameter_changes at {t} h: {name!r} is not a parameter of model "
                        f"{model.name!r}"
                    )
                if not (_is_real(f) and math.isfinite(f)):
                    raise ValueError(f"parameter_changes at {t} h: {name} factor {f!r}")
            given.append((float(t), {str(k): float(v) for k, v in factors.items()}))
        self._p_given = tuple(given)
        out: list[tuple[int, np.ndarray]] = []
        current = self._p.copy()
        ordered = sorted(given, key=lambda g: g[0])  # stable: same time, given order
        for t, factors in ordered:
            k = math.ceil(t / self._period - _EPS_H)
            for name, f in factors.items():
                i = model.index(name)
                current[i] = self._p[i] * f
            if out and out[-1][0] == k:
                out[-1] = (k, current.copy())
            else:
                out.append((k, current.copy()))
        return out

    def _online_sensors(
        self,
        online: Mapping[str, float],
        drift: Mapping[str, float],
        delay: Mapping[str, float],
    ) -> tuple[_Sensor, ...]:
        model = self._model
        for name, sigma in online.items():
            if _kind(model, name) != "output":
                raise ValueError(f"online: {name!r} is not an output of model {model.name!r}")
            if not (_is_real(sigma) and math.isfinite(sigma) and sigma >= 0):
                raise ValueError(f"online[{name!r}] must be a finite std >= 0, got {sigma!r}")
        for label, mapping in (("drift", drift), ("delay_h", delay)):
            for name, value in mapping.items():
                if name not in online:
                    raise ValueError(
                        f"{label}: {name!r} is not an online sensor (online: "
                        f"{', '.join(online) or 'none'})"
                    )
                if not (_is_real(value) and math.isfinite(value)):
                    raise ValueError(f"{label}[{name!r}] must be finite, got {value!r}")
                if label == "delay_h" and value < 0:
                    raise ValueError(f"delay_h[{name!r}] must be >= 0, got {value!r}")
        return tuple(
            _Sensor(
                name=name,
                j=model.index(name),
                sigma=float(sigma),
                drift=float(drift.get(name, 0.0)),
                delay_h=float(delay.get(name, 0.0)),
            )
            for name, sigma in online.items()
        )

    def _process_sigma(self, process_noise: Mapping[str, float] | None) -> np.ndarray:
        """The std per sqrt(h) of every state's process noise (model order, zeros: none)."""
        model = self._model
        sigma = np.zeros(model.nx)
        if process_noise is None:
            return sigma
        if not isinstance(process_noise, Mapping):
            raise ValueError(
                f"process_noise must be a mapping {{state: std per sqrt(h)}}, got {process_noise!r}"
            )
        for name, value in process_noise.items():
            if name not in model.state_names:
                raise ValueError(
                    f"process_noise: {name!r} is not a state of model {model.name!r} "
                    f"(states: {', '.join(model.state_names)})"
                )
            if not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"process_noise[{name!r}] must be a finite std >= 0 (state units per "
                    f"sqrt(h)), got {value!r}"
                )
            sigma[model.index(name)] = float(value)
        return sigma

    def _disturb(
        self, x: np.ndarray, u: np.ndarray, dt_h: float, t_h: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``x`` after the process noise of an interval ``dt_h`` (h) ending at ``t_h``,
        clipped to the state bounds, and the outputs there under ``u``."""
        e = self._rng_process.standard_normal(self._model.nx)
        x = np.clip(x + self._q_sigma * math.sqrt(dt_h) * e, self._x_lo, self._x_hi)
        return x, self._output(x, u, t_h - dt_h)

    def _snap(self, t: float) -> float:
        """``t`` moved onto the nearest sampling instant when within round-off of it."""
        k = round(t / self._period)
        tk = k * self._period
        return tk if abs(t - tk) <= _EPS_H else t

    def _check_time(self, t_h: float) -> float:
        if not (_is_real(t_h) and math.isfinite(t_h)):
            raise ValueError(f"time must be a finite number of hours, got {t_h!r}")
        t = self._snap(float(t_h))
        if t < self._t_now - _EPS_H:
            raise ValueError(
                f"time went backwards: {t_h} h is before the plant's time {self._t_now} h"
            )
        return max(t, self._t_now)

    def _setpoint_vector(self, setpoints: Mapping[str, float]) -> np.ndarray:
        names = self.input_names
        if not isinstance(setpoints, Mapping):
            raise ValueError(f"setpoints must be a mapping {{input: value}}, got {setpoints!r}")
        unknown = [n for n in setpoints if n not in names]
        if unknown:
            raise ValueError(
                f"unknown input(s) {', '.join(map(repr, unknown))}; the plant's inputs are "
                f"{', '.join(names)}"
            )
        missing = [n for n in names if n not in setpoints]
        if missing:
            raise ValueError(f"setpoints must name every input; missing {', '.join(missing)}")
        u = np.empty(len(names))
        for i, name in enumerate(names):
            v = setpoints[name]
            if not (_is_real(v) and math.isfinite(v)):
                raise ValueError(f"setpoint {name!r} must be a finite number, got {v!r}")
            u[i] = float(v)
        return u

    def _step(
        self, x: np.ndarray, u: np.ndarray, t_from: float, t_to: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The state at ``t_to`` from ``x`` at ``t_from`` under ``u``, and the outputs there."""
        try:
            xf_dm, y_dm = self._step_fn(x, u, self._p_for_step(t_from), t_to - t_from)
        except RuntimeError as exc:
            raise SimulationError(
                f"plant {self._model.name!r}: CVODES failed between t = {t_from:g} and "
                f"{t_to:g} h ({exc}); state left at {t_from:g} h"
            ) from None
        xf = np.asarray(xf_dm, dtype=float).reshape(-1)
        if not np.all(np.isfinite(xf)):
            raise SimulationError(
                f"plant {self._model.name!r}: the state became non-finite between t = "
                f"{t_from:g} and {t_to:g} h"
            )
        return xf, np.asarray(y_dm, dtype=float).reshape(-1)

    def _p_for_step(self, t_from: float) -> np.ndarray:
        """The parameters of a step starting at ``t_from`` (it never crosses an instant)."""
        if not self._p_k:
            return self._p
        k = math.floor(t_from / self._period + _EPS_H)
        i = bisect.bisect_right(self._p_k, k) - 1
        return self._p if i < 0 else self._p_sets[i]

    def _output(self, x: np.ndarray, u: np.ndarray, t_from: float) -> np.ndarray:
        """Outputs at ``x`` under ``u`` with the parameters of the interval from ``t_from``."""
        p = self._p_for_step(t_from)
        return np.asarray(self._h(x, u, p), dtype=float).reshape(-1)

    def _advance(self, t: float) -> None:
        """Integrate through every sampling instant up to ``t``; commit only on success."""
        k, t_state, x, u = self._k_next, self._t_state, self._x, self._u
        new_x: list[np.ndarray] = []
        new_y: list[np.ndarray] = []
        noisy = bool(np.any(self._q_sigma > 0.0))
        rng_state = self._rng_process.bit_generator.state if noisy else None
        try:
            while k * self._period <= t + _EPS_H:
                tk = k * self._period
                x, y = self._step(x, u, t_state, tk)
                if noisy:  # the random walk's increment since the previous instant
                    x, y = self._disturb(x, u, tk - max((k - 1) * self._period, self._t0), tk)
                new_x.append(x)
                new_y.append(y)
                t_state, k = tk, k + 1
        except SimulationError:
            if rng_state is not None:  # nothing committed: the next try draws the same
                self._rng_process.bit_generator.state = rng_state
            raise
        if not new_x:
            return
        self._grid_x.extend(new_x)
        self._grid_y.extend(new_y)
        self._x, self._t_state, self._k_next = x, t_state, k
        self._take_samples()

    def _draw_sample(self, k_prev: int) -> _Sample:
        assert self._offline is not None
        k_gap, k_delay, errors = self._offline.draw(self._rng_offline, self._period)
        return _Sample(k_prev + k_gap, k_prev + k_gap + k_delay, errors)

    def _take_samples(self) -> None:
        """Assay every offline sample whose instant has passed; queue it until it arrives."""
        off = self._offline
        while self._next_sample is not None and self._next_sample.k_sample < self._k_next:
            assert off is not None
            sample = self._next_sample
            y = self._grid_y[sample.k_sample - self._k0]
            t_sample = sample.k_sample * self._period
            for name, e in zip(off.outputs, sample.errors, strict=True):
                j = self._model.index(name)
                value = self._reading(j, off.assay(name, float(y[j]), float(e)))
                self._pending.append(
                    (sample.k_arrive, self._n_assays, Reading(name, value, t_sample))
                )
                self._n_assays += 1
            self._next_sample = self._draw_sample(sample.k_sample)

    def _reading(self, j: int, value: float) -> float:
        if self._clip:
            return float(min(max(value, self._y_lo[j]), self._y_hi[j]))
        return float(value)

    def _u_seen(self, s: float) -> np.ndarray:
        """The inputs held over the interval that ends at ``s``."""
        i = bisect.bisect_right(self._apply_t, s - _EPS_H) - 1
        return self._u_init if i < 0 else self._apply_u[i]

    def _u_after(self, s: float) -> np.ndarray:
        """The inputs held from ``s`` on (after an apply at ``s``)."""
        i = bisect.bisect_right(self._apply_t, s + _EPS_H) - 1
        return self._u_init if i < 0 else self._apply_u[i]

    def _output_at(self, s: float) -> np.ndarray:
        """True outputs at a committed time ``s`` (clamped to the start)."""
        s = max(self._snap(s), self._t0)
        k = round(s / self._period)
        if abs(s - k * self._period) <= _EPS_H and self._k0 <= k < self._k_next:
            return self._grid_y[k - self._k0]
        # the latest knot at or before s: a sampling instant, an apply time or the start
        t_base, x_base = self._t0, self._x0
        kg = math.floor((s + _EPS_H) / self._period)
        if self._k0 <= kg < self._k_next:
            t_base, x_base = kg * self._period, self._grid_x[kg - self._k0]
        i = bisect.bisect_right(self._knot_t, s + _EPS_H) - 1
        if i >= 0 and self._knot_t[i] > t_base:
            t_base, x_base = self._knot_t[i], self._knot_x[i]
        x = x_base
        if s - t_base > _EPS_H:
            x, _ = self._step(x_base, self._u_after(t_base), t_base, s)
        return self._output(x, self._u_seen(s), t_base)


# --- the E. coli default scenario ------------------------------------------------------

ECOLI_PLANT_FACTORS: Mapping[str, float] = {"mu_max": 0.8, "Y_xs": 1.2}
"""The default E. coli plant: 20 % slower growth and 20 % higher yield than the literature
model the controller starts from (the default scenario of ``bpcontrol run``). The opposite
perturbation (``benchmarks/bench_ekf.py``) is an oxygen-limited plant on which the recipe
breaks the DO minimum; scenarios can choose either."""


def ecoli_plant(
    model: Model,
    *,
    seed: int,
    parameter_factors: Mapping[str, float] | None = None,
    drift: Mapping[str, float] | None = None,
    delay_h: Mapping[str, float] | None = None,
    process_noise: Mapping[str, float] | None = None,
) -> SimulatedPlant:
    """The default E. coli fed-batch plant for the closed loop, from the E. coli pack.

    Starts from the recipe's charge holding the recipe's inputs at 0 h; reads the pack's
    instruments (online DO, off-gas O2/CO2 and volume every minute; offline X, S, A, P
    every 2-4 h with 5 % error, known 1-3 h late); parameters :data:`ECOLI_PLANT_FACTORS`
    (the pack's ``plant.toml``) unless ``parameter_factors`` is given (``{}``: nominal);
    no process noise unless ``process_noise`` (:class:`SimulatedPlant`) is given.
    """
    from bpcontrol.runspec import resolve, spec_for
    from hil.runner import Scenario, simulated_plant

    if model.name != "ecoli_fedbatch":
        raise ValueError(f"ecoli_plant needs the 'ecoli_fedbatch' model, got {model.name!r}")
    run = resolve(spec_for("ecoli_fedbatch", controller="recipe"))
    factors = ECOLI_PLANT_FACTORS if parameter_factors is None else parameter_factors
    scenario = Scenario(
        name="ecoli",
        parameter_factors=dict(factors),
        drift=dict(drift or {}),
        delay_h=dict(delay_h or {}),
    )
    plant = simulated_plant(run, scenario, seed=seed)
    if process_noise is None:
        return plant
    return plant.restarted(process_noise=process_noise)


# --- helpers -----------------------------------------------------------------------------


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _kind(model: Model, name: str) -> str | None:
    try:
        return model.kind(name)
    except KeyError:
        return None


def _vector(
    value: npt.ArrayLike | Mapping[str, float] | None,
    nominal: np.ndarray,
    names: tuple[str, ...],
    label: str,
) -> np.ndarray:
    out = nominal.astype(float).copy()
    if value is None:
        return out
    if isinstance(value, Mapping):
        for name, v in value.items():
            if name not in names:
                raise ValueError(f"{label}: {name!r} is not one of {', '.join(names)}")
            if not (_is_real(v) and math.isfinite(v)):
                raise ValueError(f"{label}[{name!r}] must be finite, got {v!r}")
            out[names.index(name)] = float(v)
        return out
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be {len(names)} numbers or a mapping") from None
    if arr.shape != out.shape or not np.all(np.isfinite(arr)):
        raise ValueError(f"{label} must be {len(names)} finite numbers ({', '.join(names)})")
    return arr.copy()
