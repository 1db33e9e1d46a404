"""Ready-made filter configurations, and the TOML file that describes one.

:func:`default_ekf_config` gives a configuration for any model: for ``ecoli_fedbatch``
the tuned one below, for every other model a generic one. :func:`load_ekf_config`
reads a configuration from a TOML file and :func:`dump_ekf_config` writes one
(``load(dump(c)) == c``), so a run can record the configuration it used and a user can
start from it.

E. coli (``ecoli_fedbatch``)
----------------------------
Sensor noise is that of the lab-scale instruments of the synthetic plant
(``hil.synthetic.ECOLI_ONLINE_NOISE``, restated here because ``estimators`` does not
import ``hil``): DO probe 1 %, off-gas O2 and CO2 0.02 % (mole fraction), load cell
0.01 L, every minute. Offline assays have 5 % relative error; the filter's noise model is
one constant std per sensor, so each assay gets 5 % of a level typical of a run (X ~20
g/L, glucose ~2 g/L in the batch, acetate ~1 g/L when it matters, product ~2 g/L).

Tracked: ``mu_max`` and ``Y_xs``, prior std 20 % of the literature values (Xu, Jahic,
Enfors 1999, Biotechnol. Prog. 15:81-90), no random walk. Process noise is tiny on
purpose: a plant that *is* the model apart from the tracked parameters leaves only the
filter's ROS2 discretisation at one minute, far below the sensor noise. A plant whose
parameters drift needs a positive ``drift_per_sqrt_h``, which makes NIS fall below its
expectation on a plant that does not drift (with 0.002 per sqrt(h) the 50-run average
NIS was 0.990 per degree of freedom).

Other models (generic)
----------------------
Every measured output (not ``derived``) is a sensor with ``sigma`` = 1 % of its typical
magnitude, the larger of its value at the nominal point (``x0``, ``u0``, ``p0``) and 1 %
of its declared range (the range is skipped where a bound is infinite; a magnitude of zero
counts as 1 in the output's unit), every sensor with a one-minute period. No parameters are tracked;
initial and process noise take the defaults of :class:`~estimators.EKFConfig` (10 % and
0.1 % per sqrt(h) of each state's scale). That is a starting point to tune, not a tuned
filter: write it out with :func:`dump_ekf_config`, edit, and load it back.

TOML format
-----------
::

    gate_probability = 0.9999   # optional scalars, defaults of EKFConfig
    lag_h = 6.0
    max_step_h = 0.016666666666666666
    n_substeps = 1
    variance_limit = 1e6
    recover_after_gated = 3     # gated readings in a row from a trusted sensor (0: off)
    recover_min_period_h = 0.5  # ... for sensors with period_h at least this (assays)
    recover_probes_after_h = 0.5  # two or more probes all gated this long recover (0: off)

    [sensors]                   # required; period_h (1 min), relative_sigma (0) optional
    DO_probe = { sigma = 1.0, period_h = 0.016666666666666666 }
    X_off = { sigma = 1.0, period_h = 3.0 }

    [tracked]                   # optional; drift_per_sqrt_h optional (0)
    mu_max = { sigma0 = 0.13, drift_per_sqrt_h = 0.0 }

    [state_sigma0]              # optional, per state (state units)
    X = 0.03

    [process_sigma]             # optional, per state (state units per sqrt(h))
    X = 0.001

The file is complete on its own (it does not amend the default). Unknown keys are
errors, so a misspelt key cannot be silently ignored. Every problem raises
:class:`~estimators.EstimatorConfigError` with one line naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from estimators._config import EKFConfig, EstimatorConfigError, Sensor, TrackedParameter
from models import NUMPY, Model

ECOLI_MODEL_NAME = "ecoli_fedbatch"
ECOLI_ONLINE_SIGMA: Mapping[str, float] = {
    "DO_probe": 1.0,  # % air saturation (polarographic probe)
    "y_O2_out": 0.02,  # % (paramagnetic off-gas analyser)
    "y_CO2_out": 0.02,  # % (infrared off-gas analyser)
    "V_meas": 0.01,  # L (load cell)
}
"""Online E. coli sensors (std), equal to ``hil.synthetic.ECOLI_ONLINE_NOISE``."""
ECOLI_OFFLINE_SIGMA: Mapping[str, float] = {
    "X_off": 0.02,
    "S_off": 0.01,
    "A_off": 0.01,
    "P_off": 0.01,
}
"""Offline E. coli assays: absolute floor of the std (g/L, detection level)..."""
ECOLI_OFFLINE_RELATIVE = 0.05
"""... plus 5 % of the reading (typical assay error)."""
ECOLI_OFFLINE_PERIOD_H = 3.0
ONLINE_PERIOD_H = 1.0 / 60.0
GENERIC_RELATIVE_SIGMA = 0.01

_SCALARS: dict[str, type] = {
    "gate_probability": float,
    "lag_h": float,
    "max_step_h": float,
    "n_substeps": int,
    "variance_limit": float,
    "recover_after_gated": int,
    "recover_min_period_h": float,
    "recover_probes_after_h": float,
}
_TABLES = ("sensors", "tracked", "state_sigma0", "process_sigma")
_SENSOR_KEYS = ("sigma", "period_h", "relative_sigma")
_TRACKED_KEYS = ("sigma0", "drift_per_sqrt_h")


# --- presets ---------------------------------------------------------------------------


def ecoli_ekf_config(model: Model) -> EKFConfig:
    """The tuned E. coli configuration (see the module docstring) for ``model``."""
    mu_max = model.p0[model.index("mu_max")]
    y_xs = model.p0[model.index("Y_xs")]
    return EKFConfig(
        sensors=(
            *(
                Sensor(output=n, sigma=s, period_h=ONLINE_PERIOD_H)
                for n, s in ECOLI_ONLINE_SIGMA.items()
            ),
            *(
                Sensor(
                    output=n,
                    sigma=s,
                    period_h=ECOLI_OFFLINE_PERIOD_H,
                    relative_sigma=ECOLI_OFFLINE_RELATIVE,
                )
                for n, s in ECOLI_OFFLINE_SIGMA.items()
            ),
        ),
        tracked=(
            TrackedParameter(name="mu_max", sigma0=0.2 * float(mu_max), drift_per_sqrt_h=0.0),
            TrackedParameter(name="Y_xs", sigma0=0.2 * float(y_xs), drift_per_sqrt_h=0.0),
        ),
        # initial std: inoculum biomass 10 %, initial glucose 2 % (as the synthetic plant)
        state_sigma0={"X": 0.03, "S": 0.2, "A": 0.01, "DO": 2.0, "V": 0.01, "P": 0.01, "T": 0.1},
        process_sigma={
            "X": 1e-3,
            "S": 1e-4,
            "A": 1e-4,
            "DO": 0.01,
            "V": 1e-4,
            "P": 1e-4,
            "T": 1e-3,
        },
        max_step_h=ONLINE_PERIOD_H,
        n_substeps=1,
        lag_h=6.0,
    )


def generic_ekf_config(model: Model) -> EKFConfig:
    """Every output a sensor with 1 % of its typical magnitude; nothing tracked."""
    with np.errstate(all="ignore"):
        _, y = model.evaluate(NUMPY, list(model.x0), list(model.u0), list(model.p0))
    sensors = []
    for out, value in zip(model.outputs, y, strict=True):
        if out.derived:  # computed, not measured: no instrument reads it
            continue
        magnitude = abs(float(np.asarray(value)))
        typical = magnitude if math.isfinite(magnitude) else 0.0
        span = out.upper - out.lower
        if math.isfinite(span):
            typical = max(typical, 0.01 * span)
        sensors.append(
            Sensor(
                output=out.name,
                sigma=GENERIC_RELATIVE_SIGMA * (typical if typical > 0 else 1.0),
                period_h=ONLINE_PERIOD_H,
            )
        )
    return EKFConfig(sensors=tuple(sensors))


def default_ekf_config(model: Model) -> EKFConfig:
    """The tuned preset for ``ecoli_fedbatch``, else the generic default.

    A model file that calls itself ``ecoli_fedbatch`` but does not fit the preset (other
    outputs or parameters) gets the generic default.
    """
    if model.name == ECOLI_MODEL_NAME:
        try:
            config = ecoli_ekf_config(model)
            config.validate(model)
        except (KeyError, EstimatorConfigError):
            pass
        else:
            return config
    config = generic_ekf_config(model)
    config.validate(model)
    return config


# --- TOML ------------------------------------------------------------------------------


def load_ekf_config(path: str | Path, model: Model) -> EKFConfig:
    """Read a filter configuration (format in the module docstring), checked against ``model``.

    Raises :class:`EstimatorConfigError` with one line naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise EstimatorConfigError(f"{path}: filter configuration file not found")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EstimatorConfigError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise EstimatorConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_ekf_config(doc, model, source=str(path))


