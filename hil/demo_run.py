"""A recorded run to try ``bpcontrol estimate`` on (``bpcontrol synth``).

``write_demo_run(model, hours=, seed=, path=)`` generates the reference E. coli fed-batch
of :func:`hil.synthetic.ecoli_fedbatch_run` for a plant that differs from the literature
model (``mu_max`` x 0.8, ``Y_xs`` x 1.2, inoculum 10 % and initial glucose 2 % off,
seeded) and writes three files in the format of :mod:`hil.synthetic`:

- ``run.csv``: the readings (online every minute, offline assays 1-3 h late);
- ``run_inputs.csv``: the inputs applied (the file ``bpcontrol estimate`` reads by default);
- ``run_truth.csv``: what the estimator cannot see, ``t_h``, the true states at every
  measurement time and the true value of each parameter that differs from the model's
  nominal value (constant columns), to judge an estimate against.

Only ``ecoli_fedbatch`` has a recipe and sensors here; other models are refused.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hil.synthetic import ecoli_fedbatch_run, generate, inputs_path_for, write_csv
from models import Model

DEMO_MODELS = ("ecoli_fedbatch",)
DEMO_PLANT_FACTORS: Mapping[str, float] = {"mu_max": 0.8, "Y_xs": 1.2}
DEMO_X0_RELATIVE_SIGMA: Mapping[str, float] = {"X": 0.1, "S": 0.02}


def truth_path_for(path: str | Path) -> Path:
    """The truth file that goes with a measurements file: ``run.csv`` -> ``run_truth.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_truth{path.suffix or '.csv'}")


def demo_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(readings, inputs, truth) files written for ``path``."""
    return Path(path), inputs_path_for(path), truth_path_for(path)


def write_demo_run(
    model: Model, *, hours: float, seed: int, path: str | Path, overwrite: bool = False
) -> tuple[Path, Path, Path]:
    """Generate the demo run and write readings, inputs and truth; returns the three paths.

    Raises ``ValueError`` (before writing anything) for a model without a demo recipe,
    a bad duration, or files that exist when ``overwrite`` is false.
    """
    if model.name not in DEMO_MODELS:
        raise ValueError(
            f"synthetic runs are available for {', '.join(DEMO_MODELS)} only, "
            f"not for model {model.name!r}"
        )
    paths = demo_paths(path)
    if paths[0].suffix.lower() != ".csv":
        raise ValueError(f"{paths[0]}: the output file must end in .csv")
    for p in paths:
        if p.exists() and (not overwrite or not p.is_file()):
            raise ValueError(
                f"{p} exists; choose another --out or pass --force to overwrite"
                if p.is_file()
                else f"{p} exists and is not a file"
            )
    run = ecoli_fedbatch_run(
        hours=hours,
        parameter_factors=DEMO_PLANT_FACTORS,
        x0_relative_sigma=DEMO_X0_RELATIVE_SIGMA,
    )
    data = generate(model, run, seed)  # validates the run (hours) first
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    write_csv(data, paths[0], paths[1])
    differs = [
        (name, float(data.p[i]))
        for i, name in enumerate(model.parameter_names)
        if not np.isclose(data.p[i], model.p0[i], rtol=1e-12, atol=0.0)
    ]
    with paths[2].open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("t_h", *data.state_names, *(name for name, _ in differs)))
        for tk, xk in zip(data.t, data.x, strict=True):
            w.writerow([_num(tk), *(_num(v) for v in xk), *(_num(v) for _, v in differs)])
    return paths


def _num(v: float) -> str:
    return format(float(v), ".17g")
