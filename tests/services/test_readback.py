"""Read-back of recorded batches (services.historian.readback): embedded SQLite and CSV.

Batches are simulated by ``hil.synthetic`` (do-mpc's batch reactor, online probes and late
offline assays), written as loop records to a real embedded historian file, and read
back; the CSV format is checked by a round trip and by each malformed-data error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bpcontrol.records import MeasurementRecord, RunIdentity, SetpointRecord, SetpointSource
from hil.synthetic import OfflineAssays, SyntheticRun, generate
from models import InputProfile, load_model
from services.historian import EmbeddedHistorian
from services.historian.readback import (
    BatchSource,
    CsvBatchSource,
    EmbeddedBatchSource,
    ReadbackError,
    open_source,
    write_csv,
)

MODEL = load_model("dompc_batch_reactor")


def record_run(path: Path, batch_id: str, seed: int, hours: float = 20.0) -> None:
    """Simulate a batch and store its readings and setpoints as loop records."""
    steps = InputProfile.from_steps(MODEL, {"inp": [(0.0, 0.0), (5.0, 0.02), (12.0, 0.04)]})
    run = SyntheticRun(
        hours=hours,
        inputs=steps,
        period_h=0.5,
        online={"X_meas": 0.01, "V_meas": 0.1},
        offline=OfflineAssays(outputs=("S_meas", "P_meas"), relative_sigma=0.05),
    )
    data = generate(MODEL, run, seed=seed)
    ident = RunIdentity.start(site="test", reactor="R1", batch_id=batch_id, run_id=f"r{seed}")
    with EmbeddedHistorian(path) as hist:
        for k, t in enumerate(steps.times):
            hist.write(
                SetpointRecord(
                    float(t), {"inp": float(steps.values[k, 0])}, SetpointSource.RECIPE, run=ident
                )
            )
        for r in data.records:
            hist.write(MeasurementRecord(r.t_h, r.sensor, r.value, r.t_sample_h, run=ident))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for k, bid in enumerate(("B1", "B2")):
        record_run(root / f"run{k}" / "records.sqlite", bid, seed=k + 1)
    (root / "run0" / "run.toml").write_text(
        '[pack]\nmodel = "dompc_batch_reactor"\n[pack.recipe.initial]\nX_s = 1.0\nV_s = 120.0\n'
        '[pack.sensors.X_meas]\nkind = "online"\nsigma = 0.01\nunit = "mol/L"\n',
        encoding="utf-8",
    )
    return root


def test_embedded_source_reads_batches_with_late_samples_at_their_sample_time(runs: Path) -> None:
    source = open_source(runs)
    assert isinstance(source, EmbeddedBatchSource) and isinstance(source, BatchSource)
    assert source.batch_ids() == ("B1", "B2")
    b1 = source.batch("B1")
    assert set(b1.measurements) == {"X_meas", "V_meas", "S_meas", "P_meas"}
    s = b1.series("S_meas")
    assert np.all(np.diff(s.t_sample_h) >= 0)
    assert np.all(s.t_h - s.t_sample_h >= 1.0 - 1e-9)  # assays arrive 1-3 h late
    x = b1.series("X_meas")
    np.testing.assert_allclose(x.t_h, x.t_sample_h)
    assert b1.inputs is not None
    np.testing.assert_allclose(b1.inputs.times, [0.0, 5.0, 12.0])
    np.testing.assert_allclose(b1.inputs.values[:, 0], [0.0, 0.02, 0.04])
    assert dict(b1.initial_state) == {"X_s": 1.0, "V_s": 120.0}
    assert b1.units["X_meas"] == "mol/L"
    assert dict(source.batch("B2").initial_state) == {}  # no run.toml there


def test_one_file_and_one_run_folder_are_sources_too(runs: Path) -> None:
    assert open_source(runs / "run1").batch_ids() == ("B2",)
    assert open_source(runs / "run1" / "records.sqlite").batch_ids() == ("B2",)


def test_csv_round_trip_is_exact(runs: Path, tmp_path: Path) -> None:
    src = open_source(runs)
    batches = [src.batch(b) for b in src.batch_ids()]
    write_csv(tmp_path, batches, MODEL)
    csv_src = open_source(tmp_path)
    assert isinstance(csv_src, CsvBatchSource)
    assert csv_src.batch_ids() == ("B1", "B2")
    for b in batches:
        c = csv_src.batch(b.batch_id)
        assert set(c.measurements) == set(b.measurements)
        for name, s in b.measurements.items():
            np.testing.assert_array_equal(c.measurements[name].t_sample_h, s.t_sample_h)
            np.testing.assert_array_equal(c.measurements[name].value, s.value)
            np.testing.assert_array_equal(c.measurements[name].t_h, s.t_h)
        assert c.inputs is not None and b.inputs is not None
        np.testing.assert_array_equal(c.inputs.times, b.inputs.times)
        np.testing.assert_array_equal(c.inputs.values, b.inputs.values)
        assert dict(c.initial_state) == dict(b.initial_state)
        assert c.units["S_meas"] == "mol/L"  # the model's unit, written by write_csv


def test_unknown_batch_names_the_file_and_the_batches(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(ReadbackError, match=r"no batch 'B9' \(batches: B1, B2\)"):
        open_source(runs).batch("B9")
    src = open_source(runs)
    write_csv(tmp_path, [src.batch("B1")], MODEL)
    with pytest.raises(ReadbackError, match=r"measurements\.csv: no batch 'B2'"):
        open_source(tmp_path).batch("B2")


def test_missing_series_and_unit_mismatch(runs: Path, tmp_path: Path) -> None:
    b1 = open_source(runs).batch("B1")
    with pytest.raises(ReadbackError, match=r"batch 'B1' has no series 'X_off'"):
        b1.series("X_off")
    write_csv(tmp_path, [b1], MODEL)
    text = (tmp_path / "measurements.csv").read_text(encoding="utf-8")
    (tmp_path / "measurements.csv").write_text(
        text.replace(",S_meas,", ",S_meas_x,").replace("mol/L", "g/L"), encoding="utf-8"
    )
    bad = open_source(tmp_path).batch("B1")
    with pytest.raises(ReadbackError, match=r"X_meas is recorded in 'g/L', model .* 'mol/L'"):
        bad.check_units(MODEL, ["X_meas"])


def _csv(tmp_path: Path, rows: str, inputs: str = "B1,0,inp,0.0,m3/h\n") -> Path:
    (tmp_path / "measurements.csv").write_text(
        "batch_id,t_h,t_sample_h,sensor,value,unit\n" + rows, encoding="utf-8"
    )
    (tmp_path / "inputs.csv").write_text("batch_id,t_h,input,value,unit\n" + inputs)
    return tmp_path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("B1,1.0,1.0,X_meas,abc,mol/L\n", r"line 2: value 'abc' is not a number"),
        ("B1,1.0,1.0,X_meas\n", r"line 2: expected 6 fields"),
        ("B1,1.0,2.0,X_meas,1.0,mol/L\n", r"line 2: t_sample_h 2 must be in \[0, t_h = 1\]"),
        ("B1,inf,1.0,X_meas,1.0,mol/L\n", r"line 2: t_h 'inf' is not a finite number"),
        (",1.0,1.0,X_meas,1.0,mol/L\n", r"line 2: empty batch_id or sensor"),
        (
            "B1,1.0,1.0,X_meas,1.0,mol/L\nB1,2.0,2.0,X_meas,1.0,g/L\n",
            r"line 3: X_meas in 'g/L', earlier rows of batch 'B1' say 'mol/L'",
        ),
    ],
)
def test_malformed_csv_rows_name_file_and_line(tmp_path: Path, rows: str, message: str) -> None:
    with pytest.raises(ReadbackError, match=r"measurements\.csv: " + message):
        CsvBatchSource(_csv(tmp_path, rows))


def test_malformed_csv_files(tmp_path: Path) -> None:
    (tmp_path / "measurements.csv").write_text("batch_id,t_h,sensor,value\n", encoding="utf-8")
    with pytest.raises(ReadbackError, match=r"header lacks t_sample_h, unit"):
        CsvBatchSource(tmp_path)
    _csv(tmp_path, "B1,1.0,,X_meas,1.0,mol/L\n", inputs="B1,x,inp,0.0,m3/h\n")
    with pytest.raises(ReadbackError, match=r"inputs\.csv: line 2: t_h 'x' is not a number"):
        CsvBatchSource(tmp_path)
    (tmp_path / "inputs.csv").unlink()
    with pytest.raises(ReadbackError, match=r"inputs\.csv: file not found"):
        CsvBatchSource(tmp_path)
    with pytest.raises(ReadbackError, match=r"give the folder"):
        open_source(tmp_path / "measurements.csv")
    with pytest.raises(ReadbackError, match=r"no such file or folder"):
        open_source(tmp_path / "nothing")


def test_an_empty_t_sample_means_an_online_reading_and_nan_is_skipped(tmp_path: Path) -> None:
    src = CsvBatchSource(_csv(tmp_path, "B1,1.0,,X_meas,1.0,\nB1,2.0,,X_meas,nan,\n"))
    s = src.batch("B1").series("X_meas")
    np.testing.assert_array_equal(s.t_sample_h, [1.0])
    assert s.unit is None


def test_two_runs_of_one_pack_read_back_as_two_batches(tmp_path: Path) -> None:
    """``bpcontrol run`` without ``--batch`` names the batch after the run (not the pack),
    so runs recorded side by side stay apart; ``--batch`` names it."""
    from typer.testing import CliRunner

    from bpcontrol.cli import app

    out = tmp_path / "runs"
    common = ["run", "--controller", "recipe", "--duration", "0.5", "--out", str(out)]
    for extra in ([], ["--seed", "2"], ["--batch", "LOT-7"]):
        result = CliRunner().invoke(app, [*common, *extra])
        assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 3
    ids = open_source(out).batch_ids()
    assert len(ids) == 3 and "LOT-7" in ids
    assert set(ids) - {"LOT-7"} <= set(folders)