def parse_ekf_config(doc: Mapping[str, Any], model: Model, *, source: str) -> EKFConfig:
    """A filter configuration from a parsed TOML document, checked against ``model``.

    Raises :class:`EstimatorConfigError` with one line naming ``source`` and the key.
    """
    try:
        config = _config_from(doc)
        config.validate(model)
    except EstimatorConfigError as exc:
        raise EstimatorConfigError(f"{source}: {exc}") from None
    return config


def _config_from(doc: Mapping[str, Any]) -> EKFConfig:
    known = (*_SCALARS, *_TABLES)
    for key in doc:
        if key not in known:
            raise EstimatorConfigError(f"unknown key {key!r} (known: {', '.join(known)})")
    if "sensors" not in doc:
        raise EstimatorConfigError("missing table [sensors] (at least one sensor)")
    sensors = tuple(
        Sensor(
            output=name,
            sigma=_number(entry, "sigma", f"sensors.{name}"),
            period_h=_number(entry, "period_h", f"sensors.{name}", default=ONLINE_PERIOD_H),
            relative_sigma=_number(entry, "relative_sigma", f"sensors.{name}", default=0.0),
        )
        for name, entry in _entries(doc, "sensors", _SENSOR_KEYS)
    )
    tracked = tuple(
        TrackedParameter(
            name=name,
            sigma0=_number(entry, "sigma0", f"tracked.{name}"),
            drift_per_sqrt_h=_number(entry, "drift_per_sqrt_h", f"tracked.{name}", default=0.0),
        )
        for name, entry in _entries(doc, "tracked", _TRACKED_KEYS)
    )
    scalars: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        if key in doc:
            value = _number(doc, key, "")
            if kind is int:
                if value != int(value):
                    raise EstimatorConfigError(f"{key} must be a whole number, got {value}")
                scalars[key] = int(value)
            else:
                scalars[key] = value
    return EKFConfig(
        sensors=sensors,
        tracked=tracked,
        state_sigma0=_per_state(doc, "state_sigma0"),
        process_sigma=_per_state(doc, "process_sigma"),
        **scalars,
    )


