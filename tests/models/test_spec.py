"""A malformed model declaration is refused with one clear line; a good user file loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from models import Input, Model, ModelError, Output, Parameter, State, load_model


def _rhs(m, x, u, p):
    return {"X": p.mu * x.X - u.F / x.V * x.X, "V": u.F}


def _measure(m, x, u, p):
    return {"X_meas": x.X}


def make(**changes) -> Model:
    """A valid two-state growth model with some fields replaced."""
    spec = dict(
        name="tiny",
        description="exponential growth in a fed tank",
        states=(
            State(name="X", unit="g/L", lower=0.0, upper=100.0, nominal=1.0),
            State(name="V", unit="L", lower=0.1, upper=10.0, nominal=1.0),
        ),
        inputs=(Input(name="F", unit="L/h", lower=0.0, upper=1.0, nominal=0.1),),
        parameters=(
            Parameter(name="mu", unit="1/h", value=0.5, lower=0.0, upper=2.0, source="test"),
        ),
        outputs=(Output(name="X_meas", unit="g/L"),),
        rhs=_rhs,
        measure=_measure,
    )
    spec.update(changes)
    return Model(**spec)


def test_valid_model_evaluates() -> None:
    model = make()
    assert model.to_casadi().rhs(model.x0, model.u0, model.p0) == pytest.approx([0.4, 0.1])
    assert np.asarray(model.to_jax().f(model.x0, model.u0, model.p0)) == pytest.approx([0.4, 0.1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"states": (State(name="X", unit="", lower=0, upper=1, nominal=0.5),)},
            "state 'X' has no unit",
        ),
        (
            {"outputs": (Output(name="mu", unit="1/h"),)},
            "name clash: 'mu' is declared as parameter and as output",
        ),
        (
            {"rhs": lambda m, x, u, p: {"X": p.mu * x.X * np.array([1.0, 2.0]), "V": u.F}},
            "rhs()['X'] has shape (2,), expected a scalar",
        ),
        (
            {"rhs": lambda m, x, u, p: {"X": m.log(x.X - 2.0), "V": u.F}},
            "rhs()['X'] is nan at the nominal point",
        ),
        ({"rhs": lambda m, x, u, p: {"X": x.X}}, "rhs() returned wrong names (missing V)"),
        (
            {"measure": lambda m, x, u, p: {"X_meas": x.X, "Z": 1.0}},
            "measure() returned wrong names (unknown Z)",
        ),
        (
            {"inputs": (Input(name="F", unit="L/h", lower=1.0, upper=0.0, nominal=0.5),)},
            "input 'F' has bounds [1.0, 0.0]",
        ),
        (
            {
                "parameters": (
                    Parameter(name="mu", unit="1/h", value=0.5, lower=0, upper=1, source=""),
                )
            },
            "parameter 'mu' has no literature source",
        ),
        (
            {"states": (State(name="X", unit="g/L", lower=0, upper=1, nominal=3.0),)},
            "state 'X' nominal 3.0 is not finite inside [0.0, 1.0]",
        ),
        ({"rhs": lambda m, x, u, p: {"X": x.Y, "V": u.F}}, "no variable named 'Y'"),
    ],
)
def test_malformed_model_gives_one_clear_line(changes: dict, message: str) -> None:
    with pytest.raises(ModelError) as info:
        make(**changes)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("model 'tiny'")


GOOD_FILE = '''
"""A user's model file outside the package."""
from models import Input, Model, Output, Parameter, State


def rhs(m, x, u, p):
    return {"B": p.k * x.B * m.exp(-x.B / 50.0)}


def measure(m, x, u, p):
    return {"B_meas": x.B}


MODEL = Model(
    name="user_growth",
    description="Gompertz-like growth",
    states=(State(name="B", unit="g/L", lower=0.0, upper=100.0, nominal=1.0),),
    inputs=(),
    parameters=(Parameter(name="k", unit="1/h", value=0.3, lower=0, upper=1, source="user"),),
    outputs=(Output(name="B_meas", unit="g/L"),),
    rhs=rhs,
    measure=measure,
)
'''


def test_user_model_file_loads_by_path(tmp_path: Path) -> None:
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(GOOD_FILE))
    model = load_model(path)
    assert model.name == "user_growth"
    expected = 0.3 * 1.0 * np.exp(-1.0 / 50.0)
    assert model.to_casadi().rhs(model.x0, model.u0, model.p0) == pytest.approx([expected])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("MODEL = 3\n", "MODEL is a int, not a models.Model"),
        ("x = 1\n", "defines no MODEL"),
        ("def broken(:\n", "syntax error"),
        (GOOD_FILE.replace('unit="g/L", lower=0.0', 'unit="", lower=0.0'), "state 'B' has no unit"),
        ("import not_a_module_anywhere\n", "importing failed: ModuleNotFoundError"),
    ],
)
def test_bad_model_file_gives_one_clear_line(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "bad_model.py"
    path.write_text(textwrap.dedent(source))
    with pytest.raises(ModelError) as info:
        load_model(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ModelError, match=r"use one of .*ecoli_fedbatch"):
        load_model("no_such_model")
    with pytest.raises(ModelError, match="model file not found"):
        load_model("/nonexistent/model.py")
