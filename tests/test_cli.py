"""The command line: help, model listing, simulate outputs, profiles, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.profiles import ProfileError, load_profile
from models import Model, load_model

BPCONTROL = Path(sys.executable).with_name("bpcontrol")

runner = CliRunner()


@pytest.fixture(scope="module")
def ecoli() -> Model:
    return load_model("ecoli_fedbatch")


def invoke(*args: str) -> typer.testing.Result:
    return runner.invoke(app, list(args))


def assert_one_line_error(result: typer.testing.Result, *fragments: str) -> str:
    """Non-zero exit, exactly one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- help and listing ---------------------------------------------------------------------


def test_help_for_the_app_and_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0 and "simulate" in result.stdout
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"models", "simulate"} <= set(commands)
    for name in commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, (name, result.stderr)
        assert "Usage" in result.stdout


@pytest.mark.parametrize("command", ["fit", "run"])
def test_help_keeps_bracketed_toml_tables(command: str) -> None:
    """Rich markup ate an unescaped ``[parameters]`` from the help text."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "[parameters]" in result.stdout, result.stdout


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == "bpcontrol 0.1.0"


def test_models_lists_builtins_with_descriptions() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.stderr
    for name in ("ecoli_fedbatch", "dompc_batch_reactor"):
        assert name in result.stdout
    assert "overflow" in result.stdout  # from the E. coli description


# --- simulate -----------------------------------------------------------------------------


def test_console_script_simulates_ecoli_for_30_h(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BPCONTROL), "simulate", "--model", "ecoli_fedbatch", "--hours", "30"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("sim-ecoli_fedbatch-")
    frame = pd.read_csv(run / "trajectories.csv")
    assert frame["t_h"].iloc[-1] == pytest.approx(30.0)
    assert len(frame) == 301
    assert {"X", "S", "DO", "F", "OUR"} <= set(frame.columns)
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "ecoli_fedbatch" and info["units"]["X"] == "g/L"
    assert "final" in proc.stdout and "g/L" in proc.stdout  # the summary table


def test_simulate_parquet_with_profile_and_jax(tmp_path: Path) -> None:
    profile = tmp_path / "feed.toml"
    profile.write_text("[inputs]\ninp = [[0.0, 0.0], [2.0, 0.1]]\n")
    out = tmp_path / "run"
    result = invoke(
        "simulate",
        "--model",
        "dompc_batch_reactor",
        "--hours",
        "4",
        "--dt",
        "0.5",
        "--inputs",
        str(profile),
        "--format",
        "parquet",
        "--backend",
        "jax",
        "--seed",
        "7",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.stderr
    frame = pd.read_parquet(out / "trajectories.parquet")
    np.testing.assert_allclose(frame["t_h"], np.arange(0.0, 4.01, 0.5))
    assert frame["inp"].tolist() == [0.0] * 4 + [0.1] * 5
    info = json.loads((out / "run.json").read_text())
    assert info["backend"] == "jax" and info["seed"] == 7 and info["inputs"] == str(profile)


def test_simulate_with_a_user_model_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_MODEL)
    result = invoke("simulate", "--model", str(path), "--hours", "2", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    # X' = mu X with mu = 0.1 1/h and no feed
    np.testing.assert_allclose(frame["X"], np.exp(0.1 * frame["t_h"]), rtol=1e-8)


def test_bound_violation_is_reported_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_MODEL.replace("upper=100.0, nominal=1.0", "upper=1.1, nominal=1.0"))
    result = invoke("simulate", "--model", str(path), "--hours", "2", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.stderr
    assert "warning: state 'X' rose above its upper bound 1.1" in result.stderr
    frame = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    assert frame["X"].iloc[-1] == pytest.approx(np.exp(0.2), rel=1e-8)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--hours", "0"], ["--hours must be > 0"]),
        (["--hours", "-3"], ["--hours must be > 0"]),
        (["--hours", "1", "--dt", "0"], ["--dt must be a finite number > 0"]),
        (["--hours", "1", "--dt", "1e-9"], ["--hours", "output steps of --dt"]),
    ],
)
def test_bad_numbers_give_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    out = tmp_path / "never"
    result = invoke("simulate", "--model", "dompc_batch_reactor", "--out", str(out), *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_unknown_model_gives_one_line() -> None:
    result = invoke("simulate", "--model", "no_such_model", "--hours", "1")
    assert_one_line_error(result, "unknown model 'no_such_model'", "ecoli_fedbatch")


def test_failed_integration_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "blowup.py"
    path.write_text(TINY_MODEL.replace('"X": p.mu * x.X - u.F / x.V * x.X', '"X": x.X**2'))
    result = invoke("simulate", "--model", str(path), "--hours", "3", "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: model 'tiny': CVODES failed")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()


# --- bad model files: one clear line each -------------------------------------------------

TINY_MODEL = textwrap.dedent(
    '''
    """A minimal valid model: exponential growth in a fed tank."""
    import numpy as np

    from models import Input, Model, Output, Parameter, State


    def rhs(m, x, u, p):
        return {"X": p.mu * x.X - u.F / x.V * x.X, "V": u.F}


    def measure(m, x, u, p):
        return {"X_meas": x.X}


    MODEL = Model(
        name="tiny",
        description="exponential growth in a fed tank",
        states=(
            State(name="X", unit="g/L", lower=0.0, upper=100.0, nominal=1.0),
            State(name="V", unit="L", lower=0.1, upper=10.0, nominal=1.0),
        ),
        inputs=(Input(name="F", unit="L/h", lower=0.0, upper=1.0, nominal=0.0),),
        parameters=(
            Parameter(name="mu", unit="1/h", value=0.1, lower=0.0, upper=1.0, source="test"),
        ),
        outputs=(Output(name="X_meas", unit="g/L"),),
        rhs=rhs,
        measure=measure,
    )
    '''
)

BAD_MODELS = {
    "empty_unit": (
        ('State(name="X", unit="g/L"', 'State(name="X", unit=""'),
        ["state 'X' has no unit"],
    ),
    "missing_unit": (
        ('State(name="X", unit="g/L", ', 'State(name="X", '),
        ["missing 1 required keyword-only argument: 'unit'"],
    ),
    "rhs_returns_vector": (
        ('return {"X": p.mu * x.X - u.F / x.V * x.X, "V": u.F}', "return [p.mu * x.X, u.F]"),
        ["rhs() must return a mapping", "got list"],
    ),
    "rhs_entry_not_scalar": (
        ('"X": p.mu * x.X - u.F', '"X": np.ones(3) * p.mu * x.X - u.F'),
        ["rhs()['X'] has shape (3,), expected a scalar"],
    ),
    "name_clash": (
        ('Parameter(name="mu"', 'Parameter(name="X"'),
        ["name clash: 'X' is declared as state and as parameter"],
    ),
    "nan_at_nominal": (
        ('"X": p.mu * x.X - u.F / x.V * x.X', '"X": m.sqrt(x.X - 2.0)'),
        ["rhs()['X'] is nan at the nominal point"],
    ),
    "syntax_error": (
        ("def rhs(m, x, u, p):", "def rhs(m, x, u, p)"),
        ["syntax error"],
    ),
    "missing_model": (
        ("MODEL = Model(", "MY_MODEL = Model("),
        ["defines no MODEL"],
    ),
}


def test_tiny_model_template_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_MODEL)
    assert load_model(path).name == "tiny"


@pytest.mark.parametrize("defect", sorted(BAD_MODELS))
def test_bad_model_file_gives_one_line(tmp_path: Path, defect: str) -> None:
    (old, new), fragments = BAD_MODELS[defect]
    assert old in TINY_MODEL
    path = tmp_path / f"{defect}.py"
    path.write_text(TINY_MODEL.replace(old, new))
    out = tmp_path / "never"
    result = invoke("simulate", "--model", str(path), "--hours", "1", "--out", str(out))
    assert_one_line_error(result, str(path), *fragments)
    assert not out.exists()


def test_missing_model_file_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.py"
    result = invoke("simulate", "--model", str(path), "--hours", "1")
    assert_one_line_error(result, str(path), "model file not found")


# --- input profiles -----------------------------------------------------------------------


def test_csv_profile(tmp_path: Path, ecoli: Model) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "# feed from 8 h, temperature shift at 20 h\n"
        "t_h, F, T_set\n"
        "\n"
        "2, 0.0, 37\n"
        "8, 0.05,\n"
        "20, , 30\n"
    )
    prof = load_profile(path, ecoli)
    assert prof.names == ecoli.input_names
    assert prof.times.tolist() == [0.0, 2.0, 8.0, 20.0]  # nominal before the first row
    col = {n: prof.values[:, ecoli.index(n)].tolist() for n in ecoli.input_names}
    assert col["F"] == [0.0, 0.0, 0.05, 0.05]  # empty cell keeps the previous value
    assert col["T_set"] == [37.0, 37.0, 37.0, 30.0]
    assert col["N_stir"] == [600.0] * 4  # not in the file: nominal


def test_toml_profile_equals_csv_profile(tmp_path: Path, ecoli: Model) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'description = "feed and shift"\n'
        'model = "ecoli_fedbatch"\n'
        "[inputs]\n"
        "F = [[0.0, 0.0], [8.0, 0.05]]\n"
        "T_set = [[0.0, 37.0], [20, 30]]\n"
        "N_stir = 900\n"
    )
    csv = tmp_path / "p.csv"
    csv.write_text("t_h,F,T_set,N_stir\n0,0,37,900\n8,0.05,37,900\n20,0.05,30,900\n")
    a, b = load_profile(toml, ecoli), load_profile(csv, ecoli)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.values, b.values)


BAD_PROFILES: dict[str, tuple[str, str, list[str]]] = {
    "csv_unknown_input": ("csv", "t_h,Fx\n0,1\n", ["unknown input 'Fx'", "known: F, Q_air"]),
    "csv_non_numeric": (
        "csv",
        "t_h,F\n0,0.0\n4,fast\n",
        [":3: column 'F'", "'fast' is not a number"],
    ),
    "csv_unsorted": (
        "csv",
        "t_h,F\n0,0\n5,0.1\n3,0.2\n",
        [":4: times must be strictly increasing"],
    ),
    "csv_out_of_bounds": (
        "csv",
        "t_h,F\n0,0\n5,0.9\n",
        [":3:", "input 'F' = 0.9 L/h is outside its bounds [0, 0.5]"],
    ),
    "csv_empty": ("csv", "", ["empty file"]),
    "csv_header_only": ("csv", "t_h,F\n", ["no data rows"]),
    "csv_no_time": ("csv", "F\n0.1\n", ["no 't_h' column"]),
    "csv_ragged": ("csv", "t_h,F\n0,0.1,7\n", [":2: 3 cells"]),
    "csv_nan": ("csv", "t_h,F\n0,nan\n", ["not a finite number"]),
    "csv_negative_time": ("csv", "t_h,F\n-1,0.1\n", ["time -1 h is negative"]),
    "toml_syntax": ("toml", "[inputs\nF = 1\n", ["invalid TOML"]),
    "toml_unknown_input": ("toml", "[inputs]\nFx = 0.1\n", ["unknown input 'Fx'", "known: F"]),
    "toml_unsorted": (
        "toml",
        "[inputs]\nF = [[0, 0.0], [5, 0.1], [3, 0.2]]\n",
        ["inputs.F[2]: times must be strictly increasing"],
    ),
    "toml_out_of_bounds": (
        "toml",
        "[inputs]\nN_stir = [[0, 600], [4, 5000]]\n",
        ["inputs.N_stir[1]", "5000 rpm is outside its bounds [200, 1200]"],
    ),
    "toml_not_pairs": ("toml", '[inputs]\nF = [[0, "a"]]\n', ["expected a pair [t_h, value]"]),
    "toml_empty_table": ("toml", "[inputs]\n", ["empty profile"]),
    "toml_no_inputs": ("toml", 'description = "x"\n', ["no [inputs] table"]),
    "toml_unknown_key": ("toml", "[input]\nF = 0.1\n", ["unknown key 'input'"]),
    "toml_wrong_model": ("toml", 'model = "yeast"\n[inputs]\nF = 0.1\n', ["for model 'yeast'"]),
    "wrong_extension": ("xlsx", "t_h,F\n0,0\n", ["unsupported profile format '.xlsx'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_profile_gives_one_line(tmp_path: Path, case: str) -> None:
    ext, text, fragments = BAD_PROFILES[case]
    path = tmp_path / f"{case}.{ext}"
    path.write_text(text)
    out = tmp_path / "never"
    args = ["simulate", "--model", "ecoli_fedbatch", "--hours", "1", "--out", str(out)]
    result = invoke(*args, "--inputs", str(path))
    assert_one_line_error(result, str(path), *fragments)
    assert not out.exists()
    with pytest.raises(ProfileError):  # the same from the library call
        load_profile(path, load_model("ecoli_fedbatch"))


def test_missing_profile_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    result = invoke("simulate", "--model", "ecoli_fedbatch", "--hours", "1", "--inputs", str(path))
    assert_one_line_error(result, str(path), "profile file not found")
