"""The device mapping file: which node (and topic) carries each model input and output.

A vendor's controller names its nodes its own way; the mapping file (TOML) maps the
model's inputs (setpoints) and outputs (measurements) onto them, with the device's unit,
a linear scaling and the device's declared range, so a real device is used without code::

    [device]
    name = "ecoli-r1"                 # the LADS device's browse name
    model = "ecoli_fedbatch"          # the model whose inputs and outputs are mapped
    namespace = "urn:bpcontrol:lads:bioreactor"
    heartbeat_period_s = 0.5          # the controller writes its heartbeat this often (wall s)
    heartbeat_timeout_s = 3.0         # the device falls back to the safe setpoints after this
    confirm_timeout_s = 2.0           # a setpoint not confirmed in this time is a failed write

    [mqtt]                            # optional: the same signals over MQTT
    prefix = "bpcontrol"
    site = "lab1"
    reactor = "r1"

    [inputs.F]                        # one table per model input (all inputs required)
    function = "FeedPump"             # the AnalogControlFunction's browse name
    target = "ns=2;s=r1.FeedPump.TargetValue"
    current = "ns=2;s=r1.FeedPump.CurrentValue"
    unit = "mL/h"                     # the device's unit
    scale = 1000.0                    # device value = model value * scale + offset
    offset = 0.0
    range = [0.0, 500.0]              # the device's declared range (device units)
    safe = 0.0                        # local safe setpoint (device units)

    [outputs.DO_probe]                # one table per measured output
    function = "DissolvedOxygen"      # the AnalogSensorFunction's browse name
    value = "ns=2;s=r1.DissolvedOxygen.SensorValue"
    sample_time = "ns=2;s=r1.DissolvedOxygen.SampleTime"   # process time of the value (h)
    unit = "%"
    range = [0.0, 100.0]

Node ids are OPC UA node id strings (``ns=2;s=...`` or ``ns=2;i=...``); the namespace
index 2 is the device namespace (the first one a server registers). Every problem is a
:class:`MappingError` whose message names the file and the key.

Any model has a mapping without a file: :func:`identity_mapping` maps every input and
every measured output under its own name, in the model's units (scale 1, offset 0, the
model's declared bounds as the device range); :func:`identity_toml` renders the same
document as a file to start a vendor's mapping from (``bpcontrol device mapping --model``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpcontrol.tomlfile import read_toml
from models import Model, load_model

__all__ = [
    "DeviceMapping",
    "InputMap",
    "MappingError",
    "MqttTopics",
    "OutputMap",
    "identity_document",
    "identity_mapping",
    "identity_toml",
    "load_mapping",
    "parse_mapping",
]

_NODE_ID = re.compile(r"^ns=\d+;(s=.+|i=\d+)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

HEARTBEAT_PERIOD_S = 0.5
"""Default ``device.heartbeat_period_s``: the controller's heartbeat period (wall s)."""
HEARTBEAT_TIMEOUT_S = 3.0
"""Default ``device.heartbeat_timeout_s``: silence (wall s) after which the device goes safe."""
CONFIRM_TIMEOUT_S = 2.0
"""Default ``device.confirm_timeout_s``: wall s a setpoint write waits for its confirmation."""
WIDE_RANGE = 1e9
"""The identity mapping's stand-in for an infinite declared output bound (model units):
an infinite lower bound becomes -1e9 (``upper - 1e9`` if that is lower), an infinite
upper bound 1e9 (``lower + 1e9`` if that is higher): [-1e9, 1e9] when both are infinite
(OPC UA's EURange must be finite)."""


