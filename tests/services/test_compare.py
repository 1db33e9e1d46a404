"""``bpcontrol compare`` (issue 18): batches against a golden batch, by time or by phase, on
the embedded store (real runs of the loop and records written through the historian) and
on CSV; KPIs checked against what the data hold; bad data is one line and nothing written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reactor_batches import MODEL, synthetic_batch
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.records import (
    EventKind,
    EventRecord,
    MeasurementRecord,
    RunIdentity,
    SetpointRecord,
    SetpointSource,
)
from services.fitting.compare import CompareError, compare_batches
from services.historian import EmbeddedHistorian
from services.historian.readback import (
    BatchData,
    ReadbackError,
    open_source,
    write_csv,
)

PROFILES = {
    "B1": {"inp": [(0.0, 0.0), (8.0, 0.02), (20.0, 0.05)]},
    "B2": {"inp": [(0.0, 0.0), (5.0, 0.04), (25.0, 0.01)]},
    "B3": {"inp": [(0.0, 0.0), (10.0, 0.03)]},
}


def _batch(seed: int, batch_id: str) -> BatchData:
    """One simulated 40 h batch of the nominal reactor under its profile of PROFILES."""
    return synthetic_batch(seed, batch_id, PROFILES[batch_id], origin=f"seed {seed}")


@pytest.fixture(scope="module")
def batches() -> list[BatchData]:
    return [_batch(21 + k, b) for k, b in enumerate(PROFILES)]


@pytest.fixture
def csv_dir(batches: list[BatchData], tmp_path: Path) -> Path:
    write_csv(tmp_path / "csv", batches, MODEL)
    return tmp_path / "csv"


def _fed_by_hand(steps: list[tuple[float, float]], end_h: float) -> float:
    """integral of a step schedule over [0, end_h] (m3 of feed for inp in m3/h)."""
    total = 0.0
    for k, (t, v) in enumerate(steps):
        nxt = steps[k + 1][0] if k + 1 < len(steps) else end_h
        total += v * max(0.0, min(nxt, end_h) - t)
    return total


def test_kpis_are_what_the_data_hold_and_the_golden_is_the_best(
    csv_dir: Path, batches: list[BatchData]
) -> None:
    source = open_source(csv_dir)
    comp = compare_batches(source, ["B1", "B2", "B3"], golden_kpi="product")
    by_id = {b.batch_id: b for b in batches}
    for bid, kpis in comp.kpis.items():
        b = by_id[bid]
        p = b.measurements["P_meas"]
        assert kpis["duration_h"] == max(float(s.t_sample_h[-1]) for s in b.measurements.values())
        assert kpis["product"] == float(p.value[-1])  # P_meas: the one P_* sensor
        assert kpis["min_X_meas"] == float(np.min(b.measurements["X_meas"].value))
        fed = _fed_by_hand(PROFILES[bid]["inp"], kpis["duration_h"])
        assert kpis["fed"] == pytest.approx(fed, rel=1e-12)  # inp is the only input
        assert kpis["yield"] == pytest.approx((p.value[-1] - p.value[0]) / fed, rel=1e-12)
    assert comp.kpi_units["product"] == "mol/L" and comp.kpi_units["fed"] == "m3/h h"
    best = max(comp.kpis, key=lambda b: comp.kpis[b]["product"])
    assert comp.golden == best and comp.batches[0].batch_id == best
    assert "highest product" in comp.golden_reason
    # the lowest duration picks by min; a named golden batch outside --batches joins them
    shortest = compare_batches(source, ["B1", "B2", "B3"], golden_kpi="duration_h")
    assert shortest.golden == min(comp.kpis, key=lambda b: comp.kpis[b]["duration_h"])
    named = compare_batches(source, ["B1", "B2"], golden="B3")
    assert [b.batch_id for b in named.batches] == ["B3", "B1", "B2"]
    assert named.difference("B1", "product") == (
        comp.kpis["B1"]["product"] - comp.kpis["B3"]["product"]
    )


def test_phase_alignment_moves_each_phase_to_the_golden_start(csv_dir: Path) -> None:
    (csv_dir / "phases.csv").write_text(
        "batch_id,t_h,phase\nB1,0,batch\nB1,8,fed-batch\nB2,0,batch\nB2,5,fed-batch\n",
        encoding="utf-8",
    )
    source = open_source(csv_dir)
    comp = compare_batches(source, ["B2"], golden="B1", align="phase", sensors=["X_meas"])
    assert comp.phases["B2"] == (("batch", 0.0), ("fed-batch", 5.0))
    t_raw = source.batch("B2").series("X_meas").t_sample_h
    t, _ = comp.aligned["B2"]["X_meas"]
    # before 5 h: batch phase, both start at 0 -> unchanged; after: +3 h (8 - 5)
    assert np.array_equal(t[t_raw < 5.0], t_raw[t_raw < 5.0])
    assert np.allclose(t[t_raw >= 5.0], t_raw[t_raw >= 5.0] + 3.0, rtol=0, atol=1e-12)
    by_time = compare_batches(source, ["B2"], golden="B1", sensors=["X_meas"])
    assert np.array_equal(by_time.aligned["B2"]["X_meas"][0], t_raw)


def _write_run(root: Path, b: BatchData, phases: list[tuple[str, float]], run: str) -> None:
    """A batch written through the embedded historian as a run writes it."""
    ident = RunIdentity.start(site="t", reactor="R1", batch_id=b.batch_id, run_id=run)
    with EmbeddedHistorian(root / run / "records.sqlite") as hist:
        assert b.inputs is not None
        for name, t in phases:
            msg = f"phase {name!r} begins at {t:.3f} h"
            hist.write(EventRecord(t, EventKind.PHASE, msg, "loop", run=ident))
        for i, t in enumerate(b.inputs.times):
            values = dict(zip(b.inputs.names, map(float, b.inputs.values[i]), strict=True))
            hist.write(SetpointRecord(float(t), values, SetpointSource.RECIPE, run=ident))
        for s in b.measurements.values():
            for th, ts, v in zip(s.t_h, s.t_sample_h, s.value, strict=True):
                hist.write(MeasurementRecord(float(th), s.sensor, float(v), float(ts), run=ident))


def test_cli_on_the_embedded_store_by_phase_with_a_report_in_a_browser(
    batches: list[BatchData], tmp_path: Path, browser: Any
) -> None:
    runs = tmp_path / "runs"
    _write_run(runs, batches[0], [("batch", 0.0), ("fed-batch", 8.0)], "r1")
    _write_run(runs, batches[1], [("batch", 0.0), ("fed-batch", 5.0)], "r2")
    _write_run(runs, batches[2], [("batch", 0.0), ("fed-batch", 10.0)], "r3")
    report = tmp_path / "cmp.html"
    args = ["compare", "--source", str(runs), "--batches", "B1,B2,B3", "--align", "phase"]
    res = CliRunner().invoke(app, [*args, "--golden", "B2", "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "golden batch B2: chosen" in res.output and "yield" in res.output
    browser.get(report.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
    )
    assert images and all(done and width > 0 for done, width in images), images
    header = browser.execute_script(
        "return Array.from(document.querySelectorAll('#kpis thead th')).map(c => c.textContent);"
    )
    assert header == ["KPI", "unit", "B2 (golden)", "B1", "B3"]
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('#kpis tbody tr'))"
        ".map(r => r.cells[0].textContent);"
    )
    assert {"duration_h", "product", "yield", "min_X_meas"} <= set(names)
    body = browser.find_element("tag name", "body").text
    assert "fed-batch at 5.00 h" in body and "fed-batch at 10.00 h" in body


def test_real_runs_of_the_loop_compare_by_their_phase_events(tmp_path: Path) -> None:
    """Two short closed-loop runs of the E. coli pack (recipe only, different seeds): the
    loop records a phase event when each recipe phase begins (batch at 0 h, fed-batch at
    6 h in bpcontrol/data/packs/ecoli_fedbatch/recipe.toml)."""
    runner = CliRunner()
    for batch, seed in (("E1", "1"), ("E2", "2")):
        res = runner.invoke(
            app,
            [
                "run",
                "--model",
                "ecoli_fedbatch",
                "--controller",
                "recipe",
                "--speed-up",
                "max",
                "--duration",
                "7",
                "--batch",
                batch,
                "--seed",
                seed,
                "--out",
                str(tmp_path / "runs"),
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
    source = open_source(tmp_path / "runs")
    comp = compare_batches(source, ["E1", "E2"], golden="E1", align="phase", product="P_off")
    assert comp.phases["E1"] == comp.phases["E2"] == (("batch", 0.0), ("fed-batch", 6.0))
    for bid in ("E1", "E2"):
        assert comp.kpis[bid]["min_DO_probe"] == float(
            np.min(source.batch(bid).series("DO_probe").value)
        )
        assert math.isclose(comp.kpis[bid]["duration_h"], 7.0, abs_tol=1e-6)


def _write_unit(csv_dir: Path, batch: str, sensor: str, unit: str) -> None:
    path = csv_dir / "measurements.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        parts = ln.split(",")
        if parts[0] == batch and parts[3] == sensor:
            parts[5] = unit
        out.append(",".join(parts))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batches", "B1,B9"], r"no batch 'B9' \(batches: B1, B2, B3\)"),
        (["--batches", "B1,B2", "--sensors", "DO"], r"batch 'B\d' has no series 'DO'"),
        (["--batches", "B1"], r"at least two batches"),
        (["--batches", "B1,B2", "--golden-kpi", "titre"], r"--golden-kpi 'titre': no batch"),
        (["--batches", "B1,B2", "--align", "phase"], r"batch 'B\d' has no phase records"),
        (["--batches", "B1,B2", "--align", "warp"], r"--align must be one of time, phase"),
        (["--batches", "B1,B2", "--feed", "glucose"], r"has no input 'glucose'"),
        (["--batches", "B1,B2", "--golden", "B1", "--golden-kpi", "product"], r"not both"),
        (["--batches", "B1,B2", "--units-differ"], r"X_meas is recorded in 'g/L'.*'mol/L'"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_no_report(
    csv_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    if "--units-differ" in extra:
        extra = [e for e in extra if e != "--units-differ"]
        _write_unit(csv_dir, "B2", "X_meas", "g/L")
    report = tmp_path / "cmp.html"
    args = ["compare", "--source", str(csv_dir), "--report", str(report), *extra]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(message, lines[0]), lines[0]
    assert not report.exists()


def test_library_errors_are_readback_errors(csv_dir: Path) -> None:
    """CompareError is a ReadbackError: one except clause catches every bad-data case."""
    with pytest.raises(ReadbackError):
        compare_batches(open_source(csv_dir), ["B1", "B9"], golden_kpi="product")
    with pytest.raises(CompareError, match="share no series"):
        src = open_source(csv_dir)
        only_x = BatchData("X1", "x", {"X_meas": src.batch("B1").series("X_meas")}, None)
        only_v = BatchData("V1", "v", {"V_meas": src.batch("B1").series("V_meas")}, None)

        class Two:
            def batch_ids(self) -> tuple[str, ...]:
                return ("V1", "X1")

            def batch(self, batch_id: str) -> BatchData:
                return only_x if batch_id == "X1" else only_v

        compare_batches(Two(), ["X1", "V1"], golden="X1")
