"""`bpcontrol synth` and `bpcontrol estimate`: round trip, outputs, one-line errors, presets.

The round trip estimates a 10 h synthetic E. coli run once (module fixture) with two
flaws a real record has: readings of an output the filter does not use (``OUR``, skipped
with a warning) and a failed reading (``nan``, a ``rejected`` event). The error tests use
tiny hand-written files and fail before the filter is compiled.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.estimate_job import direct_measurements
from estimators import EKFConfig, default_ekf_config, dump_ekf_config, load_ekf_config
from estimators.presets import ECOLI_ONLINE_SIGMA, ecoli_ekf_config
from hil.synthetic import ECOLI_ONLINE_NOISE
from models import available_models, load_model

runner = CliRunner()
HOURS = 10.0
SEED = 3
INPUTS_HEADER = "t_h,F,Q_air,N_stir,T_set\n0,0,20,1200,37\n"


def invoke(*args: str) -> typer.testing.Result:
    return runner.invoke(app, list(args))


def assert_one_line_error(result: typer.testing.Result, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- round trip ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Roundtrip:
    data: Path
    out: Path
    synth: typer.testing.Result
    estimate: typer.testing.Result


def _add_flaws(path: Path) -> None:
    """An OUR reading (not a configured sensor) and a failed DO reading, at 1 h and 2 h."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    out = [rows[0]]
    for row in rows[1:]:
        out.append(row)
        if row[1] == "DO_probe" and float(row[0]) in (1.0, 2.0):
            sensor, value = ("OUR", "12.5") if float(row[0]) == 1.0 else ("DO_probe", "nan")
            out.append([row[0], sensor, value, ""])
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(out)


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Roundtrip:
    root = tmp_path_factory.mktemp("estimate")
    data = root / "data" / "run.csv"
    synth = invoke("synth", "--hours", str(HOURS), "--seed", str(SEED), "--out", str(data))
    assert synth.exit_code == 0, synth.stderr
    _add_flaws(data)
    out = root / "est"
    estimate = invoke(
        "estimate", "--model", "ecoli_fedbatch", "--data", str(data), "--out", str(out),
        "--x0", "X=0.33, S=9.8",
    )  # fmt: skip
    assert estimate.exit_code == 0, estimate.stderr
    return Roundtrip(data=data, out=out, synth=synth, estimate=estimate)


def test_synth_writes_readings_inputs_and_truth(roundtrip: Roundtrip) -> None:
    folder = roundtrip.data.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "run.csv",
        "run_inputs.csv",
        "run_truth.csv",
    ]
    for name in ("run.csv", "run_inputs.csv", "run_truth.csv"):
        assert f"wrote {folder / name}" in roundtrip.synth.stdout
    records = pd.read_csv(roundtrip.data)
    assert list(records.columns) == ["t_h", "sensor", "value", "t_sample_h"]
    truth = pd.read_csv(folder / "run_truth.csv")
    assert list(truth.columns) == ["t_h", "X", "S", "A", "DO", "V", "P", "T", "mu_max", "Y_xs"]
    assert truth["t_h"].iloc[-1] == pytest.approx(HOURS)
    assert len(truth) == round(HOURS * 60) + 1
    ecoli = load_model("ecoli_fedbatch")
    assert truth["mu_max"].iloc[0] == pytest.approx(0.8 * ecoli.p0[ecoli.index("mu_max")])


def test_estimate_writes_every_file(roundtrip: Roundtrip) -> None:
    out = roundtrip.out
    names = ("estimates.csv", "events.csv", "plot.png", "ekf.toml", "run.json")
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert f"wrote {out / name}" in roundtrip.estimate.stdout
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    est = pd.read_csv(out / "estimates.csv")
    states = ["X", "S", "A", "DO", "V", "P", "T", "mu_max", "Y_xs"]
    assert list(est.columns) == [
        "t_h",
        *(c for n in states for c in (n, f"{n}_sigma")),
        "nis",
        "dof",
    ]
    # one step per distinct arrival time (the synthetic inputs change only at arrivals)
    arrivals = pd.read_csv(roundtrip.data)["t_h"].unique()
    np.testing.assert_allclose(est["t_h"], arrivals)
    assert (est[[f"{n}_sigma" for n in states]] > 0).all().all()
    assert est["dof"].max() >= 4 and est["nis"].ge(0).all()
    ecoli = load_model("ecoli_fedbatch")
    # the filter's configuration is written back and reads back equal
    assert load_ekf_config(out / "ekf.toml", ecoli) == default_ekf_config(ecoli)
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "estimate" and info["model"] == "ecoli_fedbatch"
    assert info["x0"]["X"] == 0.33 and info["x0"]["S"] == 9.8 and info["x0"]["V"] == 6.0
    assert info["units"]["X_sigma"] == "g/L" and info["units"]["mu_max"] == "1/h"
    assert info["skipped_readings"] == {"OUR": 1}
    assert 0.7 < info["nis_per_dof"] < 1.3


