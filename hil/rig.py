"""The HIL rig: what a real bioreactor's instruments, pumps and base layer do to the loop.

:class:`RigPlant` implements :class:`bpcontrol.interfaces.Plant` around a
:class:`hil.plant.SimulatedPlant` (the true process) and stands for the device side of a
real reactor:

- **sensor effects** per sensor (:class:`SensorEffect`): a first-order probe lag
  (time constant ``lag_h``), extra white noise, a calibration drift growing from the
  run's start, quantisation (the transmitter's resolution) and dropouts (a sample lost
  with a probability);
- **actuator effects** per input (:class:`ActuatorEffect`): saturation (the pump's or
  valve's range), resolution (the smallest step it can set) and dead time (a setpoint
  takes effect ``dead_time_h`` after it was written);
- **scheduled faults** in ``[start_h, end_h)`` (:data:`RIG_FAULT_KINDS`): a stuck or
  drifting probe, spikes, an off-gas analyser outage, a pump that fails or is partly
  blocked (a fraction of the commanded flow is delivered), and a loss of cooling
  capacity (the base layer's temperature loop shows it). A wrong feed concentration
  and a contamination-like growth change alter the true process itself: they are
  scheduled parameter changes of the :class:`SimulatedPlant` (:func:`parameter_changes`);
- **a base layer** (:class:`BaseLayer`): PID loops for temperature and pH on simple
  first-order device-side processes, for models that have no such states; their loads
  come from the true process (metabolic heat from the O2 uptake, acid from the CO2
  evolution), so a growing culture works them harder.

What the device confirms on a write is the setpoint it accepted (after saturation and
resolution): a dead time, a failed pump or a blocked line is invisible in the
confirmation, as on a real device; the loop can only see it in the measurements.

A run stays a pure function of the configuration, the seed and the setpoints written:
the rig's random draws (noise, spikes, dropouts) come from one seeded stream, consumed
reading by reading in the order the true plant returns them (which does not depend on
when the loop reads), and setpoints reach the true plant at times that depend only on
when they were written and on the fixed fault schedule.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from estimators import Reading
from hil.plant import SimulatedPlant

__all__ = [
    "ACTUATOR_EFFECT_KEYS",
    "BASE_LAYER_KEYS",
    "OFFGAS_SENSORS",
    "PLANT_FAULT_KINDS",
    "RIG_FAULT_KINDS",
    "SENSOR_EFFECT_KEYS",
    "ActuatorEffect",
    "BaseLayer",
    "DoCascade",
    "FirstOrderLag",
    "FirstOrderProcess",
    "LoopConfig",
    "PIDController",
    "RigFault",
    "RigPlant",
    "SensorEffect",
    "default_parameter",
    "parameter_changes",
    "quantise",
]

_EPS_H = 1e-9

SENSOR_EFFECT_KEYS = ("noise", "lag_h", "drift_per_h", "quantum", "dropout")
"""Keys of a ``[scenario.sensors.NAME]`` table (:class:`SensorEffect`)."""
ACTUATOR_EFFECT_KEYS = ("min", "max", "resolution", "dead_time_h")
"""Keys of a ``[scenario.actuators.NAME]`` table (:class:`ActuatorEffect`)."""
BASE_LAYER_KEYS = ("temperature_C", "ph", "cooling_W", "heating_W", "do_percent", "do_input")
"""Keys of a ``[scenario.base_layer]`` table (:class:`BaseLayer`)."""

RIG_FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "probe_stuck": ("sensor",),
    "probe_drift": ("sensor", "rate_per_h"),
    "spikes": ("sensor", "size", "probability"),
    "offgas_outage": ("sensors",),
    "pump_failure": ("input",),
    "pump_blockage": ("input", "fraction"),
    "cooling_loss": ("fraction",),
}
"""The faults the rig injects itself, and their options."""
PLANT_FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "feed_concentration": ("factor", "parameter"),
    "growth_change": ("factor", "parameter"),
}
"""The faults that change the true process (scheduled parameter changes), and options."""

OFFGAS_SENSORS = ("OUR", "CER", "y_O2_out", "y_CO2_out")
"""The sensors an off-gas analyser outage silences (those of them the pack has)."""
_DEFAULT_PARAMETER = {
    "feed_concentration": ("S_feed", "s_f"),
    "growth_change": ("mu_max", "mu_x", "Y_xs_ox"),
}


def default_parameter(kind: str, parameter_names: Sequence[str]) -> str | None:
    """The model parameter a plant fault changes when the scenario names none: the feed's
    substrate concentration (``S_feed``, ``s_f``) or the growth rate (``mu_max``,
    ``mu_x``; the yeast model's biomass yield on oxidised glucose ``Y_xs_ox``: a
    contaminant that takes a share of the substrate and of the oxygen)."""
    for name in _DEFAULT_PARAMETER.get(kind, ()):
        if name in parameter_names:
            return name
    return None


@dataclass(frozen=True, kw_only=True)
class RigFault:
    """One scheduled fault, active in ``[start_h, end_h)`` (process h), with its options;
    the rig acts on the rig and plant kinds (a scenario's controller and network faults
    are the same type, :data:`hil.suite.FaultSpec`, carried out elsewhere)."""

    kind: str
    start_h: float = 0.0
    end_h: float = math.inf
    options: Mapping[str, Any] = field(default_factory=dict)

    def active(self, t_h: float) -> bool:
        """Whether the fault is on at process time ``t_h`` (h)."""
        return self.start_h - _EPS_H <= t_h < self.end_h - _EPS_H


def parameter_changes(
    faults: Sequence[RigFault], parameter_names: Sequence[str]
) -> tuple[tuple[float, dict[str, float]], ...]:
    """The :class:`SimulatedPlant` ``parameter_changes`` of the plant faults: the factor
    from ``start_h``, back to 1 at a finite ``end_h`` (the feed bottle is replaced)."""
    out: list[tuple[float, dict[str, float]]] = []
    for f in faults:
        if f.kind not in PLANT_FAULT_KINDS:
            continue
        name = f.options.get("parameter") or default_parameter(f.kind, parameter_names)
        if name is None:
            raise ValueError(f"{f.kind}: the model has no default parameter; name one")
        out.append((f.start_h, {str(name): float(f.options["factor"])}))
        if math.isfinite(f.end_h):
            out.append((f.end_h, {str(name): 1.0}))
    return tuple(out)


# --- sensor and actuator effects --------------------------------------------------------


def quantise(value: float, quantum: float) -> float:
    """``value`` rounded to the nearest multiple of ``quantum`` (0: unchanged); the error
    is at most ``quantum / 2``."""
    if quantum <= 0.0 or not math.isfinite(value):
        return value
    return round(value / quantum) * quantum


class FirstOrderLag:
    """A first-order lag ``tau dy_f/dt = y - y_f`` seen at sample times.

    Between two samples the input is taken as the newer sample's value (the same hold the
    plant's readings use), so the update ``y_f <- a y_f + (1 - a) y`` with
    ``a = exp(-dt / tau)`` is exact: a unit step from 0 reads ``1 - exp(-t / tau)``.
    The first sample initialises the filter (a probe in equilibrium at the start) unless
    ``initial`` is given.
    """

    def __init__(self, tau_h: float, initial: float | None = None, t0_h: float = 0.0) -> None:
        if not (math.isfinite(tau_h) and tau_h > 0):
            raise ValueError(f"lag time constant must be > 0 h, got {tau_h!r}")
        self.tau_h = float(tau_h)
        self._y = initial
        self._t = float(t0_h)

    def update(self, t_h: float, value: float) -> float:
        """The lagged value at ``t_h`` (h) after the input ``value`` since the last one."""
        if self._y is None or not math.isfinite(self._y):
            self._y, self._t = float(value), float(t_h)
            return float(value)
        if not math.isfinite(value):
            return value  # a garbage sample passes; the filter keeps its state
        a = math.exp(-max(t_h - self._t, 0.0) / self.tau_h)
        self._y = a * self._y + (1.0 - a) * float(value)
        self._t = float(t_h)
        return self._y


@dataclass(frozen=True, kw_only=True)
class SensorEffect:
    """What the instrument does to one sensor's readings (all off by default).

    ``lag_h``: first-order probe time constant (h); ``noise``: extra white-noise std
    (sensor units); ``drift_per_h``: calibration bias growing from the run's start
    (units/h); ``quantum``: transmitter resolution (units); ``dropout``: probability in
    [0, 1) that a sample is lost. Applied in that order (quantisation last, as an ADC).
    """

    noise: float = 0.0
    lag_h: float = 0.0
    drift_per_h: float = 0.0
    quantum: float = 0.0
    dropout: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ActuatorEffect:
    """What the device does to one input: saturation to ``[min, max]`` (model units),
    ``resolution`` (the smallest step; the value is rounded to a multiple of it, then
    saturated) and ``dead_time_h`` (h from the write to the effect on the process)."""

    min: float = -math.inf
    max: float = math.inf
    resolution: float = 0.0
    dead_time_h: float = 0.0

    def accept(self, value: float) -> float:
        """The value the device holds for a commanded ``value``."""
        return float(min(max(quantise(value, self.resolution), self.min), self.max))


# --- the base layer -------------------------------------------------------------------


class FirstOrderProcess:
    """``tau dy/dt = -(y - ambient) + gain (u + load)``, stepped exactly for inputs held
    over each step: ``y <- y_ss + (y - y_ss) exp(-dt / tau)``, ``y_ss = ambient + gain (u +
    load)``."""

    def __init__(self, *, tau_h: float, gain: float, ambient: float, initial: float) -> None:
        if not (math.isfinite(tau_h) and tau_h > 0):
            raise ValueError(f"process time constant must be > 0 h, got {tau_h!r}")
        self.tau_h, self.gain, self.ambient = float(tau_h), float(gain), float(ambient)
        self.y = float(initial)

    def step(self, dt_h: float, u: float, load: float = 0.0) -> float:
        """Advance ``dt_h`` (h) with ``u`` and ``load`` held; the new value."""
        y_ss = self.ambient + self.gain * (u + load)
        self.y = y_ss + (self.y - y_ss) * math.exp(-dt_h / self.tau_h)
        return self.y


class PIDController:
    """A discrete PID (position form) with output limits and anti-windup.

    ``u = kp e + I + kd de/dt`` with ``e = setpoint - y``, the derivative on the
    measurement (no kick on a setpoint step) and ``I += kp dt / ti_h e`` only while the
    output is not saturated in the direction the error pushes (conditional
    integration), so the integral does not wind up while an actuator is at its limit.
    :attr:`saturated` says whether the last output was clipped.
    """

    def __init__(
        self,
        *,
        kp: float,
        ti_h: float,
        td_h: float = 0.0,
        u_min: float,
        u_max: float,
        u0: float = 0.0,
    ) -> None:
        if not (ti_h > 0 and u_min < u_max):
            raise ValueError(f"PID needs ti_h > 0 and u_min < u_max, got {ti_h}, {u_min}, {u_max}")
        self.kp, self.ti_h, self.td_h = float(kp), float(ti_h), float(td_h)
        self.u_min, self.u_max = float(u_min), float(u_max)
        self.integral = float(min(max(u0, u_min), u_max))  # bumpless start at u0
        self.saturated = False
        self._y_prev: float | None = None

    def update(self, setpoint: float, y: float, dt_h: float) -> float:
        """The output after a sample ``y`` ``dt_h`` (h) after the previous one."""
        e = setpoint - y
        d = 0.0
        if self._y_prev is not None and dt_h > 0 and self.td_h > 0:
            d = -self.kp * self.td_h * (y - self._y_prev) / dt_h
        self._y_prev = y
        trial = self.integral + self.kp * dt_h / self.ti_h * e
        raw = self.kp * e + trial + d
        u = min(max(raw, self.u_min), self.u_max)
        winding = (raw > self.u_max and e > 0) or (raw < self.u_min and e < 0)
        if not winding:
            self.integral = min(max(trial, self.u_min), self.u_max)
        self.saturated = raw > self.u_max or raw < self.u_min
        return u


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """One base-layer loop: a PID on a first-order device-side process (see
    :class:`FirstOrderProcess`); ``load_sign`` says how the process load enters."""

    name: str
    unit: str
    setpoint: float
    ambient: float
    tau_h: float
    gain: float
    u_min: float
    u_max: float
    load_sign: float

    def pid(self, u0: float) -> PIDController:
        """A lambda-tuned PI: ``kp = tau / (gain lambda)``, ``ti = tau``, ``lambda = tau/2``:
        a closed loop of first order with time constant ``tau / 2`` (IMC tuning,
        Skogestad 2003, J. Process Control 13:291) while the output is not saturated."""
        lam = self.tau_h / 2.0
        return PIDController(
            kp=self.tau_h / (self.gain * lam),
            ti_h=self.tau_h,
            u_min=self.u_min,
            u_max=self.u_max,
            u0=u0,
        )


# Metabolic heat: 460 kJ per mol O2 consumed (Cooney, Wang and Wang 1969, Biotechnol.
# Bioeng. 11:269), i.e. 460 J/mmol; OUR (mmol/L/h) V (L) 460 / 3600 is W.
HEAT_J_PER_MMOL_O2 = 460.0
WATER_J_PER_L_K = 4180.0


class BaseLayer:
    """Temperature and pH PID loops on first-order device-side processes.

    Temperature (degC): the broth exchanges heat with its surroundings (``ambient`` 28
    degC, time constant 0.5 h) and receives the agitator's 30 W and the metabolic heat
    from the true O2 uptake (:data:`HEAT_J_PER_MMOL_O2`); the loop's output is the
    jacket's power, from ``-cooling_W`` (cooling) to ``+heating_W`` (W), the gain the
    thermal resistance tau / (4180 J/L/K V0). Without cooling the broth would settle
    above 30 degC, so the loop cools, harder as the culture grows; a ``cooling_loss``
    fault cuts ``cooling_W`` to a fraction, and once the load exceeds it the loop
    saturates and the temperature rises above its setpoint (an offset).

    pH: the medium is prepared at the setpoint and its buffer would hold it (``ambient``,
    time constant 0.2 h); acid formed in proportion to the true CO2 evolution (CER, or OUR
    when the model has no CER: RQ about 1) lowers it by 0.01 pH per mmol/L/h; the loop
    doses base, 0 to 50 mL/h, 0.1 pH per mL/h (a base-only loop: it cannot lower pH).

    Both are stepped at every sampling instant of the plant with the loads of the
    instant's true outputs held over the interval, and measured noise-free; they do not
    act back on the process model (whose kinetics have no temperature or pH term).
    """

    def __init__(
        self,
        *,
        temperature_C: float | None,
        ph: float | None,
        cooling_W: float = 500.0,
        heating_W: float = 150.0,
        volume_L: float = 1.0,
    ) -> None:
        self.loops: list[LoopConfig] = []
        if temperature_C is not None:
            tau = 0.5
            gain = tau * 3600.0 / (WATER_J_PER_L_K * volume_L)  # K/W
            self.loops.append(
                LoopConfig(
                    name="T",
                    unit="degC",
                    setpoint=float(temperature_C),
                    ambient=28.0,
                    tau_h=tau,
                    gain=gain,
                    u_min=-float(cooling_W),
                    u_max=float(heating_W),
                    load_sign=1.0,
                )
            )
        if ph is not None:
            self.loops.append(
                LoopConfig(
                    name="pH",
                    unit="-",
                    setpoint=float(ph),
                    ambient=float(ph),
                    tau_h=0.2,
                    gain=0.1,
                    u_min=0.0,
                    u_max=50.0,
                    load_sign=-0.1,  # acid: 0.01 pH per mmol/L/h = 0.1 x 0.1
                )
            )
        self.stirrer_W = 30.0
        self._process = {
            c.name: FirstOrderProcess(
                tau_h=c.tau_h, gain=c.gain, ambient=c.ambient, initial=c.setpoint
            )
            for c in self.loops
        }
        self._pid = {c.name: c.pid(self._u_hold(c)) for c in self.loops}
        self._u = {c.name: self._pid[c.name].integral for c in self.loops}
        self.series: dict[str, list[float]] = {"t": []}
        for c in self.loops:
            for key in (c.name, f"{c.name}_u", f"{c.name}_saturated"):
                self.series[key] = []

    def _u_hold(self, c: LoopConfig) -> float:
        """The output that holds the setpoint with no load (a bumpless start)."""
        base = (c.setpoint - c.ambient) / c.gain
        return base - (self.stirrer_W if c.name == "T" else 0.0)

    def step(
        self, t_h: float, dt_h: float, *, heat_W: float, acid: float, u_min: Mapping[str, float]
    ) -> None:
        """Advance every loop by ``dt_h`` (h) to ``t_h`` with the loads held (metabolic
        ``heat_W`` in W, ``acid`` in mmol/L/h) and each PID's output held, then sample and
        let each PID set its output for the next interval. ``u_min`` overrides the lower
        output limit of a loop (``{"T": -cooling_W}`` during a cooling loss)."""
        self.series["t"].append(t_h)
        for c in self.loops:
            load = heat_W + self.stirrer_W if c.name == "T" else acid
            y = self._process[c.name].step(dt_h, self._u[c.name], c.load_sign * load)
            pid = self._pid[c.name]
            pid.u_min = u_min.get(c.name, c.u_min)
            self._u[c.name] = pid.update(c.setpoint, y, dt_h)
            self.series[c.name].append(y)
            self.series[f"{c.name}_u"].append(self._u[c.name])
            self.series[f"{c.name}_saturated"].append(float(pid.saturated))

    def kpis(self) -> dict[str, float]:
        """Per loop: the largest and the final error (measured minus setpoint, units),
        the time saturated (% of instants), the final output."""
        out: dict[str, float] = {}
        for c in self.loops:
            y = np.array(self.series[c.name])
            if not y.size:
                continue
            err = y - c.setpoint
            out[f"rig_{c.name}_max_error"] = float(err[np.argmax(np.abs(err))])
            out[f"rig_{c.name}_final_error"] = float(err[-1])
            out[f"rig_{c.name}_max"] = float(y.max())
            out[f"rig_{c.name}_saturated_percent"] = 100.0 * float(
                np.mean(self.series[f"{c.name}_saturated"])
            )
            out[f"rig_{c.name}_final_output"] = float(self.series[f"{c.name}_u"][-1])
        return out


class DoCascade:
    """The reactor's own DO loop: a PI on the DO probe's reading that sets one aeration
    input (``input``, e.g. ``kLa``) every sampling instant, within ``[u_min, u_max]``.

    DO settles within seconds of an aeration change, much faster than the 1 min
    sampling, so the loop sees a static gain ``dDO/du = (100 - DO) / kLa`` (about 0.1
    %/(1/h) on the yeast pack near 30 % DO); ``kp = 1`` (1/h per %) and ``ti`` one
    sampling period keep the per-sample loop gain ``2 kp g`` under 2 (stable) up to ``g =
    1``. With the cascade on, the supervisory controller's setpoints for that input are
    not taken: the device confirms the cascade's value (the loop records that it holds
    another value). The reading it acts on is the one the loop gets (probe effects and
    faults included); a lost sample holds its output.
    """

    def __init__(
        self, *, setpoint: float, input: str, u_min: float, u_max: float, u0: float
    ) -> None:
        self.setpoint, self.input = float(setpoint), input
        self.pid = PIDController(kp=1.0, ti_h=1.0 / 60.0, u_min=u_min, u_max=u_max, u0=u0)
        self.series: dict[str, list[float]] = {"t": [], "DO": [], "u": [], "saturated": []}

    def update(self, t_h: float, do: float, dt_h: float) -> float:
        """The output after the DO reading ``do`` at ``t_h`` (h)."""
        u = self.pid.update(self.setpoint, do, dt_h)
        for key, v in (("t", t_h), ("DO", do), ("u", u), ("saturated", self.pid.saturated)):
            self.series[key].append(float(v))
        return u

    def kpis(self) -> dict[str, float]:
        """The DO error seen by the loop after its first hour (largest, final) and the time
        at an output limit (% of samples)."""
        t, do = np.array(self.series["t"]), np.array(self.series["DO"])
        if not t.size:
            return {}
        late = t >= t[0] + 1.0
        err = do[late] - self.setpoint if late.any() else do - self.setpoint
        return {
            "rig_DO_cascade_max_error": float(err[np.argmax(np.abs(err))]),
            "rig_DO_cascade_final_error": float(err[-1]),
            "rig_DO_cascade_saturated_percent": 100.0 * float(np.mean(self.series["saturated"])),
        }


# --- the rig ----------------------------------------------------------------------------


class RigPlant:
    """The true plant seen and driven through a real reactor's devices (module docstring).

    Args:
        inner: the true process.
        seed: seeds the rig's own draws (extra noise, spikes, dropouts).
        sensors: ``{sensor: SensorEffect}``.
        actuators: ``{input: ActuatorEffect}``.
        faults: the rig's scheduled faults (:data:`RIG_FAULT_KINDS`; plant faults are
            the inner plant's ``parameter_changes`` and are ignored here).
        base_layer: temperature and pH loops, or None.
        do_cascade: ``(DO setpoint %, aeration input)`` of the device's DO loop
            (:class:`DoCascade`), or None.

    Raises:
        ValueError: a sensor, input or fault option that does not fit the plant.
    """

    def __init__(
        self,
        inner: SimulatedPlant,
        *,
        seed: int,
        sensors: Mapping[str, SensorEffect] | None = None,
        actuators: Mapping[str, ActuatorEffect] | None = None,
        faults: Sequence[RigFault] = (),
        base_layer: BaseLayer | None = None,
        do_cascade: tuple[float, str] | None = None,
    ) -> None:
        self.inner = inner
        model = inner.model
        self._model = model
        self._sensors = dict(sensors or {})
        self._actuators = dict(actuators or {})
        self._faults = [f for f in faults if f.kind in RIG_FAULT_KINDS]
        for f in faults:
            if f.kind not in RIG_FAULT_KINDS and f.kind not in PLANT_FAULT_KINDS:
                raise ValueError(f"not a rig fault: {f.kind!r}")
        names = inner.input_names
        for name in self._actuators:
            if name not in names:
                raise ValueError(f"actuators.{name}: not an input; inputs: {', '.join(names)}")
        outputs = model.output_names
        for name in self._sensors:
            if name not in outputs:
                raise ValueError(f"sensors.{name}: not an output of model {model.name!r}")
        for f in self._faults:
            for key in ("sensor", "input"):
                if key in f.options:
                    ok = outputs if key == "sensor" else names
                    if f.options[key] not in ok:
                        raise ValueError(f"{f.kind}: {key} {f.options[key]!r} is unknown")
        self.base_layer = base_layer
        if (
            base_layer is not None
            and "T" in model.state_names
            and any(c.name == "T" for c in base_layer.loops)
        ):
            raise ValueError(
                f"base_layer.temperature_C: model {model.name!r} has its own temperature state"
            )
        self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5249_4721]))
        self._lags = {
            n: FirstOrderLag(e.lag_h, t0_h=inner.t_h) for n, e in self._sensors.items() if e.lag_h
        }
        self._y_lo, self._y_hi = model.bounds("outputs")
        self._u_lo, self._u_hi = model.bounds("inputs")
        self._t0 = inner.t_h
        u0 = inner.u
        self._device = {n: float(v) for n, v in zip(names, u0, strict=True)}  # held now
        self._delivered = u0.copy()
        self._pending: list[tuple[float, int, str, float]] = []  # (t effect, seq, input, value)
        self._seq = 0
        bounds = {f.start_h for f in self._faults if f.kind.startswith("pump_")}
        bounds |= {f.end_h for f in self._faults if f.kind.startswith("pump_")}
        self._boundaries = sorted(t for t in bounds if math.isfinite(t) and t > self._t0)
        self._i_boundary = 0
        self._log_t: list[float] = [self._t0]  # commanded (accepted) and delivered, per change
        self._log_cmd: list[np.ndarray] = [u0.copy()]
        self._log_del: list[np.ndarray] = [u0.copy()]
        self._last: dict[str, float] = {}  # last value reported per sensor
        self._stuck: dict[int, float] = {}
        self.counts = {"dropouts": 0, "spikes": 0, "outage_dropped": 0, "stuck_readings": 0}
        period = inner.period_h
        self._period = period
        self._k_base = math.floor(self._t0 / period + _EPS_H) + 1  # next base-layer instant
        self._i_our = _index(outputs, "OUR")
        self._i_cer = _index(outputs, "CER")
        self._i_vol = _index(outputs, "V_meas")
        self.cascade: DoCascade | None = None
        if do_cascade is not None:
            sp, name = do_cascade
            if name not in names or "DO_probe" not in outputs:
                raise ValueError(f"do_cascade: needs the input {name!r} and a DO_probe")
            i = names.index(name)
            eff = self._actuators.get(name, ActuatorEffect())
            self.cascade = DoCascade(
                setpoint=sp,
                input=name,
                u_min=max(self._u_lo[i], eff.min),
                u_max=min(self._u_hi[i], eff.max),
                u0=float(u0[i]),
            )
        self._k_read = math.floor(self._t0 / period + _EPS_H)  # last instant read
        self._held_back: list[Reading] = []

    # --- the Plant protocol ---------------------------------------------------------
    @property
    def period_h(self) -> float:
        """The true plant's sampling period (h): readings exist only at its multiples."""
        return float(self.inner.period_h)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The true plant's inputs."""
        return tuple(self.inner.input_names)

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Accept ``setpoints`` (saturation, resolution); what has no dead time reaches the
        process at ``t_h``, the rest ``dead_time_h`` later. Returns the accepted values."""
        self._cascade_to(t_h)
        self._sync(t_h)
        names = self.input_names
        missing = [n for n in names if n not in setpoints]
        if missing or set(setpoints) - set(names):
            return self.inner.apply(t_h, setpoints)  # the plant's own error message
        accepted: dict[str, float] = {}
        for i, n in enumerate(names):
            v = float(setpoints[n])
            eff = self._actuators.get(n)
            if eff is not None and math.isfinite(v):
                v = eff.accept(v)
            v = float(min(max(v, self._u_lo[i]), self._u_hi[i])) if math.isfinite(v) else v
            if self.cascade is not None and n == self.cascade.input:
                v = self._device[n]  # the device's DO loop holds this input
            accepted[n] = v
            if self.cascade is not None and n == self.cascade.input:
                continue
            if eff is not None and eff.dead_time_h > 0:
                self._seq += 1
                bisect.insort(self._pending, (t_h + eff.dead_time_h, self._seq, n, v))
            else:
                self._device[n] = v
        self._deliver(t_h, force=True)
        self._log(t_h, np.array([accepted[n] for n in names]), None)
        return accepted

    def read(self, t_h: float) -> Sequence[Reading]:
        """The true plant's readings through the sensor effects and faults."""
        self._cascade_to(t_h)
        out, self._held_back = self._held_back, []
        self._sync(t_h)
        readings = self.inner.read(t_h)
        self._step_base_layer(t_h)
        for r in readings:
            value = self._effects(r)
            if value is not None:
                out.append(Reading(r.sensor, value, r.t_sample))
        return out

    def _cascade_to(self, t_h: float) -> None:
        """Read the plant instant by instant up to ``t_h`` (h), the DO loop acting at each
        one; the readings wait in :attr:`_held_back` for the next :meth:`read`."""
        if self.cascade is None:
            return
        k_end = math.floor(t_h / self._period + _EPS_H)
        for k in range(self._k_read + 1, k_end + 1):
            tk = k * self._period
            self._sync(tk)
            do = None
            for r in self.inner.read(tk):
                value = self._effects(r)
                if value is not None:
                    self._held_back.append(Reading(r.sensor, value, r.t_sample))
                    if r.sensor == "DO_probe" and math.isfinite(value):
                        do = value
            if do is not None:
                self._device[self.cascade.input] = self.cascade.update(tk, do, self._period)
                self._deliver(tk, force=False)
        self._k_read = max(self._k_read, k_end)

    # --- what the rig measured ---------------------------------------------------------
    def kpis(self) -> dict[str, float]:
        """The rig's figures: counts of dropouts, spikes, readings silenced by an outage
        and stuck readings; per input with a dead time or a pump fault the delivered
        share of the commanded amount (integrals over the run); the base layer's."""
        out: dict[str, float] = {f"rig_{k}": float(v) for k, v in self.counts.items()}
        t_end = self.inner.t_h
        t = np.array([*self._log_t, t_end])
        dt = np.diff(t)
        cmd, dlv = np.array(self._log_cmd), np.array(self._log_del)
        touched = {f.options.get("input", "F") for f in self._faults if f.kind.startswith("pump_")}
        touched |= {n for n, e in self._actuators.items() if e.dead_time_h > 0}
        for i, n in enumerate(self.input_names):
            if n not in touched:
                continue
            c, d = float(dt @ cmd[:, i]), float(dt @ dlv[:, i])
            out[f"rig_{n}_commanded_integral"] = c
            out[f"rig_{n}_delivered_integral"] = d
            out[f"rig_{n}_delivered_fraction"] = d / c if c > 0 else math.nan
        if self.base_layer is not None:
            out.update(self.base_layer.kpis())
        if self.cascade is not None:
            out.update(self.cascade.kpis())
        return out

    def series(self) -> dict[str, list[float]]:
        """The base layer's time series (``t`` in h; per loop value, output, saturated)."""
        out = {} if self.base_layer is None else dict(self.base_layer.series)
        if self.cascade is not None:
            out.update({f"DO_cascade_{k}": v for k, v in self.cascade.series.items()})
        return out

    # --- internals -------------------------------------------------------------------
    def _pump_factor(self, name: str, t_h: float) -> float:
        factor = 1.0
        for f in self._faults:
            if f.kind.startswith("pump_") and f.options.get("input", "F") == name and f.active(t_h):
                factor *= 0.0 if f.kind == "pump_failure" else float(f.options["fraction"])
        return factor

    def _deliver(self, t_h: float, *, force: bool) -> None:
        """Send what the devices deliver at ``t_h`` to the process (when it changed)."""
        names = self.input_names
        u = np.array([self._device[n] * self._pump_factor(n, t_h) for n in names])
        if force or not np.array_equal(u, self._delivered):
            self.inner.apply(t_h, dict(zip(names, u.tolist(), strict=True)))
            self._delivered = u
            self._log(t_h, None, u)

    def _log(self, t_h: float, cmd: np.ndarray | None, dlv: np.ndarray | None) -> None:
        if self._log_t[-1] >= t_h - _EPS_H:
            if cmd is not None:
                self._log_cmd[-1] = cmd
            if dlv is not None:
                self._log_del[-1] = dlv
            return
        self._log_t.append(t_h)
        self._log_cmd.append(self._log_cmd[-1] if cmd is None else cmd)
        self._log_del.append(self._log_del[-1] if dlv is None else dlv)

    def _sync(self, t_h: float) -> None:
        """Carry out, in time order, every dead-time arrival and pump-fault boundary up to
        ``t_h`` (h)."""
        while True:
            t_pending = self._pending[0][0] if self._pending else math.inf
            t_bound = (
                self._boundaries[self._i_boundary]
                if self._i_boundary < len(self._boundaries)
                else math.inf
            )
            te = min(t_pending, t_bound)
            if te > t_h + _EPS_H:
                return
            while self._pending and self._pending[0][0] <= te + _EPS_H:
                _, _, name, value = self._pending.pop(0)
                self._device[name] = value
            while (
                self._i_boundary < len(self._boundaries)
                and self._boundaries[self._i_boundary] <= te + _EPS_H
            ):
                self._i_boundary += 1
            self._deliver(te, force=False)

    def _step_base_layer(self, t_h: float) -> None:
        layer = self.base_layer
        if layer is None:
            return
        k_end = math.floor(t_h / self._period + _EPS_H)
        cooling = [f for f in self._faults if f.kind == "cooling_loss"]
        for k in range(self._k_base, k_end + 1):
            tk = k * self._period
            y = self.inner.output_at(tk)
            our = 0.0 if self._i_our is None else max(float(y[self._i_our]), 0.0)
            vol = 1.0 if self._i_vol is None else float(y[self._i_vol])
            cer = our if self._i_cer is None else max(float(y[self._i_cer]), 0.0)
            heat = HEAT_J_PER_MMOL_O2 * our * vol / 3600.0
            u_min: dict[str, float] = {}
            t_from = tk - self._period
            for c in layer.loops:
                if c.name == "T":
                    share = math.prod(
                        float(f.options["fraction"]) for f in cooling if f.active(t_from)
                    )
                    u_min["T"] = c.u_min * share
            layer.step(tk, self._period, heat_W=heat, acid=cer, u_min=u_min)
        self._k_base = max(self._k_base, k_end + 1)

    def _effects(self, r: Reading) -> float | None:
        """The reported value of reading ``r`` (None: lost)."""
        name, v = r.sensor, float(r.value)
        ts = self.inner.t_h if r.t_sample is None else float(r.t_sample)
        eff = self._sensors.get(name)
        if eff is not None:
            if name in self._lags:
                v = self._lags[name].update(ts, v)
            v += eff.drift_per_h * (ts - self._t0)
            if eff.noise > 0:
                v += eff.noise * float(self._rng.standard_normal())
        stuck: float | None = None
        for i, f in enumerate(self._faults):
            if not f.active(ts):
                continue
            kind, opts = f.kind, f.options
            if kind == "offgas_outage" and name in opts.get("sensors", OFFGAS_SENSORS):
                self.counts["outage_dropped"] += 1
                return None
            if opts.get("sensor", "DO_probe") != name:
                continue
            if kind == "probe_drift":
                v += float(opts["rate_per_h"]) * (ts - f.start_h)
            elif kind == "spikes":
                hit = self._rng.random() < float(opts.get("probability", 0.1))
                sign = 1.0 if self._rng.random() < 0.5 else -1.0
                if hit:
                    v += sign * float(opts["size"])
                    self.counts["spikes"] += 1
            elif kind == "probe_stuck":
                stuck = self._stuck.setdefault(i, self._last.get(name, v))
        if eff is not None:
            v = quantise(v, eff.quantum)
        if stuck is not None:
            v = stuck
            self.counts["stuck_readings"] += 1
        j = self._model.index(name)
        if math.isfinite(v):
            v = float(min(max(v, self._y_lo[j]), self._y_hi[j]))
        if eff is not None and eff.dropout > 0 and self._rng.random() < eff.dropout:
            self.counts["dropouts"] += 1
            return None
        self._last[name] = v
        return v


def _index(names: Sequence[str], name: str) -> int | None:
    return list(names).index(name) if name in names else None
