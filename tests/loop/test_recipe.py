"""Recipes: the shipped E. coli recipe, phases and profiles, and clear errors on bad files."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bpcontrol.recipe as recipe_module
from bpcontrol.nmpc.presets import ecoli_recipe
from bpcontrol.recipe import (
    ExponentialProfile,
    RecipeError,
    StepProfile,
    default_recipe_path,
    load_recipe,
    parse_recipe,
)
from models import load_model

MODEL = load_model("ecoli_fedbatch")
DEFAULT = default_recipe_path("ecoli_fedbatch")


def _doc() -> dict[str, Any]:
    return tomllib.loads(DEFAULT.read_text(encoding="utf-8"))


def test_shipped_recipe_matches_the_controller_preset_recipe() -> None:
    recipe = load_recipe(DEFAULT, MODEL)
    reference = ecoli_recipe(MODEL)  # the NMPC preset's first-guess recipe, written in code
    for t in np.linspace(0.0, 30.0, 601):
        np.testing.assert_array_equal(recipe.fallback(float(t)), reference(float(t)))
    assert recipe.steps_per_control == 10
    assert recipe.measurement_period_h == pytest.approx(1 / 60)
    assert recipe.initial_state(MODEL)[MODEL.index("S")] == 5.0


def test_phases_inherit_and_exponential_feed_follows_its_formula() -> None:
    doc = _doc()
    doc["phases"].append(
        {"name": "induction", "start_h": 20.0, "fallback": {"T_set": 30.0, "F": 0.05}}
    )
    recipe = parse_recipe(doc, MODEL)
    assert [p.name for p in recipe.phases] == ["batch", "fed-batch", "induction"]
    assert recipe.phase_at(5.99).name == "batch"
    assert recipe.phase_at(6.0).name == "fed-batch"
    iF, iT, iQ = MODEL.index("F"), MODEL.index("T_set"), MODEL.index("Q_air")
    u = recipe.fallback(10.0)
    assert u[iF] == pytest.approx(0.02 * math.exp(0.1 * 4.0))  # initial e^(growth (t - start))
    assert recipe.fallback(19.0)[iF] == 0.06  # capped at max
    u = recipe.fallback(25.0)
    assert (u[iF], u[iT], u[iQ]) == (0.05, 30.0, 20.0)  # Q_air inherited from "batch"


def test_step_profile_holds_each_value_from_its_time() -> None:
    prof = StepProfile((0.0, 2.0, 10.0), (0.0, 0.04, 0.06))
    assert [prof.at(t) for t in (0.0, 1.999, 2.0, 9.5, 10.0, 100.0)] == [
        0.0,
        0.0,
        0.04,
        0.04,
        0.06,
        0.06,
    ]
    assert prof.at(2.0 - 1e-12) == 0.04  # interval start times carry rounding
    assert prof.range() == (0.0, 0.06)
    assert StepProfile((0.0, 1.0), (0.3, 0.1)).range() == (0.1, 0.3)
    with pytest.raises(ValueError, match="strictly increase"):
        StepProfile((0.0, 0.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="as many times as values"):
        StepProfile((0.0,), (1.0, 2.0))


def test_step_tables_count_from_the_phase_that_writes_them() -> None:
    """Steps hold (zero-order) in hours since their phase; later phases inherit them as they are."""
    doc = _doc()
    doc["phases"][0]["fallback"]["Q_air"] = {"steps": [[0.0, 5.0], [3.0, 10.0], [12.0, 20.0]]}
    doc["phases"][1]["fallback"]["F"] = {"steps": [[0.0, 0.0], [2.0, 0.04], [10.0, 0.06]]}
    doc["phases"].append({"name": "induction", "start_h": 20.0, "fallback": {"T_set": 30.0}})
    doc["phases"].append(
        {"name": "late", "start_h": 25.0, "fallback": {"F": {"steps": [[0.0, 0.01]]}}}
    )
    recipe = parse_recipe(doc, MODEL)
    iF, iQ, iT = MODEL.index("F"), MODEL.index("Q_air"), MODEL.index("T_set")
    assert isinstance(recipe.phases[1].fallback["F"], StepProfile)
    f = {t: recipe.fallback(t) for t in (0.0, 2.9, 3.0, 6.0, 7.9, 8.0, 13.0, 16.0, 22.0, 26.0)}
    assert [f[t][iQ] for t in (0.0, 2.9, 3.0, 7.9, 13.0)] == [5.0, 5.0, 10.0, 10.0, 20.0]
    assert [f[t][iF] for t in (0.0, 6.0, 7.9, 8.0, 16.0, 22.0)] == [0.0, 0.0, 0.0, 0.04, 0.06, 0.06]
    assert f[22.0][iT] == 30.0 and f[26.0][iF] == 0.01  # inherited F until "late" replaces it
    for t, u in f.items():  # every input, in model order
        phase = recipe.phase_at(t)
        assert u.shape == (MODEL.nu,)
        assert u.tolist() == [phase.value(n, t) for n in MODEL.input_names]
    # an exponential in a later phase is still the old formula
    assert isinstance(parse_recipe(_doc(), MODEL).phases[1].fallback["F"], ExponentialProfile)


def test_auto_is_per_phase_and_defaults_to_true() -> None:
    doc = _doc()
    assert all(p.auto for p in parse_recipe(doc, MODEL).phases)
    doc["phases"][0]["auto"] = False
    doc["phases"].append({"name": "manual", "start_h": 20.0, "auto": False})
    recipe = parse_recipe(doc, MODEL)
    assert [p.auto for p in recipe.phases] == [False, True, False]
    assert [recipe.auto_at(t) for t in (0.0, 5.99, 6.0, 19.9, 20.0, 30.0)] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]


def test_the_docstring_example_phase_is_a_valid_recipe() -> None:
    doc_text = recipe_module.__doc__ or ""
    snippet = doc_text.split("for the example above::")[1].split("\n\n")[1]
    doc = _doc()
    doc["phases"] += tomllib.loads("\n".join(line[4:] for line in snippet.splitlines()))["phases"]
    recipe = parse_recipe(doc, MODEL)
    assert not recipe.auto_at(21.0) and recipe.auto_at(19.0)
    assert recipe.fallback(22.0)[MODEL.index("F")] == 0.04


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = _doc()
    keys = path.split(".")
    node: Any = doc
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is _DELETE:
        del node[keys[-1]]
    elif isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()

BAD = [
    ("duration_h", -1.0, "duration_h must be > 0"),
    ("duration_h", _DELETE, "missing duration_h"),
    ("control_period_min", 7.5, "whole multiple"),
    ("measurement_period_min", "one", "must be a number"),
    ("model", "yeast_fedbatch", "not 'ecoli_fedbatch'"),
    ("colour", "red", "unknown keys ['colour']"),
    ("initial.Q", 1.0, "unknown state 'Q'"),
    ("initial.S", -1.0, "outside"),
    ("limits.F.upper", 9.0, "leave the model's range"),
    ("limits.F.lower", 0.4, "outside its limits"),
    ("limits.F.rate_per_h", 0.0, "rate_per_h must be > 0"),
    ("limits.F", _DELETE, "missing [limits.F]"),
    ("limits.G", {"lower": 0.0}, "unknown input 'G'"),
    ("phases.0.start_h", 1.0, "first phase must start at 0"),
    ("phases.1.start_h", 0.0, "not after the phase before"),
    ("phases.1.start_h", 31.0, "at or after the batch end"),
    ("phases.0.fallback", {"F": 0.0}, "no fallback for"),
    ("phases.0.fallback.Q_air", 50.0, "outside its"),
    ("phases.1.fallback.F", {"initial": 0.02, "growth_per_h": 0.1}, "exactly"),
    ("phases.1.fallback.F", {"initial": 0.02, "growth_per_h": 0.1, "max": 0.9}, "outside its"),
    ("phases.1.fallback.X", 1.0, "unknown input 'X'"),
    ("phases", [], "at least one"),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0], [2.0, 0.04], [2.0, 0.06]]},
        "phases[1].fallback.F.steps[2] is at 2 h, not after the step before (2 h)",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0], [2.0, 0.04], [1.0, 0.06]]},
        "phases[1].fallback.F.steps[2] is at 1 h, not after",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[1.0, 0.0], [2.0, 0.04]]},
        "phases[1].fallback.F.steps[0] is at 1 h; the first step must be at 0 h",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0], [2.0, 0.9]]},
        "phases[1].fallback.F.steps[1] value 0.9 is outside its limits [0, 0.5]",
    ),
    (
        "phases.0.fallback.Q_air",
        {"steps": [[0.0, 0.5]]},
        "phases[0].fallback.Q_air.steps[0] value 0.5 is outside its limits [1, 20]",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0], [2.0]]},
        "phases[1].fallback.F.steps[1] must be a [hours, value] pair, got [2.0]",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [0.0, 0.1]},
        "phases[1].fallback.F.steps[0] must be a [hours, value] pair",
    ),
    ("phases.1.fallback.F", {"steps": []}, "phases[1].fallback.F.steps must be a non-empty list"),
    ("phases.1.fallback.F", {"steps": 0.1}, "phases[1].fallback.F.steps must be a non-empty list"),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, "fast"]]},
        "phases[1].fallback.F.steps[0] value must be a number, got 'fast'",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, math.nan]]},
        "phases[1].fallback.F.steps[0] value must be finite",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0], [math.inf, 0.1]]},
        "phases[1].fallback.F.steps[1] time must be finite",
    ),
    (
        "phases.1.fallback.F",
        {"steps": [[0.0, 0.0]], "max": 0.1},
        "phases[1].fallback.F is a step table and takes only 'steps', not ['max']",
    ),
    ("phases.0.auto", "no", "phases[0].auto must be true or false, got 'no'"),
    ("phases.1.auto", 1, "phases[1].auto must be true or false, got 1"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_recipes_name_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(RecipeError, match="recipe") as err:
        parse_recipe(_with(path, value), MODEL)
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one line, for logs and the CLI


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.toml", MODEL)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad, MODEL)
    with pytest.raises(RecipeError, match="no recipe ships"):
        default_recipe_path("no_such_model")
