"""Compare recorded batches against a golden batch: overlays and KPIs side by side.

:func:`compare_batches` reads batches through the read-back interface
(:class:`~services.historian.readback.BatchSource`: the embedded store, CSV, later
InfluxDB), picks the golden batch (named, or the best by a KPI), aligns every batch to it
and computes each batch's KPIs from what its data hold:

- ``duration_h``: the last sample time of any series (h);
- ``final_<sensor>``, ``min_<sensor>``, ``max_<sensor>``: of every sensor's readings (its
  units; e.g. ``min_DO_probe`` for the lowest dissolved oxygen);
- ``product``: the final reading of the product sensor (``product=``; default: the one
  sensor whose name is ``P`` or starts with ``P_``), ``productivity`` = product /
  duration (product unit per h);
- ``fed``: the amount of the feed input given over the batch (``feed=``; default: the
  batch's only input), ``integral u dt`` in input unit x h, and ``yield`` = (final -
  first product reading) / fed.

Alignment: ``"time"`` puts every reading at its sample time since the batch start;
``"phase"`` moves each batch's readings so that every recipe phase starts when it started
in the golden batch (a reading ``dt`` into phase ``k`` is drawn at the golden batch's
start of phase ``k`` plus ``dt``; no stretching, so rates stay true). The phases are the
``phase`` events a closed-loop run records (:class:`bpcontrol.records.EventRecord`,
written by the loop when a recipe phase begins) in the embedded store, or the rows of an
optional ``phases.csv`` (``batch_id,t_h,phase``) next to a CSV source's files.

:func:`write_compare_report` writes one self-contained HTML file (overlays per sensor,
the KPI table with each batch's difference to the golden one). Every problem is one
:class:`CompareError` line naming the source and the batch, sensor or KPI; nothing is
written then.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.fitting._report import _CSS, _e, _g, _image, _png, _table, _thin
from services.historian.readback import (
    BatchData,
    BatchSource,
    CsvBatchSource,
    EmbeddedBatchSource,
    ReadbackError,
)

__all__ = [
    "ALIGNMENTS",
    "BatchComparison",
    "CompareError",
    "compare_batches",
    "compare_report_html",
    "phase_starts",
    "write_compare_report",
]

Alignment = Literal["time", "phase"]
ALIGNMENTS: tuple[Alignment, ...] = ("time", "phase")
LOWER_IS_BETTER = ("duration_h",)
"""KPIs whose best batch is the one with the lowest value (the rest: the highest)."""
PHASES_CSV = "phases.csv"
PHASE_COLUMNS = ("batch_id", "t_h", "phase")


class CompareError(ReadbackError):
    """Batches that cannot be compared; one line naming the source and the culprit."""


@dataclass(frozen=True, eq=False)
class BatchComparison:
    """The outcome of :func:`compare_batches`.

    ``batches``: the golden batch first, then the others in the order asked;
    ``kpis[batch][name]``: the KPI values (module docstring) in ``kpi_units[name]``;
    ``aligned[batch][sensor]``: (aligned time in h, readings) for the overlays;
    ``phases[batch]``: (phase name, start h) when aligned by phase (else empty);
    ``golden_reason``: why that batch is the golden one.
    """

    source: str
    golden: str
    golden_reason: str
    align: Alignment
    batches: tuple[BatchData, ...]
    sensors: tuple[str, ...]
    units: Mapping[str, str]
    kpis: Mapping[str, Mapping[str, float]]
    kpi_units: Mapping[str, str]
    aligned: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
    phases: Mapping[str, tuple[tuple[str, float], ...]]

    @property
    def kpi_names(self) -> tuple[str, ...]:
        """KPI names in a fixed order (duration, product ones, then per sensor)."""
        names: dict[str, None] = {}
        for values in self.kpis.values():
            names.update(dict.fromkeys(values))
        head = [n for n in ("duration_h", "product", "productivity", "fed", "yield") if n in names]
        return (*head, *sorted(n for n in names if n not in head))

    def difference(self, batch_id: str, kpi: str) -> float:
        """``batch - golden`` for ``kpi`` (NaN where either lacks it)."""
        gold = self.kpis[self.golden].get(kpi, math.nan)
        return self.kpis[batch_id].get(kpi, math.nan) - gold


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------


def _embedded_files(root: Path) -> list[Path]:
    """The records files of an embedded source path (as :class:`EmbeddedBatchSource`)."""
    if root.is_file():
        return [root]
    if (root / "records.sqlite").is_file():
        return [root / "records.sqlite"]
    return sorted(root.glob("*/records.sqlite"))


def phase_starts(source: BatchSource, batch_id: str) -> tuple[tuple[str, float], ...]:
    """The recipe phases of a batch as (name, start h), sorted by time: from the ``phase``
    events of the embedded store, or from ``phases.csv`` of a CSV source (empty when the
    source records none)."""
    starts: dict[float, str] = {}
    if isinstance(source, EmbeddedBatchSource):
        from bpcontrol.records import EventKind, EventRecord
        from services.historian.embedded import read_records

        for f in _embedded_files(source.path):
            anon = f.parent.name if f.name == "records.sqlite" else f.stem
            try:
                records = read_records(f, "event")
            except (OSError, RuntimeError) as exc:
                raise CompareError(f"{f}: {exc}") from None
            for r in records:
                if not isinstance(r, EventRecord) or r.kind != EventKind.PHASE:
                    continue
                if (r.run.batch_id if r.run is not None else anon) != batch_id:
                    continue
                # the loop writes "phase 'NAME' begins at T h"
                name = r.message.split("'")[1] if r.message.count("'") >= 2 else r.message
                starts.setdefault(float(r.t_h), name)
    elif isinstance(source, CsvBatchSource):
        path = source.path / PHASES_CSV
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in PHASE_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise CompareError(f"{path}: header lacks {', '.join(missing)}")
                for row in reader:
                    if (row.get("batch_id") or "").strip() != batch_id:
                        continue
                    try:
                        t = float(row["t_h"])
                    except (TypeError, ValueError):
                        raise CompareError(
                            f"{path}: line {reader.line_num}: t_h {row.get('t_h')!r} is not "
                            "a number"
                        ) from None
                    if not (math.isfinite(t) and t >= 0):
                        raise CompareError(f"{path}: line {reader.line_num}: t_h must be >= 0")
                    starts.setdefault(t, (row.get("phase") or "").strip())
    else:
        find = getattr(source, "phases", None)  # another store may offer them
        if callable(find):
            return tuple(
                sorted(((str(n), float(t)) for n, t in find(batch_id)), key=lambda p: p[1])
            )
    return tuple((name, t) for t, name in sorted(starts.items()))


def _phase_shift(
    t: np.ndarray, own: Sequence[tuple[str, float]], gold: Sequence[tuple[str, float]]
) -> np.ndarray:
    """Sample times moved so that each phase starts at the golden batch's start of it."""
    gold_at = {name: g for name, g in gold}
    out = np.array(t, dtype=float)
    bounds = [s for _, s in own]
    k = np.searchsorted(bounds, t, side="right") - 1  # the phase each reading is in
    for i, (name, start) in enumerate(own):
        out[k == i] += gold_at[name] - start
    return out


