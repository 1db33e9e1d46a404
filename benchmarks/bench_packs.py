"""Every built-in pack closed loop: product vs the oracle and vs the recipe alone.

For each pack in ``bpcontrol/data/packs/`` (or ``--packs``), one process after a warm
import: the closed loop (EKF + NMPC + supervisor) against the pack's simulated plant
(``plant.toml``: parameters about 20 % off the controller's), the recipe alone on the same
plant, and the oracle (the pack's economic problem over the whole batch with the plant's
true parameters, applied open loop), for ``--seeds`` seeds. Prints a markdown table:
model, product (median over seeds), oracle, recipe, product / oracle, product / recipe,
setpoints outside limits or rate clamps, loop wall time (median), and the load average.

    .venv/bin/python benchmarks/bench_packs.py --seeds 1 2 --json packs.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_model

from bpcontrol.runspec import resolve, spec_for
from hil.runner import pack_scenario, run_batch
from models import available_models


def one_pack(name: str, seeds: list[int], root: Path) -> dict[str, Any]:
    """Closed loop, recipe alone and oracle for one pack over ``seeds``."""
    rows = []
    for seed in seeds:
        run = resolve(spec_for(name, seed=seed))
        scenario = pack_scenario(run)
        t0 = time.perf_counter()
        closed = run_batch(run, run_dir=root / f"{name}-{seed}", oracle=True, report=False)
        total = time.perf_counter() - t0
        recipe_run = replace(run, spec=replace(run.spec, controller="recipe"))
        alone = run_batch(recipe_run, run_dir=root / f"{name}-{seed}-recipe", report=False)
        k = closed.kpis
        rows.append(
            {
                "seed": seed,
                "product": k["final_product"],
                "unit": k.get("product_unit", ""),
                "oracle": k["oracle_product"],
                "oracle_slack_max": k["oracle_slack_max"],
                "recipe": alone.kpis["final_product"],
                "violations": k["setpoints_outside_limits_or_rates"],
                "plans_usable_percent": k["plans_usable_percent"],
                "fallback_events": k["fallback_events"],
                "loop_wall_s": k["wall_time_s"],
                "total_wall_s": total,
                "duration_h": k["duration_h"],
                "plant_factors": dict(scenario.parameter_factors),
            }
        )
        print(
            f"{name} seed {seed}: product {rows[-1]['product']:.4g}, oracle "
            f"{rows[-1]['oracle']:.4g}, recipe {rows[-1]['recipe']:.4g} {rows[-1]['unit']}, "
            f"loop {k['wall_time_s']:.1f} s",
            flush=True,
        )
    return {"pack": name, "runs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", nargs="*", default=available_models())
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    load0 = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.packs:
            results.append(one_pack(name, args.seeds, Path(tmp)))
    load1 = os.getloadavg()
    print()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load0[0]:.2f} -> "
        f"{load1[0]:.2f}; seeds {args.seeds}"
    )
    print()
    print(
        "| model | product | oracle | recipe alone | product / oracle | product / recipe "
        "| outside limits | loop wall (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for res in results:
        runs = res["runs"]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        ratios_o = [r["product"] / r["oracle"] for r in runs]
        ratios_r = [r["product"] / r["recipe"] for r in runs]
        unit = runs[0]["unit"]
        print(
            f"| {res['pack']} | {med('product'):.4g} {unit} | {med('oracle'):.4g} | "
            f"{med('recipe'):.4g} | {min(ratios_o):.3f}-{max(ratios_o):.3f} | "
            f"{min(ratios_r):.3f}-{max(ratios_r):.3f} | "
            f"{sum(r['violations'] for r in runs)} | {med('loop_wall_s'):.1f} |"
        )
    if args.json:
        payload = {"load_before": load0, "load_after": load1, "results": results}
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if any(not math.isfinite(r["product"]) for res in results for r in res["runs"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