class MappingError(ValueError):
    """A device mapping file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class InputMap:
    """A model input mapped onto an AnalogControlFunction (device units: ``unit``)."""

    name: str
    function: str
    target: str
    current: str
    unit: str
    scale: float
    offset: float
    lower: float
    upper: float
    safe: float

    def to_device(self, model_value: float) -> float:
        """The device value (device units) of a model value (model units)."""
        return model_value * self.scale + self.offset

    def to_model(self, device_value: float) -> float:
        """The model value (model units) of a device value (device units)."""
        return (device_value - self.offset) / self.scale


@dataclass(frozen=True)
class OutputMap:
    """A model output mapped onto an AnalogSensorFunction (device units: ``unit``)."""

    name: str
    function: str
    value: str
    sample_time: str
    unit: str
    scale: float
    offset: float
    lower: float
    upper: float

    def to_device(self, model_value: float) -> float:
        """The device value (device units) of a model value (model units)."""
        return model_value * self.scale + self.offset

    def to_model(self, device_value: float) -> float:
        """The model value (model units) of a device value (device units)."""
        return (device_value - self.offset) / self.scale


@dataclass(frozen=True)
class MqttTopics:
    """Topics ``<prefix>/<site>/<reactor>/<signal>`` of one reactor."""

    prefix: str
    site: str
    reactor: str

    @property
    def base(self) -> str:
        """``<prefix>/<site>/<reactor>``."""
        return f"{self.prefix}/{self.site}/{self.reactor}"

    def signal(self, name: str) -> str:
        """The retained state topic of a signal."""
        return f"{self.base}/{name}"

    def command(self, name: str) -> str:
        """The setpoint command topic of an input (QoS 1)."""
        return f"{self.base}/{name}/set"

    @property
    def confirm(self) -> str:
        """Where the device confirms each command (by command id)."""
        return f"{self.base}/confirm"

    @property
    def heartbeat(self) -> str:
        """The controller's heartbeat topic."""
        return f"{self.base}/heartbeat"

    @property
    def controller(self) -> str:
        """The controller's presence (retained ``online``; last will ``lost``)."""
        return f"{self.base}/controller"

    @property
    def clock(self) -> str:
        """The device's process time (h), published after each set of samples."""
        return f"{self.base}/clock"

    @property
    def state(self) -> str:
        """The device's unit state (retained ``Running`` / ``SafeState``)."""
        return f"{self.base}/state"

    @property
    def link(self) -> str:
        """The device's link state (retained ``ok`` / ``lost``)."""
        return f"{self.base}/link"


@dataclass(frozen=True)
class DeviceMapping:
    """One device's mapping (see the module docstring)."""

    source: str
    name: str
    model: str
    namespace: str
    heartbeat_period_s: float
    heartbeat_timeout_s: float
    confirm_timeout_s: float
    inputs: tuple[InputMap, ...]
    outputs: tuple[OutputMap, ...]
    mqtt: MqttTopics | None

    @property
    def heartbeat_node(self) -> str:
        """The node the controller's heartbeat counter is written to."""
        return f"ns=2;s={self.name}.Heartbeat"

    @property
    def link_node(self) -> str:
        """The node where the device reports its link (``True``: heartbeat seen in time)."""
        return f"ns=2;s={self.name}.LinkOk"

    @property
    def process_time_node(self) -> str:
        """The device's process time (h)."""
        return f"ns=2;s={self.name}.ProcessTime"

    @property
    def write_count_node(self) -> str:
        """How many setpoint writes the device has applied (its write log length)."""
        return f"ns=2;s={self.name}.SetpointWrites"

    @property
    def command_node(self) -> str:
        """The command id written with every set of TargetValues (one write request)."""
        return f"ns=2;s={self.name}.SetpointCommandId"

    @property
    def confirmed_node(self) -> str:
        """The command id the device applied last (CurrentValues then hold its result)."""
        return f"ns=2;s={self.name}.ConfirmedCommandId"

    @property
    def state_node(self) -> str:
        """The functional unit's state (``Running`` or ``SafeState``)."""
        return f"ns=2;s={self.name}.Reactor.State"

    def input(self, name: str) -> InputMap:
        """The mapping of input ``name``."""
        for m in self.inputs:
            if m.name == name:
                return m
        raise KeyError(name)

    def safe_setpoints(self) -> dict[str, float]:
        """The local safe setpoints in model units."""
        return {m.name: m.to_model(m.safe) for m in self.inputs}


def load_mapping(path: str | Path, model: Model | None = None) -> DeviceMapping:
    """Read and check a device mapping file (raises :class:`MappingError`)."""
    doc = read_toml(path, "device mapping", MappingError)
    return parse_mapping(doc, source=str(path), model=model)