# --------------------------------------------------------------------------------------
# KPIs
# --------------------------------------------------------------------------------------


def _fed(batch: BatchData, feed: str) -> float:
    """``integral u dt`` of input ``feed`` over [0, duration] (piecewise constant)."""
    prof = batch.inputs
    assert prof is not None
    j = prof.names.index(feed)
    end = batch.t_end_h
    times = np.append(np.clip(prof.times, 0.0, end), end)
    return float(np.sum(prof.values[:, j] * np.diff(times)))


def _product_sensor(batches: Sequence[BatchData]) -> str | None:
    common = set.intersection(*(set(b.measurements) for b in batches))
    found = sorted(s for s in common if s == "P" or s.startswith("P_"))
    return found[0] if len(found) == 1 else None


def _kpis(
    batch: BatchData, product: str | None, feed: str | None, units: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {"duration_h": batch.t_end_h}
    kunits: dict[str, str] = {"duration_h": "h"}
    for name, s in batch.measurements.items():
        if not len(s):
            continue
        u = units.get(name, "")
        values[f"final_{name}"] = float(s.value[-1])
        values[f"min_{name}"] = float(np.min(s.value))
        values[f"max_{name}"] = float(np.max(s.value))
        kunits.update({f"{k}_{name}": u for k in ("final", "min", "max")})
    if product is not None:
        p = batch.series(product)
        pu = units.get(product, "")
        values["product"] = float(p.value[-1])
        kunits["product"] = pu
        if batch.t_end_h > 0:
            values["productivity"] = values["product"] / batch.t_end_h
            kunits["productivity"] = f"{pu}/h" if pu else "1/h"
        if feed is not None:
            fed = _fed(batch, feed)
            fu = units.get(feed, "")
            values["fed"] = fed
            kunits["fed"] = f"{fu} h" if fu else "h"
            if fed > 0:
                values["yield"] = (float(p.value[-1]) - float(p.value[0])) / fed
                kunits["yield"] = f"{pu}/({kunits['fed']})"
    return values, kunits


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------


def _golden_by_kpi(
    kpis: Mapping[str, Mapping[str, float]], spec: str, origin: str
) -> tuple[str, str]:
    name, _, sense = spec.partition(":")
    sense = sense or ("min" if name in LOWER_IS_BETTER else "max")
    if sense not in ("min", "max"):
        raise CompareError(f"--golden-kpi {spec}: say NAME, NAME:max or NAME:min")
    have = [b for b, v in kpis.items() if math.isfinite(v.get(name, math.nan))]
    if not have:
        known = sorted(set().union(*(set(v) for v in kpis.values())))
        raise CompareError(
            f"{origin}: --golden-kpi {name!r}: no batch has it (KPIs: {', '.join(known)})"
        )
    pick = (min if sense == "min" else max)(have, key=lambda b: kpis[b][name])
    return pick, f"{'lowest' if sense == 'min' else 'highest'} {name} ({_g(kpis[pick][name])})"


def compare_batches(
    source: BatchSource,
    batch_ids: Sequence[str],
    *,
    golden: str | None = None,
    golden_kpi: str | None = None,
    align: str = "time",
    sensors: Sequence[str] | None = None,
    product: str | None = None,
    feed: str | None = None,
) -> BatchComparison:
    """Compare ``batch_ids`` (and the golden batch) read from ``source`` (module
    docstring). ``golden``: its id; else ``golden_kpi`` (``NAME``, ``NAME:max`` or
    ``NAME:min``; default ``product`` when a product sensor is known) picks the best of
    the batches asked. ``sensors``: the series to overlay (default: those every batch
    has). Raises :class:`CompareError` (or the source's ``ReadbackError``) on bad data."""
    origin = repr(source)
    if align not in ALIGNMENTS:
        raise CompareError(f"--align must be one of {', '.join(ALIGNMENTS)}, got {align!r}")
    if golden is not None and golden_kpi is not None:
        raise CompareError("give --golden ID or --golden-kpi NAME, not both")
    ids = list(dict.fromkeys(batch_ids))
    if golden is not None and golden not in ids:
        ids.insert(0, golden)
    if len(ids) < 2:
        raise CompareError(f"{origin}: compare needs at least two batches, got {ids}")
    batches = {b: source.batch(b) for b in ids}  # ReadbackError: a batch that does not exist
    for b in batches.values():
        if not any(len(s) for s in b.measurements.values()):
            raise CompareError(f"{b.origin}: batch {b.batch_id!r} has no readings")
    # units: one per series across the batches
    units: dict[str, str] = {}
    seen_in: dict[str, str] = {}
    for b in batches.values():
        for name, unit in b.units.items():
            if units.setdefault(name, unit) != unit:
                raise CompareError(
                    f"{b.origin}: batch {b.batch_id!r}: {name} is recorded in {unit!r}, "
                    f"batch {seen_in[name]!r} in {units[name]!r}: convert one before comparing"
                )
            seen_in.setdefault(name, b.batch_id)
    if sensors:
        chosen = list(dict.fromkeys(sensors))
        for b in batches.values():
            for s in chosen:
                b.series(s)  # ReadbackError naming the batch and what it has
    else:
        common = set.intersection(
            *({k for k, s in b.measurements.items() if len(s)} for b in batches.values())
        )
        chosen = sorted(common)
        if not chosen:
            raise CompareError(f"{origin}: batches {', '.join(ids)} share no series to overlay")
    batch_list = list(batches.values())
    if product is not None:
        for b in batch_list:
            b.series(product)
    else:
        product = _product_sensor(batch_list)
    if feed is not None:
        for b in batch_list:
            if b.inputs is None or feed not in b.inputs.names:
                have = ", ".join(b.inputs.names) if b.inputs is not None else "none"
                raise CompareError(
                    f"{b.origin}: batch {b.batch_id!r} has no input {feed!r} (inputs: {have})"
                )
    elif all(b.inputs is not None and len(b.inputs.names) == 1 for b in batch_list):
        names = {b.inputs.names[0] for b in batch_list if b.inputs is not None}
        feed = names.pop() if len(names) == 1 else None
    kpis: dict[str, dict[str, float]] = {}
    kpi_units: dict[str, str] = {}
    for b in batch_list:
        kpis[b.batch_id], ku = _kpis(b, product, feed, units)
        kpi_units.update(ku)
    if golden is not None:
        reason = "chosen (--golden)"
    else:
        if golden_kpi is None:
            if product is None:
                raise CompareError(
                    f"{origin}: no product sensor known (give --product SENSOR), so give "
                    "--golden ID or --golden-kpi NAME"
                )
            golden_kpi = "product"
        golden, reason = _golden_by_kpi(kpis, golden_kpi, origin)
    order = [golden, *(b for b in ids if b != golden)]
    phases: dict[str, tuple[tuple[str, float], ...]] = {}
    if align == "phase":
        for bid in order:
            phases[bid] = phase_starts(source, bid)
            if not phases[bid]:
                raise CompareError(
                    f"{batches[bid].origin}: batch {bid!r} has no phase records (phase events of "
                    f"a run, or {PHASES_CSV} next to CSV files): use --align time"
                )
        gold_names = [n for n, _ in phases[golden]]
        for bid in order[1:]:
            extra = [n for n, _ in phases[bid] if n not in gold_names]
            if extra:
                raise CompareError(
                    f"{batches[bid].origin}: batch {bid!r}: phase(s) {', '.join(extra)} are not "
                    f"in the golden batch {golden!r} ({', '.join(gold_names)})"
                )
    aligned: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for bid in order:
        per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in chosen:
            series = batches[bid].series(s)
            t = series.t_sample_h
            if align == "phase":
                t = _phase_shift(t, phases[bid], phases[golden])
            per[s] = (t, series.value)
        aligned[bid] = per
    return BatchComparison(
        source=str(getattr(source, "path", origin)),
        golden=golden,
        golden_reason=reason,
        align="phase" if align == "phase" else "time",
        batches=tuple(batches[bid] for bid in order),
        sensors=tuple(chosen),
        units=units,
        kpis=kpis,
        kpi_units=kpi_units,
        aligned=aligned,
        phases=phases,
    )


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def _overlay_figure(comp: BatchComparison) -> str:
    n = len(comp.sensors)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(6.2 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, s in zip(axes, comp.sensors, strict=False):
        for k, b in enumerate(comp.batches):
            t, v = comp.aligned[b.batch_id][s]
            cut = _thin(t.size)
            if b.batch_id == comp.golden:
                ax.plot(
                    t[cut], v[cut], ".-", ms=5, color="k", lw=2.0, label=f"{b.batch_id} (golden)"
                )
            else:
                ax.plot(t[cut], v[cut], ".-", ms=2, lw=0.8, color=f"C{k % 10}", label=b.batch_id)
        for name, start in comp.phases.get(comp.golden, ()):
            ax.axvline(start, color="grey", lw=0.8, ls=":")
            ax.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), fontsize="x-small",
                        va="top", rotation=90, color="grey")  # fmt: skip
        ax.set_title(s, fontsize="medium", loc="left")
        ax.set_ylabel(f"{s} [{comp.units.get(s, '-')}]")
        ax.set_xlabel(
            "time since batch start [h]" if comp.align == "time" else "time, phases aligned [h]"
        )
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    return _png(fig)


