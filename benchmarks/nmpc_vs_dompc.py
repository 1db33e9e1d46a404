"""Closed-loop NMPC on do-mpc's batch-reactor example: do-mpc's MPC against bpcontrol's.

Both controllers solve the problem of do-mpc's ``examples/batch_reactor`` (settings as
published in its ``template_mpc.py``, re-entered here, not copied): 20 intervals of 1 h,
cost -P_s at every stage and at the end, move penalty 1.0 on the feed ``inp``, hard bounds
X_s in [0, 3.7], S_s >= -0.01, P_s in [0, 3.0], V_s >= 0, inp in [0, 0.2], nominal
parameters Y_x = 0.5, S_in = 200 (do-mpc: uncertainty values [0.5, 0.4, 0.3] and
[200, 220, 180] with ``n_robust = 0``, so only the first, nominal scenario enters), start
x0 = [1.0, 0.5, 0.0, 120.0], 150 steps with state feedback.

- do-mpc: ``do_mpc.controller.MPC`` (orthogonal collocation, Radau, degree 2, 2 finite
  elements per interval, IPOPT), ``do_mpc.simulator.Simulator`` (CVODES, abstol = reltol =
  1e-10), ``do_mpc.estimator.StateFeedback``.
- bpcontrol: ``bpcontrol.nmpc.NMPC`` on ``models.library.dompc_batch_reactor`` (RK4, 4
  substeps per interval), in the variants ``rti`` (one real-time iteration per step, the QP
  condensed to the moves and solved by dense qpOASES with sparse qpOASES as fallback, after a
  full IPOPT solve on the first step; ``rti-qrqp``: the sparse QP by qrqp, the former
  default), ``rti-jit``
  (the same with its functions compiled by the system C compiler) and ``ipopt`` (full
  solve every step). Plant: its own instance of the same do-mpc simulator, same feedback.

All loops advance in lockstep in one process: at every step each controller takes its turn
(the order rotates from step to step), so that load from other processes falls on all
alike. Only the controller call is timed (``mpc.make_step`` / ``NMPC.step``), with
``time.perf_counter``. Reported per controller: median, p95 and max ms per step, the first
step on its own, the total over all steps, the median process CPU time of a call (less
sensitive than wall time to other jobs on the machine), the final product P_s, the largest
X_s and P_s (bounds 3.7 and 3.0) and, for bpcontrol, how each step's plan came out.
``--profile`` splits a bpcontrol RTI step into linearization (one CasADi function:
Hessian, gradient, constraints, Jacobian), QP solve(s) and the rest (Python, data
conversion, the step check), and reports do-mpc's IPOPT iterations and function time
(from its solver statistics) per step.

Run:
    python benchmarks/nmpc_vs_dompc.py --steps 150 --json run1.json
    python benchmarks/nmpc_vs_dompc.py --merge run1.json run2.json run3.json
(``--merge`` prints the table of the median over runs of every number.)
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import datetime as dt
import io
import json
import os
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

with warnings.catch_warnings():
    # do-mpc warns at import about optional features (ONNX, OPC UA, PyTorch) it lacks.
    warnings.simplefilter("ignore")
    import do_mpc

from _machine import cpu_model

from bpcontrol.nmpc import NMPC, NMPCConfig, Objective, Plan, StateEstimate
from models import Model, load_model

X0 = np.array([1.0, 0.5, 0.0, 120.0])
T_STEP = 1.0
N_HORIZON = 20
BOUNDS_X = {"X_s": (0.0, 3.7), "S_s": (-0.01, np.inf), "P_s": (0.0, 3.0), "V_s": (0.0, np.inf)}
BOUND_U = (0.0, 0.2)
DOMPC = "do-mpc"
# bpcontrol variants: name -> settings on top of the shared problem (RK4, 4 substeps)
VARIANTS: dict[str, dict[str, Any]] = {
    "rti": {"solver": "rti"},
    "rti-jit": {"solver": "rti", "jit": True},
    "ipopt": {"solver": "ipopt"},
    "rti-rk4x2": {"solver": "rti", "rk4_substeps": 2},
    "rti-rk4x2-jit": {"solver": "rti", "rk4_substeps": 2, "jit": True},
    "rti-colloc2": {"solver": "rti", "discretization": "collocation", "collocation_degree": 2},
    "ipopt-colloc2": {"solver": "ipopt", "discretization": "collocation", "collocation_degree": 2},
    "rti-qrqp": {"solver": "rti", "qp_solver": "qrqp"},
    "rti-qrqp-jit": {"solver": "rti", "qp_solver": "qrqp", "jit": True},
}
DEFAULT_VARIANTS = ("rti", "rti-jit", "ipopt")


# --- do-mpc, from the example's published settings ------------------------------------
def dompc_model() -> Any:
    """do-mpc's batch bioreactor: Haldane growth, growth-independent product formation."""
    model = do_mpc.model.Model("continuous")
    X_s = model.set_variable("_x", "X_s")
    S_s = model.set_variable("_x", "S_s")
    P_s = model.set_variable("_x", "P_s")
    V_s = model.set_variable("_x", "V_s")
    inp = model.set_variable("_u", "inp")
    Y_x = model.set_variable("_p", "Y_x")
    S_in = model.set_variable("_p", "S_in")
    mu_m, K_m, K_i, v_par, Y_p = 0.02, 0.05, 5.0, 0.004, 1.2
    mu = mu_m * S_s / (K_m + S_s + S_s**2 / K_i)
    dilution = inp / V_s
    model.set_rhs("X_s", mu * X_s - dilution * X_s)
    model.set_rhs("S_s", -mu * X_s / Y_x - v_par * X_s / Y_p + dilution * (S_in - S_s))
    model.set_rhs("P_s", v_par * X_s - dilution * P_s)
    model.set_rhs("V_s", inp)
    model.setup()
    return model