def test_estimate_tracks_the_synthetic_truth(roundtrip: Roundtrip) -> None:
    est = pd.read_csv(roundtrip.out / "estimates.csv").iloc[-1]
    truth = pd.read_csv(roundtrip.data.with_name("run_truth.csv")).iloc[-1]
    assert est["t_h"] == pytest.approx(truth["t_h"])
    for name in ("X", "S", "DO", "V", "P"):
        error = abs(est[name] - truth[name])
        assert error <= 4 * est[f"{name}_sigma"] + 1e-6, (name, est[name], truth[name])
    assert est["X"] == pytest.approx(truth["X"], rel=0.03)
    # a 20 % wrong prior is learnt to within 5 % in 10 h
    assert est["mu_max"] == pytest.approx(truth["mu_max"], rel=0.05)
    assert est["Y_xs"] == pytest.approx(truth["Y_xs"], rel=0.05)


def test_events_list_late_fusions_and_the_failed_reading(roundtrip: Roundtrip) -> None:
    records = pd.read_csv(roundtrip.data)
    late = records[records["t_sample_h"] < records["t_h"]]
    assert len(late) >= 8  # at least two rounds of X, S, A, P assays
    events = pd.read_csv(roundtrip.out / "events.csv", keep_default_na=False)
    assert list(events.columns) == ["t_h", "kind", "sensor", "value", "message"]
    fused = events[events["kind"] == "late_fused"]
    assert len(fused) == len(late)
    np.testing.assert_allclose(np.sort(fused["t_h"].astype(float)), np.sort(late["t_h"]))
    assert sorted(fused["sensor"]) == sorted(late["sensor"])
    rejected = events[events["kind"] == "rejected"]
    assert list(rejected["sensor"]) == ["DO_probe"] and list(rejected["value"]) == [""]
    assert float(rejected["t_h"].iloc[0]) == 2.0
    assert "not a finite number" in rejected["message"].iloc[0]
    assert not (events["kind"].isin(["too_late", "reset"])).any()


def test_estimate_prints_the_summary_and_warns_of_skipped_readings(roundtrip: Roundtrip) -> None:
    stdout, stderr = roundtrip.estimate.stdout, roundtrip.estimate.stderr
    for fragment in ("estimate at 10 h", "mu_max", "1/h", "g/L", "+-2 sigma", "late_fused"):
        assert fragment in stdout, fragment
    assert "NIS per degree of freedom" in stdout
    assert stderr.splitlines() == [
        "warning: 1 readings of 'OUR' skipped: not a sensor of the filter configuration"
    ]


# --- bad input: one line, exit 2, nothing written ------------------------------------------


def _files(tmp_path: Path, body: str, inputs: str = INPUTS_HEADER) -> Path:
    data = tmp_path / "run.csv"
    data.write_text("t_h,sensor,value,t_sample_h\n" + body)
    (tmp_path / "run_inputs.csv").write_text(inputs)
    return data


GOOD_BODY = "0,DO_probe,100,\n0.5,DO_probe,98,\n1.5,X_off,0.9,0.5\n"


def _estimate_fails(tmp_path: Path, *args: str, fragments: tuple[str, ...]) -> str:
    out = tmp_path / "out"
    result = invoke("estimate", "--model", "ecoli_fedbatch", "--out", str(out), *args)
    line = assert_one_line_error(result, *fragments)
    assert not out.exists()
    assert result.stdout == ""
    return line


def test_missing_column(tmp_path: Path) -> None:
    data = tmp_path / "run.csv"
    data.write_text("t_h,sensor,value\n0,DO_probe,100\n")
    (tmp_path / "run_inputs.csv").write_text(INPUTS_HEADER)
    _estimate_fails(
        tmp_path, "--data", str(data), fragments=(f"{data}:1", "header must be", "t_sample_h")
    )


