"""Read a piecewise-constant input profile for a model from a CSV or TOML file.

Every input holds its value until the next time listed for it. Inputs the file does not
mention stay at their nominal values, and so does every input before its first listed
time. Times are in hours, values in the units of the model's inputs, and every value must
lie inside its input's bounds.

CSV (``.csv``): a header row with ``t_h`` and one column per input (any subset, any
order); one row per change, times strictly increasing. An empty cell keeps that input's
previous value. Blank lines and lines starting with ``#`` are skipped::

    # glucose feed starts at 8 h, temperature shift at 20 h
    t_h,F,T_set
    0,0.0,37
    8,0.05,
    20,,30

TOML (``.toml``): a table ``[inputs]`` with, per input, a list of ``[t_h, value]`` pairs
or a single number (that value from 0 h on). Optional top-level keys: ``description``
(free text) and ``model`` (the model name the profile was written for; checked)::

    description = "feed from 8 h, more agitation"
    model = "ecoli_fedbatch"

    [inputs]
    F = [[0.0, 0.0], [8.0, 0.05]]
    N_stir = 900

Every problem raises :class:`ProfileError` with one line that starts with the file name.
"""

from __future__ import annotations

import csv
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from models import InputProfile, Model

TIME_COLUMN = "t_h"
TOML_KEYS = ("inputs", "description", "model")


class ProfileError(ValueError):
    """An input profile file is unreadable or wrong; the message names the file."""


def load_profile(path: str | Path, model: Model) -> InputProfile:
    """The input profile in a ``.csv`` or ``.toml`` file, checked against ``model``."""
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"{path}: profile file not found")
    if not path.is_file():
        raise ProfileError(f"{path}: is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".toml"):
        raise ProfileError(f"{path}: unsupported profile format {suffix!r}; use .csv or .toml")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: is not UTF-8 text") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read ({exc.strerror})") from None
    if not text.strip():
        raise ProfileError(f"{path}: empty file")
    if suffix == ".csv":
        return _from_csv(path, text, model)
    return _from_toml(path, text, model)


def _known(model: Model) -> str:
    return ", ".join(model.input_names) or "(none)"


def _check_bounds(where: str, model: Model, name: str, value: float) -> None:
    inp = model.inputs[model.index(name)]
    if not inp.lower <= value <= inp.upper:
        raise ProfileError(
            f"{where}: input {name!r} = {value:g} {inp.unit} is outside its bounds "
            f"[{inp.lower:g}, {inp.upper:g}]"
        )


