"""Offline estimation over a recorded run: the online estimator, files, plot, summary.

``bpcontrol estimate`` replays a recorded run (readings and inputs, the CSV format of
``hil.synthetic``) through :class:`estimators.OnlineEstimator` exactly as it would have
run live: one step at every distinct arrival time ``t_h`` (plus a step wherever an input
changes between two arrivals), the inputs held since the previous step, every reading
given with its sample time so that a late offline assay is fused at the time it was
taken (within the filter's ``lag_h``).

Readings and the filter
-----------------------
- A sensor name that is not an output of the model is a data error (the file belongs to
  another model, or a name is misspelt): nothing is estimated.
- A reading of a model output that the filter configuration does not use (e.g. ``OUR``
  with the E. coli preset) is skipped; the summary warns once per output with a count.
- A value that is not a number (``nan``), outside the output's physical range, or
  rejected by the innovation gate is an event in ``events.csv`` (``rejected``,
  ``gated``), as are late fusions (``late_fused``), samples older than the lag window
  (``too_late``) and covariance resets (``reset``).

Everything that can be wrong with the request (model, data, inputs, configuration,
initial state, output folder) is checked before anything is written, so a refused run
leaves no files. Readings arriving after :data:`bpcontrol.recipe.MAX_DURATION_H`, or
needing more than :data:`bpcontrol.recipe.MAX_TICKS` filter steps to reach, are refused.
A run folder holds:

- ``estimates.csv``: ``t_h`` then, for every state and tracked parameter, its estimate
  and ``<name>_sigma`` (one standard deviation), then ``nis`` and ``dof`` (normalised
  innovation squared of the step's update and its degrees of freedom), one row per step;
- ``events.csv``: ``t_h, kind, sensor, value, message``, one row per filter event;
- ``plot.png``: states with +-2 sigma bands and the readings that measure a state
  directly (offline assays as dots at their sample time), tracked parameters with bands;
- ``ekf.toml``: the filter configuration used (a starting point for ``--config``);
- ``run.json``: the request, the units of every column, counts and the version.

``bpcontrol`` does not read files of ``hil`` itself: the CLI hands in a reader
(:data:`RunReader`) that returns anything shaped like :class:`RecordedData`.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from bpcontrol import __version__
from bpcontrol.run_length import check_run_length
from estimators import (
    EKFConfig,
    ExtendedKalmanFilter,
    FilterEvent,
    OnlineEstimator,
    Reading,
    default_ekf_config,
    dump_ekf_config,
    load_ekf_config,
)
from models import NUMPY, InputProfile, Model, load_model

_T_EPS = 1e-9  # h: arrival times closer than this are one step


class RecordedReading(Protocol):
    """One recorded reading (``hil.synthetic.Record`` has this shape)."""

    @property
    def t_h(self) -> float: ...
    @property
    def sensor(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def t_sample_h(self) -> float: ...


class RecordedData(Protocol):
    """Readings in order of arrival and the inputs applied (``hil.synthetic.RecordedRun``)."""

    @property
    def records(self) -> Sequence[RecordedReading]: ...
    @property
    def inputs(self) -> InputProfile: ...


RunReader = Callable[[Path, Path, Model], RecordedData]
"""``reader(data_path, inputs_path, model)``: the run, checked against the model (sensor
names are outputs, inputs in the model's order); raises ``ValueError`` naming file and
line for anything malformed."""


@dataclass(frozen=True, kw_only=True)
class EstimationRequest:
    """What to estimate from and where to write; ``model`` is a built-in name or a path.

    ``x0``: ``NAME=VALUE`` assignments (comma-separated or several) overriding the
    model's nominal initial state; ``config``: a TOML filter configuration, the preset
    of :func:`estimators.default_ekf_config` if omitted.
    """

    model: str
    data: Path
    inputs: Path
    config: Path | None = None
    x0: tuple[str, ...] = ()
    out_dir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class PreparedEstimation:
    """A checked request: model, configuration, readings grouped by arrival, inputs."""

    request: EstimationRequest
    model: Model
    config: EKFConfig
    x0: np.ndarray
    inputs: InputProfile
    groups: tuple[tuple[float, tuple[RecordedReading, ...]], ...]
    n_readings: int
    ignored: Mapping[str, int]

    @property
    def t_end(self) -> float:
        return self.groups[-1][0]


@dataclass(frozen=True, kw_only=True)
class EstimationResult:
    """Estimates at every step, the events and the files written."""

    model: Model
    config: EKFConfig
    t: np.ndarray  # (K,) step times, h
    x: np.ndarray  # (K, nx) state estimates
    theta: np.ndarray  # (K, n_tracked) tracked parameter estimates
    sigma: np.ndarray  # (K, nx + n_tracked) standard deviations
    nis: np.ndarray  # (K,)
    dof: np.ndarray  # (K,) int
    x0: np.ndarray
    events: tuple[FilterEvent, ...]
    n_readings: int
    out_dir: Path
    estimates_path: Path
    events_path: Path
    plot_path: Path
    config_path: Path
    info_path: Path
    warnings: tuple[str, ...]

    @property
    def tracked_names(self) -> tuple[str, ...]:
        return self.config.tracked_names

    def event_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e.kind for e in self.events).items()))

    def nis_per_dof(self) -> float:
        """Sum of NIS over the sum of degrees of freedom: about 1 for a consistent filter."""
        total = int(self.dof.sum())
        return float(self.nis.sum()) / total if total else math.nan


# --- preparing ---------------------------------------------------------------------------


def parse_x0(assignments: Sequence[str], model: Model) -> np.ndarray:
    """The model's nominal initial state with ``NAME=VALUE`` overrides, checked."""
    x0 = model.x0.copy()
    for text in assignments:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value_text = (s.strip() for s in part.partition("="))
            if not sep or not name:
                raise ValueError(f"--x0 {part!r}: expected NAME=VALUE, e.g. X=0.3")
            if name not in model.state_names:
                raise ValueError(
                    f"--x0 {name!r} is not a state of model {model.name!r} "
                    f"(states: {', '.join(model.state_names)})"
                )
            try:
                value = float(value_text)
            except ValueError:
                raise ValueError(f"--x0 {name}: {value_text!r} is not a number") from None
            state = model.states[model.index(name)]
            if not (math.isfinite(value) and state.lower <= value <= state.upper):
                raise ValueError(
                    f"--x0 {name} = {value_text} is outside [{state.lower:g}, {state.upper:g}] "
                    f"{state.unit}"
                )
            x0[model.index(name)] = value
    return x0


def prepare_estimation(request: EstimationRequest, read_run: RunReader) -> PreparedEstimation:
    """Check the request and load everything; raises ``ValueError`` subclasses."""
    out = request.out_dir
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path exists and is not a folder")
    model = load_model(request.model)
    config = (
        load_ekf_config(request.config, model)
        if request.config is not None
        else default_ekf_config(model)
    )
    x0 = parse_x0(request.x0, model)
    run = read_run(request.data, request.inputs, model)
    records = tuple(run.records)
    if not records:
        raise ValueError(f"{request.data}: no readings")
    if records[0].t_h < 0:
        first = records[0]
        raise ValueError(
            f"{request.data}: the first reading ({first.sensor} at t_h = {first.t_h:g} h) "
            "is before the start of the run at 0 h"
        )
    check_span(records, config, request.data)
    sensors = {s.output for s in config.sensors}
    used = tuple(r for r in records if r.sensor in sensors)
    ignored = Counter(r.sensor for r in records if r.sensor not in sensors)
    if not used:
        raise ValueError(
            f"{request.data}: no reading is of a configured sensor "
            f"(data has {', '.join(sorted(ignored))}; filter uses {', '.join(sorted(sensors))})"
        )
    return PreparedEstimation(
        request=request,
        model=model,
        config=config,
        x0=x0,
        inputs=run.inputs,
        groups=group_arrivals(used),
        n_readings=len(used),
        ignored=dict(sorted(ignored.items())),
    )


def check_span(records: Sequence[RecordedReading], config: EKFConfig, data: Path) -> None:
    """Refuse readings that arrive later than a sane run lasts: after
    :data:`~bpcontrol.recipe.MAX_DURATION_H`, or so late that predicting up to them
    takes more than :data:`~bpcontrol.recipe.MAX_TICKS` filter steps of the
    configuration's ``max_step_h`` (a reading 1e308 h after the one before)."""
    last = max(records, key=lambda r: r.t_h)
    check_run_length(
        last.t_h,
        f"{data}: the time of the last reading ({last.sensor}), t_h,",
        step_h=config.max_step_h,
        steps="filter steps of max_step_h",
    )


def group_arrivals(
    records: Sequence[RecordedReading],
) -> tuple[tuple[float, tuple[RecordedReading, ...]], ...]:
    """``(t_h, readings arriving then)`` in time order (``records`` sorted by ``t_h``)."""
    groups: list[tuple[float, list[RecordedReading]]] = []
    for r in records:
        if groups and r.t_h <= groups[-1][0] + _T_EPS:
            groups[-1][1].append(r)
        else:
            groups.append((float(r.t_h), [r]))
    return tuple((t, tuple(rs)) for t, rs in groups)


def input_changes(profile: InputProfile) -> np.ndarray:
    """Times at which some input takes a new value (the first row excluded)."""
    values = np.asarray(profile.values)
    changed = np.any(values[1:] != values[:-1], axis=1)
    return np.asarray(profile.times)[1:][changed]


# --- running -----------------------------------------------------------------------------


def run_estimation(
    prepared: PreparedEstimation,
    *,
    progress: Callable[[float, float], None] | None = None,
    now: datetime | None = None,
) -> EstimationResult:
    """Filter the whole run, then write estimates, events, plot, configuration and info."""
    model, config = prepared.model, prepared.config
    est = OnlineEstimator(ExtendedKalmanFilter(model, config))
    tracked_idx = [model.index(tp.name) for tp in config.tracked]
    changes = input_changes(prepared.inputs)
    state = est.init(prepared.x0, t0=0.0)
    t_last = 0.0
    rows_t: list[float] = []
    rows_x: list[np.ndarray] = []
    rows_theta: list[np.ndarray] = []
    rows_sigma: list[np.ndarray] = []
    rows_nis: list[float] = []
    rows_dof: list[int] = []
    events: list[FilterEvent] = []

    def advance(t: float, readings: list[Reading]) -> None:
        nonlocal state, t_last
        u = prepared.inputs.value_at(t_last)  # held over (t_last, t]
        report, state = est.step(state, t, u, readings)
        rows_t.append(t)
        rows_x.append(report.x)
        rows_theta.append(report.p[tracked_idx])
        rows_sigma.append(report.sigma)
        rows_nis.append(report.nis)
        rows_dof.append(report.dof)
        events.extend(report.events)
        t_last = t

    for t, group in prepared.groups:
        for tc in changes[(changes > t_last + _T_EPS) & (changes < t - _T_EPS)]:
            advance(float(tc), [])
        advance(
            t,
            [
                Reading(r.sensor, r.value, None if r.t_sample_h >= r.t_h else r.t_sample_h)
                for r in group
            ],
        )
        if progress is not None:
            progress(t, prepared.t_end)

    now = now or datetime.now().astimezone()
    out_dir = prepared.request.out_dir or default_out_dir(model.name, now)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tracked = len(config.tracked)
    warnings = tuple(
        f"{count} readings of {name!r} skipped: not a sensor of the filter configuration"
        for name, count in prepared.ignored.items()
    )
    result = EstimationResult(
        model=model,
        config=config,
        t=np.asarray(rows_t),
        x=np.asarray(rows_x).reshape(len(rows_t), model.nx),
        theta=np.asarray(rows_theta).reshape(len(rows_t), n_tracked),
        sigma=np.asarray(rows_sigma).reshape(len(rows_t), model.nx + n_tracked),
        nis=np.asarray(rows_nis, dtype=float),
        dof=np.asarray(rows_dof, dtype=int),
        x0=prepared.x0,
        events=tuple(events),
        n_readings=prepared.n_readings,
        out_dir=out_dir,
        estimates_path=out_dir / "estimates.csv",
        events_path=out_dir / "events.csv",
        plot_path=out_dir / "plot.png",
        config_path=out_dir / "ekf.toml",
        info_path=out_dir / "run.json",
        warnings=warnings,
    )
    write_estimates(result)
    write_events(result)
    plot_estimates(result, prepared, result.plot_path)
    source = prepared.request.config or "the default of estimators.default_ekf_config"
    result.config_path.write_text(
        dump_ekf_config(
            config, comment=f"EKF for {model.name} used by bpcontrol estimate\nfrom {source}"
        ),
        encoding="utf-8",
    )
    write_info(result, prepared, now)
    return result


def default_out_dir(model_name: str, now: datetime, root: Path = Path("runs")) -> Path:
    """``runs/est-<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3`` ... if that exists."""
    base = root / f"est-{model_name}-{now:%Y%m%d-%H%M%S}"
    candidate, k = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{k}")
        k += 1
    return candidate


# --- writing -----------------------------------------------------------------------------


def _num(v: float) -> str:
    return format(float(v), ".17g")


def estimate_columns(result: EstimationResult) -> list[str]:
    names = [*result.model.state_names, *result.tracked_names]
    return ["t_h", *(c for n in names for c in (n, f"{n}_sigma")), "nis", "dof"]


def write_estimates(result: EstimationResult) -> Path:
    values = np.hstack([result.x, result.theta])
    with result.estimates_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(estimate_columns(result))
        for k, tk in enumerate(result.t):
            cells = [_num(tk)]
            for j in range(values.shape[1]):
                cells += [_num(values[k, j]), _num(result.sigma[k, j])]
            w.writerow([*cells, _num(result.nis[k]), str(int(result.dof[k]))])
    return result.estimates_path


def write_events(result: EstimationResult) -> Path:
    with result.events_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("t_h", "kind", "sensor", "value", "message"))
        for e in result.events:
            value = "" if e.value is None else _num(e.value)
            w.writerow((_num(e.t), e.kind, e.sensor or "", value, e.message))
    return result.events_path


