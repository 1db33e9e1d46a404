"""Moving-horizon estimation (:class:`estimators.MovingHorizonEstimator`) on the E. coli pack.

Unit tests (default run): bounds hold when the data push a state to its bound; a late
assay inside the window gives the estimate it gives when fused on time; a bad ``[mhe]``
key or value is one clear error line; a failed solve falls back to the EKF with an event.

Acceptance (``-m slow``, issue 17): against a plant whose mu_max and Y_xs are 20 % off
the filter's start (both directions, :data:`SEEDS`), the MHE's biomass and mu_max RMS
errors are no worse than the EKF's on the same readings (:data:`MARGIN`), and no
estimate ever leaves the model's bounds (:func:`test_mhe_no_worse_than_ekf`; the pack's MHE
solves at every step: every 10th step left the plant below at 1.10 and 1.07).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np
import pytest

from bpcontrol.runspec import ResolvedRun, resolve, spec_for
from estimators import (
    EstimatorConfigError,
    MHEConfig,
    MovingHorizonEstimator,
    Reading,
    StepReport,
    parse_mhe_config,
)
from hil.plant import ecoli_plant

RUN = resolve(spec_for("ecoli_fedbatch", controller="recipe"))
MODEL, RECIPE = RUN.model, RUN.recipe
PERIOD_H = RECIPE.measurement_period_h  # h: one minute
SMALL = MHEConfig(window_h=0.5, step_h=PERIOD_H, solve_every=1)
"""A short window solved every step: cheap, and every step's estimate is a solve."""


def _readings(x: np.ndarray, u: np.ndarray, names: tuple[str, ...]) -> list[Reading]:
    """Noise-free online readings of the model at state ``x`` (the nominal parameters)."""
    y = np.asarray(MODEL.to_casadi().h(x, u, MODEL.p0)).ravel()
    return [Reading(n, float(y[MODEL.index(n)])) for n in names]


def _named(x: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(MODEL.state_names, x, strict=True)}


def _within_bounds(report: StepReport) -> bool:
    lo, hi = MODEL.bounds("states")
    p_lo, p_hi = MODEL.bounds("parameters")
    return bool(
        np.all(report.x >= lo) and np.all(report.x <= hi) and np.all(report.p >= p_lo)
    ) and bool(np.all(report.p <= p_hi))


@pytest.fixture(scope="module")
def small_mhe() -> MovingHorizonEstimator:
    return MovingHorizonEstimator(MODEL, RUN.ekf, SMALL)


def test_bounds_hold_when_data_push_a_state_to_zero(small_mhe: MovingHorizonEstimator) -> None:
    """Glucose nearly gone (0.05 g/L charged, the cells take ~0.5 g/L/h) and assays of
    glucose and acetate at 0 g/L every 5 min: the MHE puts glucose on its bound 0, never
    below, at every step (every state of the window, not only the reported one)."""
    mhe = small_mhe
    x0 = MODEL.states_with(**{**_named(RECIPE.initial_state(MODEL)), "S": 0.05})
    u = RECIPE.fallback(0.0)
    online = ("DO_probe", "y_O2_out", "y_CO2_out", "V_meas")
    state = mhe.init(x0)
    i_s = MODEL.index("S")
    lo = MODEL.bounds("states")[0]
    for k in range(31):
        t = k * PERIOD_H
        readings = _readings(x0, u, online)
        if k % 5 == 0:
            readings += [Reading("S_off", 0.0), Reading("A_off", 0.0)]
        report, state = mhe.step(state, t, u, readings)
        assert _within_bounds(report), (t, report.x)
        assert np.all(state.x >= lo)
        if state.warm is not None:
            assert np.all(state.warm.x_nodes >= lo), state.warm.x_nodes
    assert report.x[i_s] < 0.01  # pushed onto the bound (from 0.05 g/L)
    assert state.last_solve is not None and state.last_solve.ok


