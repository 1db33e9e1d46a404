"""Bad NMPC configurations fail with a clear NMPCConfigError before anything is built or solved."""

from __future__ import annotations

import math
from typing import Any

import pytest

import bpcontrol.nmpc._controller as controller_module
from bpcontrol.nmpc import (
    NMPC,
    NMPCConfig,
    NMPCConfigError,
    Objective,
    SoftBound,
    Tracking,
)
from models import Model, load_model


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("dompc_batch_reactor")


@pytest.fixture(autouse=True)
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the NLP (let alone solving it) must not start for a bad configuration."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the OCP was built although the configuration is invalid")

    monkeypatch.setattr(controller_module, "build_ocp", refuse)


CASES = [
    pytest.param(
        {"input_bounds": {"inp": (0.2, 0.0)}},
        r"input_bounds\['inp'\] is inverted: \[0.2, 0.0\]",
        id="inverted-input-bounds",
    ),
    pytest.param(
        {"input_bounds": {"inp": (0.0, 0.5)}},
        r"input_bounds\['inp'\] = \[0.0, 0.5\] leaves the model's range \[0.0, 0.2\]",
        id="input-bounds-outside-model",
    ),
    pytest.param(
        {"input_bounds": {"inp": (-0.1, 0.2)}},
        r"leaves the model's range",
        id="input-bounds-below-model",
    ),
    pytest.param(
        {"horizon": 20, "dt_h": 1.0, "batch_end_h": 10.0},
        r"horizon 20 x 1.0 h reaches beyond the batch end \(10.0 h\).*horizon_mode='batch_end'",
        id="horizon-beyond-batch-end",
    ),
    pytest.param(
        {"horizon_mode": "batch_end"},
        r"horizon_mode='batch_end' needs batch_end_h",
        id="batch-end-without-time",
    ),
    pytest.param(
        {"manipulated": ("feed",)},
        r"manipulated: unknown input 'feed'; inputs of 'dompc_batch_reactor': inp",
        id="unknown-manipulated",
    ),
    pytest.param(
        {"rate_limits": {"F": 0.1}},
        r"rate_limits: unknown input 'F'",
        id="unknown-rate-limit-input",
    ),
    pytest.param(
        {"objective": Objective(move={"Q_air": 1.0})},
        r"objective.move: unknown input 'Q_air'",
        id="unknown-move-input",
    ),
    pytest.param(
        {"objective": Objective(input_cost={"X_s": 1.0})},
        r"objective.input_cost: unknown input 'X_s'",
        id="state-as-input-cost",
    ),
    pytest.param(
        {"objective": Objective(terminal={"P": -1.0})},
        r"objective.terminal: unknown state or output 'P'",
        id="unknown-terminal-state",
    ),
    pytest.param(
        {"objective": Objective(stage={"titer": -1.0})},
        r"objective.stage: unknown state or output 'titer'",
        id="unknown-stage-state",
    ),
    pytest.param(
        {"objective": Objective(tracking=(Tracking(name="DO", target=30.0, weight=1.0),))},
        r"objective.tracking: unknown state or output 'DO'",
        id="unknown-tracking-state",
    ),
    pytest.param(
        {"soft_bounds": (SoftBound(name="DO", lower=20.0),)},
        r"soft bound on unknown state or output 'DO'",
        id="unknown-soft-bound",
    ),
    pytest.param(
        {"soft_bounds": (SoftBound(name="X_s", lower=3.0, upper=1.0),)},
        r"soft bound on 'X_s' is inverted: \[3.0, 1.0\]",
        id="inverted-soft-bound",
    ),
    pytest.param(
        {"state_bounds": {"X": (0.0, 3.7)}},
        r"state_bounds: unknown state 'X'; states of 'dompc_batch_reactor': X_s, S_s, P_s, V_s",
        id="unknown-state-bound",
    ),
    pytest.param(
        {"state_bounds": {"P_meas": (0.0, 3.0)}},
        r"state_bounds: unknown state 'P_meas'.*bound outputs with soft_bounds",
        id="output-as-state-bound",
    ),
    pytest.param(
        {"state_bounds": {"X_s": (3.7, 0.0)}},
        r"state_bounds\['X_s'\] is inverted: \[3.7, 0.0\]",
        id="inverted-state-bound",
    ),
    pytest.param(
        {"state_bounds": {"X_s": (math.nan, 3.7)}},
        r"state_bounds\['X_s'\] is inverted: \[nan, 3.7\]",
        id="nan-state-bound",
    ),
    pytest.param(
        {"horizon": 10, "move_blocks": (3, 3, 3)},
        r"move_blocks \(3, 3, 3\) must be positive and sum to the horizon 10",
        id="move-blocks-short",
    ),
    pytest.param(
        {"horizon": 4, "move_blocks": (5, -1)},
        r"move_blocks \(5, -1\) must be positive",
        id="move-blocks-negative",
    ),
    pytest.param(
        {"solver": "snopt"},
        r"unknown solver 'snopt'; use 'rti' or 'ipopt'",
        id="unknown-solver",
    ),
    pytest.param(
        {"qp_solver": "quadprog"},
        r"qp_solver: unknown QP solver 'quadprog'",
        id="unknown-qp-solver",
    ),
    pytest.param(
        {"qp_fallback": "nope"},
        r"qp_fallback: unknown QP solver 'nope'",
        id="unknown-qp-fallback",
    ),
    pytest.param(
        {"input_schedule": lambda t: [0.0, 1.0]},
        r"input_schedule\(0 h\) returned shape \(2,\), expected \(1,\): one value per model "
        r"input \(inp\)",
        id="schedule-wrong-length",
    ),
    pytest.param(
        {"input_schedule": lambda t: [[0.0]]},
        r"input_schedule\(0 h\) returned shape \(1, 1\), expected \(1,\)",
        id="schedule-wrong-shape",
    ),
    pytest.param(
        {"input_schedule": lambda t: [math.nan]},
        r"input_schedule\(0 h\) is not finite for inp",
        id="schedule-not-finite",
    ),
    pytest.param(
        {"input_schedule": lambda t: ["fast"]},
        r"input_schedule\(0 h\) failed: ValueError: could not convert",
        id="schedule-not-numbers",
    ),
    pytest.param(
        {"input_schedule": lambda t: 1.0 / 0.0},
        r"input_schedule\(0 h\) failed: ZeroDivisionError",
        id="schedule-raises",
    ),
    pytest.param(
        {"input_schedule": [0.1]},
        r"input_schedule must be a function of time \(h\), got \[0.1\]",
        id="schedule-not-callable",
    ),
    pytest.param({"horizon": 0}, r"horizon must be >= 1 interval, got 0", id="empty-horizon"),
    pytest.param({"dt_h": -1.0}, r"dt_h must be > 0 h, got -1.0", id="negative-period"),
    pytest.param(
        {"discretization": "euler"}, r"unknown discretization 'euler'", id="unknown-discretization"
    ),
]


