"""Closed-loop multi-stage robust NMPC on do-mpc's batch reactor: do-mpc's against bpcontrol's.

The robust problem of do-mpc's ``examples/batch_reactor``: the nominal problem of
``benchmarks/nmpc_vs_dompc.py`` (20 intervals of 1 h, cost -P_s at every stage and at the
end, move penalty 1.0, X_s in [0, 3.7], S_s >= -0.01, P_s in [0, 3.0], inp in [0, 0.2],
x0 = [1.0, 0.5, 0.0, 120.0], 150 steps with state feedback) with ``n_robust = 1`` over
Y_x in {0.5, 0.4, 0.3} x S_in in {200, 220, 180}: 9 scenarios, one first move shared by
all of them, equal weights (do-mpc's only choice).

- do-mpc 5.1.2: ``do_mpc.controller.MPC`` with ``n_robust = 1`` and those uncertainty
  values (orthogonal collocation, Radau, degree 2, 2 finite elements, IPOPT), everything
  else as in ``nmpc_vs_dompc.dompc_mpc``.
- bpcontrol: ``NMPC`` with ``RobustConfig(values=..., n_robust=1)`` (RK4, 4 substeps),
  ``robust-ipopt`` (full IPOPT solve per step, IPOPT's defaults like do-mpc),
  ``robust-ipopt-warm`` (the same warm-started from the shifted solution and its
  multipliers, ``IPOPT_WARM``) and ``robust-rti`` (one real-time iteration per step
  after a first IPOPT solve, the condensed QP), ``robust-rti-backoff`` (the same with
  X_s <= 3.7 - 1e-4: RK4's prediction error lets the plant pass the bound by ~1e-5);
  ``nominal-rti`` for reference.
  ``--scaling`` adds the same robust problem with 1 (``values`` Y_x = [0.5]), 3
  (Y_x only) and 9 scenarios for both solver paths: per-step time against S.
- Plant: each loop its own do-mpc simulator (CVODES, 1e-10) of ``nmpc_vs_dompc``, at
  the nominal Y_x = 0.5, S_in = 200 unless ``--plant-Y_x`` / ``--plant-S_in`` pick
  another point (e.g. 0.3 / 180, the worst corner of the range).

All loops advance in lockstep in one process with the order rotating from step to step
(the method of ``nmpc_vs_dompc.py``); only the controller call is timed. The load
average is read before and after. Reported per controller: median, p95 and max ms per
step, median CPU ms, final P_s, the largest X_s on the plant (bound 3.7), the ratio of
do-mpc's robust median to each, and how the steps came out.

Run:
    python benchmarks/nmpc_robust_vs_dompc.py --steps 150 --scaling --json robust.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from nmpc_vs_dompc import (  # the nominal side by side: same problem, plant and method
    BOUNDS_X,
    S_IN_VALUES,
    X0,
    Y_X_VALUES,
    AbstractLoop,
    BpcontrolLoop,
    DompcLoop,
    bpcontrol_config,
    dompc_model,
    dompc_mpc,
    dompc_simulator,
    machine,
    summarize,
)

from bpcontrol.nmpc import NMPC, NMPCConfig, RobustConfig
from models import Model, load_model

DOMPC_ROBUST = "do-mpc robust"
UNCERTAIN: dict[int, dict[str, tuple[float, ...]]] = {  # scenarios -> values
    1: {"Y_x": (0.5,)},
    3: {"Y_x": Y_X_VALUES},
    9: {"Y_x": Y_X_VALUES, "S_in": S_IN_VALUES},
}
VARIANTS: dict[str, tuple[str, int | None]] = {  # name -> (solver, scenarios or nominal)
    "robust-ipopt": ("ipopt", 9),
    "robust-ipopt-warm": ("ipopt-warm", 9),
    "robust-rti": ("rti", 9),
    "robust-rti-backoff": ("rti-backoff", 9),
    "nominal-rti": ("rti", None),
}
BACKOFF = 1e-4  # mol/L below X_s's 3.7: covers RK4's prediction error (8e-6 here)
IPOPT_WARM = {  # IPOPT from the shifted solution and its multipliers (the E. coli pack's)
    "warm_start_init_point": "yes",
    "warm_start_bound_push": 1e-9,
    "warm_start_mult_bound_push": 1e-9,
    "mu_init": 1e-7,
}
SCALING = {f"{solver}-S{s}": (solver, s) for solver in ("ipopt-warm", "rti") for s in (1, 3, 9)}


# --- do-mpc ----------------------------------------------------------------------------
def _use_plant(loop: AbstractLoop, plant_model: Any, plant: tuple[float, float] | None) -> None:
    if plant is not None:
        loop.sim = dompc_simulator(plant_model, *plant)
        loop.sim.x0 = X0.copy()


class DompcRobustLoop(DompcLoop):
    """do-mpc's robust MPC (its step, timing and statistics are DompcLoop's)."""

    name = DOMPC_ROBUST

    def __init__(self, plant_model: Any, plant: tuple[float, float] | None) -> None:
        AbstractLoop.__init__(self, plant_model)
        _use_plant(self, plant_model, plant)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.mpc = dompc_mpc(dompc_model(), n_robust=1)
        self.build_s = time.perf_counter() - t0
        self.mpc.x0 = X0.copy()
        self.mpc.set_initial_guess()
        self.do_profile = False


# --- bpcontrol -------------------------------------------------------------------------
def robust_config(solver: str, scenarios: int | None) -> NMPCConfig:
    """The example's problem, robust over ``UNCERTAIN[scenarios]`` (None: nominal);
    ``solver``: rti, rti-backoff (X_s's bound ``BACKOFF`` lower), ipopt (IPOPT's
    defaults, as do-mpc) or ipopt-warm (``IPOPT_WARM``)."""
    base = bpcontrol_config("rti" if solver.startswith("rti") else "ipopt")
    if solver == "ipopt-warm":
        base = replace(base, ipopt_options=IPOPT_WARM)
    if solver == "rti-backoff":
        lo, hi = BOUNDS_X["X_s"]
        base = replace(base, state_bounds={**BOUNDS_X, "X_s": (lo, hi - BACKOFF)})
    if scenarios is None:
        return base
    return replace(base, robust=RobustConfig(values=UNCERTAIN[scenarios], n_robust=1))


class RobustBpcontrolLoop(BpcontrolLoop):
    """bpcontrol's NMPC on its own plant (nominal or ``--plant-*``)."""

    def __init__(
        self,
        plant_model: Any,
        variant: str,
        ctl: NMPC,
        model: Model,
        plant: tuple[float, float] | None,
    ) -> None:
        super().__init__(plant_model, variant, ctl, model, profile=False)
        _use_plant(self, plant_model, plant)


