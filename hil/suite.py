"""HIL scenario suites: TOML files in ``hil/suites/`` that validation teams run.

A suite names its scenarios; each one is a pure function of its spec and seed (see
:mod:`hil.campaign`). Every key of a ``[[scenario]]`` may also be given once in
``[defaults]``::

    name = "smoke"
    description = "what the suite proves"
    [defaults]
    duration_h = 7.0                 # process hours from inoculation (<= the batch)
    seed = 1
    [defaults.criteria]
    records_lost = { max = 0 }

    [[scenario]]
    name = "ecoli-nominal"           # unique in the suite; letters, digits, - _ .
    pack = "ecoli_fedbatch"          # a built-in pack, or a pack folder (relative: to the suite)
    controller = "nmpc"              # or "recipe" (FALLBACK the whole batch)
    deadline_s = 30.0                # wall s per solve (default: the pack's)
    speed_up = 360.0                 # process s per wall s (default: flat out; through a
                                     # transport, the device in lockstep with the loop)
    oracle = false                   # also solve the whole-batch optimum (product_vs_oracle)
    transport = "inprocess"          # "opcua" or "mqtt": through the simulated device and gateway
                                     # (any model: its device mapping, hil/transport.py)
    historian = "embedded"           # or "influx": also to InfluxDB on a server of the run's own
    [scenario.plant]                 # the plant's perturbation (format of hil.runner)
    parameter_factors = { mu_max = 0.8 }
    [scenario.sensors.DO_probe]      # the rig's sensor effects (hil.rig.SensorEffect)
    lag_h = 0.03
    [scenario.actuators.F]           # the rig's actuator effects (hil.rig.ActuatorEffect)
    dead_time_h = 0.03
    [scenario.base_layer]            # the rig's PID loops (hil.rig.BaseLayer)
    ph = 7.0
    [[scenario.fault]]               # faults on a schedule: [start_h, end_h) of process time
    kind = "controller_raise"
    start_h = 6.5
    end_h = 7.0
    [scenario.broken]                # a deliberately broken controller (hil.broken)
    kind = "ignore_do"
    start_h = 6.0
    [scenario.criteria]              # pass/fail on the run's measures (hil.criteria)
    do_min_percent = { min = 25.0 }

Fault kinds (:mod:`hil.faults`): ``controller_raise``, ``controller_hang`` (``hang_s``),
``controller_nan``, ``network_loss`` (every read and write fails), ``read_failures``
(every ``every``-th read), ``write_failures`` (every ``every``-th write),
``sensor_garbage`` (``sensor`` reads NaN) and ``device_clamp`` (``max``: a table of input
caps the device holds for the whole run, ``start_h``/``end_h`` not used); the rig's
(:data:`hil.rig.RIG_FAULT_KINDS`: ``probe_stuck``, ``probe_drift``, ``spikes``,
``offgas_outage``, ``pump_failure``, ``pump_blockage``, ``cooling_loss``) and the true
process's (:data:`hil.rig.PLANT_FAULT_KINDS`: ``feed_concentration``, ``growth_change``,
scheduled parameter changes of the simulated plant); ``historian_outage`` (the run's
InfluxDB server crashes at ``start_h`` and comes back at ``end_h``; needs
``historian = "influx"``, :mod:`hil.historian`); ``crash_restart`` (the controller process
dies at ``start_h`` and restarts at ``end_h`` from the historian's last state, the plant
running on alone in between: :mod:`hil.restart`).

Bad input raises :class:`SuiteError` with one line naming the file and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpcontrol.tomlfile import read_toml
from hil.criteria import CRITERIA, CriterionSpec
from hil.historian import HISTORIANS
from hil.rig import (
    ACTUATOR_EFFECT_KEYS,
    BASE_LAYER_KEYS,
    OFFGAS_SENSORS,
    PLANT_FAULT_KINDS,
    RIG_FAULT_KINDS,
    SENSOR_EFFECT_KEYS,
    ActuatorEffect,
    RigFault,
    SensorEffect,
    default_parameter,
)
from hil.runner import Scenario, ScenarioError, check_scenario, parse_scenario
from hil.transport import TRANSPORTS, mapping_for

__all__ = [
    "BROKEN_KINDS",
    "FAULT_KINDS",
    "BrokenSpec",
    "FaultSpec",
    "ScenarioSpec",
    "Suite",
    "SuiteError",
    "check_suite",
    "load_suite",
    "parse_suite",
]


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the key."""


FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "controller_raise": (),
    "controller_hang": ("hang_s",),
    "controller_nan": (),
    "network_loss": (),
    "read_failures": ("every",),
    "write_failures": ("every",),
    "sensor_garbage": ("sensor",),
    "device_clamp": ("max",),
    "historian_outage": (),
    "crash_restart": (),
    **RIG_FAULT_KINDS,
    **PLANT_FAULT_KINDS,
}
"""Each fault kind and the options it takes (besides ``kind``, ``start_h``, ``end_h``)."""

BROKEN_KINDS: dict[str, tuple[str, ...]] = {
    "ignore_do": ("start_h", "inputs"),
    "stuck_fallback": ("start_h",),
    "outside_clamps": ("start_h", "input", "factor", "permissive_supervisor"),
}
"""Each deliberately broken controller (:mod:`hil.broken`) and its options."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCENARIO_KEYS = (
    "name",
    "pack",
    "seed",
    "duration_h",
    "controller",
    "deadline_s",
    "speed_up",
    "oracle",
    "transport",
    "historian",
    "plant",
    "sensors",
    "actuators",
    "base_layer",
    "fault",
    "broken",
    "criteria",
)


FaultSpec = RigFault
"""One scheduled fault of a scenario (controller, network, rig or plant): the rig's own
fault type, so the campaign hands the rig and plant faults over as they are parsed."""


@dataclass(frozen=True, kw_only=True)
class BrokenSpec:
    """A deliberately broken controller wrapped around the real one (from ``start_h``)."""

    kind: str
    start_h: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ScenarioSpec:
    """One scenario of a suite: everything its run depends on (picklable, pure)."""

    name: str
    pack: str
    seed: int = 1
    duration_h: float | None = None
    controller: str = "nmpc"
    deadline_s: float | None = None
    speed_up: float = math.inf
    oracle: bool = False
    transport: str = "inprocess"
    historian: str = "embedded"
    plant: Scenario = field(default_factory=Scenario)
    sensors: Mapping[str, SensorEffect] = field(default_factory=dict)
    actuators: Mapping[str, ActuatorEffect] = field(default_factory=dict)
    base_layer: Mapping[str, Any] | None = None
    faults: tuple[FaultSpec, ...] = ()
    broken: BrokenSpec | None = None
    criteria: tuple[CriterionSpec, ...] = ()
    source: str = "suite"

    def fault_end_h(self) -> float | None:
        """The end (h) of the last finite fault window (None: no windowed fault)."""
        ends = [f.end_h for f in self.faults if math.isfinite(f.end_h)]
        return max(ends) if ends else None

    def fault_start_h(self) -> float | None:
        """The start (h) of the first fault or broken controller (None: none)."""
        starts = [f.start_h for f in self.faults if f.kind != "device_clamp"]
        if self.broken is not None:
            starts.append(self.broken.start_h)
        return min(starts) if starts else None


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A named list of scenarios read from ``source``."""

    name: str
    description: str
    source: str
    scenarios: tuple[ScenarioSpec, ...]

    def only(self, names: list[str]) -> Suite:
        """The suite with just the named scenarios (raises naming an unknown one)."""
        known = {s.name for s in self.scenarios}
        for name in names:
            if name not in known:
                raise SuiteError(
                    f"{self.source}: --only {name}: no such scenario; "
                    f"scenarios: {', '.join(sorted(known))}"
                )
        chosen = tuple(s for s in self.scenarios if s.name in names)
        return Suite(
            name=self.name, description=self.description, source=self.source, scenarios=chosen
        )


