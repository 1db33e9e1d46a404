"""Synthetic recorded fed-batch data: what a plant and its sensors would have recorded.

``generate(model, run, seed) -> SyntheticData`` is a pure function of its arguments. The
true plant (the model with the run's true parameters) is integrated with SUNDIALS CVODES
over every measurement period with the inputs held constant (the same zero-order hold a
digital control system applies). Sensors then record, with seeded Gaussian noise:

- online probes, every measurement period (1 min by default): value = y + N(0, sigma^2)
  with an absolute std per output (``SyntheticRun.online``); a reading at ``t[k]`` is
  the output of the state at ``t[k]`` under the inputs held over the period ending there;
- offline assays (``OfflineAssays``): a sample is drawn every 2-4 h from the start
  (uniformly random interval, rounded to the measurement grid), each assay has a relative error
  (value = y (1 + 0.05 e), e ~ N(0, 1), plus an optional absolute floor) and its result
  arrives 1-3 h after the sample (uniformly random, rounded up to the next measurement
  time). Results that would arrive after the end of the run are not recorded.

Readings are clipped to the output's declared physical range (an instrument saturates,
a lab reports 0 rather than a negative concentration); set ``clip_to_range=False`` to
keep the raw Gaussian values.

>>> from models import load_model
>>> from hil.synthetic import ecoli_fedbatch_run, generate
>>> model = load_model("ecoli_fedbatch")
>>> data = generate(model, ecoli_fedbatch_run(hours=2.0), seed=1)
>>> data.records[0].sensor
'DO_probe'

CSV format (the input of ``bpcontrol estimate --data run.csv``)
---------------------------------------------------------------
Two plain comma-separated files with a header row, UTF-8, ``.`` as decimal separator,
numbers written with 17 significant digits (a round trip is exact).

Measurements, e.g. ``run.csv``: one row per reading, in order of arrival::

    t_h,sensor,value,t_sample_h
    0.016666666666666666,DO_probe,99.62,0.016666666666666666
    5.05,X_off,3.61,3.0166666666666666

- ``t_h``: when the reading became available to the estimator (h since the start);
  rows are sorted by it (non-decreasing);
- ``sensor``: the name of a model output (for E. coli: ``DO_probe``, ``y_O2_out``,
  ``y_CO2_out``, ``V_meas``, ``X_off``, ``S_off``, ``A_off``, ``P_off``, ...);
- ``value``: the reading in the output's unit (see the model's outputs); ``nan`` is
  read as is (a failed reading: the estimator rejects it with an event);
- ``t_sample_h``: when the sample was taken, at most ``t_h``; an empty cell means
  ``t_h`` (an online reading). An offline assay has ``t_sample_h < t_h``.

Inputs, e.g. ``run_inputs.csv`` next to it (``inputs_path_for`` names it): ``t_h`` then
one column per model input (the writer uses the model's order and one row per
measurement time; the reader accepts any column order and rows only where an input
changes)::

    t_h,F,Q_air,N_stir,T_set
    0,0,20,1200,37

A row's inputs are held from its ``t_h`` until the next row's ``t_h`` (zero-order hold);
the last row holds to the end. Times are strictly increasing and start at 0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bpcontrol.run_length import check_run_length
from models import InputProfile, Model, load_model

DEFAULT_PERIOD_H = 1.0 / 60.0
"""Measurement period of a synthetic run unless it states its own (h): 1 min."""

InputRecipe = Callable[[float], np.ndarray]
"""A recipe ``u(t_h)``: the inputs (model order) to apply from time ``t_h`` on."""

MEASUREMENT_COLUMNS = ("t_h", "sensor", "value", "t_sample_h")
TIME_COLUMN = "t_h"


class DataFormatError(ValueError):
    """A recorded-data CSV file is malformed; the message names the file and the line."""


@dataclass(frozen=True, kw_only=True)
class OfflineAssays:
    """Offline sampling and assay error.

    ``interval_h``: (min, max) of the uniformly random time between samples;
    ``delay_h``: (min, max) of the uniformly random time until the result arrives;
    ``relative_sigma``: relative std of an assay; ``absolute_sigma``: an optional
    absolute std floor per output (output units), combined as
    ``sigma = sqrt(absolute^2 + (relative y)^2)``.
    """

    outputs: tuple[str, ...] = ("X_off", "S_off", "A_off", "P_off")
    interval_h: tuple[float, float] = (2.0, 4.0)
    delay_h: tuple[float, float] = (1.0, 3.0)
    relative_sigma: float = 0.05
    absolute_sigma: Mapping[str, float] = field(default_factory=dict)

    def validate(self, model: Model, online: Iterable[str] = ()) -> None:
        """Raise ``ValueError`` naming the first entry that does not fit ``model`` (or that
        is also one of the ``online`` sensors)."""
        for name in (*self.outputs, *self.absolute_sigma):
            if _kind(model, name) != "output":
                raise ValueError(f"offline: {name!r} is not an output of {model.name!r}")
        if set(self.outputs) & set(online):
            raise ValueError("an output cannot be both online and offline")
        for label, (lo, hi) in (("interval_h", self.interval_h), ("delay_h", self.delay_h)):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"offline {label} must be 0 <= min <= max, got {(lo, hi)}")
        if self.interval_h[1] <= 0:
            raise ValueError("offline interval_h must allow a positive interval")
        if not self.relative_sigma >= 0 or any(v < 0 for v in self.absolute_sigma.values()):
            raise ValueError("offline assay errors must be >= 0")

    def draw(self, rng: np.random.Generator, period_h: float) -> tuple[int, int, np.ndarray]:
        """The next sample on a grid of ``period_h``: ``(periods since the previous sample
        (>= 1), periods until its result arrives (rounded up), one standard normal error
        per output)``, drawn from ``rng`` in that order."""
        k_gap = max(1, round(rng.uniform(*self.interval_h) / period_h))
        k_delay = math.ceil(rng.uniform(*self.delay_h) / period_h - 1e-9)
        return k_gap, k_delay, rng.standard_normal(len(self.outputs))

    def assay(self, name: str, y: float, error: float) -> float:
        """The assay of output ``name`` (true value ``y``) for a standard normal ``error``:
        ``y + sqrt(absolute^2 + (relative y)^2) error`` (not clipped)."""
        sigma = math.hypot(self.absolute_sigma.get(name, 0.0), self.relative_sigma * y)
        return float(y + sigma * error)


@dataclass(frozen=True, kw_only=True)
class SyntheticRun:
    """Configuration of one recorded run (the plant, its recipe and its sensors).

    ``inputs``: a recipe ``u(t_h)`` or an :class:`~models.InputProfile`; sampled at every
    measurement time and held over the following period. ``parameters`` (absolute true
    values) and ``parameter_factors`` (multipliers of the nominal values) make the plant
    differ from the literature model. ``x0`` overrides initial states; the true initial
    state is further perturbed by ``x0_relative_sigma`` (relative std per state, seeded),
    as when an inoculum is not exactly what the recipe says. ``online`` maps an output
    to the absolute noise std of its probe.
    """

    hours: float
    inputs: InputRecipe | InputProfile
    period_h: float = DEFAULT_PERIOD_H
    parameters: Mapping[str, float] = field(default_factory=dict)
    parameter_factors: Mapping[str, float] = field(default_factory=dict)
    x0: Mapping[str, float] = field(default_factory=dict)
    x0_relative_sigma: Mapping[str, float] = field(default_factory=dict)
    online: Mapping[str, float] = field(default_factory=dict)
    offline: OfflineAssays | None = field(default_factory=OfflineAssays)
    clip_to_range: bool = True

    def validate(self, model: Model) -> None:
        """Raise ``ValueError`` naming the first entry that does not fit ``model``."""
        if not (math.isfinite(self.hours) and self.hours > 0):
            raise ValueError(f"hours must be > 0, got {self.hours}")
        if not (math.isfinite(self.period_h) and self.period_h > 0):
            raise ValueError(f"period_h must be > 0, got {self.period_h}")
        check_run_length(self.hours, "hours", step_h=self.period_h, steps="measurement periods")
        n = self.hours / self.period_h
        if abs(n - round(n)) > 1e-6:
            raise ValueError(
                f"hours ({self.hours}) must be a whole number of periods ({self.period_h} h)"
            )
        for label, mapping, kind in (
            ("parameters", self.parameters, "parameter"),
            ("parameter_factors", self.parameter_factors, "parameter"),
            ("x0", self.x0, "state"),
            ("x0_relative_sigma", self.x0_relative_sigma, "state"),
            ("online", self.online, "output"),
        ):
            for name, value in mapping.items():
                if _kind(model, name) != kind:
                    raise ValueError(f"{label}: {name!r} is not a {kind} of model {model.name!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{label}[{name!r}] must be finite, got {value}")
                if label in ("online", "x0_relative_sigma") and value < 0:
                    raise ValueError(f"{label}[{name!r}] must be >= 0, got {value}")
        both = set(self.parameters) & set(self.parameter_factors)
        if both:
            raise ValueError(f"parameters and parameter_factors both set {sorted(both)}")
        if self.offline is not None:
            self.offline.validate(model, self.online)

    def true_parameters(self, model: Model) -> np.ndarray:
        """The plant's parameter vector (model order)."""
        return true_parameters(model, self.parameters, self.parameter_factors)