def _run_with_assay(
    mhe: MovingHorizonEstimator, assay: Reading | None, arrive_h: float
) -> StepReport:
    """One hour of the noise-free model's online readings, the assay delivered at
    ``arrive_h`` (h); the report of the last step."""
    x = RECIPE.initial_state(MODEL)
    u = RECIPE.fallback(0.0)
    step = MODEL.to_casadi().integrator(PERIOD_H)
    online = ("DO_probe", "y_O2_out", "y_CO2_out", "V_meas")
    state = mhe.init(RECIPE.initial_state(MODEL))
    report = None
    for k in range(61):
        t = k * PERIOD_H
        if k:
            x = np.asarray(step(x, u, MODEL.p0)).ravel()
        readings = _readings(x, u, online)
        if assay is not None and abs(t - arrive_h) < 1e-9:
            readings.append(assay)
        report, state = mhe.step(state, t, u, readings)
    assert report is not None
    return report


def test_late_assay_is_fused_at_its_sample_time(small_mhe: MovingHorizonEstimator) -> None:
    """A biomass assay sampled at 0.6 h gives the same estimate at 1 h whether it arrives
    on time or 0.3 h late (it sits at its sample time in the window), and that estimate
    differs from the one without it."""
    t_s = 36 * PERIOD_H  # 0.6 h, inside the 0.5 h window ending at 1 h
    assay = Reading("X_off", 0.36, t_sample=t_s)  # about 20 % below the model's 0.44 g/L
    on_time = _run_with_assay(small_mhe, Reading("X_off", 0.36), t_s)
    late = _run_with_assay(small_mhe, assay, 54 * PERIOD_H)
    without = _run_with_assay(small_mhe, None, 0.0)
    i_x = MODEL.index("X")
    # same data, same window: equal to the solver's tolerance (1e-6 on a cost ~1e2)
    np.testing.assert_allclose(late.x, on_time.x, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(late.p, on_time.p, rtol=1e-5, atol=1e-7)
    assert abs(on_time.x[i_x] - without.x[i_x]) > 100 * abs(late.x[i_x] - on_time.x[i_x])
    assert on_time.x[i_x] < without.x[i_x]  # pulled toward the lower assay


def test_late_assay_events(small_mhe: MovingHorizonEstimator) -> None:
    """A late assay inside the window: ``late_fused``; one older than the EKF's lag:
    ``too_late`` (the EKF's events, the same checks as the EKF). Without readings for 7 h
    the estimate drifts: the solve may fail or the gate refuse the assay (not checked)."""
    mhe = small_mhe
    x0 = RECIPE.initial_state(MODEL)
    u = RECIPE.fallback(0.0)
    state = mhe.init(x0)
    lag = RUN.ekf.lag_h
    t = lag + 1.0
    for k in range(1, int(t / 0.5)):  # a history the lag prunes (every 0.5 h)
        report, state = mhe.step(state, 0.5 * k, u, ())
    report, state = mhe.step(state, t - PERIOD_H, u, ())
    report, state = mhe.step(
        state,
        t,
        u,
        [
            Reading("X_off", float(report.x[MODEL.index("X")]), t_sample=t - 0.2),
            Reading("S_off", 5.0, t_sample=t - lag - 0.8),
            Reading("nope", 1.0),
            Reading("DO_probe", -5.0),
        ],
    )
    kinds = [e.kind for e in report.events]
    assert kinds.count("late_fused") == 1 and kinds.count("too_late") == 1, kinds
    assert kinds.count("rejected") == 2, kinds


def test_unknown_key_is_one_clear_error() -> None:
    with pytest.raises(EstimatorConfigError) as err:
        parse_mhe_config({"window": 1.0}, source="ekf.toml")
    msg = str(err.value)
    assert "\n" not in msg and "ekf.toml: mhe.window: unknown key" in msg
    with pytest.raises(EstimatorConfigError, match=r"mhe\.max_iter: must be an integer >= 1"):
        parse_mhe_config({"max_iter": 0})


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"window_h": -1.0}, "mhe.window_h"),
        ({"window_h": 7.0}, "mhe.window_h"),
        ({"solve_every": 1.5}, "mhe.solve_every"),
        ({"windowh": 1.0}, "mhe.windowh"),
    ],
)
def test_pack_mhe_table_errors_name_file_and_key(table: dict[str, float], key: str) -> None:
    """The ``[mhe]`` table of a pack's ``ekf.toml``: a bad entry is one line naming the
    file and the key (7 h is longer than the EKF's 6 h lag)."""
    spec = spec_for("ecoli_fedbatch", controller="recipe")
    pack = dataclasses.replace(spec.pack, ekf={**(spec.pack.ekf or {}), "mhe": table})
    with pytest.raises(EstimatorConfigError) as err:
        resolve(dataclasses.replace(spec, pack=pack, estimator="mhe"))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "ekf" in msg, msg


