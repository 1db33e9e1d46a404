"""The HIL rig: sensor and actuator effects, scheduled faults and the base layer, each
checked against an analytic reference on the real simulated plant (yeast model)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from estimators import Reading
from hil.plant import SimulatedPlant
from hil.rig import (
    ActuatorEffect,
    BaseLayer,
    FirstOrderLag,
    FirstOrderProcess,
    PIDController,
    RigFault,
    RigPlant,
    SensorEffect,
    parameter_changes,
    quantise,
)
from models import load_model

MODEL = load_model("yeast_fedbatch")
PERIOD = 1.0 / 60.0
ONLINE = {"DO_probe": 0.0, "OUR": 0.0, "CER": 0.0, "V_meas": 0.0}  # noise-free probes
X0 = {"X": 0.5, "S": 2.0, "E": 0.0, "DO": 100.0, "V": 5.0}
U0 = {"F": 0.0, "kLa": 600.0}


def true_plant(**kw) -> SimulatedPlant:  # type: ignore[no-untyped-def]
    kw.setdefault("seed", 0)
    return SimulatedPlant(MODEL, x0=X0, u0=U0, online=dict(ONLINE), period_h=PERIOD, **kw)


def drive(
    plant: RigPlant | SimulatedPlant, hours: float, feed: Callable[[float], float]
) -> list[Reading]:
    """Apply ``feed(t)`` every 10 min, read every minute; all readings."""
    out: list[Reading] = []
    for k in range(round(hours / PERIOD) + 1):
        t = k * PERIOD
        if k % 10 == 0:
            plant.apply(t, {"F": feed(t), "kLa": 900.0})
        out.extend(plant.read(t))
    return out


def test_first_order_lag_step_response_is_exact() -> None:
    # reference: tau dy/dt = u - y, y(0) = 0, u = 1 for t > 0  =>  y = 1 - exp(-t / tau)
    tau = 0.1
    lag = FirstOrderLag(tau, initial=0.0)
    for k in range(1, 61):
        t = k * PERIOD
        y = lag.update(t, 1.0)
        assert y == pytest.approx(1.0 - math.exp(-t / tau), abs=1e-12)


def test_lag_on_the_do_probe_follows_its_analytic_response() -> None:
    # a DO fall (kLa 600 -> 100 at 0 h) seen through a 3 min probe: the lagged reading
    # obeys y_f(t_k) = a y_f(t_{k-1}) + (1 - a) y(t_k), a = exp(-dt/tau), from the true DO
    tau = 0.05
    rig = RigPlant(true_plant(), seed=1, sensors={"DO_probe": SensorEffect(lag_h=tau)})
    inner = rig.inner
    rig.apply(0.0, {"F": 0.0, "kLa": 100.0})
    got = [r for r in rig.read(0.5) if r.sensor == "DO_probe"]
    y = inner.truth().x[:, MODEL.index("DO")]
    a = math.exp(-PERIOD / tau)
    ref = y[0]
    for k, r in enumerate(got):
        ref = y[k] if k == 0 else a * ref + (1 - a) * y[k]
        assert r.value == pytest.approx(ref, abs=1e-9)
    lead = max(r.value - y[k] for k, r in enumerate(got))
    assert lead > 1.0  # the lag shows: while DO falls the probe reads high


def test_quantisation_error_at_most_half_a_step() -> None:
    rng = np.random.default_rng(5)
    for q in (0.1, 0.5, 2.0):
        values = rng.uniform(-50, 150, 2000)
        out = np.array([quantise(float(v), q) for v in values])
        assert np.all(np.abs(out - values) <= q / 2 + 1e-12)
        assert np.allclose(out / q, np.round(out / q), atol=1e-9)  # multiples of q
    rig = RigPlant(true_plant(), seed=1, sensors={"DO_probe": SensorEffect(quantum=0.5)})
    drive(rig, 0.3, lambda t: 0.0)
    truth = rig.inner.truth()
    rig2 = RigPlant(true_plant(), seed=1, sensors={"DO_probe": SensorEffect(quantum=0.5)})
    readings = [r for r in drive(rig2, 0.3, lambda t: 0.0) if r.sensor == "DO_probe"]
    do = truth.x[:, MODEL.index("DO")]
    err = np.array([r.value for r in readings]) - do[: len(readings)]
    assert np.abs(err).max() <= 0.25 + 1e-9 and np.abs(err).max() > 0.05


def test_dead_time_shifts_the_applied_profile_by_exactly_d() -> None:
    d = 3 * PERIOD + 0.004  # h: also off the sampling grid

    def feed(t: float) -> float:
        return 0.0 if t < 0.1 else 0.05 + 0.1 * t

    rig = RigPlant(true_plant(), seed=1, actuators={"F": ActuatorEffect(dead_time_h=d)})
    confirmed = []
    for k in range(round(0.6 / PERIOD) + 1):
        t = k * PERIOD
        if k % 10 == 0:
            confirmed.append(rig.apply(t, {"F": feed(t), "kLa": 900.0})["F"])
        rig.read(t)
    # the reference: a plain plant given the same profile d later
    ref = true_plant()
    ref.apply(0.0, {"F": 0.0, "kLa": 900.0})
    events = [(k * PERIOD + d, feed(k * PERIOD)) for k in range(0, 37, 10)]
    for k in range(round(0.6 / PERIOD) + 1):
        t = k * PERIOD
        while events and events[0][0] <= t:
            te, f = events.pop(0)
            ref.apply(te, {"F": f, "kLa": 900.0})
        ref.read(t)
    a, b = rig.inner.truth(), ref.truth()
    assert a.t.shape == b.t.shape
    np.testing.assert_allclose(a.x, b.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.u, b.u)  # the held inputs at every instant
    assert confirmed[1] == pytest.approx(feed(1 / 6))  # the device confirms the command


def test_saturation_and_resolution_are_what_the_device_confirms() -> None:
    eff = {"F": ActuatorEffect(max=0.2, resolution=0.01), "kLa": ActuatorEffect(min=300.0)}
    rig = RigPlant(true_plant(), seed=1, actuators=eff)
    held = rig.apply(0.0, {"F": 0.0734, "kLa": 100.0})
    assert held == {"F": pytest.approx(0.07), "kLa": 300.0}
    held = rig.apply(0.1, {"F": 0.37, "kLa": 900.0})
    assert held["F"] == pytest.approx(0.2)  # saturated at the pump's range
    rig.read(0.2)
    assert rig.inner.u[MODEL.input_names.index("F")] == pytest.approx(0.2)


@pytest.mark.parametrize("fraction", [0.0, 0.3])
def test_blockage_delivers_the_fraction_checked_by_the_volume_balance(fraction: float) -> None:
    # dV/dt = F (the model's volume balance): over the fault window V grows by f F dt
    kind = "pump_failure" if fraction == 0.0 else "pump_blockage"
    fault = RigFault(kind=kind, start_h=0.2, end_h=0.45, options={"fraction": fraction})
    rig = RigPlant(true_plant(), seed=1, faults=[fault])
    drive(rig, 0.6, lambda t: 0.12)
    truth = rig.inner.truth()
    V = truth.x[:, MODEL.index("V")]
    k = lambda t: round(t / PERIOD)  # noqa: E731
    assert V[k(0.45)] - V[k(0.2)] == pytest.approx(fraction * 0.12 * 0.25, abs=1e-9)
    assert V[k(0.2)] - V[k(0.0)] == pytest.approx(0.12 * 0.2, abs=1e-9)
    assert V[k(0.6)] - V[k(0.45)] == pytest.approx(0.12 * 0.15, abs=1e-9)
    kpis = rig.kpis()
    assert kpis["rig_F_delivered_fraction"] == pytest.approx(
        (0.35 + fraction * 0.25) / 0.6, rel=1e-9
    )


def test_stuck_and_drifting_probe_spikes_and_offgas_outage() -> None:
    faults = [
        RigFault(kind="probe_stuck", start_h=0.2, end_h=0.3, options={"sensor": "DO_probe"}),
        RigFault(
            kind="probe_drift",
            start_h=0.4,
            end_h=0.5,
            options={"sensor": "DO_probe", "rate_per_h": -20.0},
        ),
        RigFault(kind="offgas_outage", start_h=0.1, end_h=0.2, options={"sensors": ("OUR",)}),
        RigFault(
            kind="spikes",
            start_h=0.5,
            end_h=0.6,
            options={"sensor": "V_meas", "size": 1.0, "probability": 0.5},
        ),
    ]
    rig = RigPlant(true_plant(), seed=3, faults=faults)
    readings = drive(rig, 0.7, lambda t: 0.05)
    truth = rig.inner.truth()
    do_true = dict(zip(np.round(truth.t, 9), truth.x[:, MODEL.index("DO")], strict=True))
    do = {round(r.t_sample, 9): r.value for r in readings if r.sensor == "DO_probe"}
    stuck = [v for t, v in do.items() if 0.2 - 1e-9 <= t < 0.3 - 1e-9]
    assert len(set(stuck)) == 1 and stuck[0] == do[round(0.2 - PERIOD, 9)]
    for t, v in do.items():
        if 0.4 - 1e-9 <= t < 0.5 - 1e-9:  # reading - truth = rate (t - start)
            assert v - do_true[t] == pytest.approx(-20.0 * (t - 0.4), abs=1e-7)
        elif not 0.2 - 1e-9 <= t < 0.3 - 1e-9:
            assert v == pytest.approx(do_true[t], abs=1e-9)
    our_t = [r.t_sample for r in readings if r.sensor == "OUR"]
    assert not any(0.1 - 1e-9 <= t < 0.2 - 1e-9 for t in our_t)
    assert len(our_t) == len(do) - 6  # 6 instants silenced
    vol = [(r.t_sample, r.value) for r in readings if r.sensor == "V_meas"]
    V = dict(zip(np.round(truth.t, 9), truth.x[:, MODEL.index("V")], strict=True))
    jumps = [abs(v - V[round(t, 9)]) for t, v in vol if 0.5 - 1e-9 <= t < 0.6 - 1e-9]
    n_spikes = sum(j == pytest.approx(1.0, abs=1e-9) for j in jumps)
    assert n_spikes == rig.counts["spikes"] and 1 <= n_spikes <= 5  # of 6 at p = 0.5
    assert sum(j < 1e-9 for j in jumps) == len(jumps) - n_spikes


def test_dropouts_and_noise_are_seeded_and_independent_of_the_read_pattern() -> None:
    eff = {"DO_probe": SensorEffect(noise=0.5, dropout=0.2)}

    def run(read_every: int, seed: int) -> list[tuple[str, float | None, float]]:
        rig = RigPlant(true_plant(), seed=seed, sensors=eff)
        out: list[Reading] = []
        for k in range(round(1.0 / PERIOD) + 1):
            t = k * PERIOD
            if k % 10 == 0:
                rig.apply(t, {"F": 0.05, "kLa": 900.0})
            if k % read_every == 0 or k == 60:
                out.extend(rig.read(t))
        return [(r.sensor, r.t_sample, r.value) for r in out]

    a, b, c = run(1, 4), run(7, 4), run(1, 5)
    assert a == b and a != c
    n_do = sum(s == "DO_probe" for s, _, _ in a)
    # binomial(61, 0.8): mean 48.8, std 3.1; +-4 std
    assert 36 <= n_do <= 61 - 1


def test_plant_faults_change_the_true_parameter_at_start_and_back_at_end() -> None:
    faults = [
        RigFault(kind="feed_concentration", start_h=0.5, end_h=1.0, options={"factor": 0.5}),
        RigFault(kind="growth_change", start_h=0.8, options={"factor": 1.3, "parameter": "qS_max"}),
    ]
    changes = parameter_changes(faults, MODEL.parameter_names)
    assert changes == ((0.5, {"S_feed": 0.5}), (1.0, {"S_feed": 1.0}), (0.8, {"qS_max": 1.3}))
    plant = true_plant(parameter_changes=changes)
    plain = true_plant()
    i_sf, i_qs = MODEL.index("S_feed"), MODEL.index("qS_max")
    assert plant.p_at(0.49)[i_sf] == 300.0 and plant.p_at(0.5)[i_sf] == 150.0
    assert plant.p_at(1.0)[i_sf] == 300.0 and plant.p_at(2.0)[i_qs] == pytest.approx(3.5 * 1.3)
    for p in (plant, plain):
        drive(p, 1.2, lambda t: 0.1)
    a, b = plant.truth(), plain.truth()
    k = round(0.5 / PERIOD)
    np.testing.assert_array_equal(a.x[: k + 1], b.x[: k + 1])  # identical up to the change
    # from 0.5 h the feed brings half the glucose: S V falls behind by 150 g/L F dt at once
    sv = lambda tr, j: tr.x[j, MODEL.index("S")] * tr.x[j, MODEL.index("V")]  # noqa: E731
    assert sv(b, k + 6) - sv(a, k + 6) > 0.5 * 150.0 * 0.1 * 6 * PERIOD


def test_pid_on_a_first_order_plant_has_no_steady_state_error() -> None:
    # integral action: for a setpoint step on K/(tau s + 1) the error goes to 0
    proc = FirstOrderProcess(tau_h=0.5, gain=2.0, ambient=20.0, initial=20.0)
    pid = PIDController(kp=1.0, ti_h=0.5, u_min=-100.0, u_max=100.0)
    u = 0.0
    for _ in range(int(10.0 / PERIOD)):  # 20 time constants
        y = proc.step(PERIOD, u, load=3.0)  # with a constant load disturbance
        u = pid.update(30.0, y, PERIOD)
    assert abs(proc.y - 30.0) < 1e-6 and not pid.saturated
    assert u == pytest.approx(10.0 / 2.0 - 3.0, abs=1e-5)  # (30 - 20) / K - load


def test_pid_saturation_is_reported_and_gives_the_analytic_offset() -> None:
    # an unreachable setpoint: the output sits at its limit, y settles at
    # ambient + K (u_max + load) (the first-order steady state) and saturated is set
    proc = FirstOrderProcess(tau_h=0.5, gain=2.0, ambient=20.0, initial=20.0)
    pid = PIDController(kp=1.0, ti_h=0.5, u_min=-1.0, u_max=2.0)
    u = 0.0
    for _ in range(int(10.0 / PERIOD)):
        y = proc.step(PERIOD, u)
        u = pid.update(30.0, y, PERIOD)
    assert pid.saturated and u == 2.0
    assert proc.y == pytest.approx(20.0 + 2.0 * 2.0, abs=1e-6)
    assert pid.integral <= 2.0  # no wind-up beyond the limit


def test_base_layer_holds_temperature_and_shows_a_cooling_loss() -> None:
    # full cooling: T held at its setpoint; cooling cut to 0 from 0.5 h: the loop saturates
    # and T settles at ambient + R (stirrer + heat) (no cooling at all), R = tau / (c V)
    def run(fraction: float | None) -> RigPlant:
        faults = []
        if fraction is not None:
            faults = [RigFault(kind="cooling_loss", start_h=0.5, options={"fraction": fraction})]
        layer = BaseLayer(temperature_C=26.0, ph=5.0, volume_L=5.0)
        rig = RigPlant(true_plant(), seed=1, faults=faults, base_layer=layer)
        drive(rig, 4.0, lambda t: 0.0)
        return rig

    ok = run(None).kpis()
    assert abs(ok["rig_T_final_error"]) < 1e-3 and ok["rig_T_saturated_percent"] == 0.0
    assert ok["rig_T_final_output"] < 0  # it cools: ambient 28 + stirrer > 26
    lost = run(0.0)
    k = lost.kpis()
    assert k["rig_T_saturated_percent"] > 50.0
    R = 0.5 * 3600.0 / (4180.0 * 5.0)
    series = lost.series()
    i = len(series["t"]) - 1
    y = lost.inner.output_at(series["t"][i])
    heat = 460.0 * y[MODEL.index("OUR")] * y[MODEL.index("V_meas")] / 3600.0
    # the final heat is nearly constant over the last time constants (batch phase, no feed)
    assert series["T"][i] == pytest.approx(28.0 + R * (30.0 + heat), abs=0.05)
    assert k["rig_T_max_error"] > 2.0  # the offset the fault leaves


def test_do_cascade_holds_the_do_setpoint_without_steady_state_error() -> None:
    # the device's DO loop (PI on the probe, kLa its output) against the true plant's
    # growing O2 demand: the reading settles on the setpoint (integral action), and the
    # controller's kLa writes are not taken (the device confirms the cascade's value)
    rig = RigPlant(true_plant(), seed=1, do_cascade=(40.0, "kLa"))
    held = []
    for k in range(round(3.0 / PERIOD) + 1):
        t = k * PERIOD
        if k % 10 == 0:
            held.append(rig.apply(t, {"F": 0.0, "kLa": 1500.0})["kLa"])
        rig.read(t)
    truth = rig.inner.truth()
    do = truth.x[:, MODEL.index("DO")]
    assert abs(do[-1] - 40.0) < 0.05 and np.all(np.abs(do[-30:] - 40.0) < 0.5)
    assert held[-1] < 1500.0 and held[-1] == pytest.approx(truth.u[-1, 1])
    k = rig.kpis()
    assert abs(k["rig_DO_cascade_final_error"]) < 0.05
    assert k["rig_DO_cascade_saturated_percent"] < 10.0
    # the same run read every 7 instants: the same truth (the loop acts at every instant)
    other = RigPlant(true_plant(), seed=1, do_cascade=(40.0, "kLa"))
    for k_ in range(round(3.0 / PERIOD) + 1):
        t = k_ * PERIOD
        if k_ % 10 == 0:
            other.apply(t, {"F": 0.0, "kLa": 1500.0})
        if k_ % 7 == 0 or k_ == 180:
            other.read(t)
    np.testing.assert_array_equal(other.inner.truth().x, truth.x)


def test_do_cascade_fooled_by_a_stuck_probe() -> None:
    # a stuck probe freezes what the cascade sees: a constant error e = sp - stuck makes the
    # PI's output a ramp of kp dt / ti e = e per sample (ti = dt, kp = 1) while the true DO
    # leaves the setpoint unseen
    fault = RigFault(kind="probe_stuck", start_h=2.0, options={"sensor": "DO_probe"})
    rig = RigPlant(true_plant(), seed=1, faults=[fault], do_cascade=(40.0, "kLa"))
    drive(rig, 3.0, lambda t: 0.0)
    series = rig.cascade.series  # type: ignore[union-attr]
    t, u, seen = (np.array(series[k]) for k in ("t", "u", "DO"))
    late = t > 2.05
    stuck = seen[late][0]
    assert np.ptp(seen[late]) == 0.0
    np.testing.assert_allclose(np.diff(u[late]), 40.0 - stuck, rtol=1e-9, atol=1e-12)
    do = rig.inner.truth().x[:, MODEL.index("DO")]
    assert abs(do[-1] - 40.0) > 1.0  # the true DO left the setpoint
