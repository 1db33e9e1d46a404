"""The HTML report of one closed-loop run: figures, KPIs, events and the operator audit.

:func:`write_report` reads the typed records of a run (any order, as read back from the
historian) and writes one self-contained HTML file: every figure is a PNG drawn off-screen
(a private Agg canvas, never pyplot) and embedded as a ``data:`` URI, so the file can be
mailed, attached to a QA ticket or archived with the batch record as it is.

Figures (each left out, with a sentence saying why, when the run has nothing to draw):

1. states: estimate with its +-2 sigma band, the true trajectory of a simulated plant,
   the measurements of that state (sensor ``X_off``, ``DO_probe``, ``V_meas``... map to
   the state named by stripping the suffix) and the state bounds;
2. tracked parameters: estimate +-2 sigma and the true value of a simulated plant;
3. setpoints and limits: applied setpoints as steps, the time spent in fallback, operator,
   hold and recipe-only phases shaded, clamped steps marked, absolute limits dashed;
4. predicted vs realised: a few usable plans spread over the run against the truth (or
   the estimates when there is no truth);
5. controller: solve time per plan (log scale, by status) and the normalised innovation
   squared (NIS) of the estimator against its chi-square 95 % bound.

Long series are thinned for drawing (the figures show at most about a thousand points per
line), so a 30 h run logged every minute renders in a few seconds into a file of about a
megabyte. All text from records (event messages, operator reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bpcontrol.records import (
    USABLE_PLAN_STATUSES,
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.supervisor import SetpointLimits
from models import Model

__all__ = ["write_report"]

_DPI = 90
_MAX_POINTS = 1000  # per drawn line; more points than pixels only cost time and bytes
_MAX_MARKERS = 400  # per sensor
_MAX_ROWS = 300  # per HTML table
_N_PLANS = 5  # rows of the predicted-vs-realised figure
_N_KEY_STATES = 4  # its columns
_SENSOR_SUFFIXES = ("_off", "_probe", "_meas")
_SOURCE_COLOURS: dict[SetpointSource, str] = {
    SetpointSource.FALLBACK: "tab:red",
    SetpointSource.OPERATOR: "tab:blue",
    SetpointSource.HOLD: "tab:grey",
    SetpointSource.RECIPE: "tab:green",
}
"""Background of the setpoint figure per source (NMPC steps stay white)."""


@dataclass
class _Run:
    """The records of one run split by type, each list sorted by process time."""

    measurements: list[MeasurementRecord] = field(default_factory=list)
    estimates: list[EstimateRecord] = field(default_factory=list)
    plans: list[PlanRecord] = field(default_factory=list)
    setpoints: list[SetpointRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)

    @classmethod
    def of(cls, records: Sequence[Record]) -> _Run:
        run = cls()
        lists: dict[type, list[Any]] = {
            MeasurementRecord: run.measurements,
            EstimateRecord: run.estimates,
            PlanRecord: run.plans,
            SetpointRecord: run.setpoints,
            EventRecord: run.events,
            AuditRecord: run.audits,
        }
        for rec in records:
            target = lists.get(type(rec))
            if target is None:
                raise TypeError(f"not a run record: {type(rec).__name__}")
            target.append(rec)
        for items in lists.values():
            items.sort(key=lambda r: r.t_h)
        return run

    def counts(self) -> dict[str, int]:
        return {
            "measurements": len(self.measurements),
            "estimates": len(self.estimates),
            "plans": len(self.plans),
            "setpoints": len(self.setpoints),
            "events": len(self.events),
            "audit records": len(self.audits),
        }

    def time_span(self) -> tuple[float, float] | None:
        times = [
            items[i].t_h
            for items in (
                self.measurements,
                self.estimates,
                self.plans,
                self.setpoints,
                self.events,
                self.audits,
            )
            if items
            for i in (0, -1)
        ]
        return (min(times), max(times)) if times else None


def write_report(
    path: str | Path,
    *,
    records: Sequence[Record],
    model: Model,
    limits: Mapping[str, SetpointLimits],
    kpis: Mapping[str, float | int | str],
    title: str,
    truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    true_parameters: Mapping[str, float] | None = None,
    state_bounds: Mapping[str, tuple[float, float]] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write the self-contained HTML report of one closed-loop run to ``path``.

    Args:
        path: the ``.html`` file to write (its folder must exist); overwritten.
        records: every record of the run, in any order.
        model: the model the loop ran (state and input names and units).
        limits: the absolute setpoint limits per input name (input units).
        kpis: key performance indicators, shown as a table in the given order.
        title: the report's heading.
        truth: for a simulated plant, ``(t_h (n,), X (n, nx), U (n, nu))``: process time
            (h), true states and the inputs the plant held, columns in the model's order.
        true_parameters: for a simulated plant, the true value of tracked parameters.
        state_bounds: ``{state: (lower, upper)}`` in state units, drawn as dashed lines
            (infinite ends are not drawn).
        notes: free lines shown under the title (scenario, seed, command line).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: a record is not one of the loop's record types.
        ValueError: ``truth`` has the wrong shape for ``model``.
    """
    path = Path(path)
    run = _Run.of(records)
    if truth is not None:
        truth = _checked_truth(truth, model)
    sections: list[str] = [_header(title, notes, run), _kpi_table(kpis)]
    sections.append(_section("States", *_states_figure(run, model, truth, state_bounds)))
    sections.append(
        _section("Tracked parameters", *_parameters_figure(run, model, true_parameters or {}))
    )
    sections.append(_section("Setpoints and limits", *_setpoints_figure(run, model, limits, truth)))
    sections.append(
        _section("Predicted vs realised", *_prediction_figure(run, model, truth, state_bounds))
    )
    sections.append(_section("Controller and estimator", *_controller_figure(run)))
    sections.append(_events_table(run.events))
    sections.append(_audit_table(run.audits))
    path.write_text(_page(title, sections), encoding="utf-8")
    return path