Y_X_VALUES = (0.5, 0.4, 0.3)  # mol/mol, do-mpc's uncertainty values; first: nominal
S_IN_VALUES = (200.0, 220.0, 180.0)  # mol/L, first: nominal


def dompc_mpc(model: Any, *, n_robust: int = 0) -> Any:
    """do-mpc's MPC of the example (``n_robust = 1``: its 9-scenario robust MPC)."""
    mpc = do_mpc.controller.MPC(model)
    mpc.settings.n_horizon = N_HORIZON
    mpc.settings.n_robust = n_robust
    mpc.settings.open_loop = False
    mpc.settings.t_step = T_STEP
    mpc.settings.state_discretization = "collocation"
    mpc.settings.collocation_type = "radau"
    mpc.settings.collocation_deg = 2
    mpc.settings.collocation_ni = 2
    mpc.settings.store_full_solution = True
    mpc.settings.supress_ipopt_output()
    mpc.set_objective(mterm=-model.x["P_s"], lterm=-model.x["P_s"])
    mpc.set_rterm(inp=1.0)
    for name, (lo, hi) in BOUNDS_X.items():
        mpc.bounds["lower", "_x", name] = lo
        if np.isfinite(hi):
            mpc.bounds["upper", "_x", name] = hi
    mpc.bounds["lower", "_u", "inp"] = BOUND_U[0]
    mpc.bounds["upper", "_u", "inp"] = BOUND_U[1]
    mpc.set_uncertainty_values(Y_x=np.array(Y_X_VALUES), S_in=np.array(S_IN_VALUES))
    mpc.setup()
    return mpc


def dompc_simulator(model: Any, y_x: float = 0.5, s_in: float = 200.0) -> Any:
    """do-mpc's CVODES plant at parameters ``y_x`` (mol/mol), ``s_in`` (mol/L)."""
    sim = do_mpc.simulator.Simulator(model)
    sim.settings.integration_tool = "cvodes"
    sim.settings.abstol = 1e-10
    sim.settings.reltol = 1e-10
    sim.settings.t_step = T_STEP
    p_template = sim.get_p_template()

    def p_fun(t_now: float) -> Any:
        p_template["Y_x"] = y_x
        p_template["S_in"] = s_in
        return p_template

    sim.set_p_fun(p_fun)
    sim.setup()
    return sim


# --- bpcontrol ------------------------------------------------------------------------
def bpcontrol_config(variant: str) -> NMPCConfig:
    """The example's problem for bpcontrol; ``variant`` picks the solver."""
    return NMPCConfig(
        horizon=N_HORIZON,
        dt_h=T_STEP,
        objective=Objective(terminal={"P_s": -1.0}, stage={"P_s": -1.0}, move={"inp": 1.0}),
        state_bounds=BOUNDS_X,
        input_bounds={"inp": BOUND_U},
        **{"discretization": "rk4", "rk4_substeps": 4, **VARIANTS[variant]},
    )


# --- closed loops ----------------------------------------------------------------------
class AbstractLoop(abc.ABC):
    """One controller, its own plant simulator and state feedback, advanced step by step."""

    name: str

    def __init__(self, dompc_plant_model: Any) -> None:
        self.sim = dompc_simulator(dompc_plant_model)
        self.sim.x0 = X0.copy()
        self.feedback = do_mpc.estimator.StateFeedback(dompc_plant_model)
        self.feedback.x0 = X0.copy()
        self.x = X0.copy()
        self.times: list[float] = []
        self.cpu: list[float] = []  # process CPU time of the same calls
        self.xs: list[np.ndarray] = [X0.copy()]
        self.notes: Counter[str] = Counter()
        self.profile: dict[str, list[float]] = {}

    @abc.abstractmethod
    def control(self, k: int) -> np.ndarray:
        """The controller's input for step ``k`` (timed by the subclass)."""

    def step(self, k: int) -> None:
        u = self.control(k)
        y = self.sim.make_step(np.asarray(u, dtype=float).reshape(-1, 1))
        self.x = np.asarray(self.feedback.make_step(y)).reshape(-1)
        self.xs.append(self.x.copy())


