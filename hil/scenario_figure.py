"""A scenario's figure for the suite's HTML report: what the batch did, at a glance.

Two panels over process time (h): the DO (the plant's truth, the probe's readings and the
pack's minimum; for a model without DO, its first measured sensor) and every input as a
percentage of its setpoint range (the recipe's limits: any model, any units on one axis).
The fault windows are shaded grey and the steps where the supervisor applied the recipe's
fallback or held are shaded red, so a reader sees whether a fault struck and how the loop
answered. It is drawn in the worker that ran the scenario (a Dask worker's run folder is
not on the reporting machine) and travels back as a PNG data URI of a few tens of kB.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bpcontrol.records import MeasurementRecord, SetpointRecord, SetpointSource
from bpcontrol.supervisor import SetpointLimits

__all__ = ["FigureData", "figure_data", "scenario_figure"]

_HELD = frozenset({SetpointSource.FALLBACK, SetpointSource.HOLD})


@dataclass(frozen=True)
class FigureData:
    """The series of one scenario's figure (process time in h)."""

    title: str
    signal: str
    """The first panel's signal: ``DO`` (% air saturation) or a sensor's name."""
    truth_t: np.ndarray
    truth: np.ndarray | None
    """The plant's true value of ``signal`` (None: not a state of the model)."""
    minimum: float | None
    measured_t: np.ndarray
    measured: np.ndarray
    setpoint_t: np.ndarray
    setpoints_percent: Mapping[str, np.ndarray]
    """Each input's applied setpoint as % of its limits' range."""
    held: Sequence[tuple[float, float]]
    """(start h, end h) of the steps in FALLBACK or HOLD."""
    faults: Sequence[tuple[str, float, float]]
    """(kind, start h, end h) of each scheduled fault."""


def figure_data(
    *,
    title: str,
    records: Sequence[object],
    limits: Mapping[str, SetpointLimits],
    faults: Sequence[tuple[str, float, float]],
    truth_t: np.ndarray,
    truth_do: np.ndarray | None,
    do_minimum: float | None,
) -> FigureData:
    """The figure's series from a run's records, its limits and its truth (``truth_do``:
    the plant's DO, None when the model has none)."""
    measurements = [r for r in records if isinstance(r, MeasurementRecord)]
    sensors = [m.sensor for m in measurements]
    sensor = "DO_probe" if "DO_probe" in sensors else (sensors[0] if sensors else "")
    chosen = [m for m in measurements if m.sensor == sensor]
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    sp_t = np.array([s.t_h for s in setpoints], dtype=float)
    percent = {}
    for name, lim in limits.items():
        span = lim.upper - lim.lower
        if not np.isfinite(span) or span <= 0:
            continue
        values = np.array([s.values.get(name, np.nan) for s in setpoints], dtype=float)
        percent[name] = (values - lim.lower) / span * 100.0
    held: list[tuple[float, float]] = []
    for k, s in enumerate(setpoints):
        if s.source in _HELD:
            end = setpoints[k + 1].t_h if k + 1 < len(setpoints) else s.t_h
            if held and abs(held[-1][1] - s.t_h) < 1e-9:
                held[-1] = (held[-1][0], end)
            else:
                held.append((s.t_h, end))
    return FigureData(
        title=title,
        signal="DO" if truth_do is not None else sensor,
        truth_t=np.asarray(truth_t, dtype=float),
        truth=None if truth_do is None else np.asarray(truth_do, dtype=float),
        minimum=do_minimum,
        measured_t=np.array([m.t_sample_h for m in chosen], dtype=float),
        measured=np.array([m.value for m in chosen], dtype=float),
        setpoint_t=sp_t,
        setpoints_percent=percent,
        held=held,
        faults=tuple(faults),
    )


def scenario_figure(data: FigureData, *, dpi: int = 72) -> str:
    """The figure of ``data`` as a ``data:image/png;base64,...`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    t_end = max(
        (float(a[-1]) for a in (data.truth_t, data.setpoint_t, data.measured_t) if a.size),
        default=0.0,
    )
    for ax in (top, bottom):
        for _kind, start, end in data.faults:  # a fault to the end of the run has end_h inf
            if start < t_end:
                ax.axvspan(start, min(end, t_end), color="0.85", lw=0)
        for start, end in data.held:
            ax.axvspan(start, max(end, start + 1e-3), color="#f4b6b6", lw=0)
        ax.grid(True, lw=0.3)
    if data.measured.size:
        top.plot(data.measured_t, data.measured, ".", ms=1.5, color="#7a9cc6", label="probe")
    if data.truth is not None:
        top.plot(data.truth_t, data.truth, lw=1.0, color="#1f3b73", label="true DO")
    if data.minimum is not None:
        top.axhline(data.minimum, ls="--", lw=0.8, color="#b00020", label="minimum")
    top.set_ylabel("DO, % sat." if data.signal == "DO" else data.signal, fontsize=8)
    outside = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}  # no data hidden
    top.legend(**outside)
    for name, values in data.setpoints_percent.items():
        bottom.step(data.setpoint_t, values, where="post", lw=0.9, label=name)
    bottom.set_ylabel("setpoint, % of range", fontsize=8)
    bottom.set_xlabel("process time (h); grey: fault, red: fallback or hold", fontsize=8)
    if data.setpoints_percent:
        bottom.legend(**outside)
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
    top.set_title(data.title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
