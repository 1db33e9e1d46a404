"""The fit's HTML report (issue 18), opened in a real browser: Debian's Chromium driven
headless by chromedriver through Selenium (file:// URL, nothing on the network).

Checked there: no error in the console log, every embedded figure decodes
(``naturalWidth > 0``), the estimates table lists every fitted quantity with its value, SE
and 95 % interval, the correlation matrix is square over the estimates, warnings show,
and text from the data is escaped (a batch id with markup stays text).
"""

from __future__ import annotations

import html as html_text
import math
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from reactor_batches import ERRORS, FAST, MODEL, PROFILES, synthetic_batch
from typer.testing import CliRunner

from bpcontrol.cli import app
from services.fitting import (
    FitResult,
    Identifiability,
    fit,
    write_fit_report,
)
from services.historian.readback import BatchData, write_csv

ODD_ID = 'B<2>&"x"'
"""A batch id with HTML markup characters: the report must show it as text."""


@pytest.fixture(scope="module")
def batches() -> list[BatchData]:
    return [
        synthetic_batch(11, "B1", PROFILES[0], origin="seed 11"),
        synthetic_batch(12, ODD_ID, PROFILES[1], origin="seed 12"),
    ]


@pytest.fixture(scope="module")
def result(batches: list[BatchData]) -> FitResult:
    """Shared, per-batch (v_par) and initial-state (X_s(0)) estimates: the table must hold
    every kind."""
    res = fit(
        MODEL,
        batches,
        ["mu_m", "Y_x", "v_par"],
        errors=ERRORS,
        per_batch=["v_par"],
        estimate_x0=["X_s"],
        options=FAST,
    )
    assert res.converged
    return res


def test_report_in_a_browser_shows_every_estimate_figure_and_warning(
    result: FitResult, tmp_path: Path, browser: Any
) -> None:
    path = write_fit_report(
        result,
        tmp_path / "fit.html",
        data="/plant/historian",
        result_file="/plant/fit.toml",
        units={o.name: o.unit for o in MODEL.outputs},
    )
    browser.get(path.as_uri())
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    # correlation heat map, residuals per measurement, predicted vs measured
    assert {alt for alt, _, _ in images} == {
        "correlation matrix",
        "weighted residuals",
        "predicted vs measured",
    }
    assert all(done and width > 0 for _, done, width in images), images
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#estimates tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent));"
    )
    assert [r[0] for r in rows] == list(result.names)
    for row, e in zip(rows, result.estimates, strict=True):
        value, se, low, high = (float(row[k]) for k in (2, 3, 5, 6))
        # the table prints 4 significant digits: equal to 5e-4 relative
        assert value == pytest.approx(e.value, rel=5e-4, abs=1e-12)
        if math.isfinite(e.se):
            assert se == pytest.approx(e.se, rel=5e-4)
            assert low <= value <= high
    n = len(result.names)
    cells = browser.execute_script(
        "return document.querySelectorAll('#correlation tbody td').length;"
    )
    assert cells == n * n
    body = browser.find_element("tag name", "body").text
    assert "/plant/historian" in body and "/plant/fit.toml" in body
    assert f"AIC (lower is better on the same data) {result.aic:.4g}" in body
    assert ODD_ID in body  # escaped: shown as text, no element made of it
    assert browser.execute_script("return document.getElementsByTagName('x').length;") == 0
    for w in result.warnings:
        assert w.message in body
    if not result.warnings:
        assert "Identifiability warnings\nNone" in body


def test_a_warning_shows_in_the_report(batches: list[BatchData], tmp_path: Path) -> None:
    """From the biomass alone (X_meas) growth rate and yield are told apart only by the
    onset of substrate limitation: they correlate above the limit, and the report lists
    the warning and marks the pair in the correlation matrix."""
    res = fit(MODEL, batches[:1], ["mu_m", "Y_x"], sensors=["X_meas"], errors=ERRORS, options=FAST)
    assert res.warned(Identifiability.CORRELATED)
    html = write_fit_report(res, tmp_path / "w.html", data="d").read_text(encoding="utf-8")
    assert html.count('class="warning"') == len(res.warnings)
    for w in res.warnings:
        assert html_text.escape(w.message) in html
    assert html.count('class="num high"') == 2  # (mu_m, Y_x) and (Y_x, mu_m)


def test_cli_writes_the_report_next_to_the_result_or_where_asked(
    batches: list[BatchData], tmp_path: Path
) -> None:
    write_csv(tmp_path / "data", [batches[0]], MODEL)
    runner = CliRunner()
    base = ["fit", "--model", "dompc_batch_reactor", "--data", str(tmp_path / "data")]
    base += ["--params", "mu_m,Y_x", "--starts", "1"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a" / "fit.toml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "fit.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    doc = tomllib.loads((tmp_path / "a" / "fit.toml").read_text(encoding="utf-8"))
    assert doc["fit"]["report"] == str((tmp_path / "a" / "fit.html").resolve())
    res = runner.invoke(
        app,
        [*base, "--out", str(tmp_path / "b.toml"), "--report", str(tmp_path / "r" / "x.html")],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "x.html").is_file() and not (tmp_path / "b.html").exists()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "c.toml"), "--no-report"])
    assert res.exit_code == 0 and not (tmp_path / "c.html").exists()
    # a report path that cannot be written: one line, exit 2, neither file written
    (tmp_path / "dir.html").mkdir()
    res = runner.invoke(
        app, [*base, "--out", str(tmp_path / "d.toml"), "--report", str(tmp_path / "dir.html")]
    )
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--report" in lines[0] and "is a folder" in lines[0]
    assert not (tmp_path / "d.toml").exists()
    shutil.rmtree(tmp_path / "dir.html")
