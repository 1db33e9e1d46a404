"""Time ``services.fitting.fit`` against SciPy least squares with finite differences (issue 18).

Part 1, the same data for both: do-mpc's batch reactor (``dompc_batch_reactor``), two
simulated 40 h batches (``hil.synthetic``, seeded; feed steps 0 -> 0.02 -> 0.05 and
0 -> 0.04 -> 0.01 m3/h), online X_meas (std 0.01 mol/L) and V_meas (0.1 m3) every 0.5 h,
offline S_meas and P_meas (5 % + 0.002 mol/L) every 2-4 h, known 1-3 h late and fitted at
their sample time. Four parameters (mu_m, K_m, Y_x, v_par) from one start off the truth
(x1.3, x0.7, x1.2, x0.8), one start for both:

- bpcontrol: direct multiple shooting, IPOPT with the Gauss-Newton Hessian, exact
  sensitivities by CasADi AD; the default (``integrator="auto"``: RK4 with the fewest steps
  per shooting interval that agree with CVODES, checked again at the optimum), CVODES
  throughout, and RK4 with 4 steps per 0.5 h interval;
- peer: ``scipy.optimize.least_squares`` (``trf``, bounds, ``x_scale="jac"``, default
  ``max_nfev`` = 100 x 4) with 2-point finite differences over single-shooting simulations
  (``models.simulate``, CVODES, the same tolerances 1e-8 / 1e-10), the same weighted
  residuals and scaling (parameters divided by their start value).

Imports are done before timing (SciPy's statistics module, which the fit imports lazily);
each fit's wall time includes building its NLP; every method is run ``--repeats`` times
side by side in one process and the medians are compared. The 3-batch E. coli fit is
benchmarks/bench_fit_ecoli.py.

    .venv/bin/python benchmarks/bench_fit.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.stats  # noqa: F401  (imported before timing: the fit imports it lazily)
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script

from hil.synthetic import OfflineAssays, SyntheticRun, generate
from models import InputProfile, Model, load_model, simulate
from services.fitting import ErrorModel, FitOptions, FitResult, fit
from services.historian.readback import BatchData, series_from_rows

DOMPC_PARAMS = ("mu_m", "K_m", "Y_x", "v_par")
DOMPC_START = {"mu_m": 1.3, "K_m": 0.7, "Y_x": 1.2, "v_par": 0.8}
DOMPC_ERRORS = {
    "X_meas": ErrorModel(0.01),
    "V_meas": ErrorModel(0.1),
    "S_meas": ErrorModel(0.002, 0.05),
    "P_meas": ErrorModel(0.002, 0.05),
}


def to_batch(
    data: Any,
    batch_id: str,
    keep_every: Mapping[str, int] | None = None,
    *,
    origin: str | None = None,
    initial_state: Mapping[str, float] | None = None,
) -> BatchData:
    """A synthetic record as the read-back gives it (online series thinned if asked), with
    the recorded ``initial_state`` where given."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for r in data.records:
        rows.setdefault(r.sensor, []).append((r.t_sample_h, r.value, r.t_h))
    series = {}
    for name, rs in rows.items():
        step = (keep_every or {}).get(name, 1)
        series[name] = series_from_rows(name, sorted(rs)[step - 1 :: step])
    return BatchData(
        batch_id,
        origin or f"synthetic {batch_id}",
        series,
        data.inputs,
        dict(initial_state or {}),
        {},
    )


def dompc_batches(model: Model) -> list[BatchData]:
    out = []
    for k, steps in enumerate(
        (
            {"inp": [(0.0, 0.0), (8.0, 0.02), (20.0, 0.05)]},
            {"inp": [(0.0, 0.0), (5.0, 0.04), (25.0, 0.01)]},
        )
    ):
        run = SyntheticRun(
            hours=40.0,
            inputs=InputProfile.from_steps(model, steps),
            period_h=0.5,
            online={"X_meas": 0.01, "V_meas": 0.1},
            offline=OfflineAssays(
                outputs=("S_meas", "P_meas"),
                relative_sigma=0.05,
                absolute_sigma={"S_meas": 0.002, "P_meas": 0.002},
            ),
        )
        out.append(to_batch(generate(model, run, seed=11 + k), f"B{k + 1}"))
    return out


def scipy_fit(
    model: Model, batches: list[BatchData], params: tuple[str, ...], start: dict[str, float]
) -> dict[str, Any]:
    """SciPy least squares, 2-point finite differences, single shooting (module docstring)."""
    from scipy.optimize import least_squares

    cas = model.to_casadi()
    idx = [model.index(p) for p in params]
    p0 = np.array([start[p] for p in params])
    lo, hi = model.bounds("parameters")
    sims = [0]

    def residuals(theta_s: np.ndarray) -> np.ndarray:
        p = model.p0.copy()
        p[idx] = theta_s * p0
        out = []
        for b in batches:
            t_end = max(float(s.t_sample_h[-1]) for s in b.measurements.values())
            sims[0] += 1
            try:
                traj = simulate(model, t_end, b.inputs, p=p, dt_out_h=0.5, rtol=1e-8, atol=1e-10)
            except Exception:
                return np.full(sum(len(s) for s in b.measurements.values()) * len(batches), 1e6)
            frame = traj.to_frame()
            X = frame[list(model.state_names)].to_numpy()
            t = frame["t_h"].to_numpy()
            for name, s in b.measurements.items():
                k = np.searchsorted(t, s.t_sample_h - 1e-9)
                y = np.array([cas.outputs(X[i], model.u0, p)[model.index(name)] for i in k])
                out.append((y - s.value) / DOMPC_ERRORS[name].std(s.value))
        return np.concatenate(out)

    t0 = time.perf_counter()
    res = least_squares(  # default max_nfev: 100 x n
        residuals,
        np.ones(len(params)),
        bounds=(lo[idx] / p0, hi[idx] / p0),
        method="trf",
        x_scale="jac",
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "nfev": int(res.nfev),
        "njev": int(res.njev),
        "simulations": sims[0],
        "status": int(res.status),
        "message": str(res.message),
        "converged": res.status > 0,
        "cost": float(res.cost),
        "values": dict(zip(params, res.x * p0, strict=True)),
    }


