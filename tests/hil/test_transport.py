"""A scenario through the real protocol: the rig behind the OPC UA simulated device and the
edge gateway (SignAndEncrypt on 127.0.0.1) gives the in-process run's batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hil.campaign import run_scenario
from hil.suite import SuiteError, load_suite

SUITE = """
name = "opcua"
[defaults]
seed = 22
pack = "ecoli_fedbatch"
controller = "recipe"
duration_h = 2.0
speed_up = 600.0                  # 2 h of process time in 12 s of wall time
[defaults.criteria]
records_lost = { max = 0 }
setpoints_outside_clamps = { max = 0 }
"kpi.rig_stuck_readings" = { min = 30, max = 30 }   # 30 one-minute samples in the window
"kpi.plant_reads_failed" = { max = 0 }
[[scenario]]
name = "ecoli-rig-opcua"
transport = "opcua"
[scenario.sensors.DO_probe]
quantum = 0.1
[[scenario.fault]]
kind = "probe_stuck"
start_h = 1.0
end_h = 1.5
"""


@pytest.mark.slow  # two paced batches of 12 s wall each, plus the device's start
@pytest.mark.parametrize("transport", ["opcua", "mqtt"])
def test_rig_through_the_network_matches_in_process(transport: str, tmp_path: Path) -> None:
    path = tmp_path / "net.toml"
    path.write_text(SUITE.replace('transport = "opcua"', f'transport = "{transport}"'))
    (spec,) = load_suite(path).scenarios
    assert spec.transport == transport
    remote = run_scenario(spec, str(tmp_path / "runs"))
    local = run_scenario(replace(spec, transport="inprocess"), str(tmp_path / "runs"))
    assert remote.passed and local.passed, (remote.summary_line(), local.summary_line())
    # the recipe's setpoints are the same either way; only when the loop saw a sample can
    # differ by the two paced clocks' jitter (the edge tests allow 1 %; 1e-3 here)
    a, b = remote.kpis["final_product"], local.kpis["final_product"]
    assert a == pytest.approx(b, rel=1e-3)
    assert remote.kpis["records_stored"] == local.kpis["records_stored"]
    # the run's keys and broker logins are gone
    assert not (Path(remote.run_dir) / "pki").exists()
    assert not (Path(remote.run_dir) / "mosquitto").exists()


def test_opcua_needs_a_mapping_and_a_paced_clock(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SUITE.replace("speed_up = 600.0", ""), encoding="utf-8")
    with pytest.raises(SuiteError, match="transport: opcua needs a finite speed_up"):
        load_suite(path)
    path.write_text(
        SUITE.replace('pack = "ecoli_fedbatch"', 'pack = "yeast_fedbatch"').replace(
            '"kpi.rig_stuck', '"kpi.rig_x'
        ),
        encoding="utf-8",
    )
    with pytest.raises(SuiteError, match="no device mapping for model 'yeast_fedbatch'"):
        load_suite(path)
    path.write_text(SUITE.replace('transport = "opcua"', 'transport = "carrier-pigeon"'))
    with pytest.raises(SuiteError, match=r"bad.toml: scenario ecoli-rig-opcua: transport"):
        load_suite(path)