def units(result: EstimationResult) -> dict[str, str]:
    """Unit of every column of ``estimates.csv``."""
    model = result.model
    out = {"t_h": "h"}
    for s in model.states:
        out[s.name] = out[f"{s.name}_sigma"] = s.unit
    for name in result.tracked_names:
        unit = model.parameters[model.index(name)].unit
        out[name] = out[f"{name}_sigma"] = unit
    out["nis"] = out["dof"] = "-"
    return out


def write_info(result: EstimationResult, prepared: PreparedEstimation, now: datetime) -> Path:
    req = prepared.request
    names = [*result.model.state_names, *result.tracked_names]
    final = np.concatenate([result.x[-1], result.theta[-1]])
    info = {
        "kind": "estimate",
        "created": now.isoformat(timespec="seconds"),
        "bpcontrol_version": __version__,
        "model": result.model.name,
        "model_source": req.model,
        "data": str(req.data),
        "inputs": str(req.inputs),
        "config": str(req.config) if req.config is not None else None,
        "x0": dict(zip(result.model.state_names, map(float, result.x0), strict=True)),
        "readings": result.n_readings,
        "skipped_readings": dict(prepared.ignored),
        "steps": int(result.t.size),
        "t_end_h": float(result.t[-1]),
        "final": {
            n: {"value": float(v), "sigma": float(s)}
            for n, v, s in zip(names, final, result.sigma[-1], strict=True)
        },
        "nis_per_dof": _json_float(result.nis_per_dof()),
        "events": result.event_counts(),
        "files": {
            "estimates": result.estimates_path.name,
            "events": result.events_path.name,
            "plot": result.plot_path.name,
            "config": result.config_path.name,
        },
        "units": units(result),
    }
    result.info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return result.info_path


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --- plot --------------------------------------------------------------------------------