def describe(res: FitResult) -> str:
    ev = res.evaluations
    return (
        f"{res.status}, {res.iterations} iterations, "
        f"{ev.get('nlp_f', 0)} f / {ev.get('nlp_g', 0)} g / {ev.get('nlp_jac_g', 0)} jac_g / "
        f"{ev.get('nlp_hess_l', 0)} GN Hessian evaluations"
    )


def part1(repeats: int) -> list[str]:
    model = load_model("dompc_batch_reactor")
    batches = dompc_batches(model)
    start = {p: model.p0[model.index(p)] * f for p, f in DOMPC_START.items()}
    lines = ["### Part 1: do-mpc batch reactor, 2 batches, 4 parameters, one start", ""]
    lines.append(
        f"| method | median wall of {repeats} (s) | evaluations | converged | objective (1/2 SSR) |"
    )
    lines.append("|---|---:|---|---|---:|")
    fits = {}
    for label, opts in (
        ("bpcontrol fit, default (integrator='auto')", FitOptions(n_starts=1)),
        ("bpcontrol fit, CVODES", FitOptions(n_starts=1, integrator="cvodes")),
        ("bpcontrol fit, RK4 x4 (integrator='rk')", FitOptions(n_starts=1, integrator="rk")),
    ):
        walls = []
        for _ in range(repeats):  # each repeat a fresh fit, its NLP built again
            t0 = time.perf_counter()
            r = fit(model, batches, DOMPC_PARAMS, errors=DOMPC_ERRORS, start=start, options=opts)
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        fits[label] = (r, wall)
        lines.append(
            f"| {label}: {r.integrator} | {wall:.2f} | {describe(r)} | {r.converged} | "
            f"{r.ssr / 2:.4f} |"
        )
    sps = [scipy_fit(model, batches, DOMPC_PARAMS, start) for _ in range(repeats)]
    sp = sorted(sps, key=lambda d: d["wall_s"])[len(sps) // 2]  # the median run
    lines.append(
        f"| SciPy least_squares, 2-point FD, single shooting | {sp['wall_s']:.2f} | "
        f"{sp['nfev']} residual + {sp['njev']} FD Jacobian evaluations "
        f"({sp['simulations']} batch simulations), status "
        f"{sp['status']}: {sp['message']} | {sp['converged']} | {sp['cost']:.4f} |"
    )
    r_auto, wall_auto = fits["bpcontrol fit, default (integrator='auto')"]
    r_cv, wall_cv = fits["bpcontrol fit, CVODES"]
    lines += [
        "",
        f"Speed-up over SciPy: {sp['wall_s'] / wall_auto:.1f}x (default, {r_auto.integrator}), "
        f"{sp['wall_s'] / wall_cv:.1f}x (CVODES). Time split (s), default: build "
        f"{r_auto.timing.build:.2f}, simulation {r_auto.timing.simulation:.2f}, "
        f"sensitivities {r_auto.timing.sensitivities:.2f}, optimiser "
        f"{r_auto.timing.optimiser:.2f}, statistics {r_auto.timing.statistics:.2f}; CVODES: "
        f"build {r_cv.timing.build:.2f}, simulation {r_cv.timing.simulation:.2f}, "
        f"sensitivities {r_cv.timing.sensitivities:.2f}, optimiser "
        f"{r_cv.timing.optimiser:.2f}, statistics {r_cv.timing.statistics:.2f}.",
        "",
        "| parameter | truth | bpcontrol default +- SE | bpcontrol CVODES +- SE | SciPy |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in DOMPC_PARAMS:
        e, c = r_auto.estimate(p), r_cv.estimate(p)
        lines.append(
            f"| {p} | {model.p0[model.index(p)]:.5g} | {e.value:.6g} +- {e.se:.2g} | "
            f"{c.value:.6g} +- {c.se:.2g} | {sp['values'][p]:.6g} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fits per method (median)")
    args = ap.parse_args()
    load = os.getloadavg()
    out = [
        "## Model fitting (issue 18): multiple shooting + IPOPT vs SciPy least squares",
        "",
        f"`.venv/bin/python benchmarks/bench_fit.py --repeats {args.repeats}`; "
        f"{cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
    ]
    out += [*part1(args.repeats), ""]
    load = os.getloadavg()
    out.append(f"Load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
