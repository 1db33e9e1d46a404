"""``bpcontrol pack init``: an editable pack for any model, with commented defaults.

The defaults are a starting point a process engineer edits, derived from the model's
declaration: instruments from its outputs (an output whose name ends in ``_off`` or whose
description says "offline" is a hand-sampled assay every 2-4 h known 1-3 h later with 5 %
error; every other measured output an online probe with 1 % of its typical magnitude),
a one-phase recipe holding the nominal inputs inside the model's input bounds, a
controller file that maximises the product (the first derived output, else none) and
a simulated plant with the model's own parameters.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import tomli_w

from bpcontrol.pack import PACK_FILES, Instrument, PackError
from models import NUMPY, Model, available_models, load_model

__all__ = ["derive_instruments", "model_pack_documents", "write_pack"]

OFFLINE_INTERVAL_H = (2.0, 4.0)
OFFLINE_DELAY_H = (1.0, 3.0)
OFFLINE_RELATIVE = 0.05
ONLINE_RELATIVE = 0.01


def _typical(model: Model) -> dict[str, float]:
    """Typical magnitude of every output: its nominal value, at least 1 % of its range."""
    with np.errstate(all="ignore"):
        _, y = model.evaluate(NUMPY, list(model.x0), list(model.u0), list(model.p0))
    out: dict[str, float] = {}
    for o, value in zip(model.outputs, y, strict=True):
        v = abs(float(np.asarray(value)))
        typical = v if math.isfinite(v) else 0.0
        span = o.upper - o.lower
        if math.isfinite(span):
            typical = max(typical, 0.01 * span)
        out[o.name] = typical if typical > 0 else 1.0
    return out


def _is_offline(model: Model, name: str) -> bool:
    o = model.outputs[model.index(name)]
    return name.endswith("_off") or "offline" in o.description.lower()


def derive_instruments(model: Model) -> tuple[Instrument, ...]:
    """Sensible instruments for every measured output (see the module docstring)."""
    typical = _typical(model)
    out = []
    for name in model.sensor_names:
        sigma = float(f"{ONLINE_RELATIVE * typical[name]:.3g}")
        if _is_offline(model, name):
            out.append(
                Instrument(
                    name,
                    "offline",
                    sigma,
                    OFFLINE_RELATIVE,
                    OFFLINE_INTERVAL_H,
                    OFFLINE_DELAY_H,
                )
            )
        else:
            out.append(Instrument(name, "online", sigma))
    return tuple(out)


def _product_guess(model: Model) -> str | None:
    derived = model.derived_names
    return derived[0] if derived else None


def model_pack_documents(model: Model, model_ref: str) -> dict[str, dict]:
    """The documents of a default pack for ``model`` (``model_ref`` as pack.toml names it)."""
    product = _product_guess(model)
    sensors: dict[str, dict] = {}
    for i in derive_instruments(model):
        unit = model.outputs[model.index(i.output)].unit
        entry: dict[str, object] = {"kind": i.kind, "sigma": i.sigma, "unit": unit}
        if i.kind == "offline":
            entry |= {
                "relative_sigma": i.relative_sigma,
                "interval_h": list(i.interval_h),
                "delay_h": list(i.delay_h),
            }
        sensors[i.output] = entry
    pack: dict[str, object] = {
        "name": model.name,
        "description": model.description,
        "model": model_ref,
        "kpis": {"product": product} if product else {},
        "sensors": sensors,
    }
    lo, hi = model.bounds("inputs")
    limits = {
        n: {"lower": float(lo[i]), "upper": float(hi[i])} for i, n in enumerate(model.input_names)
    }
    recipe = {
        "name": f"{model.name} recipe",
        "model": model.name,
        "duration_h": 24.0,
        "measurement_period_min": 1.0,
        "control_period_min": 10.0,
        "initial": {s.name: s.nominal for s in model.states},
        "limits": limits,
        "phases": [
            {
                "name": "batch",
                "start_h": 0.0,
                "fallback": {u.name: u.nominal for u in model.inputs},
            }
        ],
    }
    control: dict[str, object] = {
        "horizon": 20,
        "horizon_mode": "receding",
        "solver": "ipopt",
        "discretization": "collocation",
        "collocation_degree": 3,
        "max_iter": 500,
        "auto_resume_after": 3,
        "objective": {"terminal": {product: -1.0}} if product else {"terminal": {}},
    }
    return {"pack": pack, "recipe": recipe, "control": control, "plant": {"name": "nominal"}}


_HEADERS = {
    "pack": """\
# Process pack: what the process is (format: bpcontrol/pack.py).
# model: a built-in model or a .py file in this folder. [kpis] product: the state or
# (derived) output reported as the batch's product. [parameters] / [bounds.NAME]:
# override model values and bounds (vessel size, pump range), re-validated.
# [sensors.NAME]: the instruments; online = every measurement period, offline = sampled
# every interval_h (min, max), result known delay_h later; noise std in output units.
""",
    "recipe": """\
# Recipe (format: bpcontrol/recipe.py): batch duration, loop periods, the charged state,
# setpoint limits (lower, upper, rate_per_h) and phases with fallback profiles: a number,
# { initial, growth_per_h, max } (exponential feed) or { steps = [[h, value], ...] }.
# A phase with auto = false runs the recipe only (the NMPC may not act yet).
# These defaults hold the model's nominal inputs: edit them into a real recipe.
""",
    "control": """\
# Controller (format: bpcontrol/control_spec.py): minimised objective by variable name
# (negative weights reward), soft bounds [soft_bounds.NAME] lower/upper/weight_l1,
# rate limits, horizon and mode, solver. Add soft bounds for what the plant must keep
# (a DO minimum, an overflow threshold, the vessel volume).
""",
    "plant": """\
# Simulated plant of `bpcontrol run` (format: hil/runner.py): how the true plant differs
# from the model. Example: 20 % slower growth than the model
# [parameter_factors]
# mu_max = 0.8
""",
    "ekf": """\
# Estimator tuning (format: estimators/presets.py). [sensors] is optional here: by
# default the filter uses the instruments of pack.toml. Track drifting parameters with
# [tracked] NAME = { sigma0 = ..., drift_per_sqrt_h = 0.0 }.
# [state_sigma0] / [process_sigma]: per-state initial and process noise std.
""",
}


def write_pack(model_ref: str, directory: str | Path, *, force: bool = False) -> list[Path]:
    """Write an editable pack for ``model_ref`` (a built-in name or a .py file) into
    ``directory``; a model file is copied in as ``model.py``. Returns the files written.

    Refuses (:class:`PackError`) to overwrite pack files unless ``force``.
    """
    root = Path(directory)
    model = load_model(model_ref)
    builtin = model_ref in available_models()
    existing = [root / f for f in (*PACK_FILES, "model.py") if (root / f).exists()]
    if existing and not force:
        raise PackError(f"{existing[0]}: exists; choose an empty folder or pass --force")
    if root.exists() and not root.is_dir():
        raise PackError(f"{root}: exists and is not a folder")
    docs = model_pack_documents(model, model_ref if builtin else "model.py")
    root.mkdir(parents=True, exist_ok=True)
    written = []
    if not builtin:
        shutil.copyfile(model_ref, root / "model.py")
        written.append(root / "model.py")
    for part in ("pack", "recipe", "ekf", "control", "plant"):
        path = root / f"{part}.toml"
        body = tomli_w.dumps(docs[part]) if part in docs else ""
        path.write_text(_HEADERS[part] + ("\n" + body if body else ""), encoding="utf-8")
        written.append(path)
    return written
