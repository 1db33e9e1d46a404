"""Recipes: the shipped E. coli recipe, phases and profiles, and clear errors on bad files."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bpcontrol.nmpc.presets import ecoli_recipe
from bpcontrol.recipe import RecipeError, default_recipe_path, load_recipe, parse_recipe
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
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_recipes_name_the_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(RecipeError, match="recipe") as err:
        parse_recipe(_with(path, value), MODEL)
    assert message in str(err.value)


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.toml", MODEL)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad, MODEL)
    with pytest.raises(RecipeError, match="no recipe ships"):
        default_recipe_path("penicillin_fedbatch")