class DompcLoop(AbstractLoop):
    name = DOMPC

    def __init__(self, dompc_plant_model: Any, profile: bool) -> None:
        super().__init__(dompc_plant_model)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.mpc = dompc_mpc(dompc_model())
        self.build_s = time.perf_counter() - t0
        self.mpc.x0 = X0.copy()
        self.mpc.set_initial_guess()
        self.do_profile = profile

    def control(self, k: int) -> np.ndarray:
        x0 = self.x.reshape(-1, 1)
        c0, t0 = time.process_time(), time.perf_counter()
        u = self.mpc.make_step(x0)
        self.times.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)
        stats = self.mpc.solver_stats
        self.notes[str(stats.get("return_status"))] += 1
        if self.do_profile:
            self.profile.setdefault("ipopt_iterations", []).append(float(stats["iter_count"]))
            wall = sum(v for key, v in stats.items() if key.startswith("t_wall_nlp"))
            self.profile.setdefault("nlp_function_ms", []).append(1e3 * wall)
        return np.asarray(u)


class BpcontrolLoop(AbstractLoop):
    def __init__(
        self, dompc_plant_model: Any, variant: str, ctl: NMPC, model: Model, profile: bool
    ) -> None:
        super().__init__(dompc_plant_model)
        self.name = f"bpcontrol {variant}"
        self.ctl, self.model = ctl, model
        self.p = model.p0.copy()
        self.state = ctl.init(X0.copy())
        self.plans: list[Plan] = []
        self.do_profile = profile and ctl._rti is not None

    def control(self, k: int) -> np.ndarray:
        rti = self.ctl._rti
        if self.do_profile and rti is not None:
            rti.timings = []
        estimate = StateEstimate(self.x.copy(), self.p)
        c0, t0 = time.process_time(), time.perf_counter()
        plan, self.state = self.ctl.step(self.state, estimate, k * T_STEP)
        elapsed = time.perf_counter() - t0
        self.times.append(elapsed)
        self.cpu.append(time.process_time() - c0)
        if self.do_profile and rti is not None and rti.timings:
            # an RTI step (not the first, full IPOPT solve): its own split
            t_lin, t_qp, calls = rti.timings[-1]
            prof = self.profile
            prof.setdefault("linearize_ms", []).append(1e3 * t_lin)
            prof.setdefault("qp_ms", []).append(1e3 * t_qp)
            prof.setdefault("qp_calls", []).append(float(calls))
            prof.setdefault("rest_ms", []).append(1e3 * (elapsed - t_lin - t_qp))
        self.plans.append(plan)
        note = plan.status.value
        by = re.search(r"QP by (\S+(?: \(cold\))?)", plan.message)
        if by:
            note += f" (QP by {by.group(1)})"
        self.notes[note] += 1
        return plan.u_next


# --- statistics and output -----------------------------------------------------------
def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def summarize(loop: AbstractLoop) -> dict[str, Any]:
    ms = [1e3 * t for t in loop.times]
    xs = np.array(loop.xs)
    out: dict[str, Any] = {
        "median_ms": statistics.median(ms),
        "median_cpu_ms": 1e3 * statistics.median(loop.cpu),
        "p95_ms": p95(ms),
        "max_ms": max(ms),
        "first_ms": ms[0],
        "median_after_first_ms": statistics.median(ms[1:]),
        # the first step is the initial full solve (a loop makes it before its clock starts)
        "p99_after_first_ms": float(np.percentile(ms[1:], 99)),
        # process CPU time: what the step itself costs, without time the OS gave others
        "p99_cpu_after_first_ms": float(np.percentile(1e3 * np.array(loop.cpu[1:]), 99)),
        "total_s": sum(loop.times),
        "final_P": float(xs[-1, 2]),
        "max_X": float(xs[:, 0].max()),
        "max_P": float(xs[:, 2].max()),
        "notes": dict(loop.notes),
    }
    if loop.profile:
        out["profile_median"] = {k: statistics.median(v) for k, v in loop.profile.items()}
        out["profile_p95"] = {k: p95(v) for k, v in loop.profile.items()}
    return out


