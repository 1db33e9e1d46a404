"""Time the main job (`bpcontrol run`, issue 5) and measure the live loop's jitter.

Three measurements, in one process after a warm import:

1. the default run (30 h E. coli fed-batch, EKF + NMPC, plant mu_max -20 %, Y_xs +20 %,
   seed 1, clock flat out, report written) ``--repeats`` times: total wall time per run
   (set-up, warm-up compile, loop, KPIs, report), loop wall time, product and KPIs; the
   whole-batch oracle and the recipe-only run on the same plant once, for the ratios;
2. the 1x wall clock: the same loop live (``speed_up=1``) with a recipe scaled to seconds
   (measurements every ``--live-period`` s, NMPC every 10 periods, ``--live-seconds`` long):
   the wake-up lateness per tick (median, p99, max).

``--json FILE`` writes the raw numbers; the table goes to stdout.

``--cold N`` measures something else instead (importing nothing of the project):
``bpcontrol run --json`` (the default run) from a cold start, N times, each a fresh
subprocess with a fresh ``HOME`` (no matplotlib font cache) and an empty JIT cache
(``BPCONTROL_JIT_CACHE``): wall time from spawn to exit (median), the 1-min load average
before each run, the product (must be the same every time), and whether the compiled EKF
library reached the cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model


def default_runs(repeats: int, root: Path) -> list[dict[str, Any]]:
    """The default run ``repeats`` times: wall times and KPIs."""
    from bpcontrol.runspec import spec_for
    from hil.runner import run_batch

    out = []
    for k in range(repeats):
        t0 = time.perf_counter()
        res = run_batch(spec_for("ecoli_fedbatch"), run_dir=root / f"default-{k}")
        total = time.perf_counter() - t0
        out.append({"total_s": total, "loop_s": res.summary.wall_s, **res.kpis})
        print(f"run {k + 1}: total {total:.1f} s, loop {res.summary.wall_s:.1f} s", flush=True)
    return out


def live_run(period_s: float, seconds: float, root: Path) -> dict[str, Any]:
    """The loop at 1x with NMPC on a recipe scaled to ``period_s`` measurements."""
    from dataclasses import replace

    from bpcontrol.runspec import spec_for
    from hil.runner import run_batch

    spec = spec_for("ecoli_fedbatch")
    doc = dict(spec.pack.recipe)
    doc.update(
        measurement_period_min=period_s / 60,
        control_period_min=10 * period_s / 60,
        duration_h=seconds / 3600,
    )
    doc["phases"] = doc["phases"][:1]
    spec = replace(spec, pack=replace(spec.pack, recipe=doc))
    res = run_batch(spec, run_dir=root / "live", speed_up=1.0)
    late = res.summary.lateness_s
    return {
        "ticks": res.summary.ticks,
        "wall_s": res.summary.wall_s,
        "process_s": res.summary.t_end_h * 3600,
        **res.summary.jitter(),
        "late_over_period": sum(v > period_s for v in late),
        "control_steps_nmpc_percent": res.kpis.get("control_steps_nmpc_percent", 0.0),
    }


def cold_runs(n: int) -> dict[str, Any]:
    """``bpcontrol run --json`` ``n`` times from a cold start (fresh HOME, empty JIT cache)."""
    script = Path(sys.executable).with_name("bpcontrol")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "bpcontrol.cli"]
    runs = []
    for k in range(n):
        with tempfile.TemporaryDirectory(prefix="bpcontrol-cold-") as tmp:
            home = Path(tmp)
            env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
            env["BPCONTROL_JIT_CACHE"] = str(home / "jit")
            env.pop("MPLCONFIGDIR", None)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            out = subprocess.run(
                [*cli, "run", "--json", "--out", str(home / "runs")],
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - t0
            kpis = json.loads(out.stdout)
            libs = sorted(p.name for p in (home / "jit").glob("*.so"))
        runs.append({"wall_s": wall, "load_1min": load, "jit_libraries": libs, **kpis})
        print(
            f"cold run {k + 1}: {wall:.1f} s (load {load:.2f}), product "
            f"{kpis['final_product_g']:.6f} g, cached: {', '.join(libs) or 'nothing'}",
            flush=True,
        )
    return {
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "command": " ".join([*cli, "run", "--json"]),
        "cold_runs": runs,
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--live-period", type=float, default=1.0, help="s between measurements")
    ap.add_argument("--live-seconds", type=float, default=120.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--cold", type=int, default=0, metavar="N", help="only time N cold `bpcontrol run`s"
    )
    args = ap.parse_args()
    if args.cold:
        cold = cold_runs(args.cold)
        products = {r["final_product_g"] for r in cold["cold_runs"]}
        print()
        median = cold["median_wall_s"]
        print(f"| cold `bpcontrol run`, wall (median of {args.cold}) | {median:.1f} s |")
        print(f"| product, all runs | {', '.join(f'{p:.6f}' for p in sorted(products))} g |")
        if args.json:
            args.json.write_text(json.dumps(cold, indent=2, default=float) + "\n")
        return
    from bpcontrol.runspec import resolve, spec_for
    from hil.runner import oracle_product, pack_scenario, run_batch, simulated_plant

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = default_runs(args.repeats, root)
        t0 = time.perf_counter()
        recipe_only = run_batch(
            spec_for("ecoli_fedbatch", controller="recipe"), run_dir=root / "recipe", report=False
        )
        recipe_s = time.perf_counter() - t0
        run = resolve(spec_for("ecoli_fedbatch"))
        plant = simulated_plant(run, pack_scenario(run), seed=1)
        t0 = time.perf_counter()
        oracle, _slack = oracle_product(run, plant.p_true, plant.x)
        oracle_s = time.perf_counter() - t0
        live = live_run(args.live_period, args.live_seconds, root)
    product = runs[0]["final_product_g"]
    result = {
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "default_runs": runs,
        "median_total_s": statistics.median(r["total_s"] for r in runs),
        "median_loop_s": statistics.median(r["loop_s"] for r in runs),
        "recipe_only_product_g": recipe_only.kpis["final_product_g"],
        "recipe_only_s": recipe_s,
        "oracle_product_g": oracle,
        "oracle_s": oracle_s,
        "product_vs_oracle": product / oracle,
        "product_vs_recipe": product / recipe_only.kpis["final_product_g"],
        "live": live,
    }
    print()
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| default run, total wall (median of {len(runs)}) | {result['median_total_s']:.1f} s |")
    print(f"| default run, loop only (median) | {result['median_loop_s']:.1f} s |")
    print(f"| speed-up of the whole run | {30 * 3600 / result['median_total_s']:.0f}x |")
    print(f"| final product | {product:.2f} g |")
    print(f"| oracle (true parameters) | {oracle:.2f} g ({oracle_s:.1f} s to solve) |")
    print(f"| product / oracle | {result['product_vs_oracle']:.4f} |")
    print(f"| recipe alone, same plant | {result['recipe_only_product_g']:.2f} g |")
    print(f"| product / recipe | {result['product_vs_recipe']:.3f} |")
    for key in ("time_do_below_min_percent", "setpoints_outside_limits_or_rates"):
        print(f"| {key} (run 1) | {runs[0][key]} |")
    print(
        f"| 1x live: {live['ticks']} ticks of {args.live_period:g} s in {live['wall_s']:.1f} s; "
        f"lateness median / p99 / max | {live['median_ms']:.2f} / {live['p99_ms']:.2f} / "
        f"{live['max_ms']:.2f} ms |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    if not math.isfinite(result["median_total_s"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
