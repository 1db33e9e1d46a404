"""Offline assays arriving hours late are fused at their sample time.

A fixed-lag filter that re-filters its stored history from the sample time on computes
exactly what it would have computed had the sample arrived on time (the Kalman filter
is a deterministic function of the measurement sequence in time order). So after a late
assay arrives, the estimate must equal that of a twin filter which got the same assay at
its sample time. A sample older than the lag window cannot be fused and must say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pytest

from estimators import ExtendedKalmanFilter, OnlineEstimator, Reading
from hil.synthetic import Record, SyntheticData, ecoli_fedbatch_run, generate
from models import Model

PERIOD_H = 1.0 / 12.0  # 5-min steps keep the test fast; the filter substeps at 1 min
HOURS = 8.0


def _readings(records: Iterable[Record], *, on_time: bool) -> list[Reading]:
    out = []
    for r in records:
        t_sample = None if on_time or r.t_sample_h == r.t_h else r.t_sample_h
        out.append(Reading(r.sensor, r.value, t_sample))
    return out


@pytest.fixture(scope="module")
def data(ecoli_model: Model) -> SyntheticData:
    run = ecoli_fedbatch_run(hours=HOURS, parameter_factors={"mu_max": 0.8, "Y_xs": 1.2})
    run = dataclasses.replace(run, period_h=PERIOD_H)
    return generate(ecoli_model, run, seed=7)


def test_late_assays_give_the_on_time_estimate(
    ecoli_ekf: ExtendedKalmanFilter,
    data: SyntheticData,
) -> None:
    est = OnlineEstimator(ecoli_ekf)
    offline = [r for r in data.records if r.t_sample_h < r.t_h]
    assert offline, "the run must contain late assays"
    assert all(1.0 <= r.delay_h <= 3.0 + PERIOD_H for r in offline)
    # the on-time twin receives each assay at the step of its sample time
    on_time_at: dict[int, list[Record]] = {}
    for r in offline:
        on_time_at.setdefault(round(r.t_sample_h / PERIOD_H), []).append(r)
    arrivals = {round(r.t_h / PERIOD_H) for r in offline}

    late = twin = est.init(ecoli_ekf.model.x0)
    n_checked, late_events = 0, 0
    for k, tk in enumerate(data.t):
        u = data.u[max(k - 1, 0)]
        now = [r for r in data.records if r.t_h == tk]
        online = [r for r in now if r.t_sample_h == r.t_h]
        rep, late = est.step(late, tk, u, _readings(now, on_time=False))
        _, twin = est.step(twin, tk, u, _readings(online + on_time_at.get(k, []), on_time=True))
        late_events += sum(e.kind == "late_fused" for e in rep.events)
        assert not any(e.kind in ("rejected", "too_late", "reset") for e in rep.events)
        pending = any(r.t_sample_h <= tk < r.t_h for r in offline)
        if not pending:
            # both filters have now seen the same assays: the same estimate
            np.testing.assert_allclose(late.filter.z, twin.filter.z, rtol=1e-6, atol=0)
            sd = np.sqrt(np.diag(twin.filter.P))
            np.testing.assert_array_less(
                np.abs(late.filter.P - twin.filter.P), 1e-6 * np.outer(sd, sd)
            )
            n_checked += k in arrivals
    assert n_checked == len(arrivals) >= 2
    assert late_events == len(offline)


def test_sample_older_than_the_lag_is_too_late_and_changes_nothing(
    ecoli_ekf: ExtendedKalmanFilter,
    data: SyntheticData,
) -> None:
    est = OnlineEstimator(ecoli_ekf)
    state = est.init(ecoli_ekf.model.x0)
    k_end = len(data.t) - 1
    for k in range(k_end):
        records = [r for r in data.records if r.t_h == data.t[k] and r.t_sample_h == r.t_h]
        _, state = est.step(
            state, data.t[k], data.u[max(k - 1, 0)], _readings(records, on_time=True)
        )
    t = float(data.t[k_end])
    online = _readings(
        [r for r in data.records if r.t_h == t and r.t_sample_h == r.t_h], on_time=True
    )
    assert t - ecoli_ekf.config.lag_h > 1.0
    old = Reading("X_off", 0.5, t_sample=0.5)  # 7.5 h old, the lag window is 6 h
    rep, with_old = est.step(state, t, data.u[k_end - 1], [*online, old])
    ref, without = est.step(state, t, data.u[k_end - 1], online)
    (event,) = [e for e in rep.events if e.kind == "too_late"]
    assert event.sensor == "X_off" and event.value == 0.5
    assert "older than" in event.message and "lag" in event.message
    assert not ref.events
    np.testing.assert_array_equal(with_old.filter.z, without.filter.z)
    np.testing.assert_array_equal(with_old.filter.P, without.filter.P)
    np.testing.assert_array_equal(rep.x, ref.x)