def run_once(
    args: argparse.Namespace, controllers: dict[str, NMPC], model: Model
) -> dict[str, dict[str, Any]]:
    plant_model = dompc_model()
    loops: list[AbstractLoop] = []
    if not args.no_dompc:
        loops.append(DompcLoop(plant_model, args.profile))
    for variant, ctl in controllers.items():
        loops.append(BpcontrolLoop(plant_model, variant, ctl, model, args.profile))
    for k in range(args.steps):
        shift = k % len(loops)
        for loop in loops[shift:] + loops[:shift]:
            loop.step(k)
    result = {loop.name: summarize(loop) for loop in loops}
    for loop in loops:
        if isinstance(loop, DompcLoop):
            result[loop.name]["build_s"] = loop.build_s
    return result


def merge(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median over runs of every number (notes: those of the first run)."""
    names = list(runs[0]["results"])
    merged: dict[str, dict[str, Any]] = {}
    for name in names:
        per = [r["results"][name] for r in runs if name in r["results"]]
        out: dict[str, Any] = {}
        for key, val in per[0].items():
            if isinstance(val, int | float):
                out[key] = statistics.median(p[key] for p in per)
            elif key.startswith("profile"):
                out[key] = {k: statistics.median(p[key][k] for p in per) for k in val}
            else:
                out[key] = val
        out["runs"] = len(per)
        merged[name] = out
    return merged


def table(results: dict[str, dict[str, Any]], build: dict[str, float]) -> str:
    ref = results.get(DOMPC)
    lines = [
        "| controller | median ms/step | p95 ms | p99 ms (after the first) | p99 / median "
        "| max ms | first step ms | total s "
        "| median CPU ms | p99 CPU ms (after the first) "
        "| final P | max X_s | max P_s | do-mpc / this (median) | steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        ratio = f"{ref['median_ms'] / r['median_ms']:.1f}x" if ref else "-"
        notes = ", ".join(f"{k} {v:g}" for k, v in r["notes"].items())
        lines.append(
            f"| {name} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['p99_after_first_ms']:.2f} "
            f"| {r['p99_after_first_ms'] / r['median_after_first_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['first_ms']:.1f} | {r['total_s']:.3f} | {r['median_cpu_ms']:.2f} "
            f"| {r.get('p99_cpu_after_first_ms', float('nan')):.2f} "
            f"| {r['final_P']:.4f} "
            f"| {r['max_X']:.6f} | {r['max_P']:.4f} | {ratio} | {notes} |"
        )
    out = "\n".join(lines)
    if build:
        out += "\n\nConstruction (s): " + ", ".join(f"{k} {v:.1f}" for k, v in build.items())
    prof = {n: r for n, r in results.items() if "profile_median" in r}
    if prof:
        out += "\n\n| controller | part | median | p95 |\n|---|---|---:|---:|"
        for name, r in prof.items():
            for key, med in r["profile_median"].items():
                out += f"\n| {name} | {key} | {med:.3f} | {r['profile_p95'][key]:.3f} |"
    return out


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "load_avg": os.getloadavg(),
        "python": sys.version.split()[0],
        "casadi": ca.CasadiMeta.version(),
        "do_mpc": do_mpc.__version__,
        "numpy": np.__version__,
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=1, help="closed loops per run (medians)")
    ap.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-dompc", action="store_true", help="bpcontrol only")
    ap.add_argument("--profile", action="store_true", help="split the step time")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--merge", nargs="+", help="JSON files of earlier runs: print their median")
    args = ap.parse_args(argv)

    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        names = [k for k in runs[0].get("build_s", {}) if all(k in r["build_s"] for r in runs)]
        build_s = {k: statistics.median(r["build_s"][k] for r in runs) for k in names}
        print(table(merge(runs), build_s))
        return 0

    model = load_model("dompc_batch_reactor")
    build: dict[str, float] = {}
    controllers: dict[str, NMPC] = {}
    for variant in args.variants:
        t0 = time.perf_counter()
        controllers[variant] = NMPC(model, bpcontrol_config(variant))
        build[f"bpcontrol {variant}"] = time.perf_counter() - t0
    results: list[dict[str, dict[str, Any]]] = []
    for _ in range(args.repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(run_once(args, controllers, model))
    if DOMPC in results[0]:
        build[DOMPC] = statistics.median(r[DOMPC].pop("build_s") for r in results)
    runs = [{"results": r} for r in results]
    merged = merge(runs) if len(runs) > 1 else results[0]
    info = machine()
    print(
        f"{info['date_utc']}  {info['cpu']}  nproc {info['nproc']}  load "
        f"{' '.join(f'{v:.1f}' for v in info['load_avg'])}  casadi {info['casadi']}  "
        f"do-mpc {info['do_mpc']}  steps {args.steps}  repeats {args.repeats}\n"
    )
    print(table(merged, build))
    if args.json:
        out = {"machine": info, "build_s": build, "results": merged}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