def load_suite(path: str | Path, *, check: bool = True) -> Suite:
    """Read a suite file; with ``check`` also resolve every scenario's pack and plant."""
    path = Path(path)
    doc = read_toml(path, "suite", SuiteError)
    suite = parse_suite(doc, source=str(path), base=path.parent)
    if check:
        check_suite(suite)
    return suite


def parse_suite(doc: Mapping[str, Any], *, source: str, base: Path | None = None) -> Suite:
    """Validate a parsed suite document's structure (meaning: :func:`check_suite`)."""
    allowed = ("name", "description", "defaults", "scenario")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise SuiteError(f"{source}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    name = doc.get("name", Path(source).stem)
    description = doc.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise SuiteError(f"{source}: {key}: must be a string, got {value!r}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise SuiteError(f"{source}: [defaults] must be a table")
    bad = sorted(set(defaults) - set(_SCENARIO_KEYS) - {"name"})
    if bad or "name" in defaults:
        raise SuiteError(
            f"{source}: defaults: unknown keys {bad or ['name']}; allowed: "
            f"{', '.join(k for k in _SCENARIO_KEYS if k != 'name')}"
        )
    entries = doc.get("scenario")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{source}: needs at least one [[scenario]]")
    scenarios: list[ScenarioSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: scenario[{i}]"
        if not isinstance(entry, Mapping):
            raise SuiteError(f"{where}: must be a table")
        merged = _merge(defaults, entry)
        spec = _parse_scenario(merged, where=where, source=source, base=base)
        if spec.name in seen:
            raise SuiteError(f"{where}: name: {spec.name!r} is used twice")
        seen.add(spec.name)
        scenarios.append(spec)
    return Suite(name=name, description=description, source=source, scenarios=tuple(scenarios))


def _merge(defaults: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario's keys over the defaults; criteria and plant tables merge by key."""
    merged = {**defaults, **entry}
    for key in ("criteria",):
        if isinstance(defaults.get(key), Mapping) and isinstance(entry.get(key), Mapping):
            merged[key] = {**defaults[key], **entry[key]}
    return merged


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteError(f"{where}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SuiteError(f"{where}: must be > 0, got {value!r}")
    return float(value)


def _parse_scenario(
    doc: Mapping[str, Any], *, where: str, source: str, base: Path | None
) -> ScenarioSpec:
    unknown = sorted(set(doc) - set(_SCENARIO_KEYS))
    if unknown:
        raise SuiteError(f"{where}: unknown keys {unknown}; allowed: {', '.join(_SCENARIO_KEYS)}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SuiteError(f"{where}: name: needs letters, digits, '-', '_' or '.', got {name!r}")
    where = f"{source}: scenario {name}"
    pack = doc.get("pack")
    if not isinstance(pack, str) or not pack:
        raise SuiteError(f"{where}: pack: must name a built-in pack or a pack folder")
    if ("/" in pack or pack.startswith(".")) and base is not None:
        pack = str((base / pack).resolve())
    seed = doc.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SuiteError(f"{where}: seed: must be an integer in [0, 2^63), got {seed!r}")
    duration = doc.get("duration_h")
    if duration is not None:
        duration = _number(duration, f"{where}: duration_h", positive=True)
    controller = doc.get("controller", "nmpc")
    if controller not in ("nmpc", "recipe"):
        raise SuiteError(f"{where}: controller: must be nmpc or recipe, got {controller!r}")
    deadline = doc.get("deadline_s")
    if deadline is not None:
        deadline = _number(deadline, f"{where}: deadline_s", positive=True)
    speed_up = doc.get("speed_up", math.inf)
    if speed_up != math.inf:
        speed_up = _number(speed_up, f"{where}: speed_up", positive=True)
    oracle = doc.get("oracle", False)
    if not isinstance(oracle, bool):
        raise SuiteError(f"{where}: oracle: must be true or false, got {oracle!r}")
    transport = doc.get("transport", "inprocess")
    if transport not in TRANSPORTS:
        raise SuiteError(
            f"{where}: transport: must be one of {', '.join(TRANSPORTS)}, got {transport!r}"
        )
    historian = doc.get("historian", "embedded")
    if historian not in HISTORIANS:
        raise SuiteError(
            f"{where}: historian: must be one of {', '.join(HISTORIANS)}, got {historian!r}"
        )
    plant_doc = doc.get("plant", {})
    if not isinstance(plant_doc, Mapping):
        raise SuiteError(f"{where}: plant: must be a table (the format of hil.runner)")
    try:
        plant = parse_scenario({"name": name, **plant_doc}, source=f"{where}: plant")
    except ScenarioError as exc:
        raise SuiteError(str(exc)) from None
    sensors = _parse_effects(doc.get("sensors", {}), f"{where}: sensors", sensor=True)
    actuators = _parse_effects(doc.get("actuators", {}), f"{where}: actuators", sensor=False)
    base_layer = None
    if "base_layer" in doc:
        base_layer = _parse_base_layer(doc["base_layer"], f"{where}: base_layer")
    faults_doc = doc.get("fault", [])
    if not isinstance(faults_doc, list):
        raise SuiteError(f"{where}: fault: must be an array of tables ([[scenario.fault]])")
    faults = tuple(_parse_fault(f, f"{where}: fault[{i}]") for i, f in enumerate(faults_doc))
    crashes = [i for i, f in enumerate(faults) if f.kind == "crash_restart"]
    if len(crashes) > 1:
        raise SuiteError(f"{where}: fault[{crashes[1]}]: one crash_restart per scenario")
    broken = None
    if "broken" in doc:
        broken = _parse_broken(doc["broken"], f"{where}: broken")
    criteria_doc = doc.get("criteria", {})
    if not isinstance(criteria_doc, Mapping):
        raise SuiteError(f"{where}: criteria: must be a table of {{ min = .., max = .. }}")
    criteria = tuple(
        _parse_criterion(key, value, f"{where}: criteria.{key}")
        for key, value in criteria_doc.items()
    )
    if any(c.name == "product_vs_oracle" for c in criteria) and not oracle:
        raise SuiteError(f"{where}: criteria.product_vs_oracle: needs oracle = true")
    _check_historian(historian, faults, criteria, where)
    return ScenarioSpec(
        name=name,
        pack=pack,
        seed=seed,
        duration_h=duration,
        controller=controller,
        deadline_s=deadline,
        speed_up=speed_up,
        oracle=oracle,
        transport=transport,
        historian=historian,
        plant=plant,
        sensors=sensors,
        actuators=actuators,
        base_layer=base_layer,
        faults=faults,
        broken=broken,
        criteria=criteria,
        source=where,
    )


def _check_historian(
    historian: str, faults: Sequence[FaultSpec], criteria: Sequence[CriterionSpec], where: str
) -> None:
    """A historian outage and the InfluxDB criterion need ``historian = "influx"``."""
    if historian == "influx":
        return
    for i, fault in enumerate(faults):
        if fault.kind == "historian_outage":
            raise SuiteError(
                f'{where}: fault[{i}]: historian_outage needs historian = "influx", '
                f"got {historian!r}"
            )
    if any(c.name == "historian_points_missing" for c in criteria):
        raise SuiteError(
            f'{where}: criteria.historian_points_missing: needs historian = "influx", '
            f"got {historian!r}"
        )


def _parse_fault(doc: Any, where: str) -> FaultSpec:
    if not isinstance(doc, Mapping):
        raise SuiteError(f"{where}: must be a table")
    kind = doc.get("kind")
    if kind not in FAULT_KINDS:
        raise SuiteError(f"{where}: kind: must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    allowed = ("kind", "start_h", "end_h", *FAULT_KINDS[kind])
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise SuiteError(f"{where}: unknown keys {unknown} for {kind}; allowed: {allowed}")
    start = _number(doc.get("start_h", 0.0), f"{where}: start_h")
    end = doc.get("end_h", math.inf)
    end = end if end == math.inf else _number(end, f"{where}: end_h")
    if not (start >= 0 and end > start):
        raise SuiteError(f"{where}: needs 0 <= start_h < end_h, got [{start:g}, {end:g})")
    options = {k: doc[k] for k in FAULT_KINDS[kind] if k in doc}
    if kind == "crash_restart" and end == math.inf:
        raise SuiteError(f"{where}: end_h: crash_restart needs end_h, when the controller restarts")
    if kind == "controller_hang":
        options["hang_s"] = _number(options.get("hang_s", 5.0), f"{where}: hang_s", positive=True)
    if kind in ("read_failures", "write_failures"):
        every = options.get("every", 2)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise SuiteError(f"{where}: every: must be an integer >= 1, got {every!r}")
        options["every"] = every
    if kind == "sensor_garbage" and not isinstance(options.get("sensor"), str):
        raise SuiteError(f"{where}: sensor: must name an instrument of the pack")
    if kind == "device_clamp":
        caps = options.get("max")
        if not isinstance(caps, Mapping) or not caps:
            raise SuiteError(f"{where}: max: must be a table of input caps, e.g. {{ F = 0.1 }}")
        options["max"] = {str(k): _number(v, f"{where}: max.{k}") for k, v in caps.items()}
    if kind in RIG_FAULT_KINDS or kind in PLANT_FAULT_KINDS:
        _rig_fault_options(kind, options, where)
    return FaultSpec(kind=kind, start_h=start, end_h=end, options=options)


def _fraction(value: Any, where: str) -> float:
    v = _number(value, where)
    if not 0.0 <= v < 1.0:
        raise SuiteError(f"{where}: must be in [0, 1), got {value!r}")
    return v


def _rig_fault_options(kind: str, options: dict[str, Any], where: str) -> None:
    """Check and complete (defaults) the options of a rig or plant fault, in place."""
    if kind in ("probe_stuck", "probe_drift", "spikes"):
        sensor = options.setdefault("sensor", "DO_probe")
        if not isinstance(sensor, str):
            raise SuiteError(f"{where}: sensor: must name an instrument of the pack")
    if kind == "probe_drift":
        if "rate_per_h" not in options:
            raise SuiteError(f"{where}: rate_per_h: needed (sensor units per h)")
        options["rate_per_h"] = _number(options["rate_per_h"], f"{where}: rate_per_h")
    if kind == "spikes":
        if "size" not in options:
            raise SuiteError(f"{where}: size: needed (sensor units)")
        options["size"] = _number(options["size"], f"{where}: size", positive=True)
        prob = _number(options.get("probability", 0.1), f"{where}: probability", positive=True)
        if prob > 1:
            raise SuiteError(f"{where}: probability: must be in (0, 1], got {prob:g}")
        options["probability"] = prob
    if kind == "offgas_outage" and "sensors" in options:
        names = options["sensors"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise SuiteError(f"{where}: sensors: must list instruments, e.g. ['OUR', 'CER']")
        options["sensors"] = tuple(names)
    if kind in ("pump_failure", "pump_blockage") and not isinstance(
        options.setdefault("input", "F"), str
    ):
        raise SuiteError(f"{where}: input: must name an input of the model")
    if kind in ("pump_blockage", "cooling_loss"):
        if "fraction" not in options:
            raise SuiteError(f"{where}: fraction: needed (the share left, in [0, 1))")
        options["fraction"] = _fraction(options["fraction"], f"{where}: fraction")
    if kind in PLANT_FAULT_KINDS:
        if "factor" not in options:
            raise SuiteError(f"{where}: factor: needed (times the plant's parameter)")
        options["factor"] = _number(options["factor"], f"{where}: factor", positive=True)
        if "parameter" in options and not isinstance(options["parameter"], str):
            raise SuiteError(f"{where}: parameter: must name a parameter of the model")


def _parse_effects(doc: Any, where: str, *, sensor: bool) -> dict[str, Any]:
    """``[scenario.sensors.NAME]`` or ``[scenario.actuators.NAME]`` tables."""
    keys = SENSOR_EFFECT_KEYS if sensor else ACTUATOR_EFFECT_KEYS
    if not isinstance(doc, Mapping):
        raise SuiteError(f"{where}: must be a table of {{ {' = .., '.join(keys)} = .. }} per name")
    out: dict[str, Any] = {}
    for name, table in doc.items():
        w = f"{where}.{name}"
        if not isinstance(table, Mapping):
            raise SuiteError(f"{w}: must be a table with keys {', '.join(keys)}")
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise SuiteError(f"{w}: unknown keys {unknown}; allowed: {', '.join(keys)}")
        values = {k: _number(v, f"{w}.{k}") for k, v in table.items()}
        for k in ("noise", "lag_h", "quantum", "resolution", "dead_time_h"):
            if values.get(k, 0.0) < 0:
                raise SuiteError(f"{w}.{k}: must be >= 0, got {values[k]:g}")
        if "dropout" in values:
            values["dropout"] = _fraction(values["dropout"], f"{w}.dropout")
        if not sensor and values.get("min", -math.inf) >= values.get("max", math.inf):
            raise SuiteError(f"{w}: min {values['min']:g} >= max {values['max']:g}")
        out[str(name)] = SensorEffect(**values) if sensor else ActuatorEffect(**values)
    return out


def _parse_base_layer(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, Mapping) or not doc:
        raise SuiteError(f"{where}: must be a table with keys {', '.join(BASE_LAYER_KEYS)}")
    unknown = sorted(set(doc) - set(BASE_LAYER_KEYS))
    if unknown:
        raise SuiteError(f"{where}: unknown keys {unknown}; allowed: {', '.join(BASE_LAYER_KEYS)}")
    out: dict[str, Any] = {
        k: _number(v, f"{where}: {k}") for k, v in doc.items() if k != "do_input"
    }
    if "do_input" in doc:
        if not isinstance(doc["do_input"], str) or "do_percent" not in doc:
            raise SuiteError(f"{where}: do_input: names the aeration input of do_percent's loop")
        out["do_input"] = doc["do_input"]
    if "do_percent" in out and not 0 < out["do_percent"] < 100:
        raise SuiteError(f"{where}: do_percent: must be in (0, 100), got {out['do_percent']:g}")
    for k in ("cooling_W", "heating_W"):
        if k in out and out[k] <= 0:
            raise SuiteError(f"{where}: {k}: must be > 0, got {out[k]:g}")
    if not {"temperature_C", "ph", "do_percent"} & set(out):
        raise SuiteError(f"{where}: needs temperature_C, ph or do_percent (the loops' setpoints)")
    return out


def _parse_broken(doc: Any, where: str) -> BrokenSpec:
    if not isinstance(doc, Mapping):
        raise SuiteError(f"{where}: must be a table with kind = ...")
    kind = doc.get("kind")
    if kind not in BROKEN_KINDS:
        raise SuiteError(f"{where}: kind: must be one of {', '.join(BROKEN_KINDS)}, got {kind!r}")
    allowed = ("kind", *BROKEN_KINDS[kind])
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise SuiteError(f"{where}: unknown keys {unknown} for {kind}; allowed: {allowed}")
    start = _number(doc.get("start_h", 0.0), f"{where}: start_h")
    options: dict[str, Any] = {}
    if kind == "ignore_do":
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise SuiteError(f"{where}: inputs: must list the aeration inputs, e.g. ['Q_air']")
        options["inputs"] = tuple(inputs)
    if kind == "outside_clamps":
        if not isinstance(doc.get("input"), str):
            raise SuiteError(f"{where}: input: must name an input of the model")
        options["input"] = doc["input"]
        options["factor"] = _number(doc.get("factor", 2.0), f"{where}: factor", positive=True)
        permissive = doc.get("permissive_supervisor", True)
        if not isinstance(permissive, bool):
            raise SuiteError(f"{where}: permissive_supervisor: must be true or false")
        options["permissive_supervisor"] = permissive
    return BrokenSpec(kind=kind, start_h=start, options=options)


def _parse_criterion(name: str, doc: Any, where: str) -> CriterionSpec:
    if name not in CRITERIA and not (name.startswith("kpi.") and len(name) > 4):
        raise SuiteError(f"{where}: unknown criterion; criteria: {', '.join(CRITERIA)}, kpi.NAME")
    if not isinstance(doc, Mapping) or not doc or set(doc) - {"min", "max"}:
        raise SuiteError(f"{where}: must be a table {{ min = .., max = .. }} (one or both)")
    lo = _number(doc["min"], f"{where}.min") if "min" in doc else None
    hi = _number(doc["max"], f"{where}.max") if "max" in doc else None
    if lo is not None and hi is not None and lo > hi:
        raise SuiteError(f"{where}: min {lo:g} > max {hi:g}")
    return CriterionSpec(name=name, min=lo, max=hi)


def check_suite(suite: Suite) -> None:
    """Resolve every scenario's pack and check its plant, faults, broken controller and,
    through a network transport, its device mapping (:func:`hil.transport.mapping_for`)
    against it (names, windows inside the run), before anything runs."""
    from bpcontrol.pack import PackError
    from bpcontrol.runspec import resolve, spec_for

    for spec in suite.scenarios:
        where = spec.source
        try:
            run = resolve(spec_for(spec.pack, seed=spec.seed))
        except (PackError, ValueError) as exc:
            raise SuiteError(f"{where}: pack: {exc}") from None
        try:
            check_scenario(spec.plant, run, source=f"{where}: plant")
        except ScenarioError as exc:
            raise SuiteError(str(exc)) from None
        batch = run.recipe.duration_h
        hours = batch if spec.duration_h is None else spec.duration_h
        if hours > batch + 1e-9:
            raise SuiteError(
                f"{where}: duration_h: {hours:g} h is longer than the batch {batch:g} h"
            )
        if hours < run.recipe.measurement_period_h:
            raise SuiteError(f"{where}: duration_h: {hours:g} h is under one measurement period")
        if spec.controller == "nmpc" and run.nmpc is None:
            raise SuiteError(f"{where}: controller: nmpc, but the pack has no control.toml")
        inputs = run.model.input_names
        sensors = {i.output for i in run.instruments}
        if spec.transport != "inprocess":
            try:
                mapping_for(run)
            except ValueError as exc:  # MappingError: one line naming the file and the key
                raise SuiteError(f"{where}: transport: {spec.transport}: {exc}") from None
        _check_rig(spec, run, sensors)
        for i, fault in enumerate(spec.faults):
            fw = f"{where}: fault[{i}]"
            _check_rig_fault(spec, fault, run, sensors, fw)
            if fault.kind != "device_clamp" and fault.start_h >= hours:
                raise SuiteError(f"{fw}: start_h {fault.start_h:g} h is after the run's end")
            if fault.kind == "sensor_garbage" and fault.options["sensor"] not in sensors:
                raise SuiteError(
                    f"{fw}: sensor: {fault.options['sensor']!r} is not an instrument; "
                    f"instruments: {', '.join(sorted(sensors))}"
                )
            for name in fault.options.get("max", {}):
                if name not in inputs:
                    raise SuiteError(f"{fw}: max.{name}: not an input; inputs: {inputs}")
        if spec.broken is not None:
            names = spec.broken.options.get("inputs", ())
            names = (
                (*names, spec.broken.options["input"]) if "input" in spec.broken.options else names
            )
            for name in names:
                if name not in inputs:
                    raise SuiteError(f"{where}: broken: {name!r} is not an input; inputs: {inputs}")
        for c in spec.criteria:
            if c.name == "do_min_percent" and "DO" not in run.model.state_names:
                raise SuiteError(f"{where}: criteria.do_min_percent: the model has no DO state")
            if c.name == "time_below_minimum_percent" and not run.kpis.minimum:
                raise SuiteError(
                    f"{where}: criteria.{c.name}: the pack's [kpis] minimum is not set"
                )


def _check_rig(spec: ScenarioSpec, run: Any, sensors: set[str]) -> None:
    """Sensor and actuator effects name the pack's instruments and the model's inputs; a
    temperature loop only where the model has no temperature state."""
    where = spec.source
    for name in spec.sensors:
        if name not in sensors:
            raise SuiteError(
                f"{where}: sensors.{name}: not an instrument; instruments: "
                f"{', '.join(sorted(sensors))}"
            )
    inputs = run.model.input_names
    for name in spec.actuators:
        if name not in inputs:
            raise SuiteError(f"{where}: actuators.{name}: not an input; inputs: {inputs}")
    layer = spec.base_layer or {}
    if "do_percent" in layer:
        aeration = layer.get("do_input") or _aeration_input(inputs)
        if aeration not in inputs or "DO_probe" not in sensors:
            raise SuiteError(
                f"{where}: base_layer.do_input: the DO cascade needs an aeration input "
                f"(inputs: {inputs}) and a DO_probe instrument"
            )
        layer["do_input"] = aeration  # type: ignore[index]
    if "temperature_C" in layer and "T" in run.model.state_names:
        raise SuiteError(
            f"{where}: base_layer.temperature_C: model {run.model.name!r} has its own "
            "temperature state T (its T_set is the temperature loop); the rig's loop is for "
            "models without one"
        )


def _aeration_input(inputs: Sequence[str]) -> str | None:
    """The input a DO cascade drives by default: ``kLa``, else ``Q_air``, else ``N_stir``."""
    return next((n for n in ("kLa", "Q_air", "N_stir") if n in inputs), None)


def _check_rig_fault(
    spec: ScenarioSpec, fault: FaultSpec, run: Any, sensors: set[str], where: str
) -> None:
    """A rig or plant fault's names against the pack (and its defaults filled in)."""
    model = run.model
    opts = fault.options
    kind = fault.kind
    if "sensor" in opts and kind in RIG_FAULT_KINDS and opts["sensor"] not in sensors:
        raise SuiteError(
            f"{where}: sensor: {opts['sensor']!r} is not an instrument; instruments: "
            f"{', '.join(sorted(sensors))}"
        )
    if kind == "offgas_outage":
        names = opts.get("sensors") or tuple(n for n in OFFGAS_SENSORS if n in sensors)
        if not names:
            raise SuiteError(f"{where}: sensors: the pack has no off-gas instrument; name some")
        for n in names:
            if n not in sensors:
                raise SuiteError(f"{where}: sensors: {n!r} is not an instrument of the pack")
        opts["sensors"] = tuple(names)  # type: ignore[index]
    if kind in ("pump_failure", "pump_blockage") and opts["input"] not in model.input_names:
        raise SuiteError(
            f"{where}: input: {opts['input']!r} is not an input; inputs: {model.input_names}"
        )
    if kind == "cooling_loss":
        if "T" in model.state_names:
            raise SuiteError(
                f"{where}: cooling_loss: model {model.name!r} has its own temperature state "
                "with no cooling limit in it; not injectable (the rig's temperature loop "
                "carries this fault only for models without a temperature)"
            )
        if "temperature_C" not in (spec.base_layer or {}):
            raise SuiteError(f"{where}: cooling_loss: needs base_layer.temperature_C")
    if kind in PLANT_FAULT_KINDS:
        name = opts.get("parameter") or default_parameter(kind, model.parameter_names)
        if name is None or name not in model.parameter_names:
            raise SuiteError(
                f"{where}: parameter: {name!r} is not a parameter of {model.name!r}; name one"
            )
        p = model.parameters[model.index(name)]
        base = p.value * spec.plant.parameter_factors.get(name, 1.0)
        true = base * float(opts["factor"])
        if not p.lower <= true <= p.upper:
            raise SuiteError(
                f"{where}: factor {opts['factor']:g} makes {name} = {true:g} {p.unit}, outside "
                f"its declared range [{p.lower:g}, {p.upper:g}]"
            )
        opts["parameter"] = name  # type: ignore[index]
