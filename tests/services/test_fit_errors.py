"""Bad data for ``bpcontrol fit`` (issue 18): a missing series, a unit mismatch, too few
points for the parameters asked, a batch that does not exist, a repeated batch: each is
one ``error:`` line naming the file (or option) and the culprit, exit 2, and nothing
written: no result file, no report, no pack touched."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from reactor_batches import MODEL, PROFILES, synthetic_batch
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.pack import builtin_pack_dir
from services.historian.readback import BatchData, write_csv


@pytest.fixture(scope="module")
def batches() -> list[BatchData]:
    return [
        synthetic_batch(31 + k, f"B{k + 1}", p, origin=f"seed {31 + k}")
        for k, p in enumerate(PROFILES)
    ]


Edit = Callable[[list[str]], list[str] | None]


def _edit_rows(path: Path, keep: Edit) -> None:
    """Rewrite measurements.csv keeping (or changing) rows: ``keep(fields) -> fields|None``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        fields = keep(ln.split(","))
        if fields is not None:
            out.append(",".join(fields))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def _no_s_in_b2(f: list[str]) -> list[str] | None:
    return None if f[0] == "B2" and f[3] == "S_meas" else f


def _x_in_grams(f: list[str]) -> list[str]:
    # X_meas of B1 labelled g/L: the model's X_meas is mol/L (models/dompc_batch_reactor)
    return [*f[:5], "g/L"] if f[0] == "B1" and f[3] == "X_meas" else f


def _three_readings(f: list[str]) -> list[str] | None:
    return f if f[0] == "B1" and f[3] == "X_meas" and float(f[1]) <= 1.0 else None


CASES = [
    pytest.param(
        None,
        ["--batches", "B1,B7"],
        r"measurements\.csv: no batch 'B7' \(batches: B1, B2\)",
        id="batch-not-there",
    ),
    pytest.param(
        _no_s_in_b2,
        ["--sensors", "X_meas,S_meas"],
        r"measurements\.csv: batch 'B2' has no series 'S_meas' \(it has: P_meas, V_meas, X_meas\)",
        id="missing-series",
    ),
    pytest.param(
        _x_in_grams,
        [],
        r"measurements\.csv: batch 'B1': X_meas is recorded in 'g/L', .* expects 'mol/L'",
        id="unit-mismatch",
    ),
    pytest.param(
        _three_readings,
        ["--batches", "B1", "--params", "mu_m,Y_x,K_m,v_par"],
        r"--data .*csv \(batches B1\): too few measurements: 3 readings for 4 estimates",
        id="too-few-points",
    ),
    pytest.param(
        None, ["--batches", "B1,B2,B1"], r"--batches: B1 given more than once", id="twice"
    ),
]


@pytest.mark.parametrize(("edit", "extra", "message"), CASES)
def test_bad_data_is_one_line_exit_2_and_nothing_written(
    batches: list[BatchData],
    tmp_path: Path,
    edit: Edit | None,
    extra: list[str],
    message: str,
) -> None:
    data = tmp_path / "csv"
    write_csv(data, batches, MODEL)
    if edit is not None:
        _edit_rows(data / "measurements.csv", edit)
    pack = tmp_path / "pack"
    shutil.copytree(builtin_pack_dir("dompc_batch_reactor"), pack)
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    out = tmp_path / "out" / "fit.toml"
    args = ["fit", "--pack", str(pack), "--data", str(data), "--out", str(out), "--write-pack"]
    if "--params" not in extra:
        args += ["--params", "mu_m,Y_x"]
    res = CliRunner().invoke(app, [*args, *extra, "--starts", "1"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()  # neither the result nor the report
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before


def test_the_same_data_without_the_fault_fits(batches: list[BatchData], tmp_path: Path) -> None:
    """The control case: the unedited files fit, so the failures above are the faults'."""
    data = tmp_path / "csv"
    write_csv(data, batches, MODEL)
    out = tmp_path / "fit.toml"
    args = ["fit", "--model", "dompc_batch_reactor", "--data", str(data), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--params", "mu_m,Y_x", "--starts", "1"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".html").is_file()
