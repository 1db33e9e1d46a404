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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from hil.synthetic import OfflineAssays, SyntheticRun, generate
from models import InputProfile, load_model
from services.fitting import (
    ErrorModel,
    FitOptions,
    FitResult,
    Identifiability,
    fit,
    write_fit_report,
)
from services.historian.readback import BatchData, series_from_rows, write_csv

MODEL = load_model("dompc_batch_reactor")
ERRORS = {
    "X_meas": ErrorModel(0.01),
    "V_meas": ErrorModel(0.1),
    "S_meas": ErrorModel(0.002, 0.05),
    "P_meas": ErrorModel(0.002, 0.05),
}
FAST = FitOptions(n_starts=1, integrator="rk", steps_per_interval=4)
"""RK4 on the reactor's 0.5 h intervals (tests/services/test_fitting.py: agrees with CVODES
to 1e-6 relative on this model)."""
PROFILES = (
    {"inp": [(0.0, 0.0), (8.0, 0.02), (20.0, 0.05)]},
    {"inp": [(0.0, 0.0), (5.0, 0.04), (25.0, 0.01)]},
)
ODD_ID = 'B<2>&"x"'
"""A batch id with HTML markup characters: the report must show it as text."""
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _batch(seed: int, batch_id: str, profile: dict[str, list[tuple[float, float]]]) -> BatchData:
    """One simulated 40 h batch of the nominal reactor, as the read-back gives it."""
    steps = InputProfile.from_steps(MODEL, profile)
    run = SyntheticRun(
        hours=40.0,
        inputs=steps,
        period_h=0.5,
        online={"X_meas": 0.01, "V_meas": 0.1},
        offline=OfflineAssays(
            outputs=("S_meas", "P_meas"),
            relative_sigma=0.05,
            absolute_sigma={"S_meas": 0.002, "P_meas": 0.002},
        ),
    )
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for r in generate(MODEL, run, seed=seed).records:
        rows.setdefault(r.sensor, []).append((r.t_sample_h, r.value, r.t_h))
    series = {n: series_from_rows(n, rs) for n, rs in rows.items()}
    return BatchData(batch_id, f"seed {seed}", series, steps, {}, {})


@pytest.fixture(scope="module")
def batches() -> list[BatchData]:
    return [_batch(11, "B1", PROFILES[0]), _batch(12, ODD_ID, PROFILES[1])]


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


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