# --- helpers -------------------------------------------------------------------------------


def _checked_truth(
    truth: tuple[np.ndarray, np.ndarray, np.ndarray], model: Model
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, X, U = (np.asarray(a, dtype=float) for a in truth)
    n = t.shape[0] if t.ndim == 1 else -1
    if t.ndim != 1 or X.shape != (n, model.nx) or U.shape != (n, model.nu):
        raise ValueError(
            f"truth must be (t (n,), X (n, {model.nx}), U (n, {model.nu})) for model "
            f"{model.name!r}, got shapes {t.shape}, {X.shape}, {U.shape}"
        )
    return t, X, U


def _thin(n: int, cap: int) -> slice:
    """Every k-th index so that at most about ``cap`` of ``n`` points remain."""
    return slice(None, None, max(1, math.ceil(n / cap)))


def _state_of_sensor(sensor: str, state_names: Sequence[str]) -> str | None:
    """The state a sensor measures directly (``X_off`` -> ``X``), or None."""
    if sensor in state_names:
        return sensor
    for suffix in _SENSOR_SUFFIXES:
        if sensor.endswith(suffix) and sensor[: -len(suffix)] in state_names:
            return sensor[: -len(suffix)]
    return None


def _place(
    fig: Figure, nrows: int, ncols: int, *, left: float = 0.85, top: float = 0.5, gap: float = 0.4
) -> None:
    """Fixed margins in inches (a layout engine costs about half the drawing time).

    ``left`` and the column gap leave room for tick labels and a y label, ``top`` for a
    figure legend, ``gap`` between rows for tick labels or a panel title.
    """
    w, h = fig.get_size_inches()
    right, bottom, col_gap = 0.15, 0.5, 0.9
    ax_w = (w - left - right - col_gap * (ncols - 1)) / ncols
    ax_h = (h - top - bottom - gap * (nrows - 1)) / nrows
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        bottom=bottom / h,
        top=1 - top / h,
        wspace=col_gap / ax_w,
        hspace=gap / ax_h,
    )