def _number(where: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ProfileError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ProfileError(f"{where}: {text!r} is not a finite number")
    return value


def _from_csv(path: Path, text: str, model: Model) -> InputProfile:
    rows = [
        (lineno, row)
        for lineno, row in enumerate(csv.reader(text.splitlines()), start=1)
        if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise ProfileError(f"{path}: empty file (only comments or blank lines)")
    header_line, header = rows[0]
    names = [c.strip() for c in header]
    if TIME_COLUMN not in names:
        raise ProfileError(
            f"{path}:{header_line}: header has no {TIME_COLUMN!r} column "
            f"(expected {TIME_COLUMN} and input names: {_known(model)})"
        )
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ProfileError(f"{path}:{header_line}: column {name!r} appears twice")
        if name != TIME_COLUMN and name not in model.input_names:
            raise ProfileError(
                f"{path}:{header_line}: unknown input {name!r} for model {model.name!r} "
                f"(known: {_known(model)})"
            )
    if len(rows) == 1:
        raise ProfileError(f"{path}: no data rows after the header (empty profile)")

    t_col = names.index(TIME_COLUMN)
    times: list[float] = []
    values: list[np.ndarray] = []
    current = model.u0.copy()
    for lineno, row in rows[1:]:
        if len(row) != len(names):
            raise ProfileError(
                f"{path}:{lineno}: {len(row)} cells, but the header has {len(names)} columns"
            )
        t_text = row[t_col].strip()
        if not t_text:
            raise ProfileError(f"{path}:{lineno}: column {TIME_COLUMN!r} is empty")
        t = _number(f"{path}:{lineno}: column {TIME_COLUMN!r}", t_text)
        if t < 0.0:
            raise ProfileError(f"{path}:{lineno}: time {t:g} h is negative")
        if times and t <= times[-1]:
            raise ProfileError(
                f"{path}:{lineno}: times must be strictly increasing "
                f"({t:g} h follows {times[-1]:g} h)"
            )
        current = current.copy()
        for name, cell in zip(names, row, strict=True):
            if name == TIME_COLUMN or not cell.strip():
                continue
            where = f"{path}:{lineno}: column {name!r}"
            value = _number(where, cell.strip())
            _check_bounds(f"{path}:{lineno}", model, name, value)
            current[model.index(name)] = value
        times.append(t)
        values.append(current)
    if times[0] > 0.0:
        times.insert(0, 0.0)
        values.insert(0, model.u0.copy())
    return _build(path, np.array(times), np.array(values), model)


def _from_toml(path: Path, text: str, model: Model) -> InputProfile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from None
    unknown = [k for k in doc if k not in TOML_KEYS]
    if unknown:
        raise ProfileError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(TOML_KEYS)})")
    wanted = doc.get("model")
    if wanted is not None and wanted != model.name:
        raise ProfileError(f"{path}: profile is for model {wanted!r}, not for {model.name!r}")
    table = doc.get("inputs")
    if table is None:
        raise ProfileError(f"{path}: no [inputs] table (empty profile)")
    if not isinstance(table, dict):
        raise ProfileError(f"{path}: 'inputs' must be a table, e.g. [inputs] F = [[0.0, 0.1]]")
    if not table:
        raise ProfileError(f"{path}: the [inputs] table is empty (empty profile)")
    steps: dict[str, Any] = {}
    for name, spec in table.items():
        if name not in model.input_names:
            raise ProfileError(
                f"{path}: unknown input {name!r} for model {model.name!r} (known: {_known(model)})"
            )
        steps[name] = _toml_steps(path, model, name, spec)
    try:
        profile = InputProfile.from_steps(model, steps)
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return _build(path, profile.times, profile.values, model)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _toml_steps(path: Path, model: Model, name: str, spec: Any) -> list[tuple[float, float]]:
    where = f"{path}: inputs.{name}"
    if _is_number(spec):
        value = float(spec)
        if not math.isfinite(value):
            raise ProfileError(f"{where}: {value} is not a finite number")
        _check_bounds(where, model, name, value)
        return [(0.0, value)]
    if not isinstance(spec, list) or not spec:
        raise ProfileError(
            f"{where}: expected a number or a non-empty list of [t_h, value] pairs, got {spec!r}"
        )
    out: list[tuple[float, float]] = []
    for i, pair in enumerate(spec):
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_number, pair))):
            raise ProfileError(
                f"{where}[{i}]: expected a pair [t_h, value] of numbers, got {pair!r}"
            )
        t, value = float(pair[0]), float(pair[1])
        if not (math.isfinite(t) and math.isfinite(value)):
            raise ProfileError(f"{where}[{i}]: {pair!r} is not finite")
        if t < 0.0:
            raise ProfileError(f"{where}[{i}]: time {t:g} h is negative")
        if out and t <= out[-1][0]:
            raise ProfileError(
                f"{where}[{i}]: times must be strictly increasing ({t:g} h follows "
                f"{out[-1][0]:g} h)"
            )
        _check_bounds(f"{where}[{i}]", model, name, value)
        out.append((t, value))
    return out


def _build(path: Path, times: np.ndarray, values: np.ndarray, model: Model) -> InputProfile:
    try:
        return InputProfile(times, values, model.input_names).for_model(model)
    except ValueError as exc:  # checked above already; kept so no error escapes unnamed
        raise ProfileError(f"{path}: {exc}") from None