def true_parameters(
    model: Model,
    parameters: Mapping[str, float] | None = None,
    factors: Mapping[str, float] | None = None,
) -> np.ndarray:
    """The nominal parameter vector (model order) with some values replaced by name
    (``parameters``) and others multiplied by a factor (``factors``)."""
    p = model.parameters_with(**(parameters or {}))
    for name, factor in (factors or {}).items():
        if _kind(model, name) != "parameter":
            raise ValueError(f"{name!r} is not a parameter of model {model.name!r}")
        p[model.index(name)] *= factor
    return p


@dataclass(frozen=True)
class Record:
    """One recorded reading: available at ``t_h``, taken at ``t_sample_h`` (h)."""

    t_h: float
    sensor: str
    value: float
    t_sample_h: float

    @property
    def delay_h(self) -> float:
        return self.t_h - self.t_sample_h


@dataclass(frozen=True, eq=False)
class RecordedRun:
    """What a plant recorded: readings in order of arrival, and the inputs applied."""

    records: tuple[Record, ...]
    inputs: InputProfile

    def arrivals(self) -> Iterator[tuple[float, tuple[Record, ...]]]:
        """``(t_h, records arriving at t_h)`` in time order (one group per arrival time)."""
        group: list[Record] = []
        for r in self.records:
            if group and r.t_h > group[0].t_h + 1e-12:
                yield group[0].t_h, tuple(group)
                group = []
            group.append(r)
        if group:
            yield group[0].t_h, tuple(group)


