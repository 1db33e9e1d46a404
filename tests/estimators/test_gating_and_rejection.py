"""Bad readings are refused with a reason and change nothing; bad configs raise.

A reading that is not a finite number, or outside the output's physical range, is
``rejected`` before the filter sees it. A plausible-looking reading whose innovation fails
the chi-square gate is ``gated``: reported, not fused. In both cases the estimate is that
of the same step without the reading. A degenerate covariance is reset to its prior
(with a ``reset`` event) rather than carried on.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

from estimators import (
    EKFConfig,
    EstimatorConfigError,
    EstimatorState,
    ExtendedKalmanFilter,
    OnlineEstimator,
    Reading,
    Sensor,
    TrackedParameter,
)
from hil.synthetic import ecoli_fedbatch_run, generate
from models import Model

DT_H = 1.0 / 60.0
Warm = tuple[OnlineEstimator, EstimatorState, float, np.ndarray, list[Reading]]


@pytest.fixture(scope="module")
def warm(ecoli_model: Model, ecoli_ekf: ExtendedKalmanFilter) -> Warm:
    """An estimator after 30 min of synthetic online data, the next step's readings and u."""
    data = generate(ecoli_model, ecoli_fedbatch_run(hours=31 * DT_H), seed=3)
    est = OnlineEstimator(ecoli_ekf)
    state = est.init(ecoli_model.x0)
    groups = list(data.arrivals())
    for k, (t, records) in enumerate(groups[:-1]):
        _, state = est.step(
            state, t, data.u[max(k - 1, 0)], [Reading(r.sensor, r.value) for r in records]
        )
    t, records = groups[-1]
    readings = [Reading(r.sensor, r.value) for r in records]
    return est, state, t, data.u[-2], readings


def _same(a: EstimatorState, b: EstimatorState) -> None:
    np.testing.assert_array_equal(np.asarray(a.filter.z), np.asarray(b.filter.z))
    np.testing.assert_array_equal(np.asarray(a.filter.P), np.asarray(b.filter.P))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Reading("DO_probe", math.nan), "not a finite number"),
        (Reading("y_O2_out", math.inf), "not a finite number"),
        (Reading("X_off", -1.0), "outside the physical range"),
        (Reading("DO_probe", 250.0), "outside the physical range"),
        (Reading("pH", 7.0), "unknown sensor"),
    ],
    ids=["nan", "inf", "negative-biomass", "DO-250", "unknown-sensor"],
)
def test_unphysical_reading_is_rejected_and_changes_nothing(
    warm: Warm, bad: Reading, reason: str
) -> None:
    est, state, t, u, readings = warm
    others = [r for r in readings if r.sensor != bad.sensor]
    rep, with_bad = est.step(state, t, u, [*others, bad])
    ref, without = est.step(state, t, u, others)
    (event,) = rep.events
    assert event.kind == "rejected" and event.sensor == bad.sensor
    assert reason in event.message and bad.sensor in event.message
    if reason == "outside the physical range":
        assert event.value == bad.value and "[" in event.message  # states the range
    _same(with_bad, without)
    np.testing.assert_array_equal(rep.x, ref.x)
    assert (rep.nis, rep.dof) == (ref.nis, ref.dof)


