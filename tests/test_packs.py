"""Process packs, run specs and the controller file: what they build, and every bad file.

The E. coli pack must rebuild exactly the configuration of the tuned presets (so the
default run is where it was); a run spec written to TOML reads back to the same run; a
pack written by ``pack init`` for every built-in model checks; and each kind of bad file
is refused with one ``error:`` line naming the file and the key, exit 2, nothing written.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.pack import builtin_pack_dir, load_pack
from bpcontrol.runspec import load_run_spec, resolve, spec_for
from estimators.presets import ecoli_ekf_config
from models import available_models

runner = CliRunner()
ECOLI = builtin_pack_dir("ecoli_fedbatch")


def invoke(*args: str) -> typer.testing.Result:
    return runner.invoke(app, list(args))


def one_line_error(result: typer.testing.Result, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- what a pack builds ---------------------------------------------------------------------


def test_ecoli_pack_rebuilds_the_tuned_estimator() -> None:
    run = resolve(spec_for(ECOLI))
    preset = ecoli_ekf_config(run.model)
    for f in fields(preset):
        got, want = getattr(run.ekf, f.name), getattr(preset, f.name)
        if f.name == "tracked":  # 0.2 * 0.51 is written as 0.102 in the file
            assert [t.name for t in got] == [t.name for t in want]
            assert [t.sigma0 for t in got] == pytest.approx([t.sigma0 for t in want], rel=1e-15)
        else:
            assert got == want, f.name


def test_ecoli_pack_controller_is_the_presets_economic_problem() -> None:
    run = resolve(spec_for(ECOLI))
    cfg = run.nmpc
    assert cfg is not None
    assert cfg.objective.terminal == {"P_total": -1.0}  # = -P V, a derived output
    assert [b.name for b in cfg.soft_bounds] == ["DO", "S", "V", "A", "Q_heat"]
    assert cfg.rate_limits == {"F": 0.2, "Q_air": 20.0, "N_stir": 1200.0, "T_set": 3.0}
    assert cfg.input_bounds["F"] == (0.0, 0.5)
    assert (cfg.horizon, cfg.dt_h, cfg.solver) == (20, pytest.approx(1 / 6), "ipopt")
    assert (cfg.smoothing, cfg.smoothing_kind) == (1e-3, "one-sided")
    assert run.deadline_s == 2.0 and run.auto_resume_after == 3
    assert run.kpis.product == "P_total" and run.kpis.minimum == {"DO": 30.0}


def test_run_spec_round_trips_through_toml(tmp_path: Path) -> None:
    spec = spec_for(ECOLI, seed=7)
    path = tmp_path / "run.toml"
    path.write_text(spec.to_toml(), encoding="utf-8")
    back = load_run_spec(path)
    assert back.identity == spec.identity and back.seed == 7
    a, b = resolve(spec), resolve(back)
    assert a.recipe.limits == b.recipe.limits and a.recipe.phases == b.recipe.phases
    assert a.ekf == b.ekf and a.instruments == b.instruments
    assert a.nmpc is not None and b.nmpc is not None
    assert a.nmpc.soft_bounds == b.nmpc.soft_bounds and a.nmpc.objective == b.nmpc.objective


@pytest.mark.parametrize("name", available_models())
def test_every_built_in_model_ships_a_pack_that_checks(name: str) -> None:
    result = invoke("pack", "check", str(builtin_pack_dir(name)))
    assert result.exit_code == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("name", available_models())
def test_pack_init_writes_a_pack_that_checks(name: str, tmp_path: Path) -> None:
    folder = tmp_path / name
    result = invoke("pack", "init", "--model", name, str(folder))
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in folder.iterdir()} >= {"pack.toml", "recipe.toml", "control.toml"}
    result = invoke("pack", "check", str(folder))
    assert result.exit_code == 0, result.stderr
    run = resolve(spec_for(folder))
    offline = {i.output for i in run.instruments if i.kind == "offline"}
    # an offline assay is not a one-minute sensor: every *_off output is sampled by hand
    assert offline == {n for n in run.model.sensor_names if n.endswith("_off")}
    assert all(i.mean_interval_h >= 2.0 for i in run.instruments if i.kind == "offline")
    again = invoke("pack", "init", "--model", name, str(folder))
    one_line_error(again, "pack.toml", "exists")


# --- bad files --------------------------------------------------------------------------------


def _edit(name: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / name
        text = path.read_text(encoding="utf-8")
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return apply


def _append(name: str, text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        with (root / name).open("a", encoding="utf-8") as fh:
            fh.write("\n" + text + "\n")

    return apply


def _prepend(name: str, text: str) -> Callable[[Path], None]:
    """Put a top-level key first (appended text would land in the file's last table)."""

    def apply(root: Path) -> None:
        path = root / name
        path.write_text(text + "\n" + path.read_text(encoding="utf-8"), encoding="utf-8")

    return apply


def _remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


BAD: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    # pack.toml
    "no pack.toml": (_remove("pack.toml"), ("pack.toml", "missing")),
    "no recipe.toml": (_remove("recipe.toml"), ("recipe.toml", "missing")),
    "pack not toml": (_append("pack.toml", "= broken"), ("pack.toml", "not valid TOML")),
    "pack unknown key": (_prepend("pack.toml", "vessel = 3"), ("pack.toml", "vessel")),
    "unknown model": (
        _edit("pack.toml", 'model = "ecoli_fedbatch"', 'model = "nope"'),
        ("pack.toml", "model"),
    ),
    "parameter unknown": (_append("pack.toml", "[parameters]\nmu_maxx = 0.5"), ("mu_maxx",)),
    "parameter out of range": (
        _append("pack.toml", "[parameters]\nmu_max = 1e308"),
        ("pack.toml", "parameters.mu_max", "outside"),
    ),
    "parameter wrong unit": (
        _append("pack.toml", '[parameters]\nS_feed = { value = 400.0, unit = "mol/L" }'),
        ("pack.toml", "parameters.S_feed.unit", "g/L"),
    ),
    "parameter wrong type": (
        _append("pack.toml", '[parameters]\nS_feed = "400"'),
        ("pack.toml", "parameters.S_feed", "number"),
    ),
    "bound on a parameter": (
        _append("pack.toml", "[bounds.mu_max]\nupper = 1.0"),
        ("pack.toml", "bounds.mu_max"),
    ),
    "bound inverted": (
        _append("pack.toml", "[bounds.V]\nlower = 9.0\nupper = 2.0"),
        ("pack.toml", "bounds.V", "inverted"),
    ),
    "bound wrong unit": (
        _append("pack.toml", '[bounds.V]\nupper = 11.0\nunit = "m3"'),
        ("pack.toml", "bounds.V.unit", "'L'"),
    ),
    "sensor unknown output": (
        _append("pack.toml", '[sensors.pH_probe]\nkind = "online"\nsigma = 0.01'),
        ("pack.toml", "sensors.pH_probe"),
    ),
    "sensor on a derived output": (
        _append("pack.toml", '[sensors.Q_heat]\nkind = "online"\nsigma = 1.0'),
        ("pack.toml", "sensors.Q_heat", "derived"),
    ),
    "sensor kind": (
        _edit("pack.toml", '[sensors.DO_probe]\nkind = "online"', '[sensors.DO_probe]\nkind = "x"'),
        ("pack.toml", "sensors.DO_probe.kind"),
    ),
    "sensor unit": (
        _edit("pack.toml", "sigma = 1.0 ", 'unit = "mg/L"\nsigma = 1.0 '),
        ("pack.toml", "sensors.DO_probe.unit", "'%'"),
    ),
    "offline sensor without delay": (
        _edit(
            "pack.toml",
            "interval_h = [2.0, 4.0]\ndelay_h = [1.0, 3.0]\n[sensors.S_off]",
            "interval_h = [2.0, 4.0]\n[sensors.S_off]",
        ),
        ("pack.toml", "sensors.X_off", "delay_h"),
    ),
    "negative noise": (
        _edit("pack.toml", "sigma = 0.02                 # %", "sigma = -0.02 # %"),
        ("pack.toml", "sensors.y_O2_out", "sigma"),
    ),
    "product unknown": (
        _edit("pack.toml", 'product = "P_total"', 'product = "titre"'),
        ("pack.toml", "kpis.product", "titre"),
    ),
    "unknown pack file": (
        lambda root: (root / "controller.toml").write_text("horizon = 3\n"),
        ("controller.toml", "unknown pack file"),
    ),
    # control.toml
    "control unknown key": (_prepend("control.toml", "horizn = 3"), ("control.toml", "horizn")),
    "control wrong type": (
        _edit("control.toml", "horizon = 20 ", 'horizon = "twenty" '),
        ("control.toml", "horizon"),
    ),
    "control absurd horizon": (
        _edit("control.toml", "horizon = 20 ", "horizon = 0 "),
        ("control.toml", "horizon"),
    ),
    "objective unknown variable": (
        _edit("control.toml", "terminal = { P_total = -1.0 }", "terminal = { titre = -1.0 }"),
        ("control.toml", "objective.terminal.titre"),
    ),
    "objective cost on a state": (
        _edit("control.toml", "input_cost = { N_stir", "input_cost = { X = 1.0, N_stir"),
        ("control.toml", "objective.input_cost.X"),
    ),
    "soft bound unknown variable": (
        _append("control.toml", "[soft_bounds.pH]\nlower = 6.5"),
        ("control.toml", "soft_bounds.pH"),
    ),
    "soft bound wrong unit": (
        _edit(
            "control.toml",
            'upper = 150.0\nweight_l1 = 1.0\nweight_l2 = 0.01\nunit = "W"',
            'upper = 150.0\nweight_l1 = 1.0\nweight_l2 = 0.01\nunit = "kW"',
        ),
        ("control.toml", "soft_bounds.Q_heat.unit", "'W'"),
    ),
    "soft bound inverted": (
        _append("control.toml", "[soft_bounds.T]\nlower = 40.0\nupper = 30.0"),
        ("control.toml", "soft_bounds.T", "inverted"),
    ),
    "soft bound without a side": (
        _append("control.toml", "[soft_bounds.T]\nweight_l1 = 3.0"),
        ("control.toml", "soft_bounds.T", "lower or upper"),
    ),
    "soft bound negative weight": (
        _append("control.toml", "[soft_bounds.T]\nupper = 40.0\nweight_l1 = -1.0"),
        ("control.toml", "soft_bounds.T.weight_l1"),
    ),
    "manipulated unknown input": (
        _prepend("control.toml", 'manipulated = ["F", "pump2"]'),
        ("control.toml", "manipulated", "pump2"),
    ),
    "solver unknown": (
        _edit("control.toml", 'solver = "ipopt"', 'solver = "cplex"'),
        ("control.toml", "solver"),
    ),
    "infinite deadline": (
        _edit("control.toml", "deadline_s = 2.0 ", "deadline_s = inf "),
        ("control.toml", "deadline_s"),
    ),
    # recipe.toml, ekf.toml, plant.toml
    "recipe limit outside the model": (
        _edit("recipe.toml", "upper = 0.5  ", "upper = 5.0  "),
        ("recipe.toml", "limits.F"),
    ),
    "recipe unknown key": (
        _prepend("recipe.toml", "pressure_bar = 1.2"),
        ("recipe.toml", "pressure_bar"),
    ),
    "ekf unknown key": (_prepend("ekf.toml", "gain = 3"), ("ekf.toml", "gain")),
    "ekf tracks an unknown parameter": (
        _edit("ekf.toml", "mu_max = { sigma0", "mu_maxx = { sigma0"),
        ("ekf.toml", "mu_maxx"),
    ),
    "plant factor out of range": (
        _edit("plant.toml", "mu_max = 0.8", "mu_max = -1.0"),
        ("plant.toml", "parameter_factors.mu_max", "outside"),
    ),
    "plant factor zero yield": (
        _edit("plant.toml", "Y_xs = 1.2", "Y_xs = 0.0"),
        ("plant.toml", "parameter_factors.Y_xs"),
    ),
    "plant noise on an unknown sensor": (
        _append("plant.toml", "[noise]\npH_probe = 0.1"),
        ("plant.toml", "noise.pH_probe"),
    ),
    "plant key that moved": (
        _prepend("plant.toml", "controller_deadline_s = 3.0"),
        ("plant.toml", "controller_deadline_s", "control.toml"),
    ),
}


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    root = tmp_path / "pack"
    shutil.copytree(ECOLI, root)
    return root


