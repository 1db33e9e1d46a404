"""The HTML report of a fit: one self-contained file a process engineer can mail or archive.

:func:`write_fit_report` writes, for a :class:`~services.fitting.FitResult`:

1. a summary: model, data, batches, solver outcome, residual variance, AIC and BIC, time;
2. the estimates with standard errors, relative SE and 95 % confidence intervals, starts
   and bounds, and the identifiability warnings;
3. the correlation matrix of the estimates (|r| above
   :data:`~services.fitting.CORRELATION_LIMIT` marked), as a table and a heat map;
4. residuals per measurement: the weighted residual ``(predicted - measured) / std``
   against time, every batch in one panel per sensor, with the +-2 band a correct model
   and error model keep about 95 % of the points in (systematic patterns show a model
   that lacks an effect);
5. predicted vs measured: one panel per batch and sensor, readings with their +-2 std
   bars and the fitted model's prediction at the sample times;
6. the data it came from: source, readings per batch and sensor, time span.

Between 4 and 5, the lack-of-fit tests per sensor (runs and sign tests of the residuals,
:mod:`services.fitting._lack_of_fit`), systematic ones named.

Figures are PNGs drawn on a private Agg canvas (never pyplot) and embedded as ``data:``
URIs, as in :mod:`bpcontrol.report`. All text from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.fitting._lack_of_fit import RUNS_Z_LIMIT
from services.fitting._result import CORRELATION_LIMIT, FitResult, ResidualSeries

__all__ = ["fit_report_html", "write_fit_report"]

_DPI = 90
_MAX_POINTS = 1500  # per drawn series; more points than pixels only cost time and bytes
_MAX_PANELS = 60  # predicted-vs-measured panels drawn (batches x sensors)
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.high { background: #fdd; font-weight: bold; }
img { max-width: 100%; } .note { color: #555; } .caption { color: #555; font-size: 0.9em; }
.warning { color: #a40; } .missing { color: #a40; font-style: italic; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _g(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thin(n: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / _MAX_POINTS)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _image(alt: str, png: str, caption: str) -> str:
    return (
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{png}">'
        f'<p class="caption">{_e(caption)}</p>'
    )


def _by_sensor(result: FitResult) -> dict[str, list[ResidualSeries]]:
    out: dict[str, list[ResidualSeries]] = {}
    for r in result.residuals:
        out.setdefault(r.sensor, []).append(r)
    return out


def _grid(n: int, ncols: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:
        ax.grid(True, alpha=0.3)
    return fig, axes[:n]


def _residual_figure(result: FitResult) -> str | None:
    """Weighted residuals against sample time, one panel per sensor, batches coloured."""
    sensors = _by_sensor(result)
    if not sensors:
        return None
    n = len(sensors)
    fig, axes = _grid(n, 1 if n == 1 else 2, 6.2, 2.6)
    batches = list(result.batches)
    for ax, (sensor, series) in zip(axes, sensors.items(), strict=True):
        for r in series:
            k = batches.index(r.batch_id) if r.batch_id in batches else 0
            w = r.weighted
            cut = _thin(w.size)
            ax.plot(r.t_h[cut], w[cut], ".", ms=3, color=f"C{k % 10}", label=r.batch_id)
        ax.axhline(0.0, color="k", lw=0.8)
        for level in (-2.0, 2.0):
            ax.axhline(level, color="tab:red", lw=0.8, ls="--")
        ax.set_title(f"{sensor}: weighted residual", fontsize="medium", loc="left")
        ax.set_xlabel("sample time [h]")
        ax.set_ylabel("(pred - meas) / std [-]")
        if len(series) > 1:
            ax.legend(fontsize="small", ncols=min(len(series), 4), loc="upper right")
    return _png(fig)


def _prediction_figure(result: FitResult, units: Mapping[str, str]) -> tuple[str | None, int]:
    """Readings and prediction per batch and sensor; (PNG, pairs left out)."""
    series = list(result.residuals)
    shown = series[:_MAX_PANELS]
    if not shown:
        return None, 0
    sensors = list(_by_sensor(result))
    ncols = min(len(sensors), 4)
    fig, axes = _grid(len(shown), ncols, 4.0, 2.4)
    for ax, r in zip(axes, shown, strict=True):
        cut = _thin(r.t_h.size)
        ax.errorbar(
            r.t_h[cut],
            r.measured[cut],
            yerr=2.0 * r.std[cut],
            fmt=".",
            ms=3,
            lw=0.6,
            color="C0",
            label="measured +-2 std",
        )
        order = np.argsort(r.t_h, kind="stable")
        ax.plot(r.t_h[order], r.predicted[order], "-", color="C3", lw=1.2, label="predicted")
        ax.set_title(f"batch {r.batch_id}: {r.sensor}", fontsize="medium", loc="left")
        ax.set_xlabel("sample time [h]")
        ax.set_ylabel(f"{r.sensor} [{units.get(r.sensor, '-')}]")
    axes[0].legend(fontsize="small", loc="best")
    return _png(fig), len(series) - len(shown)


def _correlation_figure(result: FitResult) -> str | None:
    c = np.asarray(result.correlation, dtype=float)
    n = len(result.estimates)
    if n < 2 or c.shape != (n, n):
        return None
    size = min(1.0 + 0.55 * n, 12.0)
    fig = Figure(figsize=(size + 1.4, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(c), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(n), result.names, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), result.names, fontsize="small")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
    fig.colorbar(im, ax=ax, label="correlation [-]")
    return _png(fig)


def _summary(result: FitResult, data: str, result_file: str | None) -> str:
    rows = [
        ("model", result.model),
        ("data", data),
        ("read from", "; ".join(dict.fromkeys(result.sources)) or "-"),
        ("batches", ", ".join(result.batches)),
        ("result file", result_file or "(not written)"),
        ("IPOPT status", f"{result.status} ({result.iterations} iterations)"),
        ("converged", "yes" if result.converged else "NO: the statistics below are not valid"),
        ("integrator", result.integrator),
        ("readings / degrees of freedom", f"{result.n_measurements} / {result.dof}"),
        ("weighted SSR", _g(result.ssr)),
        ("residual variance (1 when the error models are right)", _g(result.residual_variance)),
        ("AIC (lower is better on the same data)", _g(result.aic)),
        ("BIC", _g(result.bic)),
        ("Fisher eigenvalue ratio (smallest / largest, scaled)", _g(result.eigen_ratio)),
        ("starts (converged)", f"{len(result.starts)} ({sum(s.converged for s in result.starts)})"),
        (
            "wall time [s]",
            f"{result.timing.total:.2f} (build {result.timing.build:.2f}, simulation "
            f"{result.timing.simulation:.2f}, sensitivities {result.timing.sensitivities:.2f}, "
            f"optimiser {result.timing.optimiser:.2f}, statistics {result.timing.statistics:.2f})",
        ),
    ]
    return "<h2>Summary</h2>" + _table(("", ""), rows, set())


def _estimates(result: FitResult) -> str:
    rows = [
        (
            e.name,
            e.unit,
            _g(e.value),
            _g(e.se),
            f"{100 * e.relative_se:.2g} %" if math.isfinite(e.relative_se) else "inf",
            _g(e.ci95[0]),
            _g(e.ci95[1]),
            _g(e.start),
            f"[{_g(e.lower)}, {_g(e.upper)}]",
        )
        for e in result.estimates
    ]
    header = ("estimate", "unit", "value", "SE", "rel. SE", "95 % low", "95 % high", "start",
              "bounds")  # fmt: skip
    table = _table(header, rows, {2, 3, 4, 5, 6, 7}).replace("<table>", '<table id="estimates">')
    if result.warnings:
        items = "".join(
            f'<li class="warning"><b>{_e(w.kind)}</b> ({_e(", ".join(w.names))}): '
            f"{_e(w.message)}</li>"
            for w in result.warnings
        )
        warn = f'<h2>Identifiability warnings ({len(result.warnings)})</h2><ul id="warnings">'
        warn += items + "</ul>"
    else:
        warn = (
            '<h2>Identifiability warnings</h2><p class="note" id="warnings">None: the Fisher '
            "information is well conditioned, no correlation above "
            f"{CORRELATION_LIMIT:g}, every interval inside its bounds.</p>"
        )
    return (
        '<h2>Estimates</h2><p class="note">Standard errors from the Gauss-Newton Fisher '
        "information scaled by the residual variance; 95 % intervals from the t "
        "distribution with the fit's degrees of freedom.</p>" + table + warn
    )


def _correlation(result: FitResult) -> str:
    c = np.asarray(result.correlation, dtype=float)
    names = result.names
    if c.shape != (len(names), len(names)):
        return '<h2>Correlation matrix</h2><p class="missing">Not available.</p>'
    head = "<th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names)
    body = []
    for i, n in enumerate(names):
        cells = []
        for j in range(len(names)):
            high = i != j and abs(c[i, j]) > CORRELATION_LIMIT
            cls = "num high" if high else "num"
            cells.append(f'<td class="{cls}">{c[i, j]:.3f}</td>')
        body.append(f"<tr><th>{_e(n)}</th>{''.join(cells)}</tr>")
    table = (
        f'<table id="correlation"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(body)
        + "</tbody></table>"
    )
    png = _correlation_figure(result)
    fig = "" if png is None else _image("correlation matrix", png, "Correlation of the estimates.")
    return (
        f'<h2>Correlation matrix</h2><p class="note">|r| above {CORRELATION_LIMIT:g} marked: '
        "the data fix only a combination of the two.</p>" + table + fig
    )


def _data_table(result: FitResult) -> str:
    rows = []
    for r in result.residuals:
        span = f"{r.t_h.min():.2f} - {r.t_h.max():.2f}" if r.t_h.size else "-"
        rows.append((r.batch_id, r.sensor, str(r.t_h.size), span))
    return (
        "<h2>Data</h2>"
        + _table(("batch", "sensor", "readings fitted", "sample times [h]"), rows, {2})
        + f'<p class="note">Sources: {_e("; ".join(dict.fromkeys(result.sources)) or "-")}.</p>'
    )


def _lack_of_fit(result: FitResult) -> str:
    """Runs and sign tests per sensor (:mod:`services.fitting._lack_of_fit`), flagged rows
    marked, and a sentence for each flagged sensor."""
    checks = result.lack_of_fit
    rows = [
        (
            c.sensor,
            str(c.n),
            _g(c.runs_z),
            _g(c.sign_z),
            _g(c.mean),
            _g(c.rms),
            "systematic" if c.systematic else ("too few" if math.isnan(c.runs_z) else "noise"),
        )
        for c in checks
    ]
    header = ("sensor", "readings", "runs z", "sign z", "mean", "rms", "verdict")
    table = _table(header, rows, {1, 2, 3, 4, 5}).replace("<table>", '<table id="lack-of-fit">')
    flagged = [c for c in checks if c.systematic]
    if flagged:
        body = '<ul id="systematic">' + "".join(
            f'<li class="warning systematic">{_e(c.message)}</li>' for c in flagged
        )
        body += "</ul>"
    else:
        body = (
            '<p class="note" id="systematic">None: every tested sensor\'s residuals pass '
            f"both tests at |z| <= {RUNS_Z_LIMIT:g}.</p>"
        )
    return (
        f"<h2>Systematic residuals ({len(flagged)})</h2>"
        '<p class="note">Per sensor over every batch: the runs test (too few sign runs: '
        "residuals that drift together) and the sign test (most residuals on one side), "
        f"flagged at |z| > {RUNS_Z_LIMIT:g}; neither depends on the error model's scale. "
        "A flagged sensor sees an effect the model lacks; the estimates then fit an "
        "average and their intervals understate the error.</p>" + table + body
    )


def fit_report_html(
    result: FitResult,
    *,
    data: str,
    result_file: str | None = None,
    units: Mapping[str, str] | None = None,
) -> str:
    """The report's HTML text (module docstring); ``data``: the path the batches came from;
    ``units``: sensor name -> unit for the axes (the model's output units)."""
    title = f"Fit of {result.model} to {len(result.batches)} batch(es)"
    sections = [f"<h1>{_e(title)}</h1>"]
    if not result.converged:
        sections.append(
            f'<p class="missing">The fit did not converge (IPOPT: {_e(result.status)}).</p>'
        )
    sections += [_summary(result, data, result_file), _estimates(result), _correlation(result)]
    res_png = _residual_figure(result)
    sections.append("<h2>Residuals per measurement</h2>")
    if res_png is None:
        sections.append('<p class="missing">No residuals.</p>')
    else:
        sections.append(
            _image(
                "weighted residuals",
                res_png,
                "Weighted residuals (predicted - measured) / std by sample time; about 95 % "
                "of them lie inside +-2 (dashed) for a correct model and error model. Runs "
                "of one sign or a trend over time are a structure the model lacks.",
            )
        )
    sections.append(_lack_of_fit(result))
    pred_png, left_out = _prediction_figure(result, units or {})
    sections.append("<h2>Predicted vs measured</h2>")
    if pred_png is None:
        sections.append('<p class="missing">No readings.</p>')
    else:
        more = f" ({left_out} more batch-sensor pairs not drawn)" if left_out else ""
        sections.append(
            _image(
                "predicted vs measured",
                pred_png,
                "Readings with +-2 std bars and the fitted model's prediction at the sample "
                f"times, per batch and sensor{more}.",
            )
        )
    sections.append(_data_table(result))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def write_fit_report(
    result: FitResult,
    path: str | Path,
    *,
    data: str,
    result_file: str | None = None,
    units: Mapping[str, str] | None = None,
) -> Path:
    """Write the report (:func:`fit_report_html`) to ``path``, atomically (a temporary
    file next to it, then a rename)."""
    path = Path(path)
    text = fit_report_html(result, data=data, result_file=result_file, units=units)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
