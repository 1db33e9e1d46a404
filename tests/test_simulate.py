"""Open-loop simulation: analytic references, backend agreement, input schedules, errors."""

from __future__ import annotations

import numpy as np
import pytest

from models import (
    InputProfile,
    Model,
    SimulationError,
    State,
    Trajectory,
    load_model,
    simulate,
)


@pytest.fixture(scope="module")
def batch() -> Model:
    return load_model("dompc_batch_reactor")


@pytest.fixture(scope="module")
def ecoli() -> Model:
    return load_model("ecoli_fedbatch")


# --- analytic references on the do-mpc batch reactor -------------------------------------
# Model: mu = mu_m S / (K_m + S + S^2/K_i), D = inp / V and
#   X' = (mu - D) X,  S' = -mu X / Y_x - v_par X / Y_p + D (S_in - S),
#   P' = v_par X - D P,  V' = inp.


@pytest.mark.parametrize("backend", ["casadi", "jax"])
def test_no_feed_keeps_volume_constant(batch: Model, backend: str) -> None:
    # inp = 0  =>  V' = 0: the volume stays at V0 whatever the kinetics do.
    traj = simulate(batch, 24.0, dt_out_h=0.5, backend=backend)
    np.testing.assert_allclose(traj.column("V_s"), batch.x0[batch.index("V_s")], rtol=1e-13)
    assert traj.column("X_s")[-1] > traj.column("X_s")[0]  # it does grow meanwhile


