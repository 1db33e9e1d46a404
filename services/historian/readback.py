"""Read recorded batches back for model fitting: one small interface, two stores.

:class:`BatchSource` is what a fit needs from a historian: the batch ids it holds and,
for one batch, a :class:`BatchData` (measurement series with late offline samples at
their *sample* time, the applied inputs as a piecewise-constant schedule, the initial
state when one was recorded, and units). Two implementations here:

- :class:`EmbeddedBatchSource`: the embedded SQLite historian (``records.sqlite``), one
  file, a run folder (``records.sqlite`` + ``run.toml``) or a folder of run folders;
- :class:`CsvBatchSource`: a folder in the recorded-run CSV format of ``docs/fitting.md``
  (``measurements.csv``, ``inputs.csv``, optional ``initial.csv``), many batches in one
  set of files; :func:`write_csv` writes it.

The InfluxDB historian (issue 19) implements the same two methods. :func:`open_source`
picks the implementation from a path. Every problem is one :class:`ReadbackError` line
naming the file and the batch, series or row.
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

from bpcontrol.records import MeasurementRecord, SetpointRecord
from models import InputProfile, Model

__all__ = [
    "INITIAL_COLUMNS",
    "INPUT_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "BatchData",
    "BatchSource",
    "CsvBatchSource",
    "EmbeddedBatchSource",
    "ReadbackError",
    "Series",
    "open_source",
    "series_from_rows",
    "write_csv",
]

MEASUREMENT_COLUMNS = ("batch_id", "t_h", "t_sample_h", "sensor", "value", "unit")
"""Header of ``measurements.csv`` (one row per reading)."""
INPUT_COLUMNS = ("batch_id", "t_h", "input", "value", "unit")
"""Header of ``inputs.csv`` (one row per input change)."""
INITIAL_COLUMNS = ("batch_id", "state", "value", "unit")
"""Header of the optional ``initial.csv`` (one row per recorded initial state)."""
_SAME_TIME_H = 1e-9  # h: sample times closer than this are one instant


class ReadbackError(ValueError):
    """Recorded data that cannot be read or does not fit; one line naming file and key."""


@dataclass(frozen=True, eq=False)
class Series:
    """One sensor's readings of one batch, sorted by sample time.

    ``t_sample_h``: when each sample was taken (h since the batch start); ``t_h``: when
    it became known (later than the sample time for a late offline assay); ``value``: the
    reading in ``unit`` (None when the store does not record units). Readings that were
    NaN (a device sent garbage) are left out.
    """

    sensor: str
    t_sample_h: np.ndarray
    value: np.ndarray
    t_h: np.ndarray
    unit: str | None = None

    def __len__(self) -> int:
        return int(self.value.size)


@dataclass(frozen=True, eq=False)
class BatchData:
    """Everything a fit reads about one batch (see the module docstring).

    ``origin`` names where it was read (a file path) for error messages; ``inputs`` is
    None when no setpoints were recorded; ``initial_state`` maps state names to values
    (empty when none was recorded); ``units`` maps sensor, input and state names to the
    recorded unit where the store keeps one.
    """

    batch_id: str
    origin: str
    measurements: Mapping[str, Series]
    inputs: InputProfile | None
    initial_state: Mapping[str, float] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)

    @property
    def t_end_h(self) -> float:
        """Last sample time of any series (h), 0 without readings."""
        ends = [float(s.t_sample_h[-1]) for s in self.measurements.values() if len(s)]
        return max(ends, default=0.0)

    def series(self, sensor: str) -> Series:
        """The readings of ``sensor``; :class:`ReadbackError` when the batch has none."""
        found = self.measurements.get(sensor)
        if found is None or len(found) == 0:
            have = ", ".join(sorted(k for k, s in self.measurements.items() if len(s)))
            raise ReadbackError(
                f"{self.origin}: batch {self.batch_id!r} has no series {sensor!r} "
                f"(it has: {have or 'no readings'})"
            )
        return found

    def check_units(self, model: Model, names: Iterable[str]) -> None:
        """Raise :class:`ReadbackError` when a recorded unit differs from the model's.

        ``names`` are sensors (model outputs), inputs or states; names without a
        recorded unit are not checked (the store does not keep one).
        """
        for name in names:
            unit = self.units.get(name)
            if unit is None:
                continue
            group = model.kind(name)
            declared = getattr(model, f"{group}s")[model.index(name)].unit
            if unit != declared:
                raise ReadbackError(
                    f"{self.origin}: batch {self.batch_id!r}: {name} is recorded in "
                    f"{unit!r}, model {model.name!r} expects {declared!r}"
                )


@runtime_checkable
class BatchSource(Protocol):
    """Where recorded batches are read from (embedded SQLite, CSV, later InfluxDB)."""

    def batch_ids(self) -> tuple[str, ...]:
        """The ids of the batches this source holds, sorted."""
        ...

    def batch(self, batch_id: str) -> BatchData:
        """One batch; :class:`ReadbackError` naming the source when it does not exist."""
        ...


def _unknown_batch(origin: str, batch_id: str, ids: Sequence[str]) -> ReadbackError:
    return ReadbackError(f"{origin}: no batch {batch_id!r} (batches: {', '.join(ids) or 'none'})")


def series_from_rows(
    sensor: str, rows: list[tuple[float, float, float]], unit: str | None = None
) -> Series:
    """rows of (t_sample_h, value, t_h) -> a Series sorted by sample time, NaN dropped."""
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    arr = arr[np.isfinite(arr[:, 1])]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    return Series(sensor, arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), unit)


def _profile(
    origin: str, batch_id: str, steps: Mapping[str, list[tuple[float, float]]]
) -> InputProfile | None:
    """Per-input (t_h, value) steps -> one piecewise-constant schedule (last value at a
    repeated time wins; an input holds its first value before its first step)."""
    if not steps:
        return None
    names = tuple(sorted(steps))
    series = {}
    for name in names:
        pts = sorted(steps[name], key=lambda tv: tv[0])
        t = np.array([tv[0] for tv in pts], dtype=float)
        v = np.array([tv[1] for tv in pts], dtype=float)
        keep = np.append(np.diff(t) > _SAME_TIME_H, True)  # last of equal times
        series[name] = (t[keep], v[keep])
    grid = np.unique(np.concatenate([[0.0], *(t for t, _ in series.values())]))
    grid = grid[np.append(True, np.diff(grid) > _SAME_TIME_H)]
    values = np.empty((grid.size, len(names)))
    for j, name in enumerate(names):
        t, v = series[name]
        k = np.searchsorted(t, grid + _SAME_TIME_H, side="right") - 1
        values[:, j] = v[np.clip(k, 0, None)]
    try:
        return InputProfile(grid, values, names)
    except ValueError as exc:
        raise ReadbackError(f"{origin}: batch {batch_id!r}: inputs: {exc}") from None


# --------------------------------------------------------------------------------------
# Embedded SQLite historian
# --------------------------------------------------------------------------------------


class EmbeddedBatchSource:
    """Batches in embedded-historian files (:mod:`services.historian.embedded`).

    ``path`` is a ``records.sqlite`` file, a run folder holding one, or a folder whose
    sub-folders are run folders. A batch is identified by the records' run identity
    (``RunIdentity.batch_id``; records of several runs of one batch, a resumed batch,
    are merged) or, for records without one, by the name of the run folder. Measurements
    come from the ``measurement`` table (placed at ``t_sample_h``), inputs from the
    ``setpoint`` table (each record's values hold from its ``t_h`` on). The initial
    state, the sensor units and the input units come from ``run.toml`` next to the file
    when it exists (``[pack.recipe.initial]``, ``[pack.sensors.<name>] unit``, the run's
    model); the SQLite file itself records no units.
    """

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        if root.is_file():
            files = [root]
        elif (root / "records.sqlite").is_file():
            files = [root / "records.sqlite"]
        elif root.is_dir():
            files = sorted(root.glob("*/records.sqlite"))
            if not files:
                raise ReadbackError(
                    f"{root}: no records.sqlite in it or in its sub-folders (run folders)"
                )
        else:
            raise ReadbackError(f"{root}: no such file or folder")
        self.path = root
        self._files = tuple(files)
        self._index: dict[str, list[Path]] | None = None

    def _batches(self) -> dict[str, list[Path]]:
        if self._index is None:
            # the file's run table and measurement column, without decoding every record
            from services.historian.embedded import _has_run_column, _open_reader, _runs

            index: dict[str, list[Path]] = {}
            for f in self._files:
                try:
                    conn = _open_reader(f)
                except (OSError, RuntimeError) as exc:
                    raise ReadbackError(f"{f}: {exc}") from None
                try:
                    ids = {ident.batch_id for ident in _runs(conn).values()}
                    anon: object = (1,)
                    if ids and _has_run_column(conn, "measurement"):
                        sql = "SELECT 1 FROM measurement WHERE run IS NULL LIMIT 1"
                        anon = conn.execute(sql).fetchone()
                finally:
                    conn.close()
                if anon is not None:
                    ids.add(f.parent.name if f.name == "records.sqlite" else f.stem)
                for b in ids:
                    index.setdefault(b, []).append(f)
            self._index = index
        return self._index

    def batch_ids(self) -> tuple[str, ...]:
        """The batch ids of every file, sorted."""
        return tuple(sorted(self._batches()))

    def batch(self, batch_id: str) -> BatchData:
        """Read one batch (see the class docstring)."""
        from services.historian.embedded import read_records

        index = self._batches()
        if batch_id not in index:
            raise _unknown_batch(str(self.path), batch_id, tuple(sorted(index)))
        files = index[batch_id]
        meas: dict[str, list[tuple[float, float, float]]] = {}
        steps: dict[str, list[tuple[float, float]]] = {}
        for f in files:
            anon_id = f.parent.name if f.name == "records.sqlite" else f.stem
            try:
                records = read_records(f, ("measurement", "setpoint"))
            except (OSError, RuntimeError) as exc:
                raise ReadbackError(f"{f}: {exc}") from None
            for r in records:
                rid = r.run.batch_id if r.run is not None else anon_id
                if rid != batch_id:
                    continue
                if isinstance(r, MeasurementRecord):
                    meas.setdefault(r.sensor, []).append((r.t_sample_h, r.value, r.t_h))
                elif isinstance(r, SetpointRecord):
                    for name, v in r.values.items():
                        steps.setdefault(name, []).append((r.t_h, float(v)))
        origin = ", ".join(str(f) for f in files)
        initial, units = self._run_toml(files[0])
        return BatchData(
            batch_id=batch_id,
            origin=origin,
            measurements=MappingProxyType(
                {s: series_from_rows(s, rows, units.get(s)) for s, rows in sorted(meas.items())}
            ),
            inputs=_profile(origin, batch_id, steps),
            initial_state=MappingProxyType(initial),
            units=MappingProxyType(units),
        )

    @staticmethod
    def _run_toml(sqlite_path: Path) -> tuple[dict[str, float], dict[str, str]]:
        """(initial state, units) from the run spec next to a records file, if any."""
        spec = sqlite_path.parent / "run.toml"
        if not spec.is_file():
            return {}, {}
        try:
            doc = tomllib.loads(spec.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ReadbackError(f"{spec}: cannot read the run spec: {exc}") from None
        pack = doc.get("pack", {})
        recipe = pack.get("recipe", {}) if isinstance(pack, Mapping) else {}
        raw = recipe.get("initial", {}) if isinstance(recipe, Mapping) else {}
        initial: dict[str, float] = {}
        for name, value in raw.items() if isinstance(raw, Mapping) else ():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ReadbackError(f"{spec}: pack.recipe.initial.{name}: not a number")
            initial[str(name)] = float(value)
        units: dict[str, str] = {}
        sensors = pack.get("sensors", {}) if isinstance(pack, Mapping) else {}
        for name, entry in sensors.items() if isinstance(sensors, Mapping) else ():
            if isinstance(entry, Mapping) and isinstance(entry.get("unit"), str):
                units[str(name)] = entry["unit"]
        return initial, units

    def __repr__(self) -> str:
        return f"EmbeddedBatchSource({str(self.path)!r})"


# --------------------------------------------------------------------------------------
# CSV recorded-run format
# --------------------------------------------------------------------------------------


def _read_rows(path: Path, columns: tuple[str, ...], required: bool) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV file whose header has ``columns`` (any order)."""
    if not path.is_file():
        if required:
            raise ReadbackError(f"{path}: file not found (the recorded-run CSV format needs it)")
        return []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise ReadbackError(
                    f"{path}: header lacks {', '.join(missing)} (needs {','.join(columns)})"
                )
            rows = []
            for row in reader:
                if None in row or any(row.get(c) is None for c in columns):
                    raise ReadbackError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields"
                    )
                rows.append((reader.line_num, row))
            return rows
    except UnicodeDecodeError as exc:
        raise ReadbackError(f"{path}: not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise ReadbackError(f"{path}: {exc}") from None


def _number(path: Path, line: int, column: str, text: str, *, allow_nan: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ReadbackError(f"{path}: line {line}: {column} {text!r} is not a number") from None
    if math.isinf(v) or (math.isnan(v) and not allow_nan):
        raise ReadbackError(f"{path}: line {line}: {column} {text!r} is not a finite number")
    return v


class CsvBatchSource:
    """Batches in the recorded-run CSV format (``docs/fitting.md``).

    ``path`` is a folder with ``measurements.csv``, ``inputs.csv`` and optionally
    ``initial.csv``. The files are read once, at construction, and checked row by row:
    a malformed row is a :class:`ReadbackError` naming the file and the line.
    """

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        if not root.is_dir():
            raise ReadbackError(f"{root}: not a folder (expected measurements.csv, inputs.csv)")
        self.path = root
        self._meas: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        self._steps: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self._initial: dict[str, dict[str, float]] = {}
        self._units: dict[str, dict[str, str]] = {}
        self._origin = {
            "m": root / "measurements.csv",
            "i": root / "inputs.csv",
            "x": root / "initial.csv",
        }
        self._read()

    def _unit(self, path: Path, line: int, batch: str, name: str, unit: str) -> None:
        unit = unit.strip()
        if not unit:
            return
        known = self._units.setdefault(batch, {})
        if known.setdefault(name, unit) != unit:
            raise ReadbackError(
                f"{path}: line {line}: {name} in {unit!r}, earlier rows of batch "
                f"{batch!r} say {known[name]!r}"
            )

    def _read(self) -> None:
        path = self._origin["m"]
        for line, row in _read_rows(path, MEASUREMENT_COLUMNS, required=True):
            batch, sensor = row["batch_id"].strip(), row["sensor"].strip()
            if not batch or not sensor:
                raise ReadbackError(f"{path}: line {line}: empty batch_id or sensor")
            t = _number(path, line, "t_h", row["t_h"])
            ts_text = row["t_sample_h"].strip()
            ts = t if not ts_text else _number(path, line, "t_sample_h", ts_text)
            if ts > t + _SAME_TIME_H or ts < 0:
                raise ReadbackError(
                    f"{path}: line {line}: t_sample_h {ts:g} must be in [0, t_h = {t:g}]"
                )
            v = _number(path, line, "value", row["value"], allow_nan=True)
            self._unit(path, line, batch, sensor, row["unit"])
            self._meas.setdefault(batch, {}).setdefault(sensor, []).append((ts, v, t))
        path = self._origin["i"]
        for line, row in _read_rows(path, INPUT_COLUMNS, required=True):
            batch, name = row["batch_id"].strip(), row["input"].strip()
            if not batch or not name:
                raise ReadbackError(f"{path}: line {line}: empty batch_id or input")
            t = _number(path, line, "t_h", row["t_h"])
            if t < 0:
                raise ReadbackError(f"{path}: line {line}: t_h {t:g} is negative")
            v = _number(path, line, "value", row["value"])
            self._unit(path, line, batch, name, row["unit"])
            self._steps.setdefault(batch, {}).setdefault(name, []).append((t, v))
        path = self._origin["x"]
        for line, row in _read_rows(path, INITIAL_COLUMNS, required=False):
            batch, name = row["batch_id"].strip(), row["state"].strip()
            if not batch or not name:
                raise ReadbackError(f"{path}: line {line}: empty batch_id or state")
            v = _number(path, line, "value", row["value"])
            self._unit(path, line, batch, name, row["unit"])
            self._initial.setdefault(batch, {})[name] = v

    def batch_ids(self) -> tuple[str, ...]:
        """Batches with at least one measurement row, sorted."""
        return tuple(sorted(self._meas))

    def batch(self, batch_id: str) -> BatchData:
        """One batch (see the class docstring)."""
        origin = str(self._origin["m"])
        if batch_id not in self._meas:
            raise _unknown_batch(origin, batch_id, self.batch_ids())
        units = self._units.get(batch_id, {})
        return BatchData(
            batch_id=batch_id,
            origin=origin,
            measurements=MappingProxyType(
                {
                    s: series_from_rows(s, rows, units.get(s))
                    for s, rows in sorted(self._meas[batch_id].items())
                }
            ),
            inputs=_profile(str(self._origin["i"]), batch_id, self._steps.get(batch_id, {})),
            initial_state=MappingProxyType(dict(self._initial.get(batch_id, {}))),
            units=MappingProxyType(dict(units)),
        )

    def __repr__(self) -> str:
        return f"CsvBatchSource({str(self.path)!r})"


def write_csv(
    folder: str | Path, batches: Iterable[BatchData], model: Model | None = None
) -> tuple[Path, ...]:
    """Write batches in the recorded-run CSV format; returns the files written.

    Units are the recorded ones, else the ``model``'s declared units (empty without a
    model). Numbers are written with ``repr`` (shortest round trip: read back exactly).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)

    def unit(b: BatchData, name: str) -> str:
        if name in b.units:
            return b.units[name]
        if model is not None:
            try:
                group = model.kind(name)
            except KeyError:
                return ""
            return str(getattr(model, f"{group}s")[model.index(name)].unit)
        return ""

    paths = (root / "measurements.csv", root / "inputs.csv", root / "initial.csv")
    with (
        paths[0].open("w", newline="", encoding="utf-8") as fm,
        paths[1].open("w", newline="", encoding="utf-8") as fi,
        paths[2].open("w", newline="", encoding="utf-8") as fx,
    ):
        wm, wi, wx = csv.writer(fm), csv.writer(fi), csv.writer(fx)
        wm.writerow(MEASUREMENT_COLUMNS)
        wi.writerow(INPUT_COLUMNS)
        wx.writerow(INITIAL_COLUMNS)
        for b in batches:
            rows = [
                (float(th), float(ts), s.sensor, float(v))
                for s in b.measurements.values()
                for th, ts, v in zip(s.t_h, s.t_sample_h, s.value, strict=True)
            ]
            rows.sort(key=lambda r: (r[0], r[1], r[2]))
            for th, ts, sensor, v in rows:
                wm.writerow((b.batch_id, repr(th), repr(ts), sensor, repr(v), unit(b, sensor)))
            if b.inputs is not None:
                for k, t in enumerate(b.inputs.times):
                    for j, name in enumerate(b.inputs.names):
                        if k and b.inputs.values[k, j] == b.inputs.values[k - 1, j]:
                            continue
                        wi.writerow(
                            (
                                b.batch_id,
                                repr(float(t)),
                                name,
                                repr(float(b.inputs.values[k, j])),
                                unit(b, name),
                            )
                        )
            for name, v in b.initial_state.items():
                wx.writerow((b.batch_id, name, repr(float(v)), unit(b, name)))
    return paths


def open_source(path: str | Path) -> BatchSource:
    """The source for a path: a folder with ``measurements.csv`` is CSV; a
    ``records.sqlite`` file, a run folder or a folder of run folders is embedded SQLite."""
    p = Path(path)
    if p.is_dir() and (p / "measurements.csv").is_file():
        return CsvBatchSource(p)
    if p.is_file() and p.suffix == ".csv":
        raise ReadbackError(
            f"{p}: give the folder that holds measurements.csv and inputs.csv, not the file"
        )
    return EmbeddedBatchSource(p)