def run_once(
    args: argparse.Namespace, controllers: dict[str, NMPC], model: Model
) -> dict[str, dict[str, Any]]:
    plant_model = dompc_model()
    plant = None if args.plant_Y_x is None else (args.plant_Y_x, args.plant_S_in)
    loops: list[AbstractLoop] = []
    if not args.no_dompc:
        loops.append(DompcRobustLoop(plant_model, plant))
    for variant, ctl in controllers.items():
        loops.append(RobustBpcontrolLoop(plant_model, variant, ctl, model, plant))
    for k in range(args.steps):
        shift = k % len(loops)
        for loop in loops[shift:] + loops[:shift]:
            loop.step(k)
    result = {loop.name: summarize(loop) for loop in loops}
    for loop in loops:
        if isinstance(loop, DompcLoop):
            result[loop.name]["build_s"] = loop.build_s
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    ref = results.get(DOMPC_ROBUST)
    lines = [
        "| controller | scenarios | median ms/step | p95 ms | max ms | median CPU ms "
        "| final P_s | max X_s | do-mpc robust / this | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        ratio = f"{ref['median_ms'] / r['median_ms']:.1f}x" if ref else "-"
        notes = ", ".join(f"{k} {v:g}" for k, v in r["notes"].items())
        lines.append(
            f"| {name} | {r.get('scenarios', 9)} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['max_ms']:.1f} | {r['median_cpu_ms']:.2f} | {r['final_P']:.4f} "
            f"| {r['max_X']:.6f} | {ratio} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--scaling", action="store_true", help="add S = 1, 3, 9 for both solvers")
    ap.add_argument("--no-dompc", action="store_true", help="bpcontrol only")
    ap.add_argument("--plant-Y_x", type=float, default=None, help="plant Y_x (mol/mol)")
    ap.add_argument("--plant-S_in", type=float, default=200.0, help="plant S_in (mol/L)")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    model = load_model("dompc_batch_reactor")
    specs = {v: VARIANTS[v] for v in args.variants}
    if args.scaling:
        specs.update(SCALING)
    controllers: dict[str, NMPC] = {}
    build: dict[str, float] = {}
    scenarios: dict[str, int] = {}
    for variant, (solver, n) in specs.items():
        t0 = time.perf_counter()
        controllers[variant] = NMPC(model, robust_config(solver, n))
        build[f"bpcontrol {variant}"] = time.perf_counter() - t0
        scenarios[f"bpcontrol {variant}"] = 1 if n is None else n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_once(args, controllers, model)
    for name, n in scenarios.items():
        results[name]["scenarios"] = n
    if DOMPC_ROBUST in results:
        build[DOMPC_ROBUST] = results[DOMPC_ROBUST].pop("build_s")
    info = machine()
    info["load_avg_before"] = load_before
    plant = "nominal (Y_x 0.5, S_in 200)"
    if args.plant_Y_x is not None:
        plant = f"Y_x {args.plant_Y_x:g}, S_in {args.plant_S_in:g}"
    print(
        f"{info['date_utc']}  {info['cpu']}  nproc {info['nproc']}  load before "
        f"{' '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{' '.join(f'{v:.2f}' for v in info['load_avg'])}  casadi {info['casadi']}  "
        f"do-mpc {info['do_mpc']}  steps {args.steps}  plant {plant}\n"
    )
    print(table(results))
    print("\nConstruction (s): " + ", ".join(f"{k} {v:.1f}" for k, v in build.items()))
    if args.json:
        out = {"machine": info, "plant": plant, "build_s": build, "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