def test_at_least_25_kinds_of_bad_pack_files() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pack_file_is_one_line_naming_file_and_key(case: str, pack_copy: Path) -> None:
    mutate, fragments = BAD[case]
    mutate(pack_copy)
    one_line_error(invoke("pack", "check", str(pack_copy)), *fragments)


@pytest.mark.parametrize(
    "case", ["parameter out of range", "soft bound wrong unit", "plant factor out of range"]
)
def test_bad_pack_run_writes_nothing(case: str, pack_copy: Path, tmp_path: Path) -> None:
    mutate, fragments = BAD[case]
    mutate(pack_copy)
    out = tmp_path / "runs"
    one_line_error(invoke("run", "--pack", str(pack_copy), "--out", str(out)), *fragments)
    assert not out.exists()


def test_loaded_pack_keeps_where_each_part_came_from() -> None:
    pack = load_pack(ECOLI)
    assert pack.source("control").endswith("control.toml")
    assert pack.plant is not None and math.isclose(pack.plant["parameter_factors"]["mu_max"], 0.8)


def test_ecoli_plant_is_the_packs_plant() -> None:
    from hil.plant import ECOLI_PLANT_FACTORS

    pack = load_pack(ECOLI)
    assert pack.plant is not None
    assert dict(pack.plant["parameter_factors"]) == dict(ECOLI_PLANT_FACTORS)
