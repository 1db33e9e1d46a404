"""``bpcontrol export``: recorded batches out of either historian as CSV or Parquet (issue 19).

Part of the composition root (it may import ``services``). The source is any read-back
source (:func:`services.historian.export.open_any_source`): ``influx`` (InfluxDB, its
configuration from the environment), ``influx:FILE.toml``, a records.sqlite, a run folder,
a folder of run folders (the default ``runs``) or a CSV folder. The files are in the
recorded-run format of ``docs/fitting.md``, which ``bpcontrol fit``, ``compare`` and
``estimate`` read back. Bad input: one ``error:`` line, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpcontrol.cli_common import check_output_folder, user_errors

__all__ = ["export_command"]


def export_command(
    batch: Annotated[
        list[str],
        typer.Option("--batch", help="Batch id(s) to export, comma-separated or repeated."),
    ],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="'influx', 'influx:FILE.toml', a records.sqlite, a run folder, a folder of "
            "run folders or a CSV folder (default: runs).",
        ),
    ] = "runs",
    fmt: Annotated[
        str, typer.Option("--format", help="'csv' or 'parquet' (default: csv).")
    ] = "csv",
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the files (default: export).")
    ] = Path("export"),
) -> None:
    """Export batches as measurements, inputs and initial-state tables (CSV or Parquet)."""
    ids = [b.strip() for v in batch for b in v.split(",") if b.strip()]
    with user_errors():
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"--format {fmt!r}: use 'csv' or 'parquet'")
        check_output_folder(out, "--out")
        from services.historian.export import export_batches, open_any_source

        src = open_any_source(source)
        paths = export_batches(src, ids, out, "csv" if fmt == "csv" else "parquet")
    for path in paths:
        typer.echo(f"wrote {path}")