@pytest.mark.parametrize("backend", ["casadi", "jax"])
def test_no_growth_no_feed_is_linear_in_time(batch: Model, backend: str) -> None:
    # mu_m = 0 and inp = 0: X' = 0, so X = X0; then P' = v_par X0 and S' = -v_par X0 / Y_p
    # are constant:  P(t) = P0 + v_par X0 t,  S(t) = S0 - v_par X0 t / Y_p  (exactly).
    p = batch.parameters_with(mu_m=0.0)
    traj = simulate(batch, 20.0, p=p, dt_out_h=0.25, backend=backend)
    t = traj.t
    X0, S0, P0, _ = batch.x0
    v_par, Y_p = p[batch.index("v_par")], p[batch.index("Y_p")]
    np.testing.assert_allclose(traj.column("X_s"), X0, rtol=1e-12)
    np.testing.assert_allclose(traj.column("P_s"), P0 + v_par * X0 * t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(traj.column("S_s"), S0 - v_par * X0 * t / Y_p, rtol=1e-9)


@pytest.mark.parametrize("backend", ["casadi", "jax"])
def test_feed_steps_off_the_output_grid(batch: Model, backend: str) -> None:
    # mu_m = 0 and piecewise-constant inp: V(t) = V0 + int inp.  Then
    #   (X V)' = X' V + X V' = -inp X + X inp = 0                =>  X V = X0 V0
    #   (P V)' = (v_par X - D P) V + P inp = v_par X V = v_par X0 V0
    #                                                             =>  P V = P0 V0 + v_par X0 V0 t
    #   (S V)' = -v_par X V / Y_p + inp S_in  =>  S V = S0 V0 - v_par X0 V0 t / Y_p + S_in int inp
    # The steps at 5.05 h and 7.3 h fall between output times (dt 0.5 h).
    p = batch.parameters_with(mu_m=0.0)
    profile = InputProfile([0.0, 5.05, 7.3], [[0.0], [0.1], [0.05]], ("inp",))
    traj = simulate(batch, 10.0, profile, p=p, dt_out_h=0.5, backend=backend)
    t = traj.t
    X0, S0, P0, V0 = batch.x0
    v_par, Y_p, S_in = (p[batch.index(n)] for n in ("v_par", "Y_p", "S_in"))
    fed = 0.1 * np.clip(t - 5.05, 0.0, 7.3 - 5.05) + 0.05 * np.clip(t - 7.3, 0.0, None)
    V = V0 + fed
    np.testing.assert_allclose(traj.column("V_s"), V, rtol=1e-12)
    # within the integrators' tolerances (CVODES: 1e-10 relative and absolute)
    np.testing.assert_allclose(traj.column("X_s"), X0 * V0 / V, rtol=1e-8)
    np.testing.assert_allclose(traj.column("P_s"), (P0 * V0 + v_par * X0 * V0 * t) / V, rtol=1e-8)
    S = (S0 * V0 - v_par * X0 * V0 * t / Y_p + S_in * fed) / V
    np.testing.assert_allclose(traj.column("S_s"), S, rtol=1e-8)
    # the recorded input is the one applied from each output time on
    np.testing.assert_array_equal(traj.column("inp"), profile.values_at(t + 1e-9)[:, 0])


def test_outputs_are_measured_states(batch: Model) -> None:
    traj = simulate(batch, 2.0, dt_out_h=0.5)
    np.testing.assert_allclose(traj.y[:, :4], traj.x, rtol=1e-15)  # X, S, P, V _meas
    # the derived output: product in the reactor, P_s V_s
    np.testing.assert_allclose(traj.column("P_total"), traj.x[:, 2] * traj.x[:, 3], rtol=1e-15)


# --- the two backends agree ---------------------------------------------------------------


def test_casadi_and_jax_agree_on_ecoli_over_10_h(ecoli: Model) -> None:
    # Well aerated fed-batch at 30 degC: overflow and glucose limitation, no O2 limitation
    # (DO stays above 20 %). In O2 limitation the DO balance is stiff (rates ~1e5 1/h),
    # which explicit RK4 cannot follow at these steps; see the next test.
    profile = InputProfile.from_steps(
        ecoli, {"F": 0.01, "Q_air": 20.0, "N_stir": 1200.0, "T_set": 30.0}
    )
    ref = simulate(ecoli, 10.0, profile, rtol=1e-12, atol=1e-12)
    jx = simulate(ecoli, 10.0, profile, backend="jax", max_step_h=2e-4)
    assert ref.column("DO").min() > 20.0
    np.testing.assert_array_equal(ref.t, jx.t)
    assert np.max(np.abs(jx.x - ref.x) / (1.0 + np.abs(ref.x))) < 1e-6
    assert np.max(np.abs(jx.y - ref.y) / (1.0 + np.abs(ref.y))) < 1e-6


def test_jax_refuses_stiff_oxygen_limitation(ecoli: Model) -> None:
    # nominal aeration: DO falls to ~0 near 5 h, where RK4 at 1e-3 h is unstable
    with pytest.raises(SimulationError, match="casadi backend"):
        simulate(ecoli, 10.0, backend="jax")


# --- input profiles -----------------------------------------------------------------------


def test_profile_value_at_is_piecewise_constant() -> None:
    prof = InputProfile([1.0, 2.0, 4.0], [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], ("a", "b"))
    assert prof.value_at(0.0).tolist() == [1.0, 10.0]  # first row also before times[0]
    assert prof.value_at(1.999).tolist() == [1.0, 10.0]
    assert prof.value_at(2.0).tolist() == [2.0, 20.0]
    assert prof.value_at(100.0).tolist() == [3.0, 30.0]
    assert prof.values_at([0.5, 3.0]).tolist() == [[1.0, 10.0], [2.0, 20.0]]
    with pytest.raises(ValueError):
        prof.values[0, 0] = 5.0  # read-only


@pytest.mark.parametrize(
    ("times", "values", "names", "message"),
    [
        ([0.0, 2.0, 1.0], [[0.0], [1.0], [2.0]], ("F",), "strictly increasing"),
        ([0.0, 1.0, 1.0], [[0.0], [1.0], [2.0]], ("F",), "strictly increasing"),
        ([-1.0, 1.0], [[0.0], [1.0]], ("F",), "start at 0 h or later"),
        ([0.0, np.nan], [[0.0], [1.0]], ("F",), "times must be finite"),
        ([0.0, 1.0], [[0.0], [np.inf]], ("F",), "value of 'F' at 1 h is inf"),
        ([0.0, 1.0], [[0.0, 1.0], [1.0, 2.0]], ("F",), r"shape \(2, 2\), expected \(2, 1\)"),
        ([], np.zeros((0, 1)), ("F",), "non-empty"),
        ([0.0], [[0.0, 1.0]], ("F", "F"), "names repeat: F"),
        ([0.0], [["x"]], ("F",), "values must be numbers"),
    ],
)
def test_profile_validation(
    times: object, values: object, names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        InputProfile(times, values, names)  # type: ignore[arg-type]


def test_profile_constant_and_from_steps(ecoli: Model) -> None:
    const = InputProfile.constant(ecoli)
    assert const.times.tolist() == [0.0]
    np.testing.assert_array_equal(const.values[0], ecoli.u0)

    prof = InputProfile.from_steps(ecoli, {"F": [(8.0, 0.05), (20.0, 0.1)], "N_stir": 900})
    assert prof.times.tolist() == [0.0, 8.0, 20.0]
    f, n, q = (prof.values[:, ecoli.index(k)] for k in ("F", "N_stir", "Q_air"))
    assert f.tolist() == [ecoli.u0[ecoli.index("F")], 0.05, 0.1]  # nominal before 8 h
    assert n.tolist() == [900.0] * 3
    assert q.tolist() == [ecoli.u0[ecoli.index("Q_air")]] * 3

    with pytest.raises(ValueError, match=r"unknown input 'Fx'.*known: F, Q_air, N_stir, T_set"):
        InputProfile.from_steps(ecoli, {"Fx": 1.0})
    with pytest.raises(ValueError, match="strictly increasing"):
        InputProfile.from_steps(ecoli, {"F": [(8.0, 0.05), (2.0, 0.1)]})


def test_profile_for_model_reorders_and_checks_bounds(ecoli: Model) -> None:
    names = tuple(reversed(ecoli.input_names))
    prof = InputProfile([0.0], [ecoli.u0[::-1]], names).for_model(ecoli)
    assert prof.names == ecoli.input_names
    np.testing.assert_array_equal(prof.values[0], ecoli.u0)

    bad = InputProfile(
        [0.0, 3.0], np.vstack([ecoli.u0, [0.9, 6.0, 600.0, 37.0]]), ecoli.input_names
    )
    with pytest.raises(
        ValueError, match=r"input 'F' = 0.9 L/h at 3 h is outside its bounds \[0, 0.5\]"
    ):
        bad.for_model(ecoli)
    with pytest.raises(ValueError, match="missing Q_air, N_stir, T_set"):
        InputProfile([0.0], [[0.0]], ("F",)).for_model(ecoli)


# --- the trajectory container -------------------------------------------------------------


def test_output_grid_ends_exactly_at_hours(batch: Model) -> None:
    traj = simulate(batch, 1.05, dt_out_h=0.1)
    assert traj.t.size == 12
    assert traj.t[-1] == 1.05
    np.testing.assert_allclose(np.diff(traj.t)[:-1], 0.1)
    assert simulate(batch, 0.3, dt_out_h=0.1).t.size == 4  # 0.3 / 0.1 round-off tolerated


def test_frame_columns_and_units(batch: Model) -> None:
    traj = simulate(batch, 1.0, dt_out_h=0.5)
    assert isinstance(traj, Trajectory)
    frame = traj.to_frame()
    states = ["X_s", "S_s", "P_s", "V_s"]
    outputs = ["X_meas", "S_meas", "P_meas", "V_meas", "P_total"]
    assert list(frame.columns) == ["t_h", *states, "inp", *outputs]
    assert frame.attrs["units"]["t_h"] == "h"
    assert frame.attrs["units"]["V_s"] == "m3"
    assert frame.attrs["units"]["inp"] == "m3/h"
    assert traj.units == frame.attrs["units"]
    assert set(traj.final_state()) == set(batch.state_names)
    with pytest.raises(KeyError, match="no column 'nope'"):
        traj.column("nope")


def test_states_outside_bounds_are_not_clipped(batch: Model) -> None:
    # X_s starts above its upper bound 3.7 mol/L; with mu_m = 0 and no feed it stays there
    traj = simulate(batch, 5.0, x0={"X_s": 5.0}, p={"mu_m": 0.0})
    np.testing.assert_allclose(traj.column("X_s"), 5.0, rtol=1e-12)


def test_progress_reports_up_to_the_end(batch: Model) -> None:
    seen: list[tuple[float, float]] = []
    simulate(batch, 2.0, dt_out_h=0.5, progress=lambda t, end: seen.append((t, end)))
    assert [t for t, _ in seen] == [0.5, 1.0, 1.5, 2.0]
    assert {end for _, end in seen} == {2.0}


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hours": 0.0}, "hours must be a positive finite number"),
        ({"hours": -1.0}, "hours must be a positive finite number"),
        ({"hours": float("nan")}, "hours must be a positive finite number"),
        ({"hours": float("inf")}, "hours must be a positive finite number"),
        ({"dt_out_h": 0.0}, "dt_out_h must be a positive finite number"),
        ({"dt_out_h": 1e-9}, "output steps"),
        ({"backend": "scipy"}, "backend must be one of casadi, jax"),
        ({"x0": [1.0, 2.0]}, r"initial state vector has shape \(2,\), expected \(4,\)"),
        ({"x0": {"X": 1.0}}, "unknown initial state 'X'"),
        ({"x0": [1.0, np.nan, 0.0, 1.0]}, "initial state 'S_s' is not finite"),
        ({"p": np.ones(3)}, r"parameter vector has shape \(3,\), expected \(7,\)"),
        ({"p": {"mu_max": 1.0}}, "unknown parameter 'mu_max'"),
        ({"rtol": 0.0}, r"rtol must be in \(0, 1\)"),
        ({"profile": InputProfile([0.0], [[0.0]], ("F",))}, "missing inp; unknown F"),
        ({"profile": InputProfile([0.0], [[1.0]], ("inp",))}, "outside its bounds"),
    ],
)
def test_bad_arguments_raise_value_error(
    batch: Model, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"hours": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate(batch, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["casadi", "jax"])
def test_blow_up_raises_simulation_error(backend: str) -> None:
    # x' = x^2, x(0) = 1  =>  x = 1 / (1 - t): infinite at t = 1 h
    model = Model(
        name="blowup",
        description="finite-time blow-up",
        states=(State(name="x", unit="-", lower=0.0, upper=1e6, nominal=1.0),),
        inputs=(),
        parameters=(),
        outputs=(),
        rhs=lambda m, x, u, p: {"x": x.x**2},
        measure=lambda m, x, u, p: {},
    )
    early = simulate(model, 0.5, dt_out_h=0.5, backend=backend)
    np.testing.assert_allclose(early.x[-1, 0], 2.0, rtol=1e-6)
    assert early.u.shape == (2, 0) and early.y.shape == (2, 0)
    with pytest.raises(SimulationError, match="'blowup'"):
        simulate(model, 2.0, backend=backend)
