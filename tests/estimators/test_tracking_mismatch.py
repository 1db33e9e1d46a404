"""Acceptance: the E. coli EKF tracks a noisy plant from either side of its start.

The pack's filter (``bpcontrol/data/packs/ecoli_fedbatch/ekf.toml``, tracking mu_max and
Y_xs from the literature values, Xu, Jahic, Enfors 1999) runs online
(:class:`estimators.OnlineEstimator` on the :class:`estimators.CompiledEKF`, late assays
fused at their sample time) against :class:`hil.plant.SimulatedPlant` (the pack's
instruments: DO, off-gas O2/CO2 and volume every minute; offline X, S, A, P every 2-4 h
with 5 % error, known 1-3 h late) over the 30 h recipe, open loop (the recipe's setpoints
applied every control period, as the loop does in FALLBACK; no NMPC, to keep it fast).

Plant, per direction and seed (:data:`SEEDS`, 10 seeds each):

- both tracked parameters 20 % ABOVE the filter's start (mu_max 0.78 1/h, Y_xs 0.612 g/g)
  or 20 % BELOW it (0.52 1/h, 0.408 g/g);
- process noise :data:`PLANT_NOISE`, a random walk of the true states (state units per
  sqrt(h)). Not on acetate: A sits at its bound 0 for most of the batch, where the clipped
  walk is one-sided, a source of acetate the cells then burn, which no Gaussian process
  noise describes (measured with A 0.005 g/L/sqrt(h): pooled NIS 1.068 above, 1.033 below,
  outside the band even for a filter told that noise). Not on V and T, which the pumps and
  the jacket loop hold;
- the inoculum X and the charged glucose S drawn from the filter's own prior
  (``state_sigma0``): a plant sitting at the prior mean makes the innovations smaller
  than the filter predicts (pooled NIS 0.983 below, 0.979 above without the draw).

The filter is the pack's with ``process_sigma`` raised to the plant's noise where that is
larger (X 0.001 -> 0.01, S 1e-4 -> 0.001, DO 0.01 -> 1.0, P 1e-4 -> 0.002): NIS
consistency holds only for a filter that models the disturbance it sees. The pack's own
``process_sigma`` against this plant gives pooled NIS 1.074 above and 1.127 below (bands
[0.990, 1.010]): it under-covers the disturbance. The raised values change the default
``bpcontrol run`` product by +0.027 % (56.6845 -> 56.6999 g); they are not written to
``ekf.toml`` because ``tests/test_packs.py`` requires the pack to equal
:func:`estimators.presets.ecoli_ekf_config`.

Claims (per direction, over the seeds):

1. biomass RMSE over the last 20 h relative to the final true biomass;
2. the final (30 h) relative error of mu_max and Y_xs;
3. the NIS of the online innovations: over all runs, sum_k NIS_k is chi-square with
   sum_k dof_k degrees of freedom (Bar-Shalom, Li, Kirubarajan 2001, Estimation with
   Applications to Tracking and Navigation, sec. 5.4.2); the average per degree of
   freedom must lie in that distribution's two-sided 95 % band.

Thresholds: :data:`MARGIN` times what the filter achieved on these seeds (median and
worst seed, :data:`MEASURED`, printed by the test).

Findings (limitations of the filter, not of this test), from these and 30 more seeds
(11-40) per direction:

- mu_max is learnt in the batch phase only: once the feed limits growth, the data show
  mu_max S / (K_s + S), not mu_max, so the estimate keeps what the first 6 h left it.
  Seed 1 above (inoculum drawn 16 % above the recipe) is the worst of 40: the filter's
  biomass lags 17-20 % through the batch, a higher mu_max absorbs it, and its std
  collapses to 1 % while the error is 7.7 % (median 1.3 %); all other seeds stay within
  4.2 % above and 4.5 % below. Hence the worst-seed limit far above the median one.
- In neighbouring setups the chi-square innovation gate (``gate_probability`` 0.9999)
  locked a wrong estimate in: it rejected true data when the prediction was far off at a
  regime change (the DO jump at glucose exhaustion while the estimated S lagged: the
  pack's filter on the noise-free plant, seed 1 above, mu_max 25 % off; every acetate
  assay once the estimated A sat at 0 while the broth held 0.3-0.7 g/L: below, seed 5
  with acetate noise and seed 3 with DO, V and T also drawn, mu_max 36-37 % off).
- Below, the estimate swings transiently at glucose exhaustion near 9 h (seed 8: mu_max
  54 % off for minutes) and recovers, so only the final error is claimed.
- Above, the NIS is slightly low: 0.9905 here (just inside the band), 0.9932 over seeds
  11-40 (band [0.994, 1.006]), 0.986-0.991 with the noise on any one state alone (seeds
  3-7): a filter conservative by about 0.7 %, not an effect of the process noise; below
  it is 0.9990 and 1.0012.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pytest
from scipy.stats import chi2

from bpcontrol.runspec import ResolvedRun, resolve, spec_for
from estimators import CompiledEKF, EKFConfig, OnlineEstimator
from hil.plant import ecoli_plant

pytestmark = pytest.mark.slow

HOURS = 30.0
SEEDS = tuple(range(1, 11))
DIRECTIONS: Mapping[str, Mapping[str, float]] = {
    "above": {"mu_max": 1.2, "Y_xs": 1.2},
    "below": {"mu_max": 0.8, "Y_xs": 0.8},
}
PLANT_NOISE: Mapping[str, float] = {"X": 0.01, "S": 0.001, "DO": 1.0, "P": 0.002}
"""Plant process noise, std per sqrt(h): g/L for X, S, P; % air saturation for DO."""
X0_DRAWN = ("X", "S")  # drawn from the filter's prior; the other states start at the recipe
X0_STREAM = 7  # the initial-state draw: np.random.default_rng([seed, X0_STREAM])


class Measured(NamedTuple):
    """A claim's value over :data:`SEEDS` (%): median and worst seed."""

    median: float
    worst: float