def _number(source: str, key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MappingError(f"{source}: {key}: must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise MappingError(f"{source}: {key}: must be > 0, got {value!r}")
    return float(value)


def _text(source: str, key: str, value: Any, *, node: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise MappingError(f"{source}: {key}: must be a non-empty string, got {value!r}")
    if node and not _NODE_ID.match(value):
        raise MappingError(
            f"{source}: {key}: {value!r} is not an OPC UA node id like 'ns=2;s=Name' or 'ns=2;i=7'"
        )
    return value


def _table(source: str, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MappingError(f"{source}: [{key}] must be a table")
    return value


def _keys(source: str, key: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise MappingError(
            f"{source}: {key}: unknown keys {unknown}; allowed: {', '.join(allowed)}"
        )


def _range(source: str, key: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise MappingError(f"{source}: {key}: must be [lower, upper], got {value!r}")
    lo, hi = (_number(source, key, v) for v in value)
    if not lo < hi:
        raise MappingError(f"{source}: {key}: lower {lo:g} must be below upper {hi:g}")
    return lo, hi


_DEVICE_KEYS = (
    "name",
    "model",
    "namespace",
    "heartbeat_period_s",
    "heartbeat_timeout_s",
    "confirm_timeout_s",
)
_INPUT_KEYS = ("function", "target", "current", "unit", "scale", "offset", "range", "safe")
_OUTPUT_KEYS = ("function", "value", "sample_time", "unit", "scale", "offset", "range")


def parse_mapping(
    doc: Mapping[str, Any], *, source: str, model: Model | None = None
) -> DeviceMapping:
    """Check a parsed mapping document against its model (module docstring for the keys).

    The device ranges, mapped back to model units, must lie inside the model's declared
    bounds (a device may be narrower, never wider); safe setpoints inside the device range;
    node ids unique.
    """
    _keys(source, "top level", doc, ("device", "mqtt", "inputs", "outputs"))
    dev = _table(source, "device", doc.get("device"))
    _keys(source, "device", dev, _DEVICE_KEYS)
    name = _text(source, "device.name", dev.get("name"))
    if not _NAME.match(name):
        raise MappingError(f"{source}: device.name: {name!r} must be letters, digits, - or _")
    model_name = _text(source, "device.model", dev.get("model"))
    if model is None:
        try:
            model = load_model(model_name)
        except Exception as exc:
            raise MappingError(
                f"{source}: device.model: cannot load {model_name!r} ({exc})"
            ) from None
    elif model.name != model_name:
        raise MappingError(
            f"{source}: device.model: the mapping is for {model_name!r}, the run's model is "
            f"{model.name!r}"
        )
    namespace = _text(source, "device.namespace", dev.get("namespace", "urn:bpcontrol:lads"))
    period = _number(
        source,
        "device.heartbeat_period_s",
        dev.get("heartbeat_period_s", HEARTBEAT_PERIOD_S),
        positive=True,
    )
    timeout = _number(
        source,
        "device.heartbeat_timeout_s",
        dev.get("heartbeat_timeout_s", HEARTBEAT_TIMEOUT_S),
        positive=True,
    )
    if timeout <= 2 * period:
        raise MappingError(
            f"{source}: device.heartbeat_timeout_s: {timeout:g} s must exceed twice "
            f"heartbeat_period_s ({period:g} s), or one late beat drops the device to safe"
        )
    confirm = _number(
        source,
        "device.confirm_timeout_s",
        dev.get("confirm_timeout_s", CONFIRM_TIMEOUT_S),
        positive=True,
    )

    inputs_doc = _table(source, "inputs", doc.get("inputs"))
    lo_u, hi_u = model.bounds("inputs")
    missing = [n for n in model.input_names if n not in inputs_doc]
    if missing:
        raise MappingError(
            f"{source}: inputs: every input of {model.name!r} must be mapped; missing "
            f"{', '.join(missing)}"
        )
    inputs: list[InputMap] = []
    for key, table in inputs_doc.items():
        where = f"inputs.{key}"
        if key not in model.input_names:
            raise MappingError(
                f"{source}: {where}: not an input of {model.name!r} "
                f"(inputs: {', '.join(model.input_names)})"
            )
        t = _table(source, where, table)
        _keys(source, where, t, _INPUT_KEYS)
        scale = _number(source, f"{where}.scale", t.get("scale", 1.0))
        if scale == 0:
            raise MappingError(f"{source}: {where}.scale: must not be 0")
        offset = _number(source, f"{where}.offset", t.get("offset", 0.0))
        lo, hi = _range(source, f"{where}.range", t.get("range"))
        i = model.index(key)
        m_lo, m_hi = sorted(((lo - offset) / scale, (hi - offset) / scale))
        tol = 1e-9 * max(1.0, abs(lo_u[i]), abs(hi_u[i]))
        if m_lo < lo_u[i] - tol or m_hi > hi_u[i] + tol:
            raise MappingError(
                f"{source}: {where}.range: [{lo:g}, {hi:g}] {t.get('unit', '')} is "
                f"[{m_lo:g}, {m_hi:g}] in model units, outside the model's bounds "
                f"[{lo_u[i]:g}, {hi_u[i]:g}]"
            )
        safe = _number(source, f"{where}.safe", t.get("safe"))
        if not lo <= safe <= hi:
            raise MappingError(
                f"{source}: {where}.safe: {safe:g} is outside the device range [{lo:g}, {hi:g}]"
            )
        inputs.append(
            InputMap(
                name=key,
                function=_text(source, f"{where}.function", t.get("function")),
                target=_text(source, f"{where}.target", t.get("target"), node=True),
                current=_text(source, f"{where}.current", t.get("current"), node=True),
                unit=_text(source, f"{where}.unit", t.get("unit")),
                scale=scale,
                offset=offset,
                lower=lo,
                upper=hi,
                safe=safe,
            )
        )
    inputs.sort(key=lambda m: model.input_names.index(m.name))

    outputs_doc = _table(source, "outputs", doc.get("outputs", {}))
    outputs: list[OutputMap] = []
    for key, table in outputs_doc.items():
        where = f"outputs.{key}"
        if key not in model.output_names:
            raise MappingError(
                f"{source}: {where}: not an output of {model.name!r} "
                f"(outputs: {', '.join(model.output_names)})"
            )
        t = _table(source, where, table)
        _keys(source, where, t, _OUTPUT_KEYS)
        scale = _number(source, f"{where}.scale", t.get("scale", 1.0))
        if scale == 0:
            raise MappingError(f"{source}: {where}.scale: must not be 0")
        lo, hi = _range(source, f"{where}.range", t.get("range"))
        outputs.append(
            OutputMap(
                name=key,
                function=_text(source, f"{where}.function", t.get("function")),
                value=_text(source, f"{where}.value", t.get("value"), node=True),
                sample_time=_text(source, f"{where}.sample_time", t.get("sample_time"), node=True),
                unit=_text(source, f"{where}.unit", t.get("unit")),
                scale=scale,
                offset=_number(source, f"{where}.offset", t.get("offset", 0.0)),
                lower=lo,
                upper=hi,
            )
        )
    seen: dict[str, str] = {}
    for where, node in [
        *((f"inputs.{m.name}.target", m.target) for m in inputs),
        *((f"inputs.{m.name}.current", m.current) for m in inputs),
        *((f"outputs.{m.name}.value", m.value) for m in outputs),
        *((f"outputs.{m.name}.sample_time", m.sample_time) for m in outputs),
    ]:
        if node in seen:
            raise MappingError(f"{source}: {where}: node id {node!r} is also {seen[node]}")
        seen[node] = where

    mqtt = None
    if "mqtt" in doc:
        mt = _table(source, "mqtt", doc["mqtt"])
        _keys(source, "mqtt", mt, ("prefix", "site", "reactor"))
        parts = {}
        for k in ("prefix", "site", "reactor"):
            v = _text(source, f"mqtt.{k}", mt.get(k))
            if any(c in v for c in "/+#") or not _NAME.match(v):
                raise MappingError(
                    f"{source}: mqtt.{k}: {v!r} must be one topic level (letters, digits, - or _)"
                )
            parts[k] = v
        mqtt = MqttTopics(**parts)
    return DeviceMapping(
        source=source,
        name=name,
        model=model.name,
        namespace=namespace,
        heartbeat_period_s=period,
        heartbeat_timeout_s=timeout,
        confirm_timeout_s=confirm,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        mqtt=mqtt,
    )


def _finite_range(lower: float, upper: float) -> list[float]:
    """``[lower, upper]`` with an infinite side replaced by :data:`WIDE_RANGE` (see there)."""
    lo = float(lower) if math.isfinite(lower) else -math.inf
    hi = float(upper) if math.isfinite(upper) else math.inf
    if lo == -math.inf and hi == math.inf:
        return [-WIDE_RANGE, WIDE_RANGE]
    if lo == -math.inf:
        return [min(-WIDE_RANGE, hi - WIDE_RANGE), hi]
    if hi == math.inf:
        return [lo, max(WIDE_RANGE, lo + WIDE_RANGE)]
    return [lo, hi]


def _safe_values(
    model: Model, safe: Mapping[str, float] | Sequence[float] | Any, source: str
) -> list[Any]:
    """The safe setpoints in model input order (a mapping by name, or values in order)."""
    names = model.input_names
    if isinstance(safe, Mapping):
        missing = [n for n in names if n not in safe]
        extra = sorted(str(k) for k in safe if k not in names)
        if missing or extra:
            raise MappingError(
                f"{source}: safe: needs every input of {model.name!r} ({', '.join(names)}); "
                f"missing {', '.join(missing) or '-'}, unknown {', '.join(extra) or '-'}"
            )
        return [safe[n] for n in names]
    values = list(safe)
    if len(values) != len(names):
        raise MappingError(
            f"{source}: safe: {len(values)} values for the {len(names)} inputs of "
            f"{model.name!r} ({', '.join(names)})"
        )
    return values


def identity_document(
    model: Model,
    safe: Mapping[str, float] | Sequence[float] | Any,
    *,
    name: str = "r1",
    source: str | None = None,
) -> dict[str, Any]:
    """The identity mapping document of ``model`` (the keys of the module docstring).

    Every input ``u`` is the control function ``u`` (nodes ``ns=2;s=<name>.<u>.TargetValue``
    and ``.CurrentValue``), every measured output ``y`` (``Output.derived`` False) the
    sensor function ``y`` (``ns=2;s=<name>.<y>.SensorValue`` and ``.SampleTime``), all in
    the model's units (scale 1, offset 0). An input's device range is its declared bounds;
    an output's its declared bounds, an infinite bound replaced by a finite one
    :data:`WIDE_RANGE` away (OPC UA's EURange is finite). ``safe`` are the local safe
    setpoints in model units, by input name or in model input order; they must lie inside
    the bounds (:func:`parse_mapping` says which one does not). ``[mqtt]`` is
    ``bpcontrol/hil/<name>``; the heartbeat and confirm timeouts are the defaults
    (:data:`HEARTBEAT_PERIOD_S`, :data:`HEARTBEAT_TIMEOUT_S`, :data:`CONFIRM_TIMEOUT_S`).
    """
    where = source or f"identity mapping of {model.name}"
    values = _safe_values(model, safe, where)
    inputs: dict[str, Any] = {}
    for u, value in zip(model.inputs, values, strict=True):
        inputs[u.name] = {
            "function": u.name,
            "target": f"ns=2;s={name}.{u.name}.TargetValue",
            "current": f"ns=2;s={name}.{u.name}.CurrentValue",
            "unit": u.unit,
            "scale": 1.0,
            "offset": 0.0,
            "range": [float(u.lower), float(u.upper)],
            "safe": value if isinstance(value, bool) else _as_float(value),
        }
    outputs: dict[str, Any] = {}
    for y in model.outputs:
        if y.derived:
            continue
        outputs[y.name] = {
            "function": y.name,
            "value": f"ns=2;s={name}.{y.name}.SensorValue",
            "sample_time": f"ns=2;s={name}.{y.name}.SampleTime",
            "unit": y.unit,
            "scale": 1.0,
            "offset": 0.0,
            "range": _finite_range(y.lower, y.upper),
        }
    return {
        "device": {
            "name": name,
            "model": model.name,
            "namespace": "urn:bpcontrol:lads:bioreactor",
            "heartbeat_period_s": HEARTBEAT_PERIOD_S,
            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
            "confirm_timeout_s": CONFIRM_TIMEOUT_S,
        },
        "mqtt": {"prefix": "bpcontrol", "site": "hil", "reactor": name},
        "inputs": inputs,
        "outputs": outputs,
    }


def _as_float(value: Any) -> Any:
    """``float(value)`` for a number (NumPy's too); anything else as it is, for
    :func:`parse_mapping` to name."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def identity_mapping(
    model: Model,
    safe: Mapping[str, float] | Sequence[float] | Any,
    *,
    name: str = "r1",
    source: str | None = None,
) -> DeviceMapping:
    """A device mapping for any model from its declaration (:func:`identity_document`),
    checked by :func:`parse_mapping`; problems are a one-line :class:`MappingError`
    naming ``source`` (default ``identity mapping of <model>``) and the key."""
    where = source or f"identity mapping of {model.name}"
    doc = identity_document(model, safe, name=name, source=where)
    return parse_mapping(doc, source=where, model=model)


def identity_toml(
    model: Model,
    safe: Mapping[str, float] | Sequence[float] | Any,
    *,
    name: str = "r1",
) -> str:
    """The identity mapping of ``model`` as a TOML file to start a device's mapping from
    (checked first: a safe setpoint outside the bounds raises :class:`MappingError`)."""
    import tomli_w

    identity_mapping(model, safe, name=name)
    doc = identity_document(model, safe, name=name)
    head = (
        f"# Device mapping of model {model.name!r}: every input and measured output under its\n"
        "# own name, in the model's units (scale 1, offset 0, the declared bounds as ranges).\n"
        "# Replace the node ids, units, scales and ranges with the device's; keep the table\n"
        "# names (the model's signals). Safe setpoints are in device units. Format:\n"
        "# docs/device-mapping.md.\n\n"
    )
    text = tomli_w.dumps(doc)  # it writes every array one item a line; ranges fit one
    text = re.sub(r"(?m)^range = \[\n\s+(\S+),\n\s+(\S+),\n\]", r"range = [\1, \2]", text)
    return head + text
