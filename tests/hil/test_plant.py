"""The simulated plant: the truth is the model, the sensors are what was configured."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pytest

from bpcontrol.interfaces import Plant
from bpcontrol.nmpc.presets import ecoli_initial_state
from estimators import Reading
from hil.plant import ECOLI_PLANT_FACTORS, SimulatedPlant, ecoli_plant
from hil.synthetic import ECOLI_ONLINE_NOISE, OfflineAssays
from models import load_model

MODEL = load_model("ecoli_fedbatch")
CAS = MODEL.to_casadi()
PERIOD = 1.0 / 60.0
NAMES = MODEL.input_names
X0 = ecoli_initial_state(MODEL)


def setpoints(t_h: float) -> dict[str, float]:
    """A schedule that moves every input: feed ramps, air and stirring step, T cycles."""
    return {
        "F": 0.0 if t_h < 0.5 else min(0.02 + 0.03 * t_h, 0.12),
        "Q_air": 12.0 if t_h < 1.0 else 20.0,
        "N_stir": 800.0 + 100.0 * math.floor(t_h),
        "T_set": 36.0 + math.sin(t_h),
    }


def plant(**kw) -> SimulatedPlant:  # type: ignore[no-untyped-def]
    kw.setdefault("seed", 0)
    kw.setdefault("x0", X0)
    kw.setdefault("u0", u_vec(setpoints(0.0)))  # the inputs held before the first apply
    return SimulatedPlant(MODEL, **kw)


def drive(
    p: SimulatedPlant, hours: float, *, read_every: int = 1, apply_every: int = 10
) -> list[Reading]:
    """Closed-loop-like calls: apply every ``apply_every`` instants, read every ``read_every``."""
    out: list[Reading] = []
    n = round(hours / PERIOD)
    for k in range(n + 1):
        t = k * PERIOD
        if k % apply_every == 0:
            p.apply(t, setpoints(t))
        if k % read_every == 0 or k == n:
            out.extend(p.read(t))
    return out


def u_vec(sp: Mapping[str, float]) -> np.ndarray:
    return np.array([sp[n] for n in NAMES])


def test_is_a_plant() -> None:
    p = plant()
    assert isinstance(p, Plant)
    assert p.input_names == NAMES


def test_noise_free_plant_equals_an_independent_cvodes_integration() -> None:
    online = dict.fromkeys(("DO_probe", "y_O2_out", "y_CO2_out", "V_meas", "OUR"), 0.0)
    p = plant(online=online, p_true={"mu_max": 0.7})
    readings = drive(p, 3.0)
    # an extra setpoint change off the sampling grid, then a late read
    p.apply(3.0 + 0.3 * PERIOD, setpoints(4.0))
    readings += p.read(3.5)
    truth = p.truth()
    assert truth.t.size == round(3.5 / PERIOD) + 1

    # reference: the model's own fixed-interval CVODES integrator over the held segments
    pv = MODEL.parameters_with(mu_max=0.7)
    t_ref = [0.0]
    x_ref = [X0.copy()]
    x = X0.copy()
    breaks = [*(k * 10 * PERIOD for k in range(19)), 3.0 + 0.3 * PERIOD, 3.5]
    for a, b in itertools.pairwise(breaks):
        u = u_vec(setpoints(a if a < 3.0 + 1e-6 else 4.0))
        x = np.asarray(CAS.integrator(b - a)(x, u, pv)).reshape(-1)
        t_ref.append(b)
        x_ref.append(x)
    for tb, xb in zip(t_ref, x_ref, strict=True):
        k = int(np.argmin(np.abs(truth.t - tb)))
        if abs(truth.t[k] - tb) < 1e-12:
            np.testing.assert_allclose(truth.x[k], xb, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(p.x, x_ref[-1], rtol=1e-8, atol=1e-9)

    # noise-free readings are the outputs under the inputs held over the period ending there
    k_apply = round(3.0 / PERIOD) + 1  # the period with the off-grid setpoint change
    for r in readings:
        assert r.t_sample is not None
        k = round(r.t_sample / PERIOD)
        u_seen = u_vec(setpoints(4.0)) if k == k_apply else truth.u[max(k - 1, 0)]
        y = CAS.outputs(truth.x[k], u_seen, pv)
        assert r.value == pytest.approx(y[MODEL.index(r.sensor)], rel=1e-12, abs=1e-12)
    assert len(readings) == truth.t.size * len(online)


def test_volume_rises_by_the_integral_of_the_feed() -> None:
    p = plant()
    drive(p, 4.0, read_every=7)
    truth = p.truth()
    V = truth.x[:, MODEL.index("V")]
    fed = np.concatenate([[0.0], np.cumsum(truth.u[:-1, NAMES.index("F")] * PERIOD)])
    np.testing.assert_allclose(V - V[0], fed, rtol=0, atol=1e-9)
    assert fed[-1] > 0.1


def test_online_noise_has_the_configured_std() -> None:
    sigma = {"DO_probe": 1.0, "y_O2_out": 0.02, "V_meas": 0.01}
    noisy = plant(online=sigma, clip_to_range=False, seed=3)
    clean = plant(online=dict.fromkeys(sigma, 0.0), seed=3)
    a, b = drive(noisy, 20.0), drive(clean, 20.0)
    for name, s in sigma.items():
        e = np.array([r.value - q.value for r, q in zip(a, b, strict=True) if r.sensor == name])
        assert e.size == 1201
        assert abs(e.mean()) < 4 * s / math.sqrt(e.size)
        assert e.std() == pytest.approx(s, rel=0.08)  # std of the std ~ 2 %


def test_drift_is_a_linear_bias_from_the_start() -> None:
    kw = {"online": {"DO_probe": 0.0, "V_meas": 0.0}, "t0_h": 2.0, "u0": u_vec(setpoints(2.0))}
    drifting = plant(drift={"DO_probe": -0.5}, **kw)
    clean = plant(**kw)
    for q in (drifting, clean):
        q.apply(2.0, setpoints(2.0))
    a, b = drifting.read(6.0), clean.read(6.0)
    assert len(a) == len(b) == 2 * 241
    bias = []
    for r, c in zip(a, b, strict=True):
        assert (r.sensor, r.t_sample) == (c.sensor, c.t_sample)
        if r.sensor == "DO_probe":
            bias.append((r.t_sample, r.value - c.value))
        else:
            assert r.value == c.value
    tb, db = np.array(bias).T
    slope, intercept = np.polyfit(tb - 2.0, db, 1)
    assert slope == pytest.approx(-0.5, rel=1e-9)
    assert intercept == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(db, -0.5 * (tb - 2.0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("delay", [6 * PERIOD, 2.75 * PERIOD])
def test_a_delayed_sensor_shows_the_output_delay_hours_earlier(delay: float) -> None:
    online = {"DO_probe": 0.0, "y_O2_out": 0.0}
    clean = plant(online=online)
    undelayed = drive(clean, 1.5, read_every=1000)  # one late read at the end
    lagging = plant(online=online, delay_h={"y_O2_out": delay})
    readings = drive(lagging, 1.5, read_every=3)
    truth = clean.truth()
    np.testing.assert_array_equal(lagging.truth().x, truth.x)
    assert [r for r in readings if r.sensor == "DO_probe"] == [
        r for r in undelayed if r.sensor == "DO_probe"
    ]
    pv = MODEL.p0
    j = MODEL.index("y_O2_out")
    checked = 0
    for r in readings:
        if r.sensor != "y_O2_out":
            continue
        assert r.t_sample is not None
        s = max(r.t_sample - delay, 0.0)
        kb = math.floor(s / PERIOD + 1e-9)
        x = truth.x[kb]
        if s - kb * PERIOD > 1e-12:  # between two instants: integrate from the one before
            x = np.asarray(CAS.integrator(s - kb * PERIOD)(x, truth.u[kb], pv)).reshape(-1)
            u_seen = truth.u[kb]
        else:
            u_seen = truth.u[max(kb - 1, 0)]
        assert r.value == pytest.approx(CAS.outputs(x, u_seen, pv)[j], rel=1e-8)
        assert r.value == lagging.output_at(r.t_sample - delay)[j]
        checked += 1
    assert checked == 91


def test_offline_assays_arrive_one_to_three_hours_late_with_their_sample_time() -> None:
    p = ecoli_plant(MODEL, seed=11, parameter_factors={})
    arrivals: list[tuple[float, Reading]] = []
    for k in range(round(24.0 / PERIOD) + 1):
        t = k * PERIOD
        if k % 10 == 0:
            p.apply(t, setpoints(min(t, 2.0)))
        arrivals += [(t, r) for r in p.read(t) if r.sensor.endswith("_off")]
    truth = p.truth()
    samples = sorted({r.t_sample for _, r in arrivals if r.t_sample is not None})
    assert len(samples) >= 5
    gaps = np.diff([0.0, *samples])
    assert np.all(gaps >= 2.0 - PERIOD) and np.all(gaps <= 4.0 + PERIOD)
    for t_arrive, r in arrivals:
        assert r.t_sample is not None
        assert 1.0 - 1e-9 <= t_arrive - r.t_sample <= 3.0 + PERIOD + 1e-9
        k = round(r.t_sample / PERIOD)
        assert abs(r.t_sample - k * PERIOD) < 1e-12
        y = CAS.outputs(truth.x[k], truth.u[k - 1], p.p_true)[MODEL.index(r.sensor)]
        assert abs(r.value - y) <= 5 * math.hypot(0.02, 0.05 * y)
    per_sample = {ts: {r.sensor for _, r in arrivals if r.t_sample == ts} for ts in samples}
    assert all(v == {"X_off", "S_off", "A_off", "P_off"} for v in per_sample.values())


def test_readings_do_not_depend_on_when_the_loop_reads() -> None:
    def key(rs: list[Reading]) -> list[tuple[str, float | None, float]]:
        return sorted((r.sensor, r.t_sample, r.value) for r in rs)

    runs = []
    for read_every in (1, 7, 100000):
        p = ecoli_plant(MODEL, seed=4, delay_h={"DO_probe": 0.05}, drift={"V_meas": 0.01})
        runs.append(key(drive(p, 9.0, read_every=read_every)))
    assert runs[0] == runs[1] == runs[2]
    assert any(s.endswith("_off") for s, _, _ in runs[0])


def test_same_seed_same_readings_other_seed_other_noise() -> None:
    a, b, c = (ecoli_plant(MODEL, seed=s) for s in (7, 7, 8))
    ra, rb, rc = drive(a, 6.0), drive(b, 6.0), drive(c, 6.0)
    assert ra == rb
    np.testing.assert_array_equal(a.truth().x, c.truth().x)  # the same plant
    assert ra != rc
    np.testing.assert_allclose(a.p_true, MODEL.p0 * factors_vector(ECOLI_PLANT_FACTORS))


def factors_vector(factors: Mapping[str, float]) -> np.ndarray:
    f = np.ones(MODEL.n_p)
    for name, v in factors.items():
        f[MODEL.index(name)] = v
    return f


def test_ecoli_plant_defaults() -> None:
    p = ecoli_plant(MODEL, seed=0)
    np.testing.assert_array_equal(p.x, X0)
    assert set(p.online_sensors) == set(ECOLI_ONLINE_NOISE)
    p.apply(0.0, setpoints(0.0))
    assert {r.sensor for r in p.read(0.0)} == set(ECOLI_ONLINE_NOISE)
    with pytest.raises(ValueError, match="ecoli_fedbatch"):
        ecoli_plant(load_model("yeast_fedbatch"), seed=0)


def test_bad_calls_raise_and_change_nothing() -> None:
    p = ecoli_plant(MODEL, seed=2)
    p.apply(0.0, setpoints(0.0))
    p.read(1.0)
    before = (p.t_h, p.x, p.u, p.truth().x.copy())

    def unchanged() -> None:
        after = (p.t_h, p.x, p.u, p.truth().x)
        assert after[0] == before[0]
        for x, y in zip(after[1:], before[1:], strict=True):
            np.testing.assert_array_equal(x, y)

    ok = setpoints(1.5)
    cases: list[tuple[float, Mapping[str, float], str]] = [
        (0.5, ok, "went backwards"),
        (1.5, {**ok, "pH": 7.0}, "unknown input.*'pH'"),
        (1.5, {k: v for k, v in ok.items() if k != "F"}, "missing F"),
        (1.5, {**ok, "F": float("nan")}, "'F' must be a finite"),
        (1.5, {**ok, "T_set": float("inf")}, "'T_set' must be a finite"),
        (float("nan"), ok, "finite number of hours"),
    ]
    for t, sp, match in cases:
        with pytest.raises(ValueError, match=match):
            p.apply(t, sp)
        unchanged()
    with pytest.raises(ValueError, match="went backwards"):
        p.read(0.99)
    unchanged()
    assert p.read(1.0) == []  # same time again: nothing new


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"online": {"pH_probe": 0.1}}, "not an output"),
        ({"online": {"DO_probe": -1.0}}, "std >= 0"),
        ({"online": {"DO_probe": 1.0}, "drift": {"V_meas": 0.1}}, "not an online sensor"),
        ({"online": {"DO_probe": 1.0}, "delay_h": {"DO_probe": -0.1}}, ">= 0"),
        ({"parameter_factors": {"mu_maxx": 1.2}}, "not a parameter"),
        ({"p_true": {"mu_max": 1.0}, "parameter_factors": {"Y_xs": 1.2}}, "not both"),
        ({"x0": {"X": -1.0}}, "outside"),
        ({"period_h": 0.0}, "period_h"),
        ({"online": {"X_off": 0.1}, "offline": OfflineAssays()}, "both online and offline"),
    ],
)
def test_bad_configuration_is_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plant(**kw)


def test_apply_clips_to_the_device_range_and_confirms_what_it_holds() -> None:
    p = plant(online={"V_meas": 0.0})
    lo, hi = MODEL.bounds("inputs")
    held = p.apply(0.0, {"F": 5.0, "Q_air": -3.0, "N_stir": 900.0, "T_set": 37.5})
    assert held == {"F": hi[0], "Q_air": lo[1], "N_stir": 900.0, "T_set": 37.5}
    np.testing.assert_array_equal(p.u, u_vec(held))
    p.read(0.5)
    truth = p.truth()
    np.testing.assert_array_equal(truth.u, np.tile(u_vec(held), (truth.t.size, 1)))
    assert truth.x[-1, MODEL.index("V")] == pytest.approx(X0[MODEL.index("V")] + 0.5 * hi[0])


def test_a_late_read_returns_one_reading_per_instant_and_sensor() -> None:
    online = {"DO_probe": 1.0, "V_meas": 0.01}
    p = plant(online=online)
    p.apply(0.0, setpoints(0.0))
    assert [r.t_sample for r in p.read(0.0)] == [0.0, 0.0]
    late = p.read(0.1 + 1e-12)  # six instants passed (round-off of the loop's clock)
    assert len(late) == 6 * len(online)
    assert [r.t_sample for r in late[::2]] == pytest.approx([k * PERIOD for k in range(1, 7)])
    assert [r.sensor for r in late] == list(online) * 6
    assert p.read(0.105) == []  # no instant passed
    nxt = p.read(0.1 + PERIOD)
    assert [r.t_sample for r in nxt] == pytest.approx([7 * PERIOD] * 2)


def test_readings_are_clipped_to_the_physical_range() -> None:
    p = plant(online={"DO_probe": 500.0}, seed=1)
    p.apply(0.0, setpoints(0.0))
    values = [r.value for r in p.read(2.0)]
    assert min(values) == 0.0 and max(values) == 200.0


# --- process noise ---------------------------------------------------------------------


def test_process_noise_is_a_random_walk_with_the_configured_std() -> None:
    # V's rate is the feed alone (test_volume_rises_by_the_integral_of_the_feed), so the
    # noisy minus the noise-free volume is the walk itself: increments N(0, sigma^2 dt).
    sigma = 0.05  # L per sqrt(h)
    noisy = plant(process_noise={"V": sigma}, seed=5)
    clean = plant(seed=5)
    drive(noisy, 20.0, read_every=13)
    drive(clean, 20.0, read_every=13)
    iv = MODEL.index("V")
    walk = noisy.truth().x[:, iv] - clean.truth().x[:, iv]
    assert walk[0] == 0.0  # the initial state is the configured one
    steps = np.diff(walk) / math.sqrt(PERIOD)
    assert steps.size == 1200
    assert abs(steps.mean()) < 4 * sigma / math.sqrt(steps.size)
    assert steps.std() == pytest.approx(sigma, rel=0.08)  # std of the std ~ 2 %
    assert abs(np.corrcoef(steps[:-1], steps[1:])[0, 1]) < 4 / math.sqrt(steps.size)
    assert noisy.process_noise == {"V": sigma}
    assert clean.process_noise == {}


def test_process_noise_depends_on_the_seed_not_on_when_the_loop_reads() -> None:
    noise = {"X": 0.02, "S": 0.01, "DO": 1.0}
    runs = []
    for read_every in (1, 7, 100000):
        p = ecoli_plant(MODEL, seed=4, process_noise=noise, delay_h={"DO_probe": 0.05})
        got = drive(p, 6.0, read_every=read_every)
        runs.append((sorted((r.sensor, r.t_sample, r.value) for r in got), p.truth().x))
    for key, x in runs[1:]:
        assert key == runs[0][0]
        np.testing.assert_array_equal(x, runs[0][1])
    other = ecoli_plant(MODEL, seed=5, process_noise=noise)
    drive(other, 6.0)
    assert not np.array_equal(other.truth().x, runs[0][1])


def test_no_process_noise_is_the_noise_free_plant_bit_for_bit() -> None:
    ref = ecoli_plant(MODEL, seed=3)
    a = drive(ref, 8.0)
    for noise in (None, {}, {"X": 0.0, "DO": 0.0}):
        p = ecoli_plant(MODEL, seed=3, process_noise=noise)
        assert drive(p, 8.0) == a
        np.testing.assert_array_equal(p.truth().x, ref.truth().x)
    # with process noise on, the online and offline noise streams are unchanged: the
    # readings' errors about the (now disturbed) truth are the same draws
    q = ecoli_plant(MODEL, seed=3, process_noise={"V": 0.01})
    b = drive(q, 8.0)
    assert [(r.sensor, r.t_sample) for r in b] == [(r.sensor, r.t_sample) for r in a]
    ka = {(r.sensor, r.t_sample): r.value for r in a}
    iv = MODEL.index("V")
    dv = q.truth().x[:, iv] - ref.truth().x[:, iv]
    assert np.abs(dv).max() > 0.01
    for r in b:
        assert r.t_sample is not None
        k = round(r.t_sample / PERIOD)
        if r.sensor == "V_meas":  # V_meas = V + noise: the same noise about the new V
            assert r.value == pytest.approx(ka[(r.sensor, r.t_sample)] + dv[k], abs=1e-9)


def test_process_noise_keeps_the_states_within_their_bounds() -> None:
    p = plant(process_noise={"X": 5.0, "S": 50.0, "A": 1.0, "DO": 50.0}, seed=9)
    drive(p, 3.0)
    lo, hi = MODEL.bounds("states")
    x = p.truth().x
    assert np.all(x >= lo) and np.all(x <= hi)
    assert np.any(x[:, MODEL.index("A")] == 0.0)  # clipped at the bound, not below


def test_restarted_is_the_same_run_unless_told_otherwise() -> None:
    p = ecoli_plant(MODEL, seed=6, process_noise={"X": 0.02}, drift={"V_meas": 0.01})
    first = drive(p, 4.0)
    again = p.restarted()
    assert again.t_h == 0.0
    assert drive(again, 4.0) == first
    np.testing.assert_array_equal(again.truth().x, p.truth().x)
    quiet = p.restarted(process_noise=None)
    assert quiet.process_noise == {}
    drive(quiet, 4.0)
    ref = ecoli_plant(MODEL, seed=6, drift={"V_meas": 0.01})
    drive(ref, 4.0)
    np.testing.assert_array_equal(quiet.truth().x, ref.truth().x)
    nominal = p.restarted(parameter_factors={})
    np.testing.assert_array_equal(nominal.p_true, MODEL.p0)


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        ({"Q": 0.1}, "process_noise: 'Q' is not a state"),
        ({"y_O2_out": 0.1}, "'y_O2_out' is not a state"),
        ({"X": -0.1}, r"process_noise\['X'\] must be a finite std >= 0"),
        ({"X": float("nan")}, r"process_noise\['X'\] must be a finite"),
        ({"S": float("inf")}, r"process_noise\['S'\] must be a finite"),
        ({"S": "0.1"}, r"process_noise\['S'\] must be a finite"),
        ({"S": True}, r"process_noise\['S'\] must be a finite"),
        ([0.1], "process_noise must be a mapping"),
    ],
)
def test_bad_process_noise_is_refused(noise: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plant(process_noise=noise)
    with pytest.raises(ValueError, match=match):
        ecoli_plant(MODEL, seed=0, process_noise=noise)  # type: ignore[arg-type]