def test_pack_mhe_table_is_read() -> None:
    spec = spec_for("ecoli_fedbatch", controller="recipe")
    pack = dataclasses.replace(
        spec.pack, ekf={**(spec.pack.ekf or {}), "mhe": {"window_h": 1.5, "solve_every": 5}}
    )
    run = resolve(dataclasses.replace(spec, pack=pack, estimator="mhe"))
    assert run.mhe.window_h == 1.5 and run.mhe.solve_every == 5
    assert run.mhe.step_h == RECIPE.measurement_period_h  # the recipe's period by default
    assert resolve(spec).mhe == dataclasses.replace(MHEConfig(), step_h=PERIOD_H)


def test_failed_solve_falls_back_to_the_ekf_with_an_event() -> None:
    """One IPOPT iteration cannot solve the window: every step still returns, with the
    EKF's estimate (inside the bounds) and a ``fallback`` event naming the status."""
    mhe = MovingHorizonEstimator(MODEL, RUN.ekf, dataclasses.replace(SMALL, max_iter=1), ekf=None)
    x0 = RECIPE.initial_state(MODEL)
    u = RECIPE.fallback(0.0)
    state = mhe.init(x0)
    ekf_state = mhe.online.init(x0)
    fallbacks = 0
    for k in range(1, 16):
        t = k * PERIOD_H
        x_meas = x0 * np.where(np.arange(MODEL.nx) == MODEL.index("DO"), 0.8, 1.0)
        readings = _readings(x_meas, u, ("DO_probe", "y_O2_out", "y_CO2_out", "V_meas"))
        report, state = mhe.step(state, t, u, readings)
        ekf_report, ekf_state = mhe.online.step(ekf_state, t, u, readings)
        fb = [e for e in report.events if e.kind == "fallback"]
        if fb:
            fallbacks += 1
            assert "MHE solve failed (Maximum_Iterations_Exceeded" in fb[0].message
            lo, hi = MODEL.bounds("states")
            np.testing.assert_allclose(report.x, np.clip(ekf_report.x, lo, hi))
            np.testing.assert_allclose(report.p, ekf_report.p)
        assert _within_bounds(report)
    assert fallbacks >= 10


# --- acceptance ------------------------------------------------------------------------
HOURS = 8.0
"""h: the batch phase and glucose exhaustion (about 5-8 h), where mu_max is learnt: once
the feed limits growth the data show mu_max S / (K_s + S), not mu_max (see
``test_tracking_mismatch``), and neither estimator learns more."""
SEEDS = (1, 2, 3, 4, 5)
DIRECTIONS: Mapping[str, Mapping[str, float]] = {
    "below": {"mu_max": 0.8, "Y_xs": 0.8},
    "above": {"mu_max": 1.2, "Y_xs": 1.2},
}
T_SCORE_H = 1.0
"""h: errors are scored from the end of the first window on (see MARGIN)."""
MARGIN = 1.05
"""MHE RMS <= 1.05 x EKF RMS, pooled over the seeds per direction. The MHE's arrival cost
is the EKF's, and with the pack's tiny process noise it is close to the EKF (a
linear-Gaussian MHE with an EKF arrival cost equals the filter): 5 % leaves room for
rounding and IPOPT's tolerance, while an MHE that lost the EKF's information (a wrong
arrival cost, a misplaced assay, bounds that bite) is more than 5 % worse. Scored from the
end of the first window: before it the MHE is a full-information estimate from the prior,
which here moved mu_max away from the truth for the first 15-30 min (seed 1 below: +0.14
1/h at 0.25 h against the EKF's +0.09), the largest errors of the run for both."""


class Result(NamedTuple):
    X_rms: tuple[float, float]  # (MHE, EKF), g/L
    mu_rms: tuple[float, float]  # 1/h
    in_bounds: bool
    fallbacks: int
    mhe_s: float
    ekf_s: float


