"""E. coli model fitted to batches of a plant with an effect it lacks (issue 18, mismatch).

The plant is the E. coli fed-batch model with growth and respiration inhibited by the
product, ``mu_max`` and ``qO_max`` times ``K_IP / (K_IP + P)`` (``--k-ip`` g/L, written
here, not in the model library); three 30 h batches as in ``bench_fit_ecoli.py`` (same
feeds, sensors and noise). Fitted: ``--params`` of the library model, shared, one start.
Prints the fit's outcome and time split and the lack-of-fit tests per sensor
(:mod:`services.fitting._lack_of_fit`): the sensors whose residuals the missing effect
makes systematic.

    .venv/bin/python benchmarks/bench_fit_ecoli_mismatch.py [--k-ip 2.0] \
        [--params mu_max,Y_xs,qO_max]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

from bench_fit_ecoli import ERRORS, ecoli_batches  # benchmarks/ is on sys.path

from models import MathNamespace, Model, Values, load_model
from models.library import ecoli_fedbatch as ecoli
from services.fitting import FitOptions, fit


def inhibited_plant(model: Model, k_ip: float) -> Model:
    """``model`` with mu_max and qO_max scaled by ``k_ip / (k_ip + P)`` (P in g/L)."""

    def scaled(m: MathNamespace, x: Values, p: Values) -> Values:
        names = tuple(p)
        f = k_ip / (k_ip + m.fmax(x.P, 0.0))
        return Values(names, [p[n] * f if n in ("mu_max", "qO_max") else p[n] for n in names])

    def rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
        return ecoli.rhs(m, x, u, scaled(m, x, p))

    def measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
        return ecoli.measure(m, x, u, scaled(m, x, p))

    return dataclasses.replace(model, name="ecoli_product_inhibited", rhs=rhs, measure=measure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k-ip", type=float, default=2.0)
    ap.add_argument("--params", default="mu_max,Y_xs,qO_max")
    args = ap.parse_args()
    model = load_model("ecoli_fedbatch")
    plant = inhibited_plant(model, args.k_ip)
    batches = ecoli_batches(plant, factors={}, seed0=31)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    opts = FitOptions(n_starts=1)  # auto: Radau single shooting on this stiff model
    r = fit(model, batches, args.params.split(","), errors=ERRORS, options=opts)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    print(f"load {load0[0]:.2f} -> {load1[0]:.2f}; wall {wall:.1f} s; {r.status}; "
          f"integrator {r.integrator}; residual variance {r.residual_variance:.3g}")  # fmt: skip
    print(f"timing {r.timing}; starts {[(s.status, s.iterations) for s in r.starts]}")
    for e in r.estimates:
        print(f"{e.name} = {e.value:.4g} +- {e.se:.2g} {e.unit}")
    for c in r.lack_of_fit:
        flag = "SYSTEMATIC" if c.systematic else ""
        print(f"{c.sensor:10s} n={c.n:4d} runs z={c.runs_z:+6.1f} sign z={c.sign_z:+6.1f} "
              f"mean={c.mean:+.2f} rms={c.rms:.2f} {flag}")  # fmt: skip


if __name__ == "__main__":
    main()
