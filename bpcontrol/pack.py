"""Process packs: one folder per process, all files a process engineer edits.

A pack holds everything the loop needs to run a process closed loop, with no Python
beyond an optional model file::

    my_process/
      pack.toml      what the process is: model, parameter and bound overrides,
                     instruments (sensors), KPIs
      recipe.toml    batch duration, loop periods, setpoint limits, phases and their
                     profiles (format: bpcontrol.recipe)
      ekf.toml       estimator tuning (format: estimators.presets; [sensors] optional:
                     by default the instruments of pack.toml)      -- optional
      control.toml   the NMPC: objective, soft bounds, horizon, solver, supervision
                     (format: bpcontrol.control_spec); absent: recipe only  -- optional
      plant.toml     the simulated plant of `bpcontrol run` (parameters off the model,
                     sensor noise, drift, delay; format: hil.runner)  -- optional
      model.py       the model, when it is not a built-in one       -- optional

``pack.toml``::

    name = "E. coli fed-batch"
    description = "Recombinant protein, overflow metabolism, 10 L"
    model = "ecoli_fedbatch"       # a built-in model, or "model.py" (relative to the pack)

    [kpis]
    product = "P_total"            # state or output reported as the batch's product
    minimum = { DO = 30.0 }        # time below these is reported (state units)

    [parameters]                   # override model values (re-validated against bounds)
    S_feed = 500.0                 # or { value = 500.0, unit = "g/L" }

    [bounds.V]                     # override a state's or input's bounds (vessel, pumps)
    upper = 12.0
    unit = "L"

    [sensors.DO_probe]             # an instrument reading a model output
    kind = "online"                # read every measurement period of the recipe
    sigma = 1.0                    # noise std (output units)
    [sensors.X_off]
    kind = "offline"               # a sample taken by hand and assayed later
    sigma = 0.02                   # absolute std floor (output units) ...
    relative_sigma = 0.05          # ... plus this fraction of the reading
    interval_h = [2.0, 4.0]        # time between samples (uniformly random)
    delay_h = [1.0, 3.0]           # time until the result is known

Every problem is one :class:`PackError` line naming the file and the key. The built-in
packs live in ``bpcontrol/data/packs/<model>/``; ``bpcontrol pack init`` writes a new one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from bpcontrol.tomlfile import read_toml
from models import Model, ModelError, available_models, load_model

__all__ = [
    "PACK_FILES",
    "Instrument",
    "KpiSpec",
    "PackError",
    "ProcessPack",
    "builtin_pack_dir",
    "load_pack",
    "model_with_overrides",
    "parse_instruments",
    "parse_kpis",
]

PACK_FILES = ("pack.toml", "recipe.toml", "ekf.toml", "control.toml", "plant.toml")
"""The files of a pack, in the order they are read (the first two are required)."""

_PACK_KEYS = ("name", "description", "model", "kpis", "parameters", "bounds", "sensors")
_SENSOR_KEYS = ("kind", "sigma", "relative_sigma", "interval_h", "delay_h", "unit")


class PackError(ValueError):
    """A pack that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Instrument:
    """An instrument that reads one model output (units of that output).

    ``online``: read every measurement period, std ``sigma``. ``offline``: a sample every
    ``interval_h`` (min, max; uniformly random) assayed with std
    ``sqrt(sigma^2 + (relative_sigma y)^2)``, the result known ``delay_h`` (min, max) later.
    """

    output: str
    kind: Literal["online", "offline"]
    sigma: float
    relative_sigma: float = 0.0
    interval_h: tuple[float, float] = (0.0, 0.0)
    delay_h: tuple[float, float] = (0.0, 0.0)

    @property
    def mean_interval_h(self) -> float:
        """Mean time between offline samples (h)."""
        return 0.5 * (self.interval_h[0] + self.interval_h[1])