def run_pair(
    run: ResolvedRun, mhe: MovingHorizonEstimator, factors: Mapping[str, float], seed: int
) -> Result:
    """The MHE and the EKF on the same plant readings and inputs (the recipe, open loop)."""
    model, recipe = run.model, run.recipe
    plant = ecoli_plant(model, seed=seed, parameter_factors=factors)
    x0 = recipe.initial_state(model)
    sm, se = mhe.init(x0), mhe.online.init(x0)
    u = plant.u
    n = round(HOURS / recipe.measurement_period_h)
    xm, xe, mm, me = (np.empty(n + 1) for _ in range(4))
    i_x, i_mu = model.index("X"), model.index("mu_max")
    ok, fallbacks, t_m, t_e = True, 0, 0.0, 0.0
    for k in range(n + 1):
        t = k * recipe.measurement_period_h
        readings = plant.read(t)
        a = time.perf_counter()
        rm, sm = mhe.step(sm, t, u, readings)
        b = time.perf_counter()
        re, se = mhe.online.step(se, t, u, readings)
        t_m, t_e = t_m + b - a, t_e + time.perf_counter() - b
        if k % recipe.steps_per_control == 0:
            held = plant.apply(t, dict(zip(model.input_names, recipe.fallback(t), strict=True)))
            u = np.array([held[name] for name in model.input_names])
        xm[k], xe[k], mm[k], me[k] = rm.x[i_x], re.x[i_x], rm.p[i_mu], re.p[i_mu]
        ok = ok and _within_bounds(rm)
        fallbacks += sum(e.kind == "fallback" for e in rm.events)
    truth = plant.truth()
    score = truth.t >= T_SCORE_H - 1e-9
    x_true, mu_true = truth.x[:, i_x], plant.p_true[i_mu]

    def rms(v: np.ndarray, ref: np.ndarray) -> float:
        return float(np.sqrt(np.mean((v[score] - ref[score]) ** 2)))

    return Result(
        (rms(xm, x_true), rms(xe, x_true)),
        (rms(mm, np.full(n + 1, mu_true)), rms(me, np.full(n + 1, mu_true))),
        ok,
        fallbacks,
        t_m,
        t_e,
    )


@functools.cache
def _worker_mhe() -> MovingHorizonEstimator:
    """The MHE of a worker process, its NLP built on the process's first pair."""
    return MovingHorizonEstimator(MODEL, RUN.ekf, RUN.mhe)


def _pair_in_worker(direction: str, seed: int) -> Result:
    """:func:`run_pair` in a worker process (the MHE's NLP built once per process)."""
    return run_pair(RUN, _worker_mhe(), DIRECTIONS[direction], seed)


@pytest.mark.slow
@pytest.mark.timeout(2700)  # 14.5 min on a quiet 2-core machine; room for a loaded one
def test_mhe_no_worse_than_ekf() -> None:
    """Issue 17: plant 20 % off in both directions, 5 seeds; biomass and mu_max RMS of the
    MHE <= MARGIN x the EKF's (pooled per direction), bounds never violated. The pack's
    MHE (solved at every step); the ten runs share two processes (IPOPT is not
    thread-safe), 14.5 min on 2 cores."""
    jobs = [(d, s) for d in ("above", "below") for s in SEEDS]  # the longer runs first
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        done = dict(zip(jobs, pool.map(_pair_in_worker, *zip(*jobs, strict=True)), strict=True))
    failures = []
    for direction in DIRECTIONS:
        results = [done[direction, s] for s in SEEDS]
        for s, r in zip(SEEDS, results, strict=True):
            print(
                f"\n{direction} seed {s}: X RMS MHE {r.X_rms[0]:.4f} EKF {r.X_rms[1]:.4f} g/L, "
                f"mu_max RMS MHE {r.mu_rms[0]:.5f} EKF {r.mu_rms[1]:.5f} 1/h, "
                f"{r.fallbacks} fallbacks, MHE {r.mhe_s:.1f} s, EKF {r.ekf_s:.2f} s"
            )
            assert r.in_bounds, (direction, s)
        for name in ("X_rms", "mu_rms"):
            mhe_v = np.sqrt(np.mean([getattr(r, name)[0] ** 2 for r in results]))
            ekf_v = np.sqrt(np.mean([getattr(r, name)[1] ** 2 for r in results]))
            print(f"{direction} {name}: MHE {mhe_v:.5f}, EKF {ekf_v:.5f} ({mhe_v / ekf_v:.3f})")
            if mhe_v > MARGIN * ekf_v:
                failures.append(f"{direction} {name}: MHE {mhe_v:.5f} > {MARGIN} x {ekf_v:.5f}")
    assert not failures, failures