# What the filter achieved with this setup, seeds 1-10, in % (printed by the tests:
# rerun with -s after a deliberate change of the estimator, the plant or the pack):
MEASURED: Mapping[str, Mapping[str, Measured]] = {
    "above": {
        "X_rmse": Measured(median=0.078, worst=0.360),
        "mu_max": Measured(median=1.30, worst=7.67),  # the worst: seed 1, the gate (above)
        "Y_xs": Measured(median=0.022, worst=0.058),
    },
    "below": {
        "X_rmse": Measured(median=0.080, worst=0.171),
        "mu_max": Measured(median=0.371, worst=0.714),
        "Y_xs": Measured(median=0.027, worst=0.040),
    },
}
MARGIN = 1.6
"""Limits are 1.6 x the measured median and worst seed: room for rounding and small changes
of the integrators or the filter's numerics, while a filter half as good fails."""


class RunResult(NamedTuple):
    """One run of the filter against the plant; errors are relative (fractions)."""

    seed: int
    X_rmse: float  # biomass RMSE over the last 20 h / final true biomass
    mu_max: float  # |estimate / truth - 1| at the end
    Y_xs: float
    nis: float  # sum of the online innovations' NIS over the run
    dof: int  # and of their degrees of freedom
    gated: int
    late_fused: int
    n_assays: int  # offline readings the plant returned (all of them late)
    bad_events: tuple[str, ...]  # rejected, too_late, reset
    seconds: float


def filter_config(run: ResolvedRun) -> EKFConfig:
    """The pack's filter with its process noise raised to :data:`PLANT_NOISE`."""
    sigma = dict(run.ekf.process_sigma)
    for name, s in PLANT_NOISE.items():
        sigma[name] = max(sigma.get(name, 0.0), s)
    return dataclasses.replace(run.ekf, process_sigma=sigma)


