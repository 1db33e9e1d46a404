"""Hand-over of a fit (issue 18): fitted values into a pack's pack.toml (re-validated by the
pack loader, provenance named, the rest of the file kept) and as a parameter file that
``bpcontrol run --parameters`` takes; bad hand-overs are one line and write nothing."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from reactor_batches import MODEL, PROFILES, synthetic_batch
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.pack import builtin_pack_dir, load_pack, model_with_overrides
from services.fitting.handover import (
    FittedParameters,
    HandoverError,
    pack_with_parameters,
    read_fitted,
    write_into_pack,
)
from services.historian.readback import write_csv


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fitdata") / "csv"
    batches = [
        synthetic_batch(11 + k, f"B{k + 1}", p, origin=f"seed {11 + k}")
        for k, p in enumerate(PROFILES)
    ]
    write_csv(root, batches, MODEL)
    return root


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "pack"
    shutil.copytree(builtin_pack_dir("dompc_batch_reactor"), dst)
    return dst


def _fitted(**values: tuple[float, str]) -> FittedParameters:
    return FittedParameters(
        values=values,
        model="dompc_batch_reactor",
        data="/plant/historian",
        batches=("B1", "B2"),
        created_utc="2026-12-02T10:00:00+00:00",
        result_file="/plant/fit.toml",
    )


def _unchanged(folder: Path, before: dict[str, bytes]) -> bool:
    return {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_values_go_into_a_copy_with_provenance_and_the_rest_of_the_file_kept(
    pack_dir: Path, tmp_path: Path
) -> None:
    before = {p.name: p.read_bytes() for p in pack_dir.iterdir()}
    fitted = _fitted(mu_m=(0.021, "1/h"), Y_x=(0.45, "mol/mol"))
    written = write_into_pack(fitted, pack_dir, into=tmp_path / "fitted")
    assert written == tmp_path / "fitted" / "pack.toml"
    assert _unchanged(pack_dir, before)  # --into-pack leaves the source pack alone
    text = written.read_text(encoding="utf-8")
    for named in ("/plant/historian", "B1, B2", "2026-12-02T10:00:00", "/plant/fit.toml"):
        assert named in text
    assert "# mol/L at the batch end" in text  # the pack's own comments are kept
    doc, orig = tomllib.loads(text), tomllib.loads(before["pack.toml"].decode())
    assert doc.pop("parameters") == {
        "mu_m": {"value": 0.021, "unit": "1/h"},
        "Y_x": {"value": 0.45, "unit": "mol/mol"},
    }
    orig.pop("parameters", None)
    assert doc == orig
    model = model_with_overrides(load_pack(tmp_path / "fitted"))
    assert model.p0[model.index("mu_m")] == 0.021 and model.p0[model.index("Y_x")] == 0.45
    # every other pack file is copied as it was
    for name, content in before.items():
        if name != "pack.toml":
            assert (tmp_path / "fitted" / name).read_bytes() == content


def test_a_second_hand_over_in_place_replaces_the_first_and_keeps_other_overrides(
    pack_dir: Path,
) -> None:
    toml = pack_dir / "pack.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8") + "\n[parameters]\nS_in = 180.0  # feed assay\n",
        encoding="utf-8",
    )
    write_into_pack(_fitted(mu_m=(0.021, "1/h")), pack_dir)
    write_into_pack(_fitted(mu_m=(0.025, "1/h"), K_m=(0.04, "mol/L")), pack_dir)
    text = toml.read_text(encoding="utf-8")
    assert text.count("# >>> bpcontrol fit") == 1 and text.count("[parameters]") == 1
    params = tomllib.loads(text)["parameters"]
    assert params["S_in"] == 180.0  # not fitted: kept
    assert params["mu_m"] == {"value": 0.025, "unit": "1/h"}
    assert params["K_m"] == {"value": 0.04, "unit": "mol/L"}
    assert "kept from before: S_in" in text


@pytest.mark.parametrize(
    ("fitted", "message"),
    [
        # mu_m is declared in [0, 1] 1/h (models/dompc_batch_reactor)
        (
            _fitted(mu_m=(1.5, "1/h")),
            r"pack\.toml: parameters\.mu_m: 1\.5 is outside the parameter's range \[0, 1\]",
        ),
        (_fitted(mu_m=(0.02, "1/s")), r"parameters\.mu_m\.unit: is '1/s'.* is '1/h'"),
        (_fitted(mu_max=(0.5, "1/h")), r"parameters\.mu_max: 'mu_max' is not a parameter"),
    ],
)
def test_a_value_the_pack_loader_refuses_writes_nothing(
    pack_dir: Path, tmp_path: Path, fitted: FittedParameters, message: str
) -> None:
    before = {p.name: p.read_bytes() for p in pack_dir.iterdir()}
    for into in (None, tmp_path / "copy"):
        with pytest.raises(HandoverError, match=message) as err:
            write_into_pack(fitted, pack_dir, into=into)
        assert "\n" not in str(err.value)
        assert _unchanged(pack_dir, before)
        assert not (tmp_path / "copy").exists()


def test_values_of_another_model_and_an_existing_target_are_refused(
    pack_dir: Path, tmp_path: Path
) -> None:
    other = FittedParameters({"mu_max": (0.5, "1/h")}, "ecoli_fedbatch", "d", ("B1",), "t", "f")
    with pytest.raises(
        HandoverError, match=r"fitted model 'ecoli_fedbatch'.*'dompc_batch_reactor'"
    ):
        write_into_pack(other, pack_dir)
    (tmp_path / "taken").mkdir()
    with pytest.raises(HandoverError, match=r"--into-pack .*taken: already exists"):
        write_into_pack(_fitted(mu_m=(0.021, "1/h")), pack_dir, into=tmp_path / "taken")


def test_cli_fit_writes_the_pack_and_run_takes_the_result_file(
    data_dir: Path, pack_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "fit.toml"
    args = ["fit", "--pack", str(pack_dir), "--data", str(data_dir), "--params", "mu_m,Y_x"]
    result = runner.invoke(
        app, [*args, "--starts", "1", "--out", str(out), "--into-pack", str(tmp_path / "p2")]
    )
    assert result.exit_code == 0, result.output
    fitted = read_fitted(out)
    assert set(fitted.values) == {"mu_m", "Y_x"} and fitted.batches == ("B1", "B2")
    text = (tmp_path / "p2" / "pack.toml").read_text(encoding="utf-8")
    assert str(out.resolve()) in text and str(data_dir.resolve()) in text
    in_pack = tomllib.loads(text)["parameters"]
    assert {k: v["value"] for k, v in in_pack.items()} == {
        k: v for k, (v, _) in fitted.values.items()
    }
    # the same file applied to the unfitted pack for one run gives the same model
    applied = model_with_overrides(pack_with_parameters(load_pack(pack_dir), out))
    written = model_with_overrides(load_pack(tmp_path / "p2"))
    assert list(applied.p0) == list(written.p0)
    # bpcontrol run --parameters: the run's spec records the fitted values
    result = runner.invoke(
        app,
        [
            "run",
            "--pack",
            str(pack_dir),
            "--parameters",
            str(out),
            "--duration",
            "2",
            "--controller",
            "recipe",
            "--speed-up",
            "max",
            "--out",
            str(tmp_path / "runs"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    (spec,) = (tmp_path / "runs").glob("*/run.toml")
    ran = tomllib.loads(spec.read_text(encoding="utf-8"))["pack"]["parameters"]
    assert ran["mu_m"]["value"] == fitted.values["mu_m"][0]


def test_cli_refusals_are_one_line_and_write_nothing(
    data_dir: Path, pack_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    before = {p.name: p.read_bytes() for p in pack_dir.iterdir()}
    out = tmp_path / "fit.toml"
    base = ["fit", "--data", str(data_dir), "--params", "mu_m", "--out", str(out)]
    cases = [
        ([*base, "--model", "dompc_batch_reactor", "--write-pack"], r"need --pack DIR"),
        (
            [*base, "--pack", str(pack_dir), "--write-pack", "--into-pack", str(tmp_path / "x")],
            r"not both",
        ),
    ]
    in_pack = [*base[:5], "--pack", str(pack_dir), "--out", str(pack_dir / "fit.toml")]
    cases.append((in_pack, r"--out .*fit\.toml: inside the pack folder"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[parameters]\nmu_m = { value = 7.0, unit = "1/h" }\n', encoding="utf-8")
    run_args = ["run", "--pack", str(pack_dir), "--duration", "1", "--out", str(tmp_path / "r")]
    cases.append(([*run_args, "--parameters", str(bad)], r"bad\.toml: parameters\.mu_m: 7 is"))
    cases.append(
        ([*run_args, "--parameters", str(tmp_path / "none.toml")], r"none\.toml: .*not found")
    )
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and not (tmp_path / "r").exists() and not (tmp_path / "x").exists()
    assert _unchanged(pack_dir, before)


def test_run_with_a_fit_keeps_the_packs_plant(pack_dir: Path, tmp_path: Path) -> None:
    """``bpcontrol run --parameters`` moves the controller's model, not the simulated
    plant: with the recipe (open loop, the same setpoints either way) a run with a fit of
    Y_x and mu_m and one without see the same true plant - the KPIs taken from the plant's
    truth agree to the integrator's precision - and the run's scenario.json carries the
    rewritten factors (the pack's plant has Y_x x0.8 of the unfitted 0.5)."""
    fit_file = tmp_path / "fit.toml"
    fit_file.write_text(
        "[parameters]\n"
        'Y_x = { value = 0.4, unit = "mol/mol" }\n'
        'mu_m = { value = 0.025, unit = "1/h" }\n'
        '[fit]\nmodel = "dompc_batch_reactor"\nbatches = ["B1"]\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    kpis = []
    for extra, out in (([], "plain"), (["--parameters", str(fit_file)], "fitted")):
        result = runner.invoke(
            app,
            [
                "run",
                "--pack",
                str(pack_dir),
                *extra,
                "--duration",
                "4",
                "--controller",
                "recipe",
                "--speed-up",
                "max",
                "--out",
                str(tmp_path / out),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        (run_dir,) = (tmp_path / out).iterdir()
        kpis.append(json.loads((run_dir / "kpis.json").read_text(encoding="utf-8")))
        scenario = json.loads((run_dir / "scenario.json").read_text(encoding="utf-8"))
    # the fitted run's plant: Y_x 0.5 * 0.8 / 0.4 = 1.0 of its model, mu_m 0.02 / 0.025
    assert scenario["parameter_factors"]["Y_x"] == pytest.approx(1.0, rel=1e-12)
    assert scenario["parameter_factors"]["mu_m"] == pytest.approx(0.8, rel=1e-12)
    # final_product is read from the plant's true trajectory (the run's KPIs)
    assert kpis[1]["final_product"] == pytest.approx(kpis[0]["final_product"], rel=1e-9)
    assert kpis[0]["final_product"] > 0
