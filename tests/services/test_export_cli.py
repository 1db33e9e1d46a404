"""``bpcontrol export`` from the embedded store: the CSV and Parquet files read back to the
same batch, and bad input is one line with nothing written (the InfluxDB side of export is
tested against a real influxd in tests/services/influx/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from services.historian.readback import CsvBatchSource, EmbeddedBatchSource
from tests.services.test_readback import record_run

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "run0" / "records.sqlite"
    record_run(path, "B1", seed=1, hours=10.0)
    return path


def test_csv_export_reads_back_to_the_recorded_batch(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    res = runner.invoke(app, ["export", "--source", str(store), "--batch", "B1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "measurements.csv" in res.output
    ref, got = EmbeddedBatchSource(store).batch("B1"), CsvBatchSource(out).batch("B1")
    assert set(got.measurements) == set(ref.measurements)
    for name, s in ref.measurements.items():
        np.testing.assert_array_equal(got.measurements[name].value, s.value)
        np.testing.assert_array_equal(got.measurements[name].t_sample_h, s.t_sample_h)


def test_parquet_export_has_the_csv_rows(store: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        res = runner.invoke(
            app,
            ["export", "--source", str(store), "--batch", "B1", "--format", fmt,
             "--out", str(tmp_path / fmt)],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "csv" / "measurements.csv")
    pq = pd.read_parquet(tmp_path / "parquet" / "measurements.parquet")
    assert list(pq.columns) == list(csv.columns)
    assert len(pq) == len(csv) > 0
    np.testing.assert_allclose(pq["value"].to_numpy(float), csv["value"].to_numpy(float))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "B9"], "B9"),
        (["--batch", "B1", "--format", "xls"], "--format 'xls'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", "--source", str(store), "--out", str(out), *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not out.exists()
