"""Synthetic recorded data: the truth is the model, the noise is what was configured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hil.synthetic import (
    DataFormatError,
    OfflineAssays,
    ecoli_fedbatch_run,
    generate,
    read_csv,
    write_csv,
)
from models import load_model, simulate

MODEL = load_model("ecoli_fedbatch")
FACTORS = {"mu_max": 0.8, "Y_xs": 1.2}


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate(MODEL, ecoli_fedbatch_run(hours=12.0, parameter_factors=FACTORS), seed=5)


def test_truth_is_the_reference_simulation(data) -> None:  # type: ignore[no-untyped-def]
    traj = simulate(MODEL, 12.0, data.inputs, p=data.p, dt_out_h=1.0)
    k = np.searchsorted(data.t, traj.t)
    np.testing.assert_allclose(data.x[k], traj.x, rtol=1e-7, atol=1e-9)
    assert data.p[MODEL.index("mu_max")] == pytest.approx(0.8 * 0.65)


def test_same_seed_same_records_other_seed_other_noise(data) -> None:  # type: ignore[no-untyped-def]
    run = ecoli_fedbatch_run(hours=12.0, parameter_factors=FACTORS)
    again = generate(MODEL, run, seed=5)
    assert again.records == data.records
    other = generate(MODEL, run, seed=6)
    np.testing.assert_array_equal(other.x, data.x)  # no random inoculum: same plant
    assert other.records != data.records


def test_online_noise_has_the_configured_std(data) -> None:  # type: ignore[no-untyped-def]
    cas = MODEL.to_casadi()
    for name, sigma in ecoli_fedbatch_run().online.items():
        rec = [r for r in data.records if r.sensor == name]
        assert len(rec) == len(data.t)
        k = np.round(np.array([r.t_h for r in rec]) / (data.t[1] - data.t[0])).astype(int)
        y = np.array(
            [cas.outputs(data.x[i], data.u[max(i - 1, 0)], data.p)[MODEL.index(name)] for i in k]
        )
        e = np.array([r.value for r in rec]) - y
        assert abs(e.mean()) < 4 * sigma / np.sqrt(e.size)
        assert e.std() == pytest.approx(sigma, rel=0.06)  # 721 samples: std of std ~2.6 %


def test_offline_assays_interval_delay_and_relative_error() -> None:
    run = ecoli_fedbatch_run(hours=30.0, parameter_factors=FACTORS)
    rel = []
    for seed in range(4):
        d = generate(MODEL, run, seed=seed)
        off = [r for r in d.records if r.sensor == "X_off"]
        ts = np.array([r.t_sample_h for r in off])
        assert np.all(np.diff(ts) >= 2.0 - 1e-9) and np.all(np.diff(ts) <= 4.0 + 1e-9)
        delays = np.array([r.delay_h for r in off])
        assert np.all(delays >= 1.0 - 1e-9) and np.all(delays <= 3.0 + 1.0 / 60 + 1e-9)
        assert all(r.t_h <= 30.0 for r in off)
        X = d.state("X")
        rel += [r.value / X[round(r.t_sample_h * 60)] - 1 for r in off]
    assert np.std(rel) == pytest.approx(0.05, rel=0.35)


def test_csv_round_trip_is_exact(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, ipath = write_csv(data, tmp_path / "run.csv")
    assert ipath.name == "run_inputs.csv"
    back = read_csv(path, model=MODEL)
    assert back.records == data.records
    np.testing.assert_array_equal(back.inputs.times, data.inputs.times)
    np.testing.assert_array_equal(back.inputs.values, data.inputs.values)
    assert [g[0] for g in back.arrivals()] == [g[0] for g in data.arrivals()]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("t,sensor,value,t_sample_h\n", "header"),
        ("t_h,sensor,value,t_sample_h\n1,DO_probe,abc,\n", "value 'abc' is not a number"),
        ("t_h,sensor,value,t_sample_h\n1,DO_probe,50,2\n", "after t_h"),
        ("t_h,sensor,value,t_sample_h\n2,DO_probe,50,\n1,DO_probe,50,\n", "before the previous"),
        ("t_h,sensor,value,t_sample_h\n1,pH,7,\n", "'pH' is not an output"),
    ],
)
def test_bad_measurement_files_raise_with_file_and_line(
    data,
    tmp_path: Path,
    text: str,
    match: str,
) -> None:
    write_csv(data, tmp_path / "run.csv")
    (tmp_path / "run.csv").write_text(text)
    with pytest.raises(DataFormatError, match=match) as err:
        read_csv(tmp_path / "run.csv", model=MODEL)
    assert "run.csv" in str(err.value)


def test_bad_run_configuration_raises() -> None:
    run = ecoli_fedbatch_run(hours=1.0)
    with pytest.raises(ValueError, match="'mu' is not a parameter"):
        generate(MODEL, dataclasses.replace(run, parameter_factors={"mu": 1.1}), seed=0)
    with pytest.raises(ValueError, match="whole number of periods"):
        generate(MODEL, dataclasses.replace(run, hours=1.005), seed=0)
    with pytest.raises(ValueError, match="not an output"):
        generate(MODEL, dataclasses.replace(run, offline=OfflineAssays(outputs=("X",))), seed=0)