def test_gross_outlier_is_gated_reported_and_not_fused(warm: Warm) -> None:
    est, state, t, u, readings = warm
    (do,) = [r for r in readings if r.sensor == "DO_probe"]
    others = [r for r in readings if r.sensor != "DO_probe"]
    outlier = Reading("DO_probe", do.value - 40.0)  # 40 % off, still a possible reading
    assert 0.0 <= outlier.value <= 200.0
    rep, with_outlier = est.step(state, t, u, [*others, outlier])
    ref, without = est.step(state, t, u, others)
    (event,) = rep.events
    assert event.kind == "gated" and event.sensor == "DO_probe"
    assert event.value == pytest.approx(outlier.value) and "innovation gate" in event.message
    _same(with_outlier, without)
    assert rep.dof == ref.dof == len(others)
    # the same reading, in range, is fused normally
    ok, _ = est.step(state, t, u, [*others, do])
    assert not ok.events and ok.dof == len(others) + 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sensors": (Sensor(output="pH", sigma=0.1),)}, "'pH' is not an output"),
        ({"sensors": (Sensor(output="DO_probe", sigma=0.0),)}, "sigma must be > 0"),
        ({"sensors": (Sensor(output="DO_probe", sigma=-1.0),)}, "sigma must be > 0"),
        ({"sensors": (Sensor(output="DO_probe", sigma=math.nan),)}, "sigma must be > 0"),
        ({"sensors": ()}, "no sensors"),
        (
            {"tracked": (TrackedParameter(name="mu_maximum", sigma0=0.1),)},
            "'mu_maximum' is not a parameter",
        ),
        ({"tracked": (TrackedParameter(name="mu_max", sigma0=0.0),)}, "sigma0 > 0"),
        ({"process_sigma": {"biomass": 1.0}}, "'biomass' is not a state"),
    ],
    ids=[
        "unknown-sensor",
        "zero-sigma",
        "negative-sigma",
        "nan-sigma",
        "no-sensors",
        "unknown-parameter",
        "zero-sigma0",
        "unknown-state",
    ],
)
def test_configuration_errors_raise(
    ecoli_model: Model, ecoli_config: EKFConfig, change: dict[str, object], match: str
) -> None:
    config = dataclasses.replace(ecoli_config, **change)  # type: ignore[arg-type]
    with pytest.raises(EstimatorConfigError, match=match):
        ExtendedKalmanFilter(ecoli_model, config)


def _with_covariance(state: EstimatorState, P: np.ndarray) -> EstimatorState:
    """The same estimator state with its covariance replaced (history anchor included)."""
    fs = state.filter._replace(P=jnp.asarray(P))
    last = dataclasses.replace(state.history[-1], after=fs)
    return EstimatorState(filter=fs, history=(*state.history[:-1], last))


@pytest.mark.parametrize(
    "corrupt",
    ["nan", "huge", "indefinite"],
)
def test_degenerate_covariance_is_reset_with_an_event(warm: Warm, corrupt: str) -> None:
    est, state, t, u, readings = warm
    P = np.array(state.filter.P)
    if corrupt == "nan":
        P[0, 0] = math.nan
    elif corrupt == "huge":
        P = P * 1e12  # far beyond the reset limit (1e6 x prior or (10 % of scale)^2)
    else:
        P[0, 1] = P[1, 0] = 10.0 * math.sqrt(P[0, 0] * P[1, 1])  # not positive definite
    bad = _with_covariance(state, P)
    rep, new = est.step(bad, t, u, readings)
    resets = [e for e in rep.events if e.kind == "reset"]
    assert len(resets) == 1 and "reset" in resets[0].message
    P_new = np.asarray(new.filter.P)
    assert np.all(np.isfinite(P_new)) and np.all(np.isfinite(np.asarray(new.filter.z)))
    np.testing.assert_allclose(P_new, P_new.T)
    assert np.linalg.eigvalsh(P_new).min() > 0.0
    np.testing.assert_allclose(np.diag(P_new), est.ekf.P0_diag)  # back to the prior
    # the filter carries on normally from the reset
    nxt, _ = est.step(new, t + DT_H, u, readings)
    assert not any(e.kind == "reset" for e in nxt.events)


def test_covariance_problem_names_the_state() -> None:
    """The reason for a covariance reset names the augmented state at fault."""
    from estimators._filter_base import covariance_problem

    names = ("X", "S", "mu_max")
    limit = np.array([10.0, 10.0, 1.0])
    P = np.diag([1.0, 2.0, 0.5])
    assert covariance_problem(P, limit, names) == ""
    P_big = np.diag([1.0, 2.0, 4.0])
    assert covariance_problem(P_big, limit, names) == (
        "variance above its limit: mu_max (variance 4 > limit 1)"
    )
    P_nan = P.copy()
    P_nan[1, 1] = np.nan
    assert covariance_problem(P_nan, limit, names) == "covariance not finite for S"
    P_neg = np.diag([1.0, -1e-3, 0.5])
    assert covariance_problem(P_neg, limit, names) == (
        "covariance not positive definite (variance <= 0: S)"
    )
