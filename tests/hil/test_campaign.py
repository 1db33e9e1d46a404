"""Campaigns for real: broken controllers fail the right criterion, the CLI says so in
JUnit and HTML, and a seed gives the same KPIs on a process pool and on Dask."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from hil.campaign import (
    DaskExecutor,
    LocalPool,
    deterministic_kpis,
    run_campaign,
    run_scenario,
)
from hil.suite import load_suite

HERE = Path(__file__).resolve().parent
SMOKE = HERE.parents[1] / "hil" / "suites" / "smoke.toml"
BROKEN = HERE / "suites" / "broken.toml"

pytestmark = pytest.mark.slow  # each scenario is a closed-loop batch of 20-40 s


def test_each_broken_controller_fails_its_criterion(tmp_path: Path) -> None:
    junit, html = tmp_path / "broken.xml", tmp_path / "broken.html"
    result = CliRunner().invoke(
        app,
        [
            "hil", "run", str(BROKEN), "--workers", "2", "--out", str(tmp_path / "runs"),
            "--junit", str(junit), "--report", str(html),
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "3 scenario(s) failed" in result.output
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    failed = {
        name: set((case.find("failure").get("type") or "").split(","))  # type: ignore[union-attr]
        for name, case in cases.items()
        if case.find("failure") is not None
    }
    assert failed["ignores-do"] == {"do_min_percent"}
    assert failed["never-leaves-fallback"] == {"fallback_left", "recovery_time_h"}
    assert failed["outside-clamps"] == {"setpoints_outside_clamps"}
    assert "outside-clamps-real-supervisor" not in failed  # the supervisor held the limits
    page = html.read_text(encoding="utf-8")
    assert "1 of 4 passed" in page
    assert "bpcontrol hil run" in page and "--only never-leaves-fallback" in page
    assert "FAIL never-leaves-fallback" in result.output


def test_same_seed_same_kpis_on_local_pool_and_dask(tmp_path: Path) -> None:
    suite = load_suite(SMOKE).only(["yeast-nominal", "yeast-controller-raises", "yeast-rig-faults"])
    # the rig through the OPC UA device and gateway, in lockstep: reproducible too
    scenarios = [
        replace(s, transport="opcua") if s.name == "yeast-rig-faults" else s
        for s in suite.scenarios
    ]
    pool = LocalPool(2)
    try:
        local = run_campaign(scenarios, pool, out_root=tmp_path / "local")
    finally:
        pool.close()
    dask = DaskExecutor(workers=2)
    try:
        assert dask.address.startswith("tcp://127.0.0.1")
        remote = run_campaign(scenarios, dask, out_root=tmp_path / "dask")
    finally:
        dask.close()
    for a, b in zip(local, remote, strict=True):
        assert a.passed and b.passed, (a.summary_line(), b.summary_line())
        assert a.worker != b.worker  # really two different processes
        ka, kb = deterministic_kpis(a.kpis), deterministic_kpis(b.kpis)
        assert ka.keys() == kb.keys()
        for key, va in ka.items():
            vb = kb[key]
            if isinstance(va, float):
                assert math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12), (a.name, key, va, vb)
            else:
                assert va == vb, (a.name, key)
    rig = next(o for o in local if o.name == "yeast-rig-faults")
    assert rig.kpis["rig_spikes"] >= 1 and rig.kpis["rig_T_final_output"] < 0  # the rig ran
    assert rig.kpis["transport"] == "opcua" and rig.kpis["gateway_writes_confirmed"] > 0
    # and the seed matters: another seed moves the product
    other = next(s for s in suite.scenarios if s.name == "yeast-nominal")
    moved = run_scenario(replace(other, seed=8), str(tmp_path / "seed8"))
    assert moved.kpis["final_product"] != local[0].kpis["final_product"]
