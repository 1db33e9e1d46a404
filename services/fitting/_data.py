"""Fit data: recorded batches checked against a model and laid out on a time grid.

:func:`prepare_batch` turns one :class:`~services.historian.readback.BatchData` into a
:class:`GridBatch`: the shooting grid (every sample time and every input change, from 0 h
to the last sample), the inputs held on each interval, and the measurements as (node,
output, value, std) rows. Each check is one :class:`FitError` line naming the batch's file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models import Model
from services.historian.readback import BatchData, ReadbackError

__all__ = ["DEFAULT_SIGMA_FRACTION", "ErrorModel", "FitError", "GridBatch", "prepare_batch"]

DEFAULT_SIGMA_FRACTION = 0.02
"""Absolute std of a sensor without a configured error model: this fraction of the largest
absolute reading of that sensor over the batches fitted (output units)."""

_SAME_TIME_H = 1e-9


class FitError(ReadbackError):
    """A fit that cannot be set up (bad data, names, bounds); one line naming the culprit."""


@dataclass(frozen=True)
class ErrorModel:
    """Measurement error of one sensor: ``std = sqrt(sigma^2 + (relative_sigma y)^2)``.

    ``sigma`` is absolute (output units), ``relative_sigma`` a fraction of the reading
    (the same model as the EKF's :class:`estimators.Sensor`). The fit evaluates it at the
    measured value ``y``, so the weights are fixed during a solve.
    """

    sigma: float
    relative_sigma: float = 0.0

    def std(self, y: np.ndarray) -> np.ndarray:
        """Standard deviation of readings ``y`` (output units)."""
        return np.sqrt(self.sigma**2 + (self.relative_sigma * np.asarray(y)) ** 2)


@dataclass(frozen=True, eq=False)
class GridBatch:
    """One batch on its shooting grid.

    ``t_h`` (N+1,) node times from 0 h; ``u`` (N, nu) inputs held on interval k (model
    order); ``x0`` (nx,) the initial state (recorded, else the model's nominal one);
    measurement rows ``node`` (index into ``t_h``), ``output`` (model output index),
    ``value``, ``std``, ``u_meas`` (M, nu) the inputs held over the interval ending at the
    sample (the first interval's at 0 h), and ``t_arrival_h``.
    """

    batch_id: str
    origin: str
    t_h: np.ndarray
    u: np.ndarray
    x0: np.ndarray
    node: np.ndarray
    output: np.ndarray
    value: np.ndarray
    std: np.ndarray
    u_meas: np.ndarray
    t_arrival_h: np.ndarray

    @property
    def n_intervals(self) -> int:
        return int(self.t_h.size - 1)


def _merge_times(times: np.ndarray) -> np.ndarray:
    t = np.unique(times)
    return t[np.append(True, np.diff(t) > _SAME_TIME_H)]


def default_error_models(
    model: Model, batches: Sequence[BatchData], sensors: Sequence[str]
) -> dict[str, ErrorModel]:
    """:data:`DEFAULT_SIGMA_FRACTION` of each sensor's largest |reading| (absolute std)."""
    out = {}
    for s in sensors:
        peak = max(
            (
                float(np.max(np.abs(b.measurements[s].value)))
                for b in batches
                if s in b.measurements and len(b.measurements[s])
            ),
            default=0.0,
        )
        out[s] = ErrorModel(max(DEFAULT_SIGMA_FRACTION * peak, 1e-12))
    return out


def prepare_batch(
    model: Model,
    batch: BatchData,
    sensors: Sequence[str],
    errors: Mapping[str, ErrorModel],
) -> GridBatch:
    """Check ``batch`` against ``model`` and lay it out on its grid (module docstring)."""
    where = f"{batch.origin}: batch {batch.batch_id!r}"
    for s in sensors:
        if s not in model.output_names:
            raise FitError(
                f"{where}: {s!r} is not an output of model {model.name!r} "
                f"(sensors: {', '.join(model.sensor_names)})"
            )
        batch.series(s)  # raises on a missing series
    unknown = [n for n in batch.initial_state if n not in model.state_names]
    if unknown:
        raise FitError(f"{where}: initial state {unknown[0]!r} is not a state of {model.name!r}")
    try:
        batch.check_units(model, [*sensors, *batch.initial_state])
        if batch.inputs is not None:
            batch.check_units(model, [n for n in batch.inputs.names if n in model.input_names])
    except KeyError as exc:
        raise FitError(f"{where}: {exc.args[0]}") from None
    if model.nu and batch.inputs is None:
        raise FitError(f"{where}: no inputs (setpoints) recorded; model needs {model.input_names}")
    if batch.inputs is not None:
        try:
            inputs = batch.inputs.for_model(model)
        except ValueError as exc:
            raise FitError(f"{where}: {exc}") from None
        lo, hi = model.bounds("inputs")
        bad = np.argwhere((inputs.values < lo) | (inputs.values > hi))
        if bad.size:
            k, j = (int(v) for v in bad[0])
            raise FitError(
                f"{where}: input {model.input_names[j]} = {inputs.values[k, j]:g} at "
                f"{inputs.times[k]:g} h is outside [{lo[j]:g}, {hi[j]:g}]"
            )
    x0 = model.states_with(**dict(batch.initial_state))
    rows_t, rows_j, rows_v, rows_a = [], [], [], []
    for s in sensors:
        series = batch.series(s)
        j = model.index(s)
        out = model.outputs[j]
        off_range = (series.value < out.lower) | (series.value > out.upper)
        if np.any(off_range):
            k = int(np.argmax(off_range))
            raise FitError(
                f"{where}: {s} = {series.value[k]:g} at {series.t_sample_h[k]:g} h is outside "
                f"its physical range [{out.lower:g}, {out.upper:g}] {out.unit}"
            )
        rows_t.append(series.t_sample_h)
        rows_j.append(np.full(len(series), j))
        rows_v.append(series.value)
        rows_a.append(series.t_h)
    t_s = np.concatenate(rows_t)
    t_end = float(np.max(t_s))
    if not t_end > 0:
        raise FitError(f"{where}: every sample is at 0 h; nothing to integrate over")
    changes = inputs.times[inputs.times < t_end] if batch.inputs is not None else np.zeros(0)
    grid = _merge_times(np.concatenate([[0.0], t_s, changes, [t_end]]))
    node = np.clip(np.searchsorted(grid, t_s - _SAME_TIME_H), 0, grid.size - 1)
    if batch.inputs is not None:
        u = inputs.values_at(grid[:-1] + _SAME_TIME_H)
        u_meas = inputs.values_at(np.maximum(grid[node] - _SAME_TIME_H, 0.0))
    else:
        u = np.zeros((grid.size - 1, 0))
        u_meas = np.zeros((node.size, 0))
    value = np.concatenate(rows_v)
    output = np.concatenate(rows_j).astype(int)
    std = np.empty_like(value)
    for s in sensors:
        mask = output == model.index(s)
        std[mask] = errors[s].std(value[mask])
    if not np.all(np.isfinite(std) & (std > 0)):
        raise FitError(f"{where}: a measurement std is not > 0 (check the error models)")
    if not math.isfinite(float(np.sum(value))):
        raise FitError(f"{where}: readings are not finite")
    return GridBatch(
        batch_id=batch.batch_id,
        origin=batch.origin,
        t_h=grid,
        u=np.asarray(u, dtype=float),
        x0=x0,
        node=node.astype(int),
        output=output,
        value=value,
        std=std,
        u_meas=np.asarray(u_meas, dtype=float),
        t_arrival_h=np.concatenate(rows_a),
    )