def _grid(n: int, width: float = 4.4, height: float = 2.3) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` panels sharing time, ``ncols`` chosen for a readable page."""
    ncols = 1 if n == 1 else 2 if n <= 4 else 3
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.5))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel())
    _place(fig, nrows, ncols, gap=0.25)
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:n]):
        ax.grid(True, alpha=0.3)
        if i >= n - ncols:
            ax.set_xlabel("time [h]")
            ax.xaxis.set_tick_params(labelbottom=True)
    return fig, axes[:n]


def _top_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """One legend for the whole figure, in its top margin."""
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=len(labels))


def _png(fig: Figure) -> str:
    """The figure as a base64 PNG (the figure is closed over by the garbage collector)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unit(model: Model, name: str) -> str:
    """The unit of a state, input or parameter of ``model`` ("-" for an unknown name)."""
    units = {v.name: v.unit for v in model.states}
    units.update({v.name: v.unit for v in model.inputs})
    units.update({v.name: v.unit for v in model.parameters})
    return units.get(name, "-")


def _spans(t: np.ndarray, mask: np.ndarray, ax: Axes, colour: str, alpha: float) -> None:
    """Shade the time spans where ``mask`` holds; each value holds until the next time."""
    if not mask.any():
        return
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    ends = np.append(t[1:], t[-1] + step)
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    bars = [(float(t[i]), float(ends[j] - t[i])) for i, j in zip(starts, stops, strict=True)]
    ax.broken_barh(
        bars,
        (0, 1),
        facecolors=colour,
        alpha=alpha,
        linewidth=0,
        transform=ax.get_xaxis_transform(),
    )


# --- figures: each returns (base64 PNG or None, caption or reason) ---------------------------

Figured = tuple[str | None, str]


def _states_figure(
    run: _Run,
    model: Model,
    truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    state_bounds: Mapping[str, tuple[float, float]] | None,
) -> Figured:
    names = model.state_names
    by_state: dict[str, list[MeasurementRecord]] = {}
    for m in run.measurements:
        state = _state_of_sensor(m.sensor, names)
        if state is not None and math.isfinite(m.value):
            by_state.setdefault(state, []).append(m)
    if not run.estimates and truth is None and not by_state:
        return None, "No estimates, no measurements of a state and no true trajectory."
    fig, axes = _grid(len(names))
    est = run.estimates[_thin(len(run.estimates), _MAX_POINTS)]
    t_est = np.array([e.t_h for e in est])
    unhealthy = np.array([not e.healthy for e in est], dtype=bool)
    legend: dict[str, Any] = {}
    for ax, name in zip(axes, names, strict=True):
        if est and any(name in e.x for e in est):
            x = np.array([e.x.get(name, math.nan) for e in est])
            s = np.array([e.x_sigma.get(name, math.nan) for e in est])
            ax.fill_between(t_est, x - 2 * s, x + 2 * s, color="C0", alpha=0.25, linewidth=0)
            ax.plot(t_est, x, color="C0", linewidth=1.2)
            legend["estimate"] = Line2D([], [], color="C0")
            legend["+-2 sigma"] = Patch(color="C0", alpha=0.25)
        if truth is not None:
            t, X, _ = truth
            sl = _thin(len(t), _MAX_POINTS)
            ax.plot(t[sl], X[sl, model.index(name)], "k--", linewidth=1.0)
            legend["truth"] = Line2D([], [], color="k", linestyle="--")
        ms = by_state.get(name, [])
        if ms:
            ms = ms[_thin(len(ms), _MAX_MARKERS)]
            ax.plot(
                [m.t_sample_h for m in ms],
                [m.value for m in ms],
                linestyle="none",
                marker="o" if len(ms) < 100 else ".",
                markersize=4 if len(ms) < 100 else 2,
                color="C1",
            )
            legend["measured"] = Line2D([], [], color="C1", marker="o", linestyle="none")
        for bound in (state_bounds or {}).get(name, ()):
            if math.isfinite(bound):
                ax.axhline(bound, color="C3", linestyle="--", linewidth=1.0)
                legend["bound"] = Line2D([], [], color="C3", linestyle="--")
        if unhealthy.any():
            _spans(t_est, unhealthy, ax, "tab:red", 0.12)
            legend["estimate unhealthy"] = Patch(color="tab:red", alpha=0.12)
        ax.set_ylabel(f"{name} [{_unit(model, name)}]")
    _top_legend(fig, list(legend.values()), list(legend))
    thinned = ", thinned for drawing" if len(est) < len(run.estimates) else ""
    return _png(fig), (
        f"State estimates ({len(run.estimates)} steps{thinned}) with +-2 sigma bands"
        + (", the true trajectory" if truth is not None else "")
        + f" and {sum(len(v) for v in by_state.values())} direct measurements of states."
    )


def _parameters_figure(run: _Run, model: Model, true_parameters: Mapping[str, float]) -> Figured:
    names: list[str] = []
    for e in run.estimates:
        names.extend(n for n in e.parameters if n not in names)
    if not names:
        return None, "No tracked parameters in the estimates."
    fig, axes = _grid(len(names))
    est = run.estimates[_thin(len(run.estimates), _MAX_POINTS)]
    t = np.array([e.t_h for e in est])
    for ax, name in zip(axes, names, strict=True):
        p = np.array([e.parameters.get(name, math.nan) for e in est])
        s = np.array([e.parameter_sigma.get(name, math.nan) for e in est])
        ax.fill_between(t, p - 2 * s, p + 2 * s, color="C2", alpha=0.25, linewidth=0)
        ax.plot(t, p, color="C2", label="estimate")
        if name in true_parameters:
            ax.axhline(true_parameters[name], color="k", linestyle="--", label="true")
        ax.set_ylabel(f"{name} [{_unit(model, name)}]")
        ax.legend(fontsize="small", loc="best")
    return _png(fig), "Tracked parameters: estimate with +-2 sigma band" + (
        ", true value dashed." if true_parameters else "."
    )


def _setpoints_figure(
    run: _Run,
    model: Model,
    limits: Mapping[str, SetpointLimits],
    truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> Figured:
    if not run.setpoints:
        return None, "No setpoints were applied (the loop never reached a control step)."
    sps = run.setpoints
    t = np.array([sp.t_h for sp in sps])
    sources = np.array([sp.source.value for sp in sps], dtype=str)
    names = [n for n in model.input_names if any(n in sp.values for sp in sps)]
    if not names:
        return None, "The setpoint records name none of the model's inputs."
    fig, axes = _grid(len(names))
    legend: dict[str, Any] = {"applied": Line2D([], [], color="k", drawstyle="steps-post")}
    for ax, name in zip(axes, names, strict=True):
        for source, colour in _SOURCE_COLOURS.items():
            mask = sources == source
            if mask.any():
                _spans(t, mask, ax, colour, 0.15)
                legend[source.value] = Patch(color=colour, alpha=0.15)
        v = np.array([sp.values.get(name, math.nan) for sp in sps])
        keep = np.ones(len(v), dtype=bool)  # a step plot only needs the changes
        keep[1:] = v[1:] != v[:-1]
        keep[-1] = True
        tk, vk = t[keep], v[keep]
        sl = _thin(len(tk), _MAX_POINTS)
        ax.step(tk[sl], vk[sl], where="post", color="k", linewidth=1.4, zorder=3)
        clamped = np.array([name in sp.clamped for sp in sps], dtype=bool)
        if clamped.any():
            ax.plot(t[clamped], v[clamped], "x", color="C3", markersize=4)
            legend["clamped"] = Line2D([], [], color="C3", marker="x", linestyle="none")
        if truth is not None:
            tt, _, U = truth
            sl = _thin(len(tt), _MAX_POINTS)
            ax.plot(
                tt[sl], U[sl, model.index(name)], color="C1", linewidth=2.5, alpha=0.5, zorder=2
            )
            legend["held by plant"] = Line2D([], [], color="C1", linewidth=2.5, alpha=0.5)
        lim = limits.get(name)
        if lim is not None:
            ax.axhline(lim.lower, color="C3", linestyle="--", linewidth=1.0)
            ax.axhline(lim.upper, color="C3", linestyle="--", linewidth=1.0)
            legend["limits"] = Line2D([], [], color="C3", linestyle="--")
        ax.set_ylabel(f"{name} [{_unit(model, name)}]")
    _top_legend(fig, list(legend.values()), list(legend))
    dt = np.diff(t, append=t[-1])
    share = ", ".join(
        f"{src} {dt[sources == src].sum():.2f} h"
        for src in SetpointSource
        if src is not SetpointSource.RECIPE or (sources == src).any()
    )
    return _png(fig), f"Applied setpoints ({len(sps)} steps); time per source: {share}."


def _key_states(model: Model, plans: Sequence[PlanRecord], bounded: Sequence[str]) -> list[str]:
    """Up to ``_N_KEY_STATES`` predicted states: the bounded ones first, in model order."""
    predicted = [n for n in model.state_names if any(n in p.x_pred for p in plans)]
    chosen = [n for n in predicted if n in bounded][:_N_KEY_STATES]
    chosen += [n for n in predicted if n not in chosen][: _N_KEY_STATES - len(chosen)]
    return [n for n in predicted if n in chosen]


def _prediction_figure(
    run: _Run,
    model: Model,
    truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    state_bounds: Mapping[str, tuple[float, float]] | None,
) -> Figured:
    usable = [
        p
        for p in run.plans
        if p.status in USABLE_PLAN_STATUSES and p.x_pred and len(p.t_nodes_h) > 1
    ]
    if not usable:
        return None, "No usable plan with a predicted trajectory."
    if truth is not None:
        t_ref, X_ref = truth[0], truth[1]
        reference = "truth"
    elif run.estimates:
        t_ref = np.array([e.t_h for e in run.estimates])
        X_ref = np.array([[e.x.get(n, math.nan) for n in model.state_names] for e in run.estimates])
        reference = "estimate"
    else:
        t_ref, X_ref, reference = np.empty(0), np.empty((0, model.nx)), "(no truth, no estimates)"
    # plans whose whole horizon has been realised, when there are any, so the rows compare
    complete = [p for p in usable if len(t_ref) and p.t_nodes_h[-1] <= t_ref[-1]] or usable
    picks = np.linspace(0, len(complete) - 1, min(_N_PLANS, len(complete)))
    plans = [complete[i] for i in sorted({round(float(k)) for k in picks})]
    names = _key_states(model, usable, list(state_bounds or {}))
    fig = Figure(figsize=(0.9 + 3.1 * len(names), 0.9 + 1.9 * len(plans)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(plans), len(names), squeeze=False)
    _place(fig, len(plans), len(names), left=1.15, top=0.75, gap=0.45)
    for row, plan in zip(axes, plans, strict=True):
        nodes = np.asarray(plan.t_nodes_h)
        lead = 0.25 * (nodes[-1] - nodes[0])
        window = (t_ref >= nodes[0] - lead) & (t_ref <= nodes[-1])
        tw, Xw = t_ref[window], X_ref[window]
        sl = _thin(len(tw), _MAX_POINTS // 3)
        for ax, name in zip(row, names, strict=True):
            ax.plot(tw[sl], Xw[sl, model.index(name)], "k-", linewidth=1.0)
            if name in plan.x_pred:
                ax.plot(nodes, plan.x_pred[name], "C0--", marker=".", markersize=3)
            for bound in (state_bounds or {}).get(name, ()):
                if math.isfinite(bound):
                    ax.axhline(bound, color="C3", linestyle="--", linewidth=0.8)
            ax.axvline(nodes[0], color="grey", linewidth=0.6)
            ax.set_xlim(nodes[0] - lead, nodes[-1])
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize="small")
            ax.locator_params(nbins=4)
        row[0].set_ylabel(f"plan at\n{plan.t_h:.2f} h", fontsize="small")
    for ax, name in zip(axes[0], names, strict=True):
        ax.set_title(f"{name} [{_unit(model, name)}]", fontsize="medium")
    for ax in axes[-1]:
        ax.set_xlabel("time [h]", fontsize="small")
    handles = [Line2D([], [], color="k"), Line2D([], [], color="C0", linestyle="--", marker=".")]
    _top_legend(fig, handles, [reference, "predicted"])
    return _png(fig), (
        f"Predictions of {len(plans)} of {len(usable)} usable plans (one row each, from the "
        f"grey line on) against the {reference}. "
        + _prediction_errors(usable, names, model, t_ref, X_ref, reference)
    )


def _prediction_errors(
    plans: Sequence[PlanRecord],
    names: Sequence[str],
    model: Model,
    t_ref: np.ndarray,
    X_ref: np.ndarray,
    reference: str,
) -> str:
    """Mean absolute error of every usable plan at its horizon end, per state, as a sentence."""
    if len(t_ref) < 2:
        return ""
    errors: dict[str, list[float]] = {n: [] for n in names}
    for plan in plans:
        t_end = plan.t_nodes_h[-1]
        if not t_ref[0] <= t_end <= t_ref[-1]:
            continue
        for name in names:
            xs = plan.x_pred.get(name)
            if xs is not None:
                real = float(np.interp(t_end, t_ref, X_ref[:, model.index(name)]))
                errors[name].append(abs(xs[-1] - real))
    parts = [
        f"{n} {np.nanmean(e):.3g} {_unit(model, n)}"
        for n, e in errors.items()
        if e and not np.isnan(e).all()
    ]
    if not parts:
        return ""
    n_used = max(len(e) for e in errors.values())
    return (
        f"Mean |predicted - {reference}| at the horizon end over {n_used} plans: "
        + ", ".join(parts)
        + "."
    )


def _chi2_95(dof: np.ndarray) -> np.ndarray:
    """Upper 95 % point of chi-square with ``dof`` degrees (Wilson-Hilferty, ~1 % accurate)."""
    k = np.maximum(dof, 1).astype(float)
    return k * (1 - 2 / (9 * k) + 1.6449 * np.sqrt(2 / (9 * k))) ** 3


def _controller_figure(run: _Run) -> Figured:
    fused = [e for e in run.estimates if e.dof > 0 and math.isfinite(e.nis)]
    if not run.plans and not fused:
        return None, "No controller solves and no estimator steps that fused readings."
    fig = Figure(figsize=(10.0, 4.6))
    FigureCanvasAgg(fig)
    ax_s, ax_n = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.08, right=0.8, bottom=0.11, top=0.97, hspace=0.12)
    parts = []
    if run.plans:
        by_status: dict[str, list[PlanRecord]] = {}
        for p in run.plans:
            by_status.setdefault(p.status, []).append(p)
        finite = [p.solve_time_s for p in run.plans if math.isfinite(p.solve_time_s)]
        for k, (status, plans) in enumerate(sorted(by_status.items())):
            ok = [p for p in plans if math.isfinite(p.solve_time_s) and p.solve_time_s > 0]
            bad = [p for p in plans if p not in ok]
            sl = _thin(len(ok), _MAX_POINTS)
            if ok:
                ax_s.plot(
                    [p.t_h for p in ok[sl]],
                    [p.solve_time_s for p in ok[sl]],
                    ".",
                    color=f"C{k}",
                    label=f"{status} ({len(ok)})",
                )
            if bad:  # no solve time: a marker at the bottom edge
                ax_s.plot(
                    [p.t_h for p in bad],
                    [0.03] * len(bad),
                    "v",
                    color=f"C{k}",
                    transform=ax_s.get_xaxis_transform(),
                    label=f"{status}, no time ({len(bad)})",
                )
        if finite and max(finite) > 0:
            ax_s.set_yscale("log")
            median = float(np.median(finite))
            parts.append(f"median solve {median:.3g} s, max {max(finite):.3g} s")
        ax_s.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax_s.text(0.5, 0.5, "no controller solves", ha="center", transform=ax_s.transAxes)
    ax_s.set_ylabel("solve time [s]")
    ax_s.grid(True, which="both", alpha=0.3)
    if fused:
        t = np.array([e.t_h for e in fused])
        nis = np.array([e.nis for e in fused])
        dof = np.array([e.dof for e in fused])
        bound = _chi2_95(dof)
        above = int((nis > bound).sum())
        sl = _thin(len(fused), _MAX_POINTS)
        over = nis > bound  # always draw the exceedances
        ax_n.plot(t[sl], nis[sl], ".", color="C0", markersize=2, label="NIS")
        ax_n.plot(t[over], nis[over], ".", color="C3", markersize=3, label="above bound")
        ax_n.plot(t[sl], bound[sl], "-", color="C3", linewidth=0.8, label="chi2 95% bound")
        if (nis > 0).all():
            ax_n.set_yscale("log")
        ax_n.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        parts.append(
            f"NIS above its 95 % bound in {above} of {len(fused)} steps "
            f"({100 * above / len(fused):.1f} %, about 5 % expected)"
        )
    else:
        ax_n.text(
            0.5, 0.5, "no estimator steps with readings", ha="center", transform=ax_n.transAxes
        )
    ax_n.set_ylabel("NIS [-]")
    ax_n.set_xlabel("time [h]")
    ax_n.grid(True, alpha=0.3)
    details = "; ".join(parts)
    caption = "Controller solve time per plan by status; estimator NIS."
    return _png(fig), f"{caption} {details[:1].upper()}{details[1:]}." if parts else caption


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #555; margin: 0.1em 0; } .missing { color: #a60; }
p.caption { color: #444; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value)}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(_fmt(c))}</td>' if i in numeric else f"<td>{_e(_fmt(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _capped(items: Sequence[Any]) -> tuple[Sequence[Any], str]:
    if len(items) <= _MAX_ROWS:
        return items, ""
    more = len(items) - _MAX_ROWS
    return items[:_MAX_ROWS], f'<p class="note">... {more} more not shown (first {_MAX_ROWS}).</p>'


def _header(title: str, notes: Sequence[str], run: _Run) -> str:
    lines = [f"<h1>{_e(title)}</h1>"]
    lines += [f'<p class="note">{_e(n)}</p>' for n in notes]
    span = run.time_span()
    counts = run.counts()
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    if span is None:
        lines.append('<p class="missing">This run has no records: nothing to report.</p>')
    else:
        lines.append(
            f'<p class="note">Records: {_e(summary)}; process time {span[0]:.2f} h to '
            f"{span[1]:.2f} h.</p>"
        )
    missing = [k for k, n in counts.items() if n == 0 and k != "audit records"]
    if missing and span is not None:
        lines.append(f'<p class="missing">No {_e(", no ".join(missing))} in this run.</p>')
    usable = sum(p.status in USABLE_PLAN_STATUSES for p in run.plans)
    if run.plans:
        statuses = Counter(p.status for p in run.plans)
        lines.append(
            f'<p class="note">Plans: {usable} of {len(run.plans)} usable; '
            + _e(", ".join(f"{s} {n}" for s, n in sorted(statuses.items())))
            + ".</p>"
        )
    if run.setpoints:
        sources = Counter(sp.source for sp in run.setpoints)
        lines.append(
            '<p class="note">Setpoint steps by source: '
            + _e(", ".join(f"{s} {n}" for s, n in sorted(sources.items())))
            + ".</p>"
        )
    return "\n".join(lines)


def _kpi_table(kpis: Mapping[str, float | int | str]) -> str:
    if not kpis:
        return '<h2>KPIs</h2><p class="missing">No KPIs were given.</p>'
    return "<h2>KPIs</h2>" + _table(("KPI", "value"), list(kpis.items()), {1})


def _section(heading: str, png: str | None, caption: str) -> str:
    if png is None:
        return f'<h2>{_e(heading)}</h2><p class="missing">{_e(caption)}</p>'
    return (
        f'<h2>{_e(heading)}</h2><img alt="{_e(heading)}" src="data:image/png;base64,{png}">'
        f'<p class="caption">{_e(caption)}</p>'
    )


def _events_table(events: Sequence[EventRecord]) -> str:
    if not events:
        return '<h2>Events</h2><p class="note">No events.</p>'
    shown, more = _capped(events)
    rows = [(f"{e.t_h:.3f}", e.kind, e.source, e.message) for e in shown]
    return (
        f"<h2>Events ({len(events)})</h2>"
        + _table(("time [h]", "kind", "source", "message"), rows, {0})
        + more
    )


def _audit_table(audits: Sequence[AuditRecord]) -> str:
    if not audits:
        return '<h2>Operator audit</h2><p class="note">No operator writes.</p>'
    shown, more = _capped(audits)
    rows = [
        (f"{a.t_h:.3f}", a.who, a.why, a.action, "yes" if a.accepted else "refused", a.reason)
        for a in shown
    ]
    header = ("time [h]", "who", "why", "action", "accepted", "reason")
    return f"<h2>Operator audit ({len(audits)})</h2>" + _table(header, rows, {0}) + more


def _page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
