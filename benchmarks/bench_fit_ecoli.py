"""Time a 3-batch, 6-parameter fit of the E. coli fed-batch model (issue 18: <= 60 s).

Data: three simulated 30 h batches of ``ecoli_fedbatch`` (``hil.synthetic``, seeded) from
the pack's simulated plant (``bpcontrol/data/packs/ecoli_fedbatch/plant.toml``: mu_max
x0.8, Y_xs x1.2) with three feed profiles (exponential-like steps, one into overflow),
online DO, off-gas O2/CO2 and volume every 0.25 h with the pack's instrument noise,
offline X, S, A, P assays every 2-4 h known 1-3 h late (5 % + the pack's floors).
Fitted: mu_max, Y_xs, K_s, qO_max, Y_as, alpha_P from the literature values (the pack's
model), shared by the three batches, one start, by default ``integrator="auto"``, which
takes single shooting with Radau IIA steps on an error-controlled mesh here (the dissolved
oxygen settles in seconds: kLa about 420 1/h, so RK4 needs 40+ steps per interval; CVODES'
sensitivities cost seconds per Jacobian and fail at trial points; direct collocation makes
IPOPT's KKT factorisations take seconds each). Each repeat is a fresh fit; the time split
is the fit's own :class:`~services.fitting.Timing`.

    .venv/bin/python benchmarks/bench_fit_ecoli.py [--repeats 3] [--integrator auto] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import scipy.stats  # noqa: F401  (imported before timing: the fit imports it lazily)
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from bench_fit import to_batch

from hil.synthetic import OfflineAssays, SyntheticRun, generate
from models import InputProfile, Model, load_model
from services.fitting import ErrorModel, FitOptions, FitResult, fit
from services.historian.readback import BatchData

PARAMS = ("mu_max", "Y_xs", "K_s", "qO_max", "Y_as", "alpha_P")
PLANT_FACTORS = {"mu_max": 0.8, "Y_xs": 1.2}  # the pack's plant.toml
ONLINE = {"DO_probe": 1.0, "y_O2_out": 0.02, "y_CO2_out": 0.02, "V_meas": 0.01}  # pack.toml
OFFLINE_FLOOR = {"X_off": 0.02, "S_off": 0.01, "A_off": 0.01, "P_off": 0.01}  # pack.toml
ERRORS = {
    **{k: ErrorModel(v) for k, v in ONLINE.items()},
    **{k: ErrorModel(v, 0.05) for k, v in OFFLINE_FLOOR.items()},
}
FEEDS = (  # F (L/h) steps: batch on the charge, then feeds of three levels
    [(0.0, 0.0), (6.0, 0.02), (10.0, 0.03), (14.0, 0.045), (18.0, 0.06)],
    [(0.0, 0.0), (5.0, 0.03), (9.0, 0.05), (13.0, 0.08), (20.0, 0.05)],
    [(0.0, 0.0), (7.0, 0.015), (12.0, 0.025), (17.0, 0.035), (24.0, 0.03)],
)


def ecoli_batches(
    model: Model, factors: dict[str, float] | None = None, seed0: int = 21
) -> list[BatchData]:
    """The three recorded batches (module docstring), as the read-back gives them."""
    out = []
    for k, feed in enumerate(FEEDS):
        steps = {
            "F": feed,
            "Q_air": [(0.0, 20.0)],
            "N_stir": [(0.0, 1200.0)],
            "T_set": [(0.0, 37.0), (20.0, 32.0)],
        }
        run = SyntheticRun(
            hours=30.0,
            inputs=InputProfile.from_steps(model, steps),
            period_h=0.25,
            parameter_factors=PLANT_FACTORS if factors is None else factors,
            x0={"S": 5.0},
            online=ONLINE,
            offline=OfflineAssays(relative_sigma=0.05, absolute_sigma=OFFLINE_FLOOR),
        )
        data = generate(model, run, seed=seed0 + k)
        # the recorded initial state (the charge: S 5 g/L, not the model's nominal 10 g/L)
        x0 = {n: float(v) for n, v in zip(data.state_names, data.x[0], strict=True)}
        out.append(to_batch(data, f"E{k + 1}", initial_state=x0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--integrator", default="auto")
    ap.add_argument("--steps", type=int, default=4, help="RK4 steps or collocation elements")
    args = ap.parse_args()
    options = FitOptions(n_starts=1, integrator=args.integrator, steps_per_interval=args.steps)
    model = load_model("ecoli_fedbatch")
    batches = ecoli_batches(model)
    n_read = sum(len(s) for b in batches for s in b.measurements.values())
    load0 = os.getloadavg()
    walls: list[float] = []
    results: list[FitResult] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        r = fit(model, batches, PARAMS, errors=ERRORS, options=options)
        walls.append(time.perf_counter() - t0)
        results.append(r)
    load1 = os.getloadavg()
    med = statistics.median(walls)
    r = results[int(np.argsort(walls)[len(walls) // 2])]
    tm = r.timing
    lines = [
        "### E. coli fed-batch, 3 batches, 6 parameters (issue 18: <= 60 s)",
        "",
        f"`.venv/bin/python benchmarks/bench_fit_ecoli.py --repeats {args.repeats} "
        f"--integrator {args.integrator} --steps {args.steps}`; "
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start, "
        f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at the end.",
        "",
        f"{len(batches)} batches x 30 h, {n_read} readings, parameters {', '.join(PARAMS)}; "
        f"integrator {r.integrator}; {r.status}, {r.iterations} iterations, converged "
        f"{r.converged}.",
        "",
        f"Wall time per fit (s): {', '.join(f'{w:.1f}' for w in walls)}; median {med:.1f} s.",
        "",
        "| part (median fit) | s |",
        "|---|---:|",
        f"| building (CasADi functions, start simulation, integrator choice, mesh) "
        f"| {tm.build:.2f} |",
        f"| simulation (residuals: the shooting integrations) | {tm.simulation:.2f} |",
        f"| sensitivities (gradients, Jacobians, Gauss-Newton Hessian, by AD) "
        f"| {tm.sensitivities:.2f} |",
        f"| optimiser (IPOPT or SciPy trf itself) | {tm.optimiser:.2f} |",
        f"| statistics (Fisher information, intervals) | {tm.statistics:.2f} |",
        "",
        "| parameter | plant (truth) | fitted +- SE |",
        "|---|---:|---:|",
    ]
    for p in PARAMS:
        truth = model.p0[model.index(p)] * PLANT_FACTORS.get(p, 1.0)
        e = r.estimate(p)
        lines.append(f"| {p} | {truth:.4g} | {e.value:.4g} +- {e.se:.2g} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
