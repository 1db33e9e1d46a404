"""The supervisor: mode rules, fallback causes, limits, rate clamps, bumpless transfer, audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpcontrol.commands import AcknowledgeAlarm, SetLimits, SetMode, SetSetpoint
from bpcontrol.records import (
    AuditRecord,
    EventKind,
    EventRecord,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.supervisor import (
    CommandOutcome,
    Mode,
    SetpointLimits,
    Supervisor,
    SupervisorConfig,
    SupervisorState,
)

NAMES = ("F", "T")
LIMITS = {
    "F": SetpointLimits(0.0, 1.0, 0.5),  # L/h, L/h per h
    "T": SetpointLimits(25.0, 37.0, 2.0),  # degC, degC per h
}
DEADLINE_S = 5.0
DT = 0.1  # h


def recipe(t_h: float) -> np.ndarray:
    """A feed ramp at constant temperature."""
    return np.array([0.2 + 0.01 * t_h, 30.0])


def make(fallback=recipe, hard_bounds=None, auto_resume_after=None) -> Supervisor:
    return Supervisor(
        SupervisorConfig(
            NAMES,
            LIMITS,
            fallback,
            DEADLINE_S,
            hard_bounds=hard_bounds or {},
            auto_resume_after=auto_resume_after,
        )
    )


U0 = np.array([0.2, 30.0])


def step_ok(sup: Supervisor, state: SupervisorState, t_h: float, plan_u, **kw):
    args = {"plan_ok": True, "solve_time_s": 0.1, "estimate_ok": True} | kw
    return sup.step(state, t_h, plan_u=None if plan_u is None else np.asarray(plan_u), **args)


def values(record: SetpointRecord) -> np.ndarray:
    return np.array([record.values[n] for n in NAMES])


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"limits": {**LIMITS, "X": SetpointLimits(0, 1, 1)}}, "unknown inputs"),
        ({"limits": {"F": LIMITS["F"]}}, "missing"),
        ({"controller_deadline_s": 0.0}, "deadline"),
        ({"controller_deadline_s": math.nan}, "deadline"),
        ({"input_names": ("F", "F")}, "duplicates"),
        ({"hard_bounds": {"F": (0.0, 0.5)}}, "hard bounds"),
        ({"hard_bounds": {"Q": (0.0, 0.5)}}, "unknown inputs"),
    ],
)
def test_config_refuses_bad_input(kwargs, match):
    base = {
        "input_names": NAMES,
        "limits": LIMITS,
        "fallback": recipe,
        "controller_deadline_s": DEADLINE_S,
    }
    with pytest.raises(ValueError, match=match):
        SupervisorConfig(**(base | kwargs))


@pytest.mark.parametrize(
    ("lower", "upper", "rate", "match"),
    [
        (1.0, 0.0, 1.0, "inverted"),
        (0.0, 1.0, 0.0, "rate_per_h"),
        (0.0, 1.0, -1.0, "rate_per_h"),
        (0.0, 1.0, math.nan, "rate_per_h"),
        (math.nan, 1.0, 1.0, "finite"),
    ],
)
def test_limits_refuse_bad_values(lower, upper, rate, match):
    with pytest.raises(ValueError, match=match):
        SetpointLimits(lower, upper, rate)


def test_init_refuses_start_outside_limits_or_wrong_shape():
    sup = make()
    with pytest.raises(ValueError, match="outside its limits"):
        sup.init([2.0, 30.0], 0.0)
    with pytest.raises(ValueError, match="shape"):
        sup.init([0.2], 0.0)
    with pytest.raises(ValueError, match="finite"):
        sup.init(U0, math.nan)


def test_step_refuses_time_going_backwards():
    sup = make()
    state = sup.init(U0, 1.0)
    with pytest.raises(ValueError, match=">= the last step"):
        step_ok(sup, state, 0.5, U0)


# ----------------------------------------------------------------------------- AUTO


def test_auto_applies_a_good_plan_within_limits():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, [0.22, 30.1])
    rec, events = out.setpoint, list(out.events)
    assert state.mode is Mode.AUTO
    assert rec.source == "nmpc"
    assert rec.clamped == ()
    np.testing.assert_allclose(values(rec), [0.22, 30.1])
    assert events == []


def test_rate_clamp_moves_exactly_rate_times_dt_and_records_it():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, [0.9, 30.0])
    rec = out.setpoint
    assert rec.values["F"] == pytest.approx(0.2 + 0.5 * DT)
    assert rec.values["T"] == 30.0
    assert rec.clamped == ("F",)


def test_absolute_clamp_caps_plan_at_upper_limit():
    sup = make()
    state = sup.init([0.95, 36.9], 0.0)
    out, state = step_ok(sup, state, 1.0, [5.0, 80.0])
    rec = out.setpoint
    np.testing.assert_array_equal(values(rec), [1.0, 37.0])
    assert rec.clamped == ("F", "T")


def test_zero_elapsed_time_allows_no_movement():
    sup = make()
    state = sup.init(U0, 2.0)
    out, state = step_ok(sup, state, 2.0, [0.8, 35.0])
    rec = out.setpoint
    np.testing.assert_array_equal(values(rec), U0)


@pytest.mark.parametrize(
    ("plan_u", "kw", "cause"),
    [
        ([math.nan, 30.0], {}, "not finite for ['F']"),
        ([0.2, math.inf], {}, "not finite for ['T']"),
        (None, {}, "no plan"),
        ([0.2, 30.0, 1.0], {}, "shape"),
        ([0.2, 30.0], {"plan_ok": False}, "controller failed"),
        ([0.2, 30.0], {"solve_time_s": DEADLINE_S + 0.01}, "late"),
        ([0.2, 30.0], {"solve_time_s": math.nan}, "late"),
        ([0.2, 30.0], {"estimate_ok": False}, "estimate unhealthy"),
    ],
)
def test_untrusted_plan_falls_back_in_the_same_step_with_an_event(plan_u, kw, cause):
    sup = make()
    state = sup.init(U0, 0.0)
    t = 3.0
    out, state = step_ok(sup, state, t, plan_u, **kw)
    rec, events = out.setpoint, list(out.events)
    assert state.mode is Mode.FALLBACK
    assert rec.source == "fallback"
    np.testing.assert_allclose(values(rec), recipe(t))  # recipe reachable within 3 h
    assert [e.kind for e in events] == ["fallback"]
    assert cause in events[0].message
    assert events[0].t_h == t and events[0].source == "supervisor"
    assert cause in state.fallback_cause


def test_fallback_event_names_every_cause():
    sup = make()
    state = sup.init(U0, 0.0)
    out, _ = step_ok(sup, state, DT, None, estimate_ok=False, solve_time_s=60.0)
    events = list(out.events)
    msg = events[0].message
    assert "estimate unhealthy" in msg and "no plan" in msg and "late" in msg


def test_solve_time_at_deadline_or_unmeasured_is_not_late():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, U0, solve_time_s=DEADLINE_S)
    events = list(out.events)
    out, state = step_ok(sup, state, 2 * DT, U0, solve_time_s=None)
    events2 = list(out.events)
    assert state.mode is Mode.AUTO and events == events2 == []


def test_fallback_stays_until_requested_and_emits_one_event():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, None)
    events = list(out.events)
    assert len(events) == 1
    for k in range(2, 10):  # good plans again: no silent return to AUTO, no repeated events
        out, state = step_ok(sup, state, k * DT, U0)
        rec, events = out.setpoint, list(out.events)
        assert state.mode is Mode.FALLBACK and rec.source == "fallback" and events == []


def test_bumpless_return_from_fallback_to_auto():
    sup = make()
    state = sup.init(U0, 0.0)
    t = 0.0
    for _ in range(30):  # settle on the recipe
        t += DT
        out, state = step_ok(sup, state, t, None)
        last = out.setpoint
    res, state = sup.request_mode(state, Mode.AUTO, who="ana", why="fixed", t_h=t)
    audit, events = res.audit, list(res.events)
    assert audit.accepted and state.mode is Mode.AUTO
    assert [e.kind for e in events] == ["mode-change"]
    far = np.array([1.0, 25.0])  # the controller wants something far away
    t += DT
    out, state = step_ok(sup, state, t, far)
    first = out.setpoint
    rates = np.array([LIMITS[n].rate_per_h for n in NAMES])
    jump = np.abs(values(first) - values(last))
    assert np.all(jump <= rates * DT + 1e-12)
    np.testing.assert_allclose(jump, rates * DT)  # it does move, at the rate limit
    assert first.source == "nmpc" and first.clamped == ("F", "T")
    for _ in range(100):
        t += DT
        out, state = step_ok(sup, state, t, far)
        rec = out.setpoint
    np.testing.assert_allclose(values(rec), far)
    assert rec.clamped == ()


@pytest.mark.parametrize("bad", ["raise", "nan", "shape"])
def test_broken_recipe_holds_and_says_so(bad):
    def fallback(t_h: float) -> np.ndarray:
        if bad == "raise":
            raise RuntimeError("recipe file missing")
        return np.array([math.nan, 30.0]) if bad == "nan" else np.zeros(3)

    sup = make(fallback=fallback)
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, None)
    rec, events = out.setpoint, list(out.events)
    np.testing.assert_array_equal(values(rec), U0)
    assert [e.kind for e in events] == ["fallback", "fallback-recipe-invalid"]


# ----------------------------------------------------------------------------- HOLD, MANUAL


def test_hold_freezes_whatever_the_controller_says():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, [0.3, 31.0])
    held = state.applied
    _, state = sup.request_mode(state, Mode.HOLD, who="ana", why="sampling", t_h=DT)
    for k in range(2, 20):
        out, state = step_ok(sup, state, k * DT, [1.0, 25.0], estimate_ok=k % 2 == 0)
        rec, events = out.setpoint, list(out.events)
        assert rec.source == "hold" and state.applied == held and events == []
        assert state.mode is Mode.HOLD


def test_manual_starts_at_applied_values_and_tracks_operator_setpoint():
    sup = make()
    state = sup.init(U0, 0.0)
    out, state = step_ok(sup, state, DT, [0.25, 30.0])
    res, state = sup.request_mode(state, "manual", who="ana", why="test", t_h=DT)
    audit = res.audit
    assert audit.accepted and state.mode is Mode.MANUAL
    assert state.operator == state.applied
    out, state = step_ok(sup, state, 2 * DT, None, estimate_ok=False)  # ignored in MANUAL
    rec = out.setpoint
    assert rec.source == "operator" and state.mode is Mode.MANUAL
    np.testing.assert_allclose(values(rec), [0.25, 30.0])
    res, state = sup.set_operator_setpoint(state, "F", 0.5, who="ana", why="more", t_h=0.2)
    audit = res.audit
    assert audit.accepted and audit.reason == "" and audit.action == "setpoint F = 0.5"
    out, state = step_ok(sup, state, 3 * DT, None)
    rec = out.setpoint
    assert rec.values["F"] == pytest.approx(0.25 + 0.5 * DT)
    out, state = step_ok(sup, state, 3.0, None)
    rec = out.setpoint
    assert rec.values["F"] == 0.5


# ----------------------------------------------------------------------------- refused writes


def _manual_state(sup: Supervisor) -> SupervisorState:
    state = sup.init(U0, 0.0)
    return sup.request_mode(state, Mode.MANUAL, who="ana", why="test", t_h=0.0)[1]


@pytest.mark.parametrize(
    ("name", "value", "who", "why", "t_h", "reason"),
    [
        ("X", 0.5, "ana", "r", 1.0, "unknown input"),
        ("F", math.nan, "ana", "r", 1.0, "finite"),
        ("F", math.inf, "ana", "r", 1.0, "finite"),
        ("F", 1.5, "ana", "r", 1.0, "outside the limits"),
        ("T", 20.0, "ana", "r", 1.0, "outside the limits"),
        ("F", "abc", "ana", "r", 1.0, "not a number"),
        ("F", 0.5, "", "r", 1.0, "who is required"),
        ("F", 0.5, "ana", " ", 1.0, "why is required"),
        ("F", 0.5, "ana", "r", math.nan, "t_h must be a finite"),
    ],
)
def test_refused_operator_setpoint_changes_nothing(name, value, who, why, t_h, reason):
    sup = make()
    state = _manual_state(sup)
    res, new = sup.set_operator_setpoint(state, name, value, who=who, why=why, t_h=t_h)
    audit, events = res.audit, list(res.events)
    assert new is state and events == []
    assert isinstance(audit, AuditRecord) and not audit.accepted
    assert reason in audit.reason
    assert math.isfinite(audit.t_h)


def test_operator_setpoint_refused_outside_manual():
    sup = make()
    state = sup.init(U0, 0.0)
    res, new = sup.set_operator_setpoint(state, "F", 0.5, who="ana", why="r", t_h=0.0)
    audit = res.audit
    assert new is state and not audit.accepted and "request MANUAL first" in audit.reason


@pytest.mark.parametrize(
    ("mode", "who", "why", "reason"),
    [
        ("turbo", "ana", "r", "unknown mode"),
        (Mode.HOLD, "", "r", "who is required"),
        (Mode.HOLD, "ana", "", "why is required"),
    ],
)
def test_refused_mode_request_changes_nothing(mode, who, why, reason):
    sup = make()
    state = sup.init(U0, 0.0)
    res, new = sup.request_mode(state, mode, who=who, why=why, t_h=1.0)
    audit, events = res.audit, list(res.events)
    assert new is state and events == [] and not audit.accepted and reason in audit.reason


def test_mode_request_to_same_mode_is_accepted_without_event():
    sup = make()
    state = sup.init(U0, 0.0)
    res, new = sup.request_mode(state, Mode.AUTO, who="ana", why="r", t_h=1.0)
    audit, events = res.audit, list(res.events)
    assert new is state and audit.accepted and events == []


@pytest.mark.parametrize(
    ("name", "lower", "upper", "rate", "reason"),
    [
        ("X", 0.0, 1.0, 1.0, "unknown input"),
        ("F", 1.0, 0.0, 1.0, "inverted"),
        ("F", 0.0, 1.0, 0.0, "rate_per_h"),
        ("F", 0.0, math.nan, 1.0, "finite"),
        ("F", -1.0, 1.0, 1.0, "hard bounds"),
        ("F", 0.5, 1.0, 1.0, "move the setpoint inside first"),  # applied F is 0.2
    ],
)
def test_refused_limits_change_nothing(name, lower, upper, rate, reason):
    sup = make(hard_bounds={"F": (0.0, 2.0)})
    state = sup.init(U0, 0.0)
    res, new = sup.set_limits(
        state, name, lower=lower, upper=upper, rate_per_h=rate, who="ana", why="r", t_h=1.0
    )
    audit, events = res.audit, list(res.events)
    assert new is state and events == [] and not audit.accepted and reason in audit.reason


def test_accepted_limits_apply_from_the_next_step():
    sup = make(hard_bounds={"F": (0.0, 2.0)})
    state = sup.init(U0, 0.0)
    res, state = sup.set_limits(
        state, "F", lower=0.0, upper=0.3, rate_per_h=10.0, who="ana", why="foam", t_h=0.0
    )
    audit, events = res.audit, list(res.events)
    assert audit.accepted and [e.kind for e in events] == ["limits-change"]
    out, state = step_ok(sup, state, 1.0, [0.9, 30.0])
    rec = out.setpoint
    assert rec.values["F"] == 0.3 and rec.clamped == ("F",)
    manual = sup.request_mode(state, Mode.MANUAL, who="a", why="b", t_h=1.0)[1]
    res, new = sup.set_operator_setpoint(manual, "F", 0.5, who="a", why="b", t_h=1.0)
    audit = res.audit
    assert new is manual and not audit.accepted and "[0.0, 0.3]" in audit.reason


# ----------------------------------------------------------------------------- auto-resume


def _fall_back(sup: Supervisor, t: float = DT) -> SupervisorState:
    out, state = step_ok(sup, sup.init(U0, 0.0), t, None)  # no plan: falls back by itself
    assert state.mode is Mode.FALLBACK and [e.kind for e in out.events] == ["fallback"]
    return state


def test_auto_resume_after_n_good_plans_in_the_same_step_with_audit_and_event():
    sup = make(auto_resume_after=3)
    state = _fall_back(sup)
    good = [0.25, 30.5]
    out, state = step_ok(sup, state, 2 * DT, good)
    out, state = step_ok(sup, state, 3 * DT, good)
    assert state.mode is Mode.FALLBACK and state.good_plans == 2
    assert out.setpoint.source is SetpointSource.FALLBACK and out.audits == () == out.events
    before = state.applied
    out, state = step_ok(sup, state, 4 * DT, [1.0, 25.0])  # the third good plan
    assert state.mode is Mode.AUTO and state.fallback_cause == "" and state.good_plans == 0
    (audit,) = out.audits
    assert audit.accepted and audit.who == "supervisor" and audit.action == "mode FALLBACK -> AUTO"
    assert "3 usable plans in a row" in audit.why and audit.t_h == 4 * DT
    assert [(e.kind, e.source) for e in out.events] == [(EventKind.MODE_CHANGE, "supervisor")]
    # applied in that step, bumpless: from the applied values at the rate limits
    assert out.setpoint.source is SetpointSource.NMPC and out.setpoint.clamped == ("F", "T")
    rates = np.array([LIMITS[n].rate_per_h for n in NAMES])
    np.testing.assert_allclose(np.abs(values(out.setpoint) - np.array(before)), rates * DT)


def test_auto_resume_count_restarts_after_a_bad_plan_and_the_fallback_says_so():
    sup = make(auto_resume_after=2)
    out, state = step_ok(sup, sup.init(U0, 0.0), DT, None)
    assert "AUTO returns by itself after 2 usable plans in a row" in out.events[0].message
    out, state = step_ok(sup, state, 2 * DT, U0)
    out, state = step_ok(sup, state, 3 * DT, U0, estimate_ok=False)  # bad: count restarts
    assert state.good_plans == 0
    out, state = step_ok(sup, state, 4 * DT, U0, solve_time_s=math.nan)  # late: bad too
    out, state = step_ok(sup, state, 5 * DT, U0)
    assert state.mode is Mode.FALLBACK and state.good_plans == 1
    out, state = step_ok(sup, state, 6 * DT, U0)
    assert state.mode is Mode.AUTO and len(out.audits) == 1


def test_no_auto_resume_from_an_operators_fallback_or_without_the_setting():
    sup = make(auto_resume_after=1)
    res, state = sup.request_mode(sup.init(U0, 0.0), Mode.FALLBACK, who="ana", why="r", t_h=0.0)
    assert res.accepted and state.fallback_cause == ""
    for k in range(1, 5):
        out, state = step_ok(sup, state, k * DT, U0)
        assert state.mode is Mode.FALLBACK and out.audits == ()
    off = make()
    state = _fall_back(off)
    for k in range(2, 10):
        out, state = step_ok(off, state, k * DT, U0)
        assert state.mode is Mode.FALLBACK and out.audits == () and out.events == ()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_config_refuses_bad_auto_resume_after(bad):
    with pytest.raises(ValueError, match="auto_resume_after"):
        make(auto_resume_after=bad)


# ----------------------------------------------------------------------------- recipe phases


def test_a_phase_forbidding_the_controller_applies_the_recipe_in_auto_without_events():
    sup = make()
    state = sup.init(U0, 0.0)
    t = 0.0
    for plan_u, kw in (([0.9, 36.0], {}), (None, {}), ([0.3, 31.0], {"estimate_ok": False})):
        t += DT
        out, state = step_ok(sup, state, t, plan_u, controller_allowed=False, **kw)
        assert state.mode is Mode.AUTO and state.fallback_cause == ""
        assert out.setpoint.source is SetpointSource.RECIPE and out.events == ()
        np.testing.assert_allclose(values(out.setpoint), recipe(t))  # reachable in 0.1 h
    far = np.array([1.0, 25.0])
    recipe_values = values(out.setpoint)
    t += DT
    out, state = step_ok(sup, state, t, far)  # the next phase allows the controller
    assert out.setpoint.source is SetpointSource.NMPC and out.events == ()
    rates = np.array([LIMITS[n].rate_per_h for n in NAMES])
    np.testing.assert_allclose(np.abs(values(out.setpoint) - recipe_values), rates * DT)


def test_a_phase_forbidding_the_controller_leaves_manual_hold_and_fallback_alone():
    sup = make()
    _, state = sup.request_mode(sup.init(U0, 0.0), Mode.HOLD, who="a", why="b", t_h=0.0)
    out, state = step_ok(sup, state, DT, None, controller_allowed=False)
    assert out.setpoint.source is SetpointSource.HOLD and state.applied == tuple(U0)
    _, state = sup.request_mode(state, Mode.FALLBACK, who="a", why="b", t_h=DT)
    out, state = step_ok(sup, state, 2 * DT, None, controller_allowed=False)
    assert out.setpoint.source is SetpointSource.FALLBACK


def test_a_broken_recipe_in_a_recipe_phase_holds_and_says_so():
    def broken(t_h: float) -> np.ndarray:
        raise RuntimeError("profile missing")

    sup = make(fallback=broken)
    out, state = step_ok(sup, sup.init(U0, 0.0), DT, U0, controller_allowed=False)
    assert state.mode is Mode.AUTO and out.setpoint.source is SetpointSource.RECIPE
    np.testing.assert_array_equal(values(out.setpoint), U0)
    assert [e.kind for e in out.events] == [EventKind.FALLBACK_RECIPE_INVALID]


def test_an_unreadable_plan_falls_back_instead_of_raising():
    sup = make()
    out, state = sup.step(
        sup.init(U0, 0.0),
        DT,
        plan_u="abc",  # type: ignore[arg-type]
        plan_ok=True,
        solve_time_s=0.1,
        estimate_ok=True,
    )
    assert state.mode is Mode.FALLBACK and "plan unreadable" in out.events[0].message


# ----------------------------------------------------------------------------- commands


def test_commands_carry_their_own_audit_text():
    sup = make(hard_bounds={"F": (0.0, 2.0)})
    state = sup.init(U0, 0.0)
    res, state = sup.command(state, SetMode(Mode.MANUAL, "ana", "test"), t_h=0.5)
    assert isinstance(res, CommandOutcome) and res.accepted
    assert res.audit.action == "mode AUTO -> MANUAL" and res.audit.t_h == 0.5
    assert [e.kind for e in res.events] == [EventKind.MODE_CHANGE]
    assert res.events[0].message == "mode AUTO -> MANUAL by ana: test"
    res, state = sup.command(state, SetSetpoint("F", 0.4, "ana", "more"), t_h=0.5)
    assert res.accepted and res.audit.action == "setpoint F = 0.4" and state.operator[0] == 0.4
    res, state = sup.command(state, SetLimits("F", 0.0, 0.8, 1.0, "ana", "foam"), t_h=0.5)
    assert res.accepted and res.audit.action == "limits F = [0.0, 0.8], rate 1.0/h"
    res, same = sup.command(state, SetMode("turbo", "ana", "x"), t_h=0.6)
    assert same is state and not res.accepted and res.audit.action == "mode MANUAL -> turbo"
    assert "unknown mode 'turbo'" in res.audit.reason


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"mode": "manual", "who": "ana", "why": "x"}, "not an operator command (dict)"),
        (None, "not an operator command (NoneType)"),
        (SetMode("manual", None, "x"), "who is required"),  # type: ignore[arg-type]
        (SetMode("manual", "ana", 3), "why is required"),  # type: ignore[arg-type]
        (SetSetpoint(["F"], 0.1, "ana", "x"), "unknown input"),  # type: ignore[arg-type]
        (SetSetpoint("F", object(), "ana", "x"), "not a number"),  # type: ignore[arg-type]
        (SetSetpoint("F", 10**400, "ana", "x"), "not a number"),
        (SetLimits("F", "lo", 1.0, 1.0, "ana", "x"), "must be numbers"),  # type: ignore[arg-type]
    ],
)
def test_malformed_commands_are_refused_with_an_audit_never_raised(command, reason):
    sup = make()
    state = _manual_state(sup)
    res, new = sup.command(state, command, t_h=1.0)
    assert new is state and not res.accepted and reason in res.audit.reason
    for text in (res.audit.who, res.audit.why, res.audit.action, res.audit.reason):
        assert isinstance(text, str)
        text.encode("utf-8")  # storable


def test_an_alarm_acknowledgement_is_the_loops_not_the_supervisors():
    sup = make()
    state = _manual_state(sup)
    res, new = sup.command(state, AcknowledgeAlarm(1, "ana", "seen"), t_h=1.0)
    assert new is state and not res.accepted and res.audit.action == "acknowledge alarm 1"
    assert res.audit.reason.startswith("alarms are acknowledged by the loop")


def test_audit_text_with_a_lone_surrogate_is_escaped_not_fatal():
    sup = make()
    res, _ = sup.command(sup.init(U0, 0.0), SetMode("hold", "ana\ud800", "x"), t_h=0.0)
    assert res.accepted and res.audit.who == ascii("ana\ud800")
    res.audit.who.encode("utf-8")
    res.events[0].message.encode("utf-8")


# ----------------------------------------------------------------------------- records


def test_mode_is_one_enum_shared_with_the_records():
    from bpcontrol import records

    assert Mode is records.Mode


def test_records_take_enum_text_and_refuse_unknown_text():
    rec = SetpointRecord(1.0, {"F": 0.1}, "recipe")
    assert rec.source is SetpointSource.RECIPE and rec.source == "recipe"
    assert EventRecord(1.0, "estimator-gated", "", "estimator").kind is EventKind.ESTIMATOR_GATED
    with pytest.raises(ValueError, match="unknown event kind 'tick'"):
        EventRecord(1.0, "tick", "", "loop")
    with pytest.raises(ValueError, match="unknown source 'robot'"):
        SetpointRecord(1.0, {}, "robot")


def test_records_are_frozen_and_refuse_nan_time():
    rec = SetpointRecord(1.0, {"F": 0.1}, "nmpc", ())
    with pytest.raises(TypeError):
        rec.values["F"] = 2.0  # type: ignore[index]
    with pytest.raises(ValueError, match="finite"):
        EventRecord(math.nan, "fallback", "m", "supervisor")
    with pytest.raises(ValueError, match="finite"):
        AuditRecord(math.inf, "a", "b", "c", True)


# ----------------------------------------------------------------------------- property


_finite_or_not = st.one_of(
    st.floats(-100.0, 100.0), st.sampled_from([math.nan, math.inf, -math.inf])
)
_step = st.tuples(
    st.just("step"),
    st.floats(0.0, 2.0),
    st.one_of(st.none(), st.lists(_finite_or_not, min_size=2, max_size=2)),
    st.booleans(),
    st.one_of(st.none(), st.floats(0.0, 10.0), st.just(math.nan)),
    st.booleans(),
    st.booleans(),  # the recipe phase allows the controller
)
_mode = st.tuples(st.just("mode"), st.sampled_from(list(Mode)))
_setpoint = st.tuples(st.just("setpoint"), st.sampled_from([*NAMES, "X"]), _finite_or_not)
_limits = st.tuples(
    st.just("limits"),
    st.sampled_from(NAMES),
    st.floats(-10.0, 50.0),
    st.floats(-10.0, 50.0),
    st.floats(-1.0, 5.0),
)


def _wild_recipe(t_h: float) -> np.ndarray:
    return np.array([2.0 * math.sin(t_h), 31.0 + 20.0 * math.sin(3.0 * t_h)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_step, _mode, _setpoint, _limits), min_size=1, max_size=60))
def test_setpoints_never_break_limits_or_rates(ops):
    sup = make(fallback=_wild_recipe, auto_resume_after=2)
    state = sup.init(U0, 0.0)
    for op in ops:
        if op[0] == "step":
            _, dt, plan, ok, solve_s, est_ok, allowed = op
            prev, limits = state.u, state.limits
            plan_u = None if plan is None else np.array(plan)
            out, state = sup.step(
                state,
                state.t_h + dt,
                plan_u=plan_u,
                plan_ok=ok,
                solve_time_s=solve_s,
                estimate_ok=est_ok,
                controller_allowed=allowed,
            )
            rec = out.setpoint
            u = values(rec)
            assert np.array_equal(u, state.u)
            for i, lim in enumerate(limits):
                assert lim.lower <= u[i] <= lim.upper
                assert abs(u[i] - prev[i]) <= lim.rate_per_h * dt * (1 + 1e-12) + 1e-12
            unclamped = [i for i, n in enumerate(NAMES) if n not in rec.clamped]
            if rec.source is SetpointSource.NMPC:
                assert state.mode is Mode.AUTO and allowed and plan_u is not None
                # a change below 1e-9 relative is solver rounding, not reported as a clamp
                np.testing.assert_allclose(u[unclamped], plan_u[unclamped], rtol=1e-9, atol=1e-9)
            if state.mode is Mode.HOLD:
                np.testing.assert_array_equal(u, prev)
        else:
            if op[0] == "mode":
                res, new = sup.request_mode(state, op[1], who="p", why="q", t_h=state.t_h)
                audit = res.audit
            elif op[0] == "setpoint":
                res, new = sup.set_operator_setpoint(
                    state, op[1], op[2], who="p", why="q", t_h=state.t_h
                )
                audit = res.audit
            else:
                _, name, lo, hi, rate = op
                res, new = sup.set_limits(
                    state, name, lower=lo, upper=hi, rate_per_h=rate, who="p", why="q", t_h=0.0
                )
                audit = res.audit
            if not audit.accepted:
                assert new is state and audit.reason
            state = new
        for i, lim in enumerate(state.limits):  # the invariant every write preserves
            assert lim.lower <= state.applied[i] <= lim.upper
