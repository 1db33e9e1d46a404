"""The per-scenario figure of the suite report: its series from records, and the PNG the
HTML page embeds (no file, no network: a data URI)."""

from __future__ import annotations

import base64
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bpcontrol.records import MeasurementRecord, SetpointRecord, SetpointSource
from bpcontrol.supervisor import SetpointLimits
from hil.campaign import ScenarioOutcome
from hil.hil_report import write_html
from hil.scenario_figure import figure_data, scenario_figure

LIMITS = {
    "F": SetpointLimits(0.0, 0.2, 0.05),
    "T_set": SetpointLimits(24.0, 28.0, 1.0),
}


def _records() -> list[object]:
    out: list[object] = []
    sources = [SetpointSource.NMPC] * 3 + [SetpointSource.FALLBACK] * 2 + [SetpointSource.NMPC]
    for k, source in enumerate(sources):
        t = k * 0.5
        out.append(MeasurementRecord(t, "DO_probe", 40.0 - k, t))
        out.append(MeasurementRecord(t, "V_meas", 1.0, t))
        out.append(SetpointRecord(t, {"F": 0.05 * k / 2.5 * 2, "T_set": 24.0 + k}, source))
    return out


def test_series_are_taken_from_the_records_and_limits() -> None:
    data = figure_data(
        title="s",
        records=_records(),
        limits=LIMITS,
        faults=[("contamination", 1.2, math.inf)],
        truth_t=np.linspace(0, 2.5, 6),
        truth_do=np.full(6, 38.0),
        do_minimum=20.0,
    )
    assert data.signal == "DO" and data.minimum == 20.0
    assert data.measured.tolist() == [40.0, 39.0, 38.0, 37.0, 36.0, 35.0]  # DO_probe only
    # % of range: T_set 24 degC is 0 %, 28 degC (its upper limit) 100 %
    assert data.setpoints_percent["T_set"][[0, 4]] == pytest.approx([0.0, 100.0])
    assert data.setpoints_percent["F"][0] == 0.0
    # the two FALLBACK steps (1.5 h and 2.0 h) are one span, to the next step at 2.5 h
    assert data.held == [(1.5, 2.5)]


def test_a_model_without_do_plots_its_first_sensor() -> None:
    records = [r for r in _records() if getattr(r, "sensor", "") != "DO_probe"]
    data = figure_data(
        title="s", records=records, limits=LIMITS, faults=[], truth_t=np.zeros(0),
        truth_do=None, do_minimum=None,
    )  # fmt: skip
    assert data.signal == "V_meas" and data.truth is None and data.measured.size == 6


def test_the_figure_is_a_png_data_uri_the_report_embeds(tmp_path: Path) -> None:
    data = figure_data(
        title="yeast-contamination (seed 22)",
        records=_records(),
        limits=LIMITS,
        faults=[("contamination", 1.2, math.inf)],  # to the end of the run: clipped
        truth_t=np.linspace(0, 2.5, 6),
        truth_do=np.full(6, 38.0),
        do_minimum=20.0,
    )
    uri = scenario_figure(data, dpi=72)
    head, payload = uri.split(",", 1)
    assert head == "data:image/png;base64"
    png = base64.b64decode(payload)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width == 8 * 72 and abs(height - 3.8 * 72) <= 1  # 8 x 3.8 in at 72 dpi
    outcome = ScenarioOutcome(name="a", pack="p", seed=1, passed=True, figure=uri)
    bare = ScenarioOutcome(name="b", pack="p", seed=1, passed=False, error="boom")
    page = write_html(tmp_path / "r.html", "s", [outcome, bare], suite_path="s.toml")
    text = page.read_text(encoding="utf-8")
    assert text.count("<img class='figure'") == 1 and uri in text


def test_the_report_shows_each_figure_in_a_browser(tmp_path: Path, browser: Any) -> None:
    """Open the suite page in headless chromium: every scenario's figure decodes and shows
    at its size, and the page logs no error."""
    outcomes = []
    for name, minimum in (("low-do", 20.0), ("high-do", 30.0)):
        data = figure_data(
            title=name, records=_records(), limits=LIMITS, faults=[("spikes", 0.5, 1.0)],
            truth_t=np.linspace(0, 2.5, 6), truth_do=np.full(6, 38.0), do_minimum=minimum,
        )  # fmt: skip
        outcomes.append(
            ScenarioOutcome(name=name, pack="p", seed=1, passed=True, figure=scenario_figure(data))
        )
    page = write_html(tmp_path / "suite.html", "s", outcomes, suite_path="s.toml")
    browser.get(page.as_uri())
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"
    )
    assert [alt.split(":")[0] for alt, _, _ in images] == ["low-do", "high-do"]
    assert all(done and width == 8 * 72 for _, done, width in images), images