def run_once(
    run: ResolvedRun,
    estimator: OnlineEstimator,
    config: EKFConfig,
    factors: Mapping[str, float],
    seed: int,
) -> RunResult:
    """The filter online against the noisy plant over the recipe, open loop."""
    model, recipe = run.model, run.recipe
    x0 = recipe.initial_state(model)
    rng = np.random.default_rng([seed, X0_STREAM])
    x_true0 = x0.copy()
    for name in X0_DRAWN:
        x_true0[model.index(name)] += config.state_sigma0[name] * rng.standard_normal()
    plant = ecoli_plant(
        model, seed=seed, parameter_factors=factors, process_noise=PLANT_NOISE
    ).restarted(x0=x_true0)
    started = time.perf_counter()
    state = estimator.init(x0)  # the recipe's charge; mu_max, Y_xs: literature values
    names = model.input_names
    u = plant.u  # held since 0 h: the recipe's first setpoints
    n = round(HOURS / recipe.measurement_period_h)
    t = np.empty(n + 1)
    X_hat = np.empty(n + 1)
    nis, dof, n_assays = 0.0, 0, 0
    kinds: list[str] = []
    for k in range(n + 1):
        t[k] = k * recipe.measurement_period_h
        readings = plant.read(float(t[k]))
        n_assays += sum(r.sensor.endswith("_off") for r in readings)
        report, state = estimator.step(state, float(t[k]), u, readings)
        if k % recipe.steps_per_control == 0:
            setpoints = dict(zip(names, recipe.fallback(float(t[k])), strict=True))
            held = plant.apply(float(t[k]), setpoints)
            u = np.array([held[name] for name in names])
        X_hat[k] = report.x[model.index("X")]
        nis += report.nis
        dof += report.dof
        kinds.extend(e.kind for e in report.events)
    seconds = time.perf_counter() - started
    truth = plant.truth()
    np.testing.assert_allclose(truth.t, t, rtol=0, atol=1e-9)
    X_true = truth.x[:, model.index("X")]
    last = t >= HOURS - 20.0
    rmse = float(np.sqrt(np.mean((X_hat[last] - X_true[last]) ** 2)))
    p_hat, p_true = report.p, plant.p_true  # model order, at the end
    i_mu, i_y = model.index("mu_max"), model.index("Y_xs")
    return RunResult(
        seed=seed,
        X_rmse=rmse / float(X_true[-1]),
        mu_max=abs(float(p_hat[i_mu] / p_true[i_mu]) - 1.0),
        Y_xs=abs(float(p_hat[i_y] / p_true[i_y]) - 1.0),
        nis=nis,
        dof=dof,
        gated=kinds.count("gated"),
        late_fused=kinds.count("late_fused"),
        n_assays=n_assays,
        bad_events=tuple(k for k in kinds if k in {"rejected", "too_late", "reset"}),
        seconds=seconds,
    )


@pytest.fixture(scope="module")
def results() -> dict[str, list[RunResult]]:
    """Every seed in both directions, run once for the module (printed as a table)."""
    run = resolve(spec_for("ecoli_fedbatch", controller="recipe"))
    config = filter_config(run)
    estimator = OnlineEstimator(CompiledEKF(run.model, config))
    out: dict[str, list[RunResult]] = {}
    for direction, factors in DIRECTIONS.items():
        out[direction] = [run_once(run, estimator, config, factors, s) for s in SEEDS]
        print(f"\n{direction}: parameters x {dict(factors)}, plant noise {dict(PLANT_NOISE)}")
        for r in out[direction]:
            print(
                f"  seed {r.seed:2d}: X RMSE {100 * r.X_rmse:.3f} %, mu_max {100 * r.mu_max:.3f} "
                f"%, Y_xs {100 * r.Y_xs:.3f} %, NIS/dof {r.nis / r.dof:.4f}, {r.gated} gated, "
                f"{r.seconds:.1f} s"
            )
        for claim in ("X_rmse", "mu_max", "Y_xs"):
            v = 100 * np.array([getattr(r, claim) for r in out[direction]])
            print(f"  {claim}: median {np.median(v):.3f} %, worst {v.max():.3f} %")
    return out


def _check(direction: str, claim: str, values: list[float]) -> None:
    v = 100 * np.asarray(values)
    m = MEASURED[direction][claim]
    median, worst = float(np.median(v)), float(v.max())
    assert median <= MARGIN * m.median, f"{direction} {claim}: median {median:.3f} %"
    assert worst <= MARGIN * m.worst, f"{direction} {claim}: worst seed {worst:.3f} %"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_biomass_is_tracked(results: dict[str, list[RunResult]], direction: str) -> None:
    runs = results[direction]
    _check(direction, "X_rmse", [r.X_rmse for r in runs])
    for r in runs:  # every assay fused at its sample time, nothing refused
        assert r.late_fused == r.n_assays > 0, r
        assert r.bad_events == (), r


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_tracked_parameters_converge(results: dict[str, list[RunResult]], direction: str) -> None:
    runs = results[direction]
    _check(direction, "mu_max", [r.mu_max for r in runs])
    _check(direction, "Y_xs", [r.Y_xs for r in runs])


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_nis_is_consistent(results: dict[str, list[RunResult]], direction: str) -> None:
    runs = results[direction]
    nis = sum(r.nis for r in runs)
    dof = sum(r.dof for r in runs)
    anis = nis / dof
    lo, hi = chi2.ppf([0.025, 0.975], dof) / dof
    print(f"\n{direction}: average NIS per dof {anis:.4f}, 95 % band [{lo:.4f}, {hi:.4f}]")
    # measured: 0.9905 above, 0.9990 below (bands [0.9897, 1.0104] for ~72 000 dof)
    assert lo <= anis <= hi
