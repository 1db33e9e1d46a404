"""Time per step of the moving-horizon estimator beside the EKF's (issue 17).

Problem: the E. coli pack (``bpcontrol/data/packs/ecoli_fedbatch``) with its EKF
configuration (mu_max and Y_xs tracked) and the MHE's defaults (``[mhe]`` of
``ekf.toml``: a 1 h window of one-minute steps plus 10 slots for late assays, solved
every 10 steps and at once when a late assay arrives). The plant
(:func:`hil.plant.ecoli_plant`) has mu_max and Y_xs ``--factor`` times the model's; the
recipe's setpoints are applied open loop; both estimators get the same readings (online
every minute, offline assays every 2-4 h, 1-3 h late).

Timed, per step of the record (``time.perf_counter`` around each call):

- ``MovingHorizonEstimator.step`` (its EKF alongside included): every step, and the
  steps that solved the NLP alone;
- ``OnlineEstimator.step`` on a ``CompiledEKF`` (the loop's default estimator).

Reported: median, 95th percentile and maximum (ms) over the steps, the IPOPT iterations
per solve (both starts together: the warm one and the EKF's trajectory), the number of
fallbacks (failed solves), the NLP's build time, the machine and its load average before
and after (a shared machine's load slows every figure).

Run:
    python benchmarks/bench_mhe.py --hours 6 --factor 1.2 --json mhe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from bpcontrol.runspec import resolve, spec_for
from estimators import CompiledEKF, MovingHorizonEstimator, OnlineEstimator
from hil.plant import ecoli_plant


def _stats(seconds: list[float]) -> dict[str, float]:
    a = 1e3 * np.asarray(seconds)
    if a.size == 0:
        return {"n": 0, "median_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": int(a.size),
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
    }


def run(hours: float, factor: float, seed: int) -> dict[str, Any]:
    """Both estimators over ``hours`` h of one plant record; the timing table as a dict."""
    spec = resolve(spec_for("ecoli_fedbatch", controller="recipe"))
    model, recipe = spec.model, spec.recipe
    t0 = time.perf_counter()
    mhe = MovingHorizonEstimator(model, spec.ekf, spec.mhe)
    build_s = time.perf_counter() - t0
    compiled = CompiledEKF(model, spec.ekf)
    compiled.join()  # the compiled library, not the VM, for the EKF's figure
    mhe.ekf.join()
    ekf = OnlineEstimator(compiled)
    factors = {"mu_max": factor, "Y_xs": factor}
    plant = ecoli_plant(model, seed=seed, parameter_factors=factors)
    x0 = recipe.initial_state(model)
    sm, se = mhe.init(x0), ekf.init(x0)
    u = plant.u
    t_mhe, t_solve, t_ekf, iters = [], [], [], []
    fallbacks = 0
    n = round(hours / recipe.measurement_period_h)
    for k in range(n + 1):
        t = k * recipe.measurement_period_h
        readings = plant.read(t)
        a = time.perf_counter()
        rm, sm = mhe.step(sm, t, u, readings)
        b = time.perf_counter()
        _, se = ekf.step(se, t, u, readings)
        c = time.perf_counter()
        t_mhe.append(b - a)
        t_ekf.append(c - b)
        if sm.since_solve == 0 and sm.last_solve is not None and sm.last_solve.t == t:
            t_solve.append(b - a)
            iters.append(sm.last_solve.iterations)
        fallbacks += sum(e.kind == "fallback" for e in rm.events)
        if k % recipe.steps_per_control == 0:
            held = plant.apply(t, dict(zip(model.input_names, recipe.fallback(t), strict=True)))
            u = np.array([held[name] for name in model.input_names])
    return {
        "hours": hours,
        "factor": factor,
        "seed": seed,
        "steps": n + 1,
        "mhe_config": {k: getattr(spec.mhe, k) for k in ("window_h", "solve_every", "max_iter")},
        "slots": mhe.slots,
        "build_s": build_s,
        "mhe_step": _stats(t_mhe),
        "mhe_solve_step": _stats(t_solve),
        "ekf_step": _stats(t_ekf),
        "ipopt_iterations_median": float(np.median(iters)) if iters else float("nan"),
        "ipopt_iterations_max": int(max(iters)) if iters else 0,
        "fallbacks": fallbacks,
        "mhe_total_s": float(sum(t_mhe)),
        "ekf_total_s": float(sum(t_ekf)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=6.0, help="record length (h)")
    ap.add_argument("--factor", type=float, default=1.2, help="plant mu_max, Y_xs x factor")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    load0 = os.getloadavg()
    out = run(args.hours, args.factor, args.seed)
    load1 = os.getloadavg()
    out["machine"] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": load0,
        "loadavg_after": load1,
    }
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load {load0} -> {load1}")
    print(
        f"E. coli, {args.hours} h, plant x{args.factor}, seed {args.seed}: "
        f"{out['steps']} steps, {out['slots']} slots, build {out['build_s']:.2f} s"
    )
    for key in ("mhe_step", "mhe_solve_step", "ekf_step"):
        s = out[key]
        print(
            f"  {key:15s} n={s['n']:5d}  median {s['median_ms']:8.3f} ms  "
            f"p95 {s['p95_ms']:8.3f} ms  max {s['max_ms']:8.3f} ms"
        )
    print(
        f"  IPOPT iterations per solve: median {out['ipopt_iterations_median']:.0f}, "
        f"max {out['ipopt_iterations_max']}; fallbacks {out['fallbacks']}; total MHE "
        f"{out['mhe_total_s']:.1f} s, EKF {out['ekf_total_s']:.2f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
