"""Campaign throughput (issue 22): N short scenarios on the local process pool vs a Dask
LocalCluster, the same workers each.

Each scenario is a 1 h recipe-only yeast batch (EKF on, no controller solve) with its own
seed, so the figure is the executor's cost around a short closed-loop run, not the
NMPC's. Per executor: start-up (pool or cluster), wall time of the whole campaign,
scenarios/min, the median scenario wall time inside the worker, and the overhead per
scenario = (workers x campaign wall - sum of scenario wall times) / N, i.e. worker time
not spent running scenarios (import, pickling, scheduling, idle tail). Both executors
run the same specs; their KPIs must agree to 1e-9 (checked, printed).

    .venv/bin/python benchmarks/bench_campaign.py --scenarios 200 --workers 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from _machine import cpu_model

from hil.campaign import (
    DaskExecutor,
    Executor,
    LocalPool,
    ScenarioOutcome,
    deterministic_kpis,
    run_campaign,
)
from hil.suite import ScenarioSpec


def specs(n: int, hours: float) -> list[ScenarioSpec]:
    """N recipe-only yeast scenarios of ``hours``, seeds 1..N."""
    return [
        ScenarioSpec(
            name=f"yeast-recipe-{i:04d}",
            pack="yeast_fedbatch",
            seed=i,
            duration_h=hours,
            controller="recipe",
        )
        for i in range(1, n + 1)
    ]


def measure(
    name: str, workers: int, todo: list[ScenarioSpec], root: Path
) -> tuple[dict[str, float], list[ScenarioOutcome]]:
    """Start the executor, run the campaign, close it; the figures and the outcomes."""
    t0 = time.perf_counter()
    ex: Executor = LocalPool(workers) if name == "local" else DaskExecutor(workers=workers)
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        outcomes = run_campaign(todo, ex, out_root=root / name)
    finally:
        ex.close()
    wall = time.perf_counter() - t1
    inside = [o.wall_s for o in outcomes]
    figures = {
        "startup_s": started,
        "wall_s": wall,
        "per_min": 60.0 * len(todo) / wall,
        "scenario_median_s": statistics.median(inside),
        "overhead_s": (workers * wall - sum(inside)) / len(todo),
        "failed": float(sum(not o.passed for o in outcomes)),
    }
    return figures, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument(
        "--order", default="local,dask", help="executors in the order they run (load drifts)"
    )
    args = parser.parse_args()
    todo = specs(args.scenarios, args.hours)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, dict[str, float]] = {}
    kpis: dict[str, list[ScenarioOutcome]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        for name in args.order.split(","):
            results[name], kpis[name] = measure(name, args.workers, todo, Path(tmp))
            print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    worst = 0.0
    for a, b in zip(kpis.get("local", []), kpis.get("dask", []), strict=True):
        ka, kb = deterministic_kpis(a.kpis), deterministic_kpis(b.kpis)
        for key, va in ka.items():
            if isinstance(va, float) and math.isfinite(va):
                worst = max(worst, abs(va - kb[key]) / max(abs(va), 1e-300))
    print(f"\nmachine: {cpu_model()}, load before {load_before}, after {load_after}")
    print(
        f"{args.scenarios} scenarios ({args.hours:g} h recipe-only yeast), {args.workers} workers"
    )
    print("| executor | start-up s | campaign s | scenarios/min | scenario median s | "
          "overhead/scenario s | failed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['startup_s']:.2f} | {r['wall_s']:.1f} | {r['per_min']:.1f} | "
            f"{r['scenario_median_s']:.3f} | {r['overhead_s']:.3f} | {r['failed']:.0f} |"
        )
    print(f"largest relative KPI difference local vs dask: {worst:.3g}")


if __name__ == "__main__":
    main()
