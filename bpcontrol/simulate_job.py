"""One open-loop simulation run: load model and profile, simulate, write files, summarise.

Everything that can be wrong with the request (model, profile, numbers, output folder,
format) is checked before anything is written, so a refused run leaves no files.

A run folder holds ``trajectories.csv`` (or ``.parquet``) with plain column names
(``t_h``, states, inputs, outputs), ``plot.png``, and ``run.json`` with the request,
the units of every column and the package version.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from rich.table import Table

from bpcontrol import __version__
from bpcontrol.plots import plot_trajectory
from bpcontrol.profiles import load_profile
from models import InputProfile, Model, Trajectory, load_model, simulate

FORMATS = ("csv", "parquet")
BOUND_TOL = 1e-6
"""Bound violations smaller than this fraction of a state's range are not reported."""


@dataclass(frozen=True, kw_only=True)
class SimulationRequest:
    """What to simulate and where to write it; ``model`` is a built-in name or a path."""

    model: str
    hours: float
    inputs: Path | None = None
    out_dir: Path | None = None
    fmt: str = "csv"
    dt_h: float = 0.1
    backend: str = "casadi"
    seed: int = 0  # recorded; a plain simulation draws no random numbers


@dataclass(frozen=True, kw_only=True)
class SimulationResult:
    """The trajectory and the files a run wrote."""

    model: Model
    trajectory: Trajectory
    out_dir: Path
    data_path: Path
    plot_path: Path
    info_path: Path
    warnings: tuple[str, ...]


def output_steps(hours: float, dt_h: float) -> int:
    """Number of output steps of a run (for deciding whether to show progress); 0 for
    invalid numbers, ``sys.maxsize`` for a count too large for an integer."""
    if not (math.isfinite(hours) and math.isfinite(dt_h)) or hours <= 0 or dt_h <= 0:
        return 0
    ratio = hours / dt_h
    if not ratio < sys.maxsize:  # 1e308 h / 0.1 h is inf: no OverflowError
        return sys.maxsize
    return math.ceil(ratio - 1e-9)


def default_out_dir(model_name: str, now: datetime, root: Path = Path("runs")) -> Path:
    """``runs/sim-<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3`` ... if that exists."""
    base = root / f"sim-{model_name}-{now:%Y%m%d-%H%M%S}"
    candidate, k = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{k}")
        k += 1
    return candidate


def prepare(request: SimulationRequest) -> tuple[Model, InputProfile]:
    """Check the request and load model and profile; raises ValueError subclasses."""
    if request.fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {request.fmt!r}")
    if request.fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValueError("parquet output needs pyarrow: pip install 'bpcontrol[parquet]'")
    if request.out_dir is not None and request.out_dir.exists() and not request.out_dir.is_dir():
        raise ValueError(f"{request.out_dir}: output path exists and is not a folder")
    model = load_model(request.model)
    profile = (
        load_profile(request.inputs, model)
        if request.inputs is not None
        else InputProfile.constant(model)
    )
    return model, profile


def run_simulation(
    request: SimulationRequest,
    *,
    progress: Callable[[float, float], None] | None = None,
    now: datetime | None = None,
) -> SimulationResult:
    """Simulate, then write data, plot and run info into the run folder."""
    model, profile = prepare(request)
    traj = simulate(
        model,
        request.hours,
        profile,
        dt_out_h=request.dt_h,
        backend=request.backend,
        progress=progress,
    )
    now = now or datetime.now().astimezone()
    out_dir = request.out_dir or default_out_dir(model.name, now)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = write_trajectory(traj, out_dir, request.fmt)
    plot_path = plot_trajectory(traj, out_dir / "plot.png")
    info_path = out_dir / "run.json"
    info = {
        "kind": "simulate",
        "created": now.isoformat(timespec="seconds"),
        "bpcontrol_version": __version__,
        "model": model.name,
        "model_source": request.model,
        "hours": request.hours,
        "dt_h": request.dt_h,
        "backend": request.backend,
        "inputs": str(request.inputs) if request.inputs is not None else None,
        "seed": request.seed,
        "data": data_path.name,
        "units": dict(traj.units),
    }
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return SimulationResult(
        model=model,
        trajectory=traj,
        out_dir=out_dir,
        data_path=data_path,
        plot_path=plot_path,
        info_path=info_path,
        warnings=tuple(bound_violations(traj, model)),
    )


def write_trajectory(traj: Trajectory, out_dir: Path, fmt: str) -> Path:
    """``trajectories.csv`` or ``trajectories.parquet`` in ``out_dir``."""
    frame = traj.to_frame()
    if fmt == "csv":
        path = out_dir / "trajectories.csv"
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        path = out_dir / "trajectories.parquet"
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return path


def bound_violations(traj: Trajectory, model: Model) -> list[str]:
    """One line per state that left its declared bounds (beyond round-off)."""
    out = []
    for i, state in enumerate(model.states):
        col = traj.x[:, i]
        span = state.upper - state.lower
        tol = BOUND_TOL * (span if math.isfinite(span) and span > 0 else 1.0)
        k_min, k_max = int(np.argmin(col)), int(np.argmax(col))
        if col[k_min] < state.lower - tol:
            out.append(
                f"state {state.name!r} fell below its lower bound {state.lower:g} {state.unit} "
                f"(min {col[k_min]:.4g} at {traj.t[k_min]:g} h)"
            )
        if col[k_max] > state.upper + tol:
            out.append(
                f"state {state.name!r} rose above its upper bound {state.upper:g} {state.unit} "
                f"(max {col[k_max]:.4g} at {traj.t[k_max]:g} h)"
            )
    return out


def summary_table(result: SimulationResult) -> Table:
    """Initial, final, min and max of every state with its unit and bounds."""
    traj = result.trajectory
    table = Table(
        title=f"{traj.model_name}: {traj.t[-1]:g} h ({traj.backend})",
        title_justify="left",
    )
    table.add_column("state")
    table.add_column("unit")
    for name in ("initial", "final", "min", "max", "bounds"):
        table.add_column(name, justify="right")
    for i, state in enumerate(result.model.states):
        col = traj.x[:, i]
        table.add_row(
            state.name,
            state.unit,
            f"{col[0]:.4g}",
            f"{col[-1]:.4g}",
            f"{col.min():.4g}",
            f"{col.max():.4g}",
            f"[{state.lower:g}, {state.upper:g}]",
        )
    return table