def direct_measurements(model: Model) -> dict[str, str]:
    """Outputs that read one state as it is (``X_off`` -> ``X``), found numerically.

    An output measures state ``i`` directly when it equals that state, and only that
    one, at two distinct state points.
    """
    x_a = model.x0.copy()
    lo, hi = model.bounds("states")
    span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    x_b = np.clip(x_a + 1e-3 * span * (1.0 + np.arange(model.nx) / model.nx), lo, hi)
    ys = []
    with np.errstate(all="ignore"):
        for x in (x_a, x_b):
            _, y = model.evaluate(NUMPY, list(x), list(model.u0), list(model.p0))
            ys.append(np.array([float(np.asarray(v)) for v in y]))
    out: dict[str, str] = {}
    for j, output in enumerate(model.outputs):
        hits = [
            i
            for i in range(model.nx)
            if all(
                np.isclose(y[j], x[i], rtol=1e-12, atol=1e-12)
                for y, x in zip(ys, (x_a, x_b), strict=True)
            )
        ]
        if len(hits) == 1:
            out[output.name] = model.state_names[hits[0]]
    return out


def plot_estimates(
    result: EstimationResult, prepared: PreparedEstimation, path: str | Path
) -> Path:
    """States and tracked parameters with +-2 sigma bands, direct readings as dots."""
    path = Path(path)
    model = result.model
    direct = direct_measurements(model)
    by_state: dict[str, list[RecordedReading]] = {}
    for _, group in prepared.groups:
        for r in group:
            if r.sensor in direct and math.isfinite(r.value):
                by_state.setdefault(direct[r.sensor], []).append(r)
    refused_at = {
        (e.sensor, e.value, round(e.t, 6))
        for e in result.events
        if e.kind in ("gated", "rejected", "too_late")
    }

    def refused(r: RecordedReading) -> bool:
        """Gated (event at the sample time) or rejected (event at the arrival time)."""
        return any(
            (r.sensor, float(r.value), round(t, 6)) in refused_at for t in (r.t_sample_h, r.t_h)
        )

    panels = [*model.state_names, *result.tracked_names]
    ncols = 3 if len(panels) > 4 else 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    values = np.hstack([result.x, result.theta])
    unit_of = units(result)
    for j, (ax, name) in enumerate(zip(axes, panels, strict=False)):
        mean, sd = values[:, j], result.sigma[:, j]
        tracked = j >= model.nx
        color = "C2" if tracked else "C0"
        ax.fill_between(result.t, mean - 2 * sd, mean + 2 * sd, color=color, alpha=0.25, lw=0)
        ax.plot(result.t, mean, color=color, lw=1.2, label="estimate +-2 sigma")
        if tracked:
            nominal = model.p0[model.index(name)]
            ax.axhline(nominal, color="0.4", ls="--", lw=0.8, label="nominal")
        readings = by_state.get(name, [])
        online = [r for r in readings if r.t_sample_h >= r.t_h]
        offline = [r for r in readings if r.t_sample_h < r.t_h and not refused(r)]
        offline_refused = [r for r in readings if r.t_sample_h < r.t_h and refused(r)]
        if online:
            ax.scatter(
                [r.t_sample_h for r in online],
                [r.value for r in online],
                s=2,
                color="0.5",
                alpha=0.4,
                lw=0,
                label="online",
            )
        if offline:
            ax.scatter(
                [r.t_sample_h for r in offline],
                [r.value for r in offline],
                s=18,
                color="C3",
                zorder=3,
                label="offline (at sample time)",
            )
        if offline_refused:
            ax.scatter(
                [r.t_sample_h for r in offline_refused],
                [r.value for r in offline_refused],
                s=18,
                facecolors="none",
                edgecolors="C3",
                zorder=3,
                label="offline, gated or rejected",
            )
        ax.set_ylabel(f"{name} [{unit_of.get(name, '-')}]")
        kind = "parameter" if tracked else "state"
        ax.set_title(f"{kind} {name}", fontsize="medium", loc="left")
        ax.grid(True, alpha=0.3)
        if j == 0 or (tracked and j == model.nx) or offline or offline_refused:
            ax.legend(fontsize="x-small", loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[max(len(panels) - ncols, 0) : len(panels)]:
        ax.set_xlabel("time [h]")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(f"{model.name}: EKF estimates ({result.n_readings} readings)")
    fig.savefig(path, dpi=110)
    return path


# --- summary -----------------------------------------------------------------------------


def summary_table(result: EstimationResult) -> Table:
    """Final estimate +- 2 sigma of every state and tracked parameter, with units."""
    model = result.model
    table = Table(
        title=f"{model.name}: estimate at {result.t[-1]:g} h "
        f"({result.n_readings} readings, {result.t.size} steps)",
        title_justify="left",
    )
    table.add_column("name")
    table.add_column("unit")
    table.add_column("initial", justify="right")
    table.add_column("final", justify="right")
    table.add_column("+-2 sigma", justify="right")
    unit_of = units(result)
    initial = [*result.x0, *(model.p0[model.index(n)] for n in result.tracked_names)]
    final = [*result.x[-1], *result.theta[-1]]
    names = [*model.state_names, *result.tracked_names]
    for k, name in enumerate(names):
        label = name if k < model.nx else f"{name} (parameter)"
        table.add_row(
            label,
            unit_of[name],
            f"{initial[k]:.4g}",
            f"{final[k]:.4g}",
            f"{2 * result.sigma[-1, k]:.2g}",
        )
    return table


def events_table(result: EstimationResult) -> Table:
    """Counts of filter events by kind."""
    table = Table(title="filter events", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    counts = result.event_counts()
    for kind, count in counts.items():
        table.add_row(kind, str(count))
    if not counts:
        table.add_row("(none)", "0")
    return table


def consistency_line(result: EstimationResult) -> str:
    """How the innovations compare with the filter's own statistics."""
    return (
        f"NIS per degree of freedom: {result.nis_per_dof():.3g} "
        "(about 1 when the noise settings fit the data)"
    )
