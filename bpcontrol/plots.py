"""Figures of a simulated or recorded run, drawn off-screen (Agg) into files."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models import Trajectory


def plot_trajectory(traj: Trajectory, path: str | Path, *, title: str | None = None) -> Path:
    """One panel per state (lines) and per input (steps), units on the axes; a PNG at ``path``.

    Uses a private Agg canvas, so it neither needs a display nor changes pyplot's backend.
    """
    path = Path(path)
    panels = [(n, "state") for n in traj.state_names] + [(n, "input") for n in traj.input_names]
    ncols = 3 if len(panels) > 4 else 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.5 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    for ax, (name, kind) in zip(axes, panels, strict=False):
        values = traj.column(name)
        if kind == "input":
            ax.step(traj.t, values, where="post", color="C1")
        else:
            ax.plot(traj.t, values, color="C0")
        ax.set_ylabel(f"{name} [{traj.units.get(name, '-')}]")
        ax.set_title(f"{kind} {name}", fontsize="medium", loc="left")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[max(len(panels) - ncols, 0) : len(panels)]:
        ax.set_xlabel("time [h]")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(title or f"{traj.model_name} ({traj.backend})")
    fig.savefig(path, dpi=110)
    return path