def _kpi_rows(comp: BatchComparison) -> list[list[str]]:
    rows = []
    for name in comp.kpi_names:
        row = [name, comp.kpi_units.get(name, "")]
        gold = comp.kpis[comp.golden].get(name, math.nan)
        for b in comp.batches:
            v = comp.kpis[b.batch_id].get(name, math.nan)
            cell = _g(v) if math.isfinite(v) else "-"
            if b.batch_id != comp.golden and math.isfinite(v) and math.isfinite(gold) and gold:
                cell += f" ({100 * (v - gold) / abs(gold):+.1f} %)"
            row.append(cell)
        rows.append(row)
    return rows


def compare_report_html(comp: BatchComparison) -> str:
    """The comparison's HTML text: KPIs side by side and the overlays (module docstring)."""
    title = f"{len(comp.batches)} batches against golden batch {comp.golden}"
    header = [
        "KPI",
        "unit",
        *(f"{b.batch_id} (golden)" if b.batch_id == comp.golden else b.batch_id
          for b in comp.batches),
    ]  # fmt: skip
    kpi_table = _table(header, _kpi_rows(comp), set(range(2, len(header)))).replace(
        "<table>", '<table id="kpis">'
    )
    phases = ""
    if comp.phases:
        rows = [
            [b.batch_id, "; ".join(f"{n} at {t:.2f} h" for n, t in comp.phases[b.batch_id])]
            for b in comp.batches
        ]
        phases = "<h2>Phases</h2>" + _table(("batch", "phase starts"), rows, set())
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">Source: {_e(comp.source)}. Golden batch {_e(comp.golden)}: '
        f"{_e(comp.golden_reason)}. Aligned by {_e(comp.align)}.</p>",
        '<h2>KPIs</h2><p class="note">From the recorded data; in brackets the difference '
        "to the golden batch.</p>" + kpi_table,
        phases,
        "<h2>Overlays</h2>",
        _image(
            "overlays",
            _overlay_figure(comp),
            "Readings of every batch against the golden batch (black)"
            + (
                ", each phase moved to start when the golden batch's did (dotted)."
                if comp.align == "phase"
                else ", by time since the batch start."
            ),
        ),
        "<h2>Data</h2>"
        + _table(
            ("batch", "read from", "series", "readings"),
            [
                [
                    b.batch_id,
                    b.origin,
                    ", ".join(comp.sensors),
                    str(sum(len(b.measurements[s]) for s in comp.sensors)),
                ]
                for b in comp.batches
            ],
            {3},
        ),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def write_compare_report(comp: BatchComparison, path: str | Path) -> Path:
    """Write :func:`compare_report_html` to ``path`` (a temporary file, then a rename)."""
    path = Path(path)
    text = compare_report_html(comp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
