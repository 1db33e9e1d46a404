"""Interlocks: trips on raw readings with a debounce, cuts at once, caps until released with
hysteresis, refuses bad declarations with the key named; and the yeast pack's low-DO
interlock in a real closed loop where the estimator is blind to the cause."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpcontrol.interlocks import parse_interlocks
from bpcontrol.kpis import setpoint_violations
from bpcontrol.records import EventKind, SetpointSource
from bpcontrol.supervisor import SetpointLimits, Supervisor, SupervisorConfig

NAMES = ("F", "kLa")
LIMITS = {
    "F": SetpointLimits(0.0, 0.5, 0.2),  # L/h, L/h per h
    "kLa": SetpointLimits(100.0, 1500.0, 1500.0),  # 1/h
}
LOW_DO = {
    "name": "low-DO",
    "sensor": "DO_probe",
    "below": 20.0,
    "readings": 2,
    "release": 25.0,
    "cut": {"F": 0.5},
}


def make(*docs: dict) -> Supervisor:
    locks = parse_interlocks(list(docs), outputs=("DO_probe", "OUR"), inputs=NAMES)
    return Supervisor(
        SupervisorConfig(NAMES, LIMITS, lambda t: np.array([0.0, 600.0]), 5.0, interlocks=locks)
    )


def test_two_low_readings_cut_the_feed_at_once_and_cap_it_until_released() -> None:
    sup = make(LOW_DO)
    state = sup.init(np.array([0.4, 1500.0]), 0.0)
    rec, events, state = sup.watch(state, 0.1, {"DO_probe": 19.0})
    assert rec is None and not events  # one reading: the debounce holds
    rec, events, state = sup.watch(state, 0.2, {"DO_probe": 18.5})
    assert rec is not None and rec.source is SetpointSource.INTERLOCK
    assert rec.values == {"F": pytest.approx(0.2), "kLa": 1500.0}  # half the feed, kLa kept
    assert [e.kind for e in events] == [EventKind.INTERLOCK] and "tripped" in events[0].message
    # the controller's plan cannot raise the feed above the cap while tripped
    out, state = sup.step(
        state, 0.3, plan_u=np.array([0.5, 1500.0]), plan_ok=True, solve_time_s=0.1, estimate_ok=True
    )
    assert out.setpoint.values["F"] == pytest.approx(0.2)
    # 24 % is inside the hysteresis band: still tripped; 26 % releases
    rec, events, state = sup.watch(state, 0.4, {"DO_probe": 24.0})
    assert rec is None and not events and state.interlock.tripped == 1
    rec, events, state = sup.watch(state, 0.5, {"DO_probe": 26.0})
    assert rec is None and "released" in events[0].message and state.interlock.tripped == 0
    # released: the rate limit (0.2 L/h per h) brings the feed back, bumplessly
    out, state = sup.step(
        state, 1.0, plan_u=np.array([0.5, 1500.0]), plan_ok=True, solve_time_s=0.1, estimate_ok=True
    )
    assert out.setpoint.values["F"] == pytest.approx(0.2 + 0.2 * 0.7)


def test_a_single_spike_or_garbage_never_trips_it() -> None:
    sup = make(LOW_DO)
    state = sup.init(np.array([0.4, 1500.0]), 0.0)
    for i, value in enumerate([5.0, 30.0, 4.0, math.nan, 3.0, 30.0]):
        rec, events, state = sup.watch(state, 0.1 * (i + 1), {"DO_probe": value})
        assert rec is None and not events


def test_a_high_trip_and_a_cut_never_below_the_lower_limit() -> None:
    high = {"sensor": "OUR", "above": 300.0, "release": 250.0, "cut": {"kLa": 0.0}}
    sup = make(high)
    state = sup.init(np.array([0.4, 1000.0]), 0.0)
    rec, _, state = sup.watch(state, 0.1, {"OUR": 301.0})
    assert rec is not None and rec.values["kLa"] == 100.0  # the lower limit, not 0


def test_an_interlock_cut_is_exempt_from_the_rate_clamp_but_not_from_the_limits() -> None:
    sup = make(LOW_DO)
    state = sup.init(np.array([0.4, 1500.0]), 0.0)
    _, _, state = sup.watch(state, 0.1, {"DO_probe": 19.0})
    rec, _, state = sup.watch(state, 0.2, {"DO_probe": 19.0})
    assert rec is not None
    out, _ = sup.step(
        state, 0.3, plan_u=np.array([0.4, 1500.0]), plan_ok=True, solve_time_s=0.1, estimate_ok=True
    )
    first = out.setpoint.__class__(0.0, {"F": 0.4, "kLa": 1500.0}, SetpointSource.NMPC)
    assert setpoint_violations([first, rec, out.setpoint], LIMITS) == []
    fake = rec.__class__(0.2, dict(rec.values), SetpointSource.NMPC)  # the same drop by a plan
    assert len(setpoint_violations([first, fake], LIMITS)) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sensor": "pH"}, r"interlocks\[0\].sensor: 'pH' is not a measured output"),
        ({"above": 90.0}, r"interlocks\[0\]: give exactly one of below or above"),
        ({"release": 15.0}, r"interlocks\[0\].release: 15 must not be below the trip level 20"),
        ({"cut": {"G": 0.5}}, r"interlocks\[0\].cut.G: not an input"),
        ({"cut": {"F": 1.5}}, r"interlocks\[0\].cut.F: must be a fraction in \[0, 1\]"),
        ({"cut": {}}, r"interlocks\[0\].cut: must be a table"),
        ({"readings": 0}, r"interlocks\[0\].readings: must be an integer >= 1"),
        ({"below": math.inf}, r"interlocks\[0\].below: must be a finite number"),
        ({"when": "always"}, r"interlocks\[0\]: unknown keys \['when'\]"),
    ],
)
def test_bad_declarations_name_the_key(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_interlocks(
            [LOW_DO | change], outputs=("DO_probe", "OUR"), inputs=NAMES, where="interlocks"
        )


def test_a_recipe_file_with_a_bad_interlock_names_the_file_and_key(tmp_path) -> None:
    from bpcontrol.recipe import RecipeError, default_recipe_path, load_recipe
    from models import load_model

    model = load_model("yeast_fedbatch")
    text = default_recipe_path("yeast_fedbatch").read_text()
    bad = tmp_path / "recipe.toml"
    bad.write_text(text.replace('sensor = "DO_probe"', 'sensor = "DO"'))
    with pytest.raises(RecipeError, match=rf"{bad}: interlocks\[0\].sensor: 'DO' is not a"):
        load_recipe(bad, model)
    assert load_recipe(default_recipe_path("yeast_fedbatch"), model).interlocks[0].cut == {"F": 0.5}
