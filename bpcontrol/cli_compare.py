"""``bpcontrol compare``: recorded batches against a golden batch (issue 18).

Part of the composition root (it may import ``services``). Reads the batches through the
read-back interface (:func:`services.historian.readback.open_source`: a records.sqlite,
a run folder, a folder of run folders, or a CSV folder), picks the golden batch
(``--golden ID``, or the best by ``--golden-kpi``), aligns by process time or by recipe
phase, prints the KPIs side by side and writes an HTML report with the overlays when
``--report`` is given (:mod:`services.fitting.compare`). Bad input: one ``error:`` line,
exit 2, nothing written. Matplotlib and the services are imported inside the command.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bpcontrol.cli_common import check_output_file, user_errors

__all__ = ["compare_command"]


def _names(values: list[str] | None) -> list[str]:
    """Comma-separated or repeated option values as one list (blanks dropped)."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def compare_command(
    source: Annotated[
        Path,
        typer.Option(
            "--source",
            help="Recorded batches: a records.sqlite, a run folder, a folder of run folders, "
            "or a CSV folder (docs/fitting.md).",
        ),
    ],
    batches: Annotated[
        list[str] | None,
        typer.Option("--batches", help="Batch ids, comma-separated or repeated (default: all)."),
    ] = None,
    golden: Annotated[str | None, typer.Option("--golden", help="The golden batch's id.")] = None,
    golden_kpi: Annotated[
        str | None,
        typer.Option(
            "--golden-kpi",
            help="Golden = the best of --batches by this KPI (NAME, NAME:max, NAME:min) "
            "(default: product).",
        ),
    ] = None,
    align: Annotated[
        str, typer.Option("--align", help="'time' (since batch start) or 'phase' (recipe phases).")
    ] = "time",
    sensors: Annotated[
        list[str] | None,
        typer.Option("--sensors", help="Series to overlay (default: those every batch has)."),
    ] = None,
    product: Annotated[
        str | None,
        typer.Option("--product", help="Product sensor (default: the one named P or P_*)."),
    ] = None,
    feed: Annotated[
        str | None,
        typer.Option("--feed", help="Feed input for the yield (default: the only input)."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="HTML report with the overlays.")
    ] = None,
) -> None:
    """Compare batches against a golden batch: KPIs side by side, overlays in --report."""
    with user_errors():
        if report is not None:
            check_output_file(report, "--report")
        from services.fitting.compare import compare_batches, write_compare_report
        from services.historian.readback import open_source

        src = open_source(source)
        ids = _names(batches) or list(src.batch_ids())
        comp = compare_batches(
            src,
            ids,
            golden=golden,
            golden_kpi=golden_kpi,
            align=align,
            sensors=_names(sensors) or None,
            product=product,
            feed=feed,
        )
    table = Table(
        title=f"golden batch {comp.golden}: {comp.golden_reason}; aligned by {comp.align}",
        title_justify="left",
    )
    table.add_column("KPI")
    table.add_column("unit")
    for b in comp.batches:
        table.add_column(b.batch_id + (" *" if b.batch_id == comp.golden else ""), justify="right")
    for name in comp.kpi_names:
        cells = []
        for b in comp.batches:
            v = comp.kpis[b.batch_id].get(name, math.nan)
            cells.append(f"{v:.4g}" if math.isfinite(v) else "-")
        table.add_row(name, comp.kpi_units.get(name, ""), *cells)
    Console(width=max(100, 24 + 14 * len(comp.batches))).print(table)
    if report is not None:
        typer.echo(f"wrote {write_compare_report(comp, report)}")
