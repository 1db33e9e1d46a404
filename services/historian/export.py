"""Export recorded batches from either historian as CSV or Parquet (for ``bpcontrol export``).

:func:`open_any_source` turns a command-line source into a
:class:`services.historian.readback.BatchSource`: ``influx`` (configuration from the
environment) or ``influx:FILE.toml`` (the ``[influx]`` table of that file, then the
environment) reads InfluxDB; anything else is a path for
:func:`services.historian.readback.open_source` (embedded SQLite file, run folder, CSV
folder). :func:`export_batches` writes the batches in the recorded-run format of
``docs/fitting.md``: CSV (``measurements.csv``, ``inputs.csv``, ``initial.csv``) or the
same three tables, same columns, as Parquet (``.parquet``; needs ``pyarrow``, the
``parquet`` extra).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from services.historian.readback import (
    INITIAL_COLUMNS,
    INPUT_COLUMNS,
    MEASUREMENT_COLUMNS,
    BatchData,
    BatchSource,
    ReadbackError,
    open_source,
    write_csv,
)

__all__ = ["export_batches", "open_any_source"]


def open_any_source(spec: str) -> BatchSource:
    """The batch source named by ``spec`` (see the module docstring).

    Raises:
        ReadbackError: a path that is no source, or a bad InfluxDB configuration (one
            line naming the file or variable and key).
    """
    if spec == "influx" or spec.startswith("influx:"):
        from services.historian.influx_client import InfluxConfigError, load_config
        from services.historian.influx_readback import InfluxBatchSource

        path = spec.removeprefix("influx").removeprefix(":") or None
        try:
            config = load_config(path)
        except InfluxConfigError as exc:
            raise ReadbackError(str(exc)) from None
        return InfluxBatchSource(config)
    return open_source(spec)


def _tables(batches: Iterable[BatchData]) -> tuple[list[tuple[Any, ...]], ...]:
    """Rows of the three recorded-run tables (units as recorded, else empty)."""
    meas: list[tuple[Any, ...]] = []
    inputs: list[tuple[Any, ...]] = []
    initial: list[tuple[Any, ...]] = []
    for b in batches:
        rows = [
            (b.batch_id, float(th), float(ts), s.sensor, float(v), b.units.get(s.sensor, ""))
            for s in b.measurements.values()
            for th, ts, v in zip(s.t_h, s.t_sample_h, s.value, strict=True)
        ]
        rows.sort(key=lambda r: (r[1], r[2], r[3]))
        meas += rows
        if b.inputs is not None:
            for k, t in enumerate(b.inputs.times):
                for j, name in enumerate(b.inputs.names):
                    v = float(b.inputs.values[k, j])
                    if k and v == float(b.inputs.values[k - 1, j]):
                        continue
                    inputs.append((b.batch_id, float(t), name, v, b.units.get(name, "")))
        initial += [
            (b.batch_id, name, float(v), b.units.get(name, ""))
            for name, v in b.initial_state.items()
        ]
    return meas, inputs, initial


def export_batches(
    source: BatchSource,
    batch_ids: Sequence[str],
    folder: str | Path,
    fmt: Literal["csv", "parquet"] = "csv",
) -> tuple[Path, ...]:
    """Write ``batch_ids`` of ``source`` into ``folder``; returns the files written.

    Every batch is read before anything is written, so an unknown batch id writes nothing.

    Raises:
        ReadbackError: an unknown batch (naming the source), an unknown format, or Parquet
            without ``pyarrow``.
    """
    if fmt not in ("csv", "parquet"):
        raise ReadbackError(f"unknown export format {fmt!r}; use 'csv' or 'parquet'")
    if not batch_ids:
        raise ReadbackError("no batch to export (give at least one batch id)")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ReadbackError(
                "Parquet export needs pyarrow: pip install 'bpcontrol[parquet]'"
            ) from None
    batches = [source.batch(b) for b in batch_ids]
    if fmt == "csv":
        return write_csv(folder, batches)
    import pandas as pd

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = (root / "measurements.parquet", root / "inputs.parquet", root / "initial.parquet")
    for path, rows, columns in zip(
        paths, _tables(batches), (MEASUREMENT_COLUMNS, INPUT_COLUMNS, INITIAL_COLUMNS), strict=True
    ):
        pd.DataFrame.from_records(rows, columns=list(columns)).to_parquet(path, index=False)
    return paths