@dataclass(frozen=True, eq=False)
class SyntheticData(RecordedRun):
    """A recorded run plus the truth behind it.

    ``t`` (n+1,) measurement times; ``x`` (n+1, nx) true states at ``t``; ``u`` (n+1, nu)
    inputs applied from ``t[k]`` on; ``p`` the plant's parameters.
    """

    model_name: str
    seed: int
    t: np.ndarray
    x: np.ndarray
    u: np.ndarray
    p: np.ndarray
    state_names: tuple[str, ...]

    def on_time_arrays(self, sensors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Readings placed at their *sample* time: ``Y`` and mask ``M``, shape (n+1, len).

        The form a batched filter consumes when every sample is fused on time.
        """
        n = self.t.size
        Y = np.zeros((n, len(sensors)))
        M = np.zeros((n, len(sensors)), dtype=bool)
        col = {s: j for j, s in enumerate(sensors)}
        dt = float(self.t[1] - self.t[0]) if n > 1 else 1.0
        for r in self.records:
            j = col.get(r.sensor)
            if j is None:
                continue
            k = round(r.t_sample_h / dt)
            Y[k, j], M[k, j] = r.value, True
        return Y, M

    def state(self, name: str) -> np.ndarray:
        """True trajectory of one state."""
        return self.x[:, self.state_names.index(name)]


def generate(model: Model, run: SyntheticRun, seed: int) -> SyntheticData:
    """Simulate the plant of ``run`` and record its sensors, seeded by ``seed``."""
    run.validate(model)
    rng = np.random.default_rng(seed)
    n = round(run.hours / run.period_h)
    t = np.arange(n + 1) * run.period_h
    p = run.true_parameters(model)

    x0 = model.x0.copy()
    for name, value in run.x0.items():
        x0[model.index(name)] = value
    for name, rel in run.x0_relative_sigma.items():
        i = model.index(name)
        x0[i] *= 1.0 + rel * rng.standard_normal()

    inputs = run.inputs.for_model(model) if isinstance(run.inputs, InputProfile) else run.inputs
    U = np.empty((n + 1, model.nu))
    for k in range(n + 1):
        U[k] = _inputs_at(model, inputs, float(t[k]))
    lo_u, hi_u = model.bounds("inputs")
    if np.any(U < lo_u) or np.any(U > hi_u):
        k, j = (int(v) for v in np.argwhere((U < lo_u) | (U > hi_u))[0])
        raise ValueError(
            f"recipe input {model.input_names[j]!r} = {U[k, j]:g} at {t[k]:g} h is outside "
            f"[{lo_u[j]:g}, {hi_u[j]:g}]"
        )

    cas = model.to_casadi()
    step = cas.integrator(run.period_h)
    X = np.empty((n + 1, model.nx))
    X[0] = x0
    for k in range(n):
        X[k + 1] = np.asarray(step(X[k], U[k], p)).reshape(-1)
        if not np.all(np.isfinite(X[k + 1])):
            raise RuntimeError(f"plant integration failed between {t[k]:g} and {t[k + 1]:g} h")

    # a reading at t[k] sees the inputs held over the period that ends there (U[k-1])
    U_seen = np.vstack([U[:1], U[:-1]])
    h = cas.h.map(n + 1)
    Y = np.asarray(h(X.T, U_seen.T, np.tile(p[:, None], (1, n + 1)))).T  # (n+1, ny)
    y_lo, y_hi = model.bounds("outputs")

    def reading(j: int, value: float) -> float:
        return float(np.clip(value, y_lo[j], y_hi[j])) if run.clip_to_range else float(value)

    records: list[Record] = []
    online = list(run.online.items())
    noise = rng.standard_normal((n + 1, len(online)))
    for k in range(n + 1):
        for c, (name, sigma) in enumerate(online):
            j = model.index(name)
            tk = float(t[k])
            records.append(Record(tk, name, reading(j, Y[k, j] + sigma * noise[k, c]), tk))

    if run.offline is not None:
        off = run.offline
        k_sample = 0
        while True:
            k_gap, k_delay, errors = off.draw(rng, run.period_h)
            k_sample += k_gap
            k_arrive = k_sample + k_delay
            if k_sample > n:
                break
            if k_arrive > n:
                continue
            for name, e in zip(off.outputs, errors, strict=True):
                j = model.index(name)
                value = off.assay(name, Y[k_sample, j], e)
                records.append(
                    Record(float(t[k_arrive]), name, reading(j, value), float(t[k_sample]))
                )
    records.sort(key=lambda r: r.t_h)  # stable: online before offline at one time
    profile = InputProfile(t.copy(), U.copy(), model.input_names)
    return SyntheticData(
        records=tuple(records),
        inputs=profile,
        model_name=model.name,
        seed=int(seed),
        t=t,
        x=X,
        u=U,
        p=p,
        state_names=model.state_names,
    )


def _kind(model: Model, name: str) -> str | None:
    try:
        return model.kind(name)
    except KeyError:
        return None


def _inputs_at(model: Model, inputs: InputRecipe | InputProfile, t_h: float) -> np.ndarray:
    if isinstance(inputs, InputProfile):
        return inputs.value_at(t_h)
    u = np.asarray(inputs(t_h), dtype=float).reshape(-1)
    if u.shape != (model.nu,) or not np.all(np.isfinite(u)):
        raise ValueError(
            f"recipe must return {model.nu} finite inputs {model.input_names} at {t_h:g} h"
        )
    return u


# --- the E. coli reference run ---------------------------------------------------------


def exponential_feed(
    model: Model,
    *,
    batch_h: float = 6.0,
    F0: float = 0.02,
    mu_set: float = 0.12,
    F_max: float = 0.08,
    Q_air: float = 20.0,
    N_stir: float = 1200.0,
    T_set: float = 37.0,
) -> InputRecipe:
    """Fed-batch recipe: batch for ``batch_h`` h, then F = min(F0 exp(mu_set (t - batch_h)),
    F_max) L/h, at constant aeration, agitation and temperature setpoint.

    An exponential feed holds the specific growth rate near ``mu_set`` below the
    critical rate of overflow metabolism (Xu, Jahic, Enfors 1999, Biotechnol. Prog.
    15:81-90); the cap keeps the oxygen demand below the transfer capacity.
    """
    idx = {n: model.index(n) for n in ("F", "Q_air", "N_stir", "T_set")}

    def recipe(t_h: float) -> np.ndarray:
        u = model.u0.copy()
        u[idx["Q_air"]], u[idx["N_stir"]], u[idx["T_set"]] = Q_air, N_stir, T_set
        if t_h >= batch_h - 1e-9:
            u[idx["F"]] = min(F0 * math.exp(mu_set * (t_h - batch_h)), F_max)
        return u

    return recipe


ECOLI_ONLINE_NOISE: Mapping[str, float] = {
    "DO_probe": 1.0,  # % air saturation (polarographic probe)
    "y_O2_out": 0.02,  # % (paramagnetic off-gas analyser)
    "y_CO2_out": 0.02,  # % (infrared off-gas analyser)
    "V_meas": 0.01,  # L (load cell)
}
"""Noise std of the online E. coli sensors, typical of lab-scale instruments."""


def ecoli_fedbatch_run(
    *,
    hours: float = 30.0,
    parameter_factors: Mapping[str, float] | None = None,
    x0_relative_sigma: Mapping[str, float] | None = None,
    F_max: float = 0.08,
) -> SyntheticRun:
    """The reference E. coli fed-batch: 10 g/L glucose batch for 6 h, then an exponential
    feed (0.02 L/h rising at 0.12 1/h, capped at ``F_max``), air 20 NL/min, 1200 rpm,
    1-min online sensors (:data:`ECOLI_ONLINE_NOISE`) and offline X, S, A, P every 2-4 h
    with 5 % error, known 1-3 h late.

    Lowest DO over 30 h with the default cap of 0.08 L/h (CVODES): about 43 % for the
    plant with ``parameter_factors={"mu_max": 0.8, "Y_xs": 1.2}``, but only 20 % with the
    literature parameters, and below 1 % from 17 h (heavy overflow and oxygen limitation)
    with ``{"mu_max": 1.2, "Y_xs": 0.8}``: lower ``F_max`` for such plants.
    """
    model = load_model("ecoli_fedbatch")
    return SyntheticRun(
        hours=hours,
        inputs=exponential_feed(model, F_max=F_max),
        parameter_factors=dict(parameter_factors or {}),
        x0_relative_sigma=dict(x0_relative_sigma or {}),
        online=dict(ECOLI_ONLINE_NOISE),
        offline=OfflineAssays(),
    )


# --- CSV -------------------------------------------------------------------------------


def inputs_path_for(path: str | Path) -> Path:
    """The inputs file that goes with a measurements file: ``run.csv`` -> ``run_inputs.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_inputs{path.suffix or '.csv'}")


def write_csv(
    run: RecordedRun, path: str | Path, inputs_path: str | Path | None = None
) -> tuple[Path, Path]:
    """Write the measurements to ``path`` and the inputs next to it; returns both paths."""
    path = Path(path)
    ipath = inputs_path_for(path) if inputs_path is None else Path(inputs_path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MEASUREMENT_COLUMNS)
        for r in run.records:
            w.writerow([_num(r.t_h), r.sensor, _num(r.value), _num(r.t_sample_h)])
    prof = run.inputs
    with ipath.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow((TIME_COLUMN, *prof.names))
        for tk, row in zip(prof.times, prof.values, strict=True):
            w.writerow([_num(tk), *(_num(v) for v in row)])
    return path, ipath


def read_csv(
    path: str | Path, inputs_path: str | Path | None = None, *, model: Model | None = None
) -> RecordedRun:
    """Read a run written by :func:`write_csv` (or by a plant logging the same format).

    With ``model``, sensor names and input columns are checked against it and the inputs
    are put in the model's order. Every problem raises :class:`DataFormatError`.
    """
    path = Path(path)
    ipath = inputs_path_for(path) if inputs_path is None else Path(inputs_path)
    records: list[Record] = []
    for line, row in _rows(path, MEASUREMENT_COLUMNS):
        where = f"{path}:{line}"
        t_h = _parse(row["t_h"], where, "t_h")
        value = _parse(row["value"], where, "value", allow_nan=True)
        sensor = row["sensor"].strip()
        if not sensor:
            raise DataFormatError(f"{where}: empty sensor name")
        if model is not None and _kind(model, sensor) != "output":
            raise DataFormatError(
                f"{where}: sensor {sensor!r} is not an output of model {model.name!r}"
            )
        ts_text = row["t_sample_h"].strip()
        t_sample = t_h if not ts_text else _parse(ts_text, where, "t_sample_h")
        if t_sample > t_h:
            raise DataFormatError(f"{where}: t_sample_h {t_sample} is after t_h {t_h}")
        if records and t_h < records[-1].t_h:
            raise DataFormatError(f"{where}: t_h {t_h} is before the previous row's")
        records.append(Record(t_h, sensor, value, t_sample))

    header, rows = _input_rows(ipath)
    names = tuple(header[1:])
    if not names:
        raise DataFormatError(f"{ipath}: no input columns after {TIME_COLUMN!r}")
    times = np.array([r[0] for r in rows], dtype=float)
    values = np.array([r[1:] for r in rows], dtype=float).reshape(len(rows), len(names))
    try:
        profile = InputProfile(times, values, names)
        if model is not None:
            profile = profile.for_model(model)
    except ValueError as exc:
        raise DataFormatError(f"{ipath}: {exc}") from None
    return RecordedRun(records=tuple(records), inputs=profile)


def _num(v: float) -> str:
    return format(float(v), ".17g")


def _parse(text: str, where: str, column: str, *, allow_nan: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        raise DataFormatError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(v) and not (allow_nan and math.isnan(v)):
        raise DataFormatError(f"{where}: {column} must be finite, got {text!r}")
    return v


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != columns:
            raise DataFormatError(f"{path}:1: header must be {','.join(columns)}, got {header}")
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(columns):
                raise DataFormatError(
                    f"{path}:{reader.line_num}: expected {len(columns)} columns, got {len(row)}"
                )
            yield reader.line_num, dict(zip(columns, row, strict=True))


def _input_rows(path: Path) -> tuple[list[str], list[list[float]]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: inputs file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not header or header[0] != TIME_COLUMN:
            raise DataFormatError(f"{path}:1: first column must be {TIME_COLUMN!r}")
        rows: list[list[float]] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise DataFormatError(f"{where}: expected {len(header)} columns, got {len(row)}")
            rows.append([_parse(c, where, h) for c, h in zip(row, header, strict=True)])
    if not rows:
        raise DataFormatError(f"{path}: no input rows")
    return header, rows
