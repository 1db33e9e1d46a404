"""The closed loop, do-mpc style: model, estimator, controller and plant from the four
template files, wired by the core (:func:`bpcontrol.assemble`), run on a simulated clock.

    python examples/main.py            # 24 h batch, prints the product vs the recipe alone
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from template_estimator import get_ekf_config
from template_model import get_model
from template_mpc import get_mpc_config
from template_simulator import get_simulator

import bpcontrol as bp
from bpcontrol.recipe import parse_recipe

RECIPE = {
    "name": "haldane fed-batch",
    "duration_h": 24.0,
    "measurement_period_min": 6.0,
    "control_period_min": 30.0,
    "initial": {"X": 1.0, "S": 1.0, "V": 2.0},
    "limits": {"F": {"lower": 0.0, "upper": 0.3, "rate_per_h": 0.1}},
    "phases": [{"name": "fed-batch", "start_h": 0.0, "fallback": {"F": 0.02}}],
}


class ListHistorian:
    """The smallest historian: keeps every record in memory."""

    def __init__(self) -> None:
        self.records: list[object] = []

    def write(self, record: object) -> None:
        self.records.append(record)

    def flush(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def run(model: bp.Model, recipe: bp.Recipe, *, nmpc: bool, seed: int) -> float:
    """One batch; returns the total product (g) the plant really made."""
    plant = get_simulator(model, recipe, seed=seed)
    assembled = bp.assemble(
        model=model,
        recipe=recipe,
        ekf_config=get_ekf_config(model, recipe),
        nmpc_config=get_mpc_config(recipe) if nmpc else None,
        deadline_s=30.0,
        plant=plant,
        historian=ListHistorian(),
        clock=bp.PacedClock(math.inf),
    )
    assembled.loop.run()
    x = plant.truth().x[-1]
    return float(x[model.index("P")] * x[model.index("V")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    model = get_model()
    recipe = parse_recipe(RECIPE | {"model": model.name}, model)
    closed = run(model, recipe, nmpc=True, seed=args.seed)
    alone = run(model, recipe, nmpc=False, seed=args.seed)
    print(
        f"product with EKF + NMPC: {closed:.2f} g; recipe alone: {alone:.2f} g; "
        f"ratio {closed / alone:.2f}"
    )
    if not (np.isfinite(closed) and closed > alone):
        raise SystemExit("the closed loop did not beat the recipe")


if __name__ == "__main__":
    main()