@dataclass(frozen=True)
class KpiSpec:
    """What a run reports: the product variable and minimums whose violation is timed."""

    product: str | None
    minimum: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessPack:
    """A pack as documents (parsed TOML), with where each came from for error messages.

    ``model`` is a built-in name or an absolute path of a model file. ``recipe``,
    ``ekf``, ``control`` and ``plant`` are the parsed files (``None``: absent).
    :func:`bpcontrol.runspec.resolve` turns a pack into checked objects.
    """

    name: str
    description: str
    model: str
    parameters: Mapping[str, Any]
    bounds: Mapping[str, Any]
    sensors: Mapping[str, Any]
    kpis: Mapping[str, Any]
    recipe: Mapping[str, Any]
    ekf: Mapping[str, Any] | None = None
    control: Mapping[str, Any] | None = None
    plant: Mapping[str, Any] | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    root: Path | None = None

    def source(self, part: str) -> str:
        """Where ``part`` (pack, recipe, ekf, control, plant) was read from."""
        return self.sources.get(part, part)

    def documents(self) -> dict[str, Any]:
        """The pack as one TOML-ready document (the ``[pack]`` table of a run spec)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "parameters": _plain(self.parameters),
            "bounds": _plain(self.bounds),
            "sensors": _plain(self.sensors),
            "kpis": _plain(self.kpis),
            "recipe": _plain(self.recipe),
        }
        for part in ("ekf", "control", "plant"):
            value = getattr(self, part)
            if value is not None:
                doc[part] = _plain(value)
        return doc


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (for the TOML writer)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def builtin_pack_dir(model_name: str) -> Path:
    """The pack shipped for a built-in model (``bpcontrol/data/packs/<model>``)."""
    path = Path(str(resources.files("bpcontrol") / "data" / "packs" / model_name))
    if not (path / "pack.toml").is_file():
        raise PackError(
            f"no pack ships for model {model_name!r} (packs: {', '.join(available_models())}); "
            "write one with `bpcontrol pack init`"
        )
    return path


def load_pack(directory: str | Path) -> ProcessPack:
    """Read a pack folder's files (see the module docstring); structure checked here,
    meaning (names, units, ranges) by :func:`bpcontrol.runspec.resolve`."""
    root = Path(directory)
    if not root.is_dir():
        raise PackError(f"{root}: pack folder not found (a folder with pack.toml, recipe.toml)")
    for required in PACK_FILES[:2]:
        if not (root / required).is_file():
            raise PackError(
                f"{root / required}: missing (a pack needs {', '.join(PACK_FILES[:2])})"
            )
    known = set(PACK_FILES) | {"model.py", "README.md"}
    for child in sorted(root.iterdir()):
        if child.suffix == ".toml" and child.name not in known:
            raise PackError(f"{child}: unknown pack file (a pack has {', '.join(PACK_FILES)})")
    pack_path = root / "pack.toml"
    doc = read_toml(pack_path, "pack file", PackError)
    src = str(pack_path)
    unknown = sorted(set(doc) - set(_PACK_KEYS))
    if unknown:
        raise PackError(f"{src}: unknown keys {unknown}; allowed: {', '.join(_PACK_KEYS)}")
    model_ref = doc.get("model")
    if not isinstance(model_ref, str) or not model_ref.strip():
        raise PackError(
            f"{src}: model: must name a built-in model ({', '.join(available_models())}) "
            "or a .py file in the pack"
        )
    if model_ref not in available_models():
        model_path = Path(model_ref)
        model_ref = str(
            (root / model_path).resolve() if not model_path.is_absolute() else model_path
        )
    sources = {"pack": src}
    parts: dict[str, Any] = {}
    for part in ("recipe", "ekf", "control", "plant"):
        path = root / f"{part}.toml"
        if path.is_file():
            parts[part] = read_toml(path, f"{part} file", PackError)
            sources[part] = str(path)
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise PackError(f"{src}: {key}: must be a string, got {doc[key]!r}")
    for key in ("parameters", "bounds", "sensors", "kpis"):
        if not isinstance(doc.get(key, {}), Mapping):
            raise PackError(f"{src}: [{key}] must be a table")
    return ProcessPack(
        name=str(doc.get("name", root.name)),
        description=str(doc.get("description", "")),
        model=model_ref,
        parameters=MappingProxyType(dict(doc.get("parameters", {}))),
        bounds=MappingProxyType(dict(doc.get("bounds", {}))),
        sensors=MappingProxyType(dict(doc.get("sensors", {}))),
        kpis=MappingProxyType(dict(doc.get("kpis", {}))),
        recipe=parts["recipe"],
        ekf=parts.get("ekf"),
        control=parts.get("control"),
        plant=parts.get("plant"),
        sources=MappingProxyType(sources),
        root=root,
    )


def _kind(model: Model, name: str) -> str:
    """The group of a variable name ("state", "input", ...), or "" when the model lacks it."""
    try:
        return model.kind(name)
    except KeyError:
        return ""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PackError(f"{where}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise PackError(f"{where}: must be finite, got {v}")
    return v


def _unit_check(model: Model, name: str, unit: Any, where: str) -> None:
    if unit is None:
        return
    group = model.kind(name)
    declared = getattr(model, f"{group}s")[model.index(name)].unit
    if unit != declared:
        raise PackError(f"{where}.unit: is {unit!r}, the model's unit of {name} is {declared!r}")


def model_with_overrides(pack: ProcessPack) -> Model:
    """The pack's model with its parameter and bound overrides, re-validated."""
    src = pack.source("pack")
    try:
        model = load_model(pack.model)
    except ModelError as exc:
        raise PackError(f"{src}: model: {exc}") from None
    params = list(model.parameters)
    for name, raw in pack.parameters.items():
        where = f"{src}: parameters.{name}"
        if _kind(model, name) != "parameter":
            raise PackError(
                f"{where}: {name!r} is not a parameter of model {model.name!r}; "
                f"known: {', '.join(model.parameter_names)}"
            )
        if isinstance(raw, Mapping):
            extra = sorted(set(raw) - {"value", "unit"})
            if extra or "value" not in raw:
                raise PackError(f"{where}: must be a number or {{ value = ..., unit = ... }}")
            _unit_check(model, name, raw.get("unit"), where)
            raw = raw["value"]
        value = _number(raw, where)
        i = model.index(name)
        p = params[i]
        if not p.lower <= value <= p.upper:
            raise PackError(
                f"{where}: {value:g} is outside the parameter's range [{p.lower:g}, {p.upper:g}] "
                f"{p.unit}"
            )
        params[i] = replace(p, value=value, source=f"{p.source}; overridden by {src}")
    groups: dict[str, list[Any]] = {"state": list(model.states), "input": list(model.inputs)}
    for name, raw in pack.bounds.items():
        where = f"{src}: bounds.{name}"
        kind = _kind(model, name)
        if kind not in groups:
            raise PackError(f"{where}: {name!r} is not a state or input of model {model.name!r}")
        if not isinstance(raw, Mapping) or not raw or set(raw) - {"lower", "upper", "unit"}:
            raise PackError(f"{where}: must be a table with lower and/or upper (and unit)")
        _unit_check(model, name, raw.get("unit"), where)
        item = groups[kind][model.index(name)]
        lo = _number(raw.get("lower", item.lower), f"{where}.lower")
        hi = _number(raw.get("upper", item.upper), f"{where}.upper")
        if lo > hi:
            raise PackError(f"{where}: inverted bounds [{lo:g}, {hi:g}]")
        if not lo <= item.nominal <= hi:
            nominal = min(max(item.nominal, lo), hi)
            item = replace(item, nominal=nominal)
        groups[kind][model.index(name)] = replace(item, lower=lo, upper=hi)
    if not pack.parameters and not pack.bounds:
        return model
    try:
        return replace(
            model,
            parameters=tuple(params),
            states=tuple(groups["state"]),
            inputs=tuple(groups["input"]),
            _index={},
        )
    except ModelError as exc:
        raise PackError(f"{src}: the overrides break the model: {exc}") from None