def test_non_numeric_value_names_the_line(tmp_path: Path) -> None:
    data = _files(tmp_path, "0,DO_probe,100,\n0.5,DO_probe,abc,\n")
    _estimate_fails(tmp_path, "--data", str(data), fragments=(f"{data}:3", "value 'abc'"))


def test_unknown_sensor_is_an_error(tmp_path: Path) -> None:
    """A name that is no output of the model means another model's file or a typo."""
    data = _files(tmp_path, GOOD_BODY + "2,DO_prob,97,\n")
    _estimate_fails(
        tmp_path, "--data", str(data), fragments=(f"{data}:5", "'DO_prob'", "ecoli_fedbatch")
    )


def test_only_unconfigured_sensors_is_an_error(tmp_path: Path) -> None:
    data = _files(tmp_path, "0,OUR,10,\n1,CER,11,\n")
    _estimate_fails(tmp_path, "--data", str(data), fragments=("no reading", "CER, OUR"))


def test_missing_and_bad_inputs_files(tmp_path: Path) -> None:
    data = _files(tmp_path, GOOD_BODY)
    (tmp_path / "run_inputs.csv").unlink()
    _estimate_fails(tmp_path, "--data", str(data), fragments=("run_inputs.csv", "not found"))
    other = tmp_path / "feed.csv"
    other.write_text("t_h,F,Q_air,N_stir\n0,0,20,1200\n")
    _estimate_fails(
        tmp_path, "--data", str(data), "--inputs", str(other), fragments=("feed.csv", "T_set")
    )


def test_missing_data_file_and_empty_data(tmp_path: Path) -> None:
    _estimate_fails(tmp_path, "--data", str(tmp_path / "nope.csv"), fragments=("nope.csv",))
    data = _files(tmp_path, "")
    _estimate_fails(tmp_path, "--data", str(data), fragments=("no readings",))


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[sensors\nDO_probe = 1", ("invalid TOML", "line 1")),
        ("lag_h = 6.0\n", ("missing table [sensors]",)),
        ("[sensors]\nDO_probe = { sgima = 1.0 }\n", ("sensors.DO_probe.sgima",)),
        ("[sensors]\nDO_probe = { sigma = -1.0 }\n", ("'DO_probe'", "sigma must be > 0")),
        ("[sensors]\nDO_probe = { sigma = 'big' }\n", ("sensors.DO_probe.sigma", "number")),
        ("[sensors]\nDO_probe = 1.0\n", ("sensors.DO_probe must be a table",)),
        ("[sensors]\npH = { sigma = 0.1 }\n", ("'pH' is not an output",)),
        ("gate = 0.99\n[sensors]\nDO_probe = { sigma = 1.0 }\n", ("unknown key 'gate'",)),
        (
            "[sensors]\nDO_probe = { sigma = 1.0 }\n[tracked]\nmu = { sigma0 = 0.1 }\n",
            ("tracked parameter 'mu'",),
        ),
        (
            "[sensors]\nDO_probe = { sigma = 1.0 }\n[process_sigma]\nXX = 0.1\n",
            ("process_sigma", "'XX'"),
        ),
        ("n_substeps = 1.5\n[sensors]\nDO_probe = { sigma = 1.0 }\n", ("n_substeps", "whole")),
    ],
)
def test_bad_config(tmp_path: Path, toml: str, fragments: tuple[str, ...]) -> None:
    data = _files(tmp_path, GOOD_BODY)
    config = tmp_path / "ekf.toml"
    config.write_text(toml)
    _estimate_fails(
        tmp_path, "--data", str(data), "--config", str(config), fragments=(str(config), *fragments)
    )


def test_missing_config_file(tmp_path: Path) -> None:
    data = _files(tmp_path, GOOD_BODY)
    _estimate_fails(
        tmp_path,
        "--data",
        str(data),
        "--config",
        str(tmp_path / "none.toml"),
        fragments=("none.toml", "not found"),
    )