def _entries(
    doc: Mapping[str, Any], table: str, keys: tuple[str, ...]
) -> list[tuple[str, Mapping[str, Any]]]:
    value = doc.get(table, {})
    if not isinstance(value, dict):
        raise EstimatorConfigError(f"{table} must be a table, got {value!r}")
    out: list[tuple[str, Mapping[str, Any]]] = []
    for name, entry in value.items():
        if not isinstance(entry, dict):
            raise EstimatorConfigError(
                f"{table}.{name} must be a table such as {{ {keys[0]} = 1.0 }}, got {entry!r}"
            )
        for key in entry:
            if key not in keys:
                raise EstimatorConfigError(
                    f"unknown key {table}.{name}.{key} (known: {', '.join(keys)})"
                )
        out.append((name, entry))
    return out


def _per_state(doc: Mapping[str, Any], table: str) -> dict[str, float]:
    value = doc.get(table, {})
    if not isinstance(value, dict):
        raise EstimatorConfigError(f"{table} must be a table of state = number, got {value!r}")
    return {name: _number(value, name, table) for name in value}


def _number(
    table: Mapping[str, Any], key: str, where: str, *, default: float | None = None
) -> float:
    label = f"{where}.{key}" if where else key
    if key not in table:
        if default is None:
            raise EstimatorConfigError(f"missing key {label}")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EstimatorConfigError(f"{label} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise EstimatorConfigError(f"{label} must be finite, got {value}")
    return value


def dump_ekf_config(config: EKFConfig, *, comment: str | None = None) -> str:
    """TOML text of ``config`` that :func:`load_ekf_config` reads back to an equal config."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    for key in _SCALARS:
        lines.append(f"{key} = {_toml_number(getattr(config, key))}")
    lines += ["", "[sensors]"]
    for s in config.sensors:
        lines.append(
            f"{_toml_key(s.output)} = {{ sigma = {_toml_number(s.sigma)}, "
            f"period_h = {_toml_number(s.period_h)}, "
            f"relative_sigma = {_toml_number(s.relative_sigma)} }}"
        )
    if config.tracked:
        lines += ["", "[tracked]"]
        for tp in config.tracked:
            lines.append(
                f"{_toml_key(tp.name)} = {{ sigma0 = {_toml_number(tp.sigma0)}, "
                f"drift_per_sqrt_h = {_toml_number(tp.drift_per_sqrt_h)} }}"
            )
    for table in ("state_sigma0", "process_sigma"):
        mapping: Mapping[str, float] = getattr(config, table)
        if mapping:
            lines += ["", f"[{table}]"]
            lines += [f"{_toml_key(k)} = {_toml_number(v)}" for k, v in mapping.items()]
    return "\n".join(lines) + "\n"


def _toml_number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = repr(float(value))
    return text if any(c in text for c in ".eEn") else f"{text}.0"


def _toml_key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