def _pair(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise PackError(f"{where}: must be [min, max] in hours, got {value!r}")
    lo, hi = _number(value[0], f"{where}[0]"), _number(value[1], f"{where}[1]")
    if not 0 <= lo <= hi:
        raise PackError(f"{where}: must satisfy 0 <= min <= max, got [{lo:g}, {hi:g}]")
    return lo, hi


def parse_instruments(
    doc: Mapping[str, Any], model: Model, *, source: str
) -> tuple[Instrument, ...]:
    """The ``[sensors]`` table of a pack, checked against the model's outputs."""
    out: list[Instrument] = []
    for name, entry in doc.items():
        where = f"{source}: sensors.{name}"
        if _kind(model, name) != "output":
            raise PackError(
                f"{where}: {name!r} is not an output of model {model.name!r}; "
                f"outputs: {', '.join(model.sensor_names)}"
            )
        if model.outputs[model.index(name)].derived:
            raise PackError(f"{where}: {name!r} is a derived output (no instrument reads it)")
        if not isinstance(entry, Mapping):
            raise PackError(f"{where}: must be a table (kind, sigma, ...)")
        extra = sorted(set(entry) - set(_SENSOR_KEYS))
        if extra:
            raise PackError(f"{where}: unknown keys {extra}; allowed: {', '.join(_SENSOR_KEYS)}")
        kind = entry.get("kind")
        if kind not in ("online", "offline"):
            raise PackError(f"{where}.kind: must be 'online' or 'offline', got {kind!r}")
        _unit_check(model, name, entry.get("unit"), where)
        if "sigma" not in entry:
            raise PackError(f"{where}: missing sigma (noise std, output units)")
        sigma = _number(entry["sigma"], f"{where}.sigma")
        rel = _number(entry.get("relative_sigma", 0.0), f"{where}.relative_sigma")
        if sigma <= 0 or rel < 0:
            raise PackError(f"{where}: sigma must be > 0 and relative_sigma >= 0")
        if kind == "online":
            for key in ("interval_h", "delay_h"):
                if key in entry:
                    raise PackError(f"{where}.{key}: only offline sensors have {key}")
            out.append(Instrument(name, "online", sigma, rel))
            continue
        for key in ("interval_h", "delay_h"):
            if key not in entry:
                raise PackError(f"{where}: missing {key} = [min, max] (offline sensor)")
        interval = _pair(entry["interval_h"], f"{where}.interval_h")
        if interval[1] <= 0:
            raise PackError(f"{where}.interval_h: must allow a positive interval")
        out.append(
            Instrument(
                name, "offline", sigma, rel, interval, _pair(entry["delay_h"], f"{where}.delay_h")
            )
        )
    if not out:
        raise PackError(f"{source}: [sensors] names no instrument (at least one is needed)")
    return tuple(out)


def parse_kpis(doc: Mapping[str, Any], model: Model, *, source: str) -> KpiSpec:
    """The ``[kpis]`` table of a pack: product variable and timed minimums."""
    extra = sorted(set(doc) - {"product", "minimum"})
    if extra:
        raise PackError(f"{source}: unknown keys kpis.{extra[0]}; allowed: product, minimum")
    product = doc.get("product")
    names = (*model.state_names, *model.output_names)
    if product is not None and product not in names:
        raise PackError(
            f"{source}: kpis.product: {product!r} is not a state or output of model "
            f"{model.name!r}; declare a derived output (e.g. P_total = P V) in the model"
        )
    minimum = doc.get("minimum", {})
    if not isinstance(minimum, Mapping):
        raise PackError(f"{source}: kpis.minimum: must be a table state = value")
    checked: dict[str, float] = {}
    for name, value in minimum.items():
        if name not in model.state_names:
            raise PackError(f"{source}: kpis.minimum.{name}: {name!r} is not a state")
        checked[name] = _number(value, f"{source}: kpis.minimum.{name}")
    return KpiSpec(product, MappingProxyType(checked))