@pytest.mark.parametrize(
    ("x0", "fragment"),
    [("Q=1", "'Q' is not a state"), ("X", "NAME=VALUE"), ("X=abc", "'abc'"), ("X=-1", "outside")],
)
def test_bad_x0(tmp_path: Path, x0: str, fragment: str) -> None:
    data = _files(tmp_path, GOOD_BODY)
    _estimate_fails(tmp_path, "--data", str(data), "--x0", x0, fragments=("--x0", fragment))


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    data = _files(tmp_path, GOOD_BODY)
    target = tmp_path / "taken"
    target.write_text("")
    result = invoke(
        "estimate", "--model", "ecoli_fedbatch", "--data", str(data), "--out", str(target)
    )
    assert_one_line_error(result, "not a folder")


def test_synth_refuses_other_models_bad_hours_and_overwriting(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    result = invoke("synth", "--model", "yeast_fedbatch", "--out", str(out))
    assert_one_line_error(result, "ecoli_fedbatch only", "'yeast_fedbatch'")
    result = invoke("synth", "--hours", "0.005", "--out", str(out))
    assert_one_line_error(result, "--hours", "whole number of minutes")
    assert not list(tmp_path.iterdir())
    (tmp_path / "run_truth.csv").write_text("keep me")
    result = invoke("synth", "--hours", "0.5", "--out", str(out))
    assert_one_line_error(result, "run_truth.csv exists", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_truth.csv"]
    result = invoke("synth", "--hours", "0.5", "--out", str(out), "--force")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "run_truth.csv").read_text().startswith("t_h,X,")


def test_help() -> None:
    for command, fragments in (
        ("estimate", ("--data", "--inputs", "--config", "--x0", "--out")),
        ("synth", ("--model", "--hours", "--seed", "--out", "--force")),
    ):
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.stderr
        for fragment in fragments:
            assert fragment in result.stdout, (command, fragment)
    assert "estimate" in invoke("--help").stdout


# --- presets and the TOML format -------------------------------------------------------


def test_ecoli_preset_matches_the_synthetic_sensors() -> None:
    assert dict(ECOLI_ONLINE_SIGMA) == dict(ECOLI_ONLINE_NOISE)
    ecoli = load_model("ecoli_fedbatch")
    config = default_ekf_config(ecoli)
    assert config == ecoli_ekf_config(ecoli)
    assert [tp.name for tp in config.tracked] == ["mu_max", "Y_xs"]


@pytest.mark.parametrize("name", available_models())
def test_every_model_has_a_default_that_round_trips(name: str, tmp_path: Path) -> None:
    model = load_model(name)
    config = default_ekf_config(model)
    config.validate(model)
    if name != "ecoli_fedbatch":
        assert [s.output for s in config.sensors] == list(model.sensor_names)
        assert config.tracked == ()
    assert all(math.isfinite(s.sigma) and s.sigma > 0 for s in config.sensors)
    path = tmp_path / "ekf.toml"
    path.write_text(dump_ekf_config(config, comment=f"for {name}\nsecond line"))
    tomllib.loads(path.read_text())  # valid TOML
    assert load_ekf_config(path, model) == config


def test_generic_sigma_is_one_percent_of_the_typical_magnitude() -> None:
    model = load_model("yeast_fedbatch")
    config = default_ekf_config(model)
    sigma = {s.output: s.sigma for s in config.sensors}
    do = model.outputs[model.index("DO_probe")]
    # DO at the nominal point is 100 %, above 1 % of its range: sigma = 1 % of 100 %
    assert sigma["DO_probe"] == pytest.approx(1.0)
    assert do.upper - do.lower <= 1e4


def test_toml_defaults_for_optional_keys(tmp_path: Path) -> None:
    path = tmp_path / "ekf.toml"
    path.write_text("[sensors]\nDO_probe = { sigma = 2 }\n[tracked]\nmu_max = { sigma0 = 0.1 }\n")
    ecoli = load_model("ecoli_fedbatch")
    config = load_ekf_config(path, ecoli)
    assert config.sensors[0].sigma == 2.0 and config.sensors[0].period_h == pytest.approx(1 / 60)
    assert config.tracked[0].drift_per_sqrt_h == 0.0
    defaults = EKFConfig(sensors=config.sensors)
    assert (config.lag_h, config.gate_probability) == (defaults.lag_h, defaults.gate_probability)


def test_direct_measurements_of_ecoli() -> None:
    direct = direct_measurements(load_model("ecoli_fedbatch"))
    assert direct == {
        "DO_probe": "DO",
        "T_probe": "T",
        "V_meas": "V",
        "X_off": "X",
        "S_off": "S",
        "A_off": "A",
        "P_off": "P",
    }