@pytest.mark.parametrize(("settings", "message"), CASES)
def test_bad_config_is_rejected_before_any_solve(
    model: Model, settings: dict[str, Any], message: str
) -> None:
    cfg = NMPCConfig(**settings)
    with pytest.raises(NMPCConfigError, match=message):
        cfg.validate(model)
    with pytest.raises(NMPCConfigError, match=message):
        NMPC(model, cfg)  # build_ocp is patched to fail: validation must come first


def test_config_error_is_a_value_error() -> None:
    assert issubclass(NMPCConfigError, ValueError)


def test_horizon_check_counts_from_the_start_time(model: Model) -> None:
    """A horizon that fits from t0 = 0 can reach past the batch end from a later start."""
    cfg = NMPCConfig(horizon=10, dt_h=1.0, batch_end_h=12.0)
    cfg.validate(model, t0_h=0.0)
    with pytest.raises(NMPCConfigError, match=r"reaches beyond the batch end \(12.0 h\)"):
        cfg.validate(model, t0_h=5.0)
    with pytest.raises(NMPCConfigError, match=r"batch_end_h 12.0 h is not after t0 13.0 h"):
        cfg.validate(model, t0_h=13.0)


def test_schedule_is_checked_at_the_batch_start(model: Model) -> None:
    """The schedule is called at t0 (the batch start of this controller), where it must work."""
    calls: list[float] = []

    def schedule(t_h: float) -> list[float]:
        calls.append(t_h)
        if t_h >= 5.0:
            raise KeyError("no recipe phase")
        return [0.0]

    cfg = NMPCConfig(input_schedule=schedule)
    cfg.validate(model, t0_h=0.0)
    assert calls == [0.0]
    with pytest.raises(NMPCConfigError, match=r"input_schedule\(6 h\) failed: KeyError"):
        cfg.validate(model, t0_h=6.0)


def test_good_config_passes(model: Model) -> None:
    NMPCConfig(
        horizon=20,
        dt_h=1.0,
        objective=Objective(terminal={"P_s": -1.0}, stage={"P_meas": -1.0}, move={"inp": 1.0}),
        state_bounds={"X_s": (0.0, 3.7), "S_s": (-0.01, math.inf)},
        soft_bounds=(SoftBound(name="P_s", upper=3.0),),
        input_bounds={"inp": (0.0, 0.2)},
        rate_limits={"inp": 0.05},
        move_blocks=(5, 5, 10),
        qp_solver="qpoases",
        qp_fallback=None,
        input_schedule=lambda t: [0.1 if t > 5.0 else 0.0],
    ).validate(model)
