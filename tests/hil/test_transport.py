"""A scenario through the real protocol: the rig behind the OPC UA simulated device and the
edge gateway (SignAndEncrypt on 127.0.0.1) gives the in-process run's batch: E. coli on
its shipped device mapping (vendor units, scaling) over OPC UA and MQTT, yeast and
penicillin on their models' identity mappings over OPC UA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bpcontrol.runspec import resolve, spec_for
from hil import transport as hil_transport
from hil.campaign import run_scenario
from hil.suite import SuiteError, load_suite
from hil.transport import MAPPINGS, mapping_for

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


def _compare(path: Path, runs: Path) -> None:
    """Run the one scenario of ``path`` through its transport and in-process; the same batch."""
    (spec,) = load_suite(path).scenarios
    remote = run_scenario(spec, str(runs))
    local = run_scenario(replace(spec, transport="inprocess"), str(runs))
    assert remote.passed and local.passed, (remote.summary_line(), local.summary_line())
    # the recipe's setpoints are the same either way; only when the loop saw a sample can
    # differ by the two paced clocks' jitter (the edge tests allow 1 %; 1e-3 here)
    a, b = remote.kpis["final_product"], local.kpis["final_product"]
    assert a == pytest.approx(b, rel=1e-3)
    assert remote.kpis["records_stored"] == local.kpis["records_stored"]
    # the run's keys and broker logins are gone
    assert not (Path(remote.run_dir) / "pki").exists()
    assert not (Path(remote.run_dir) / "mosquitto").exists()


@pytest.mark.slow  # two paced batches of 12 s wall each, plus the device's start
@pytest.mark.parametrize("transport", ["opcua", "mqtt"])
def test_rig_through_the_network_matches_in_process(transport: str, tmp_path: Path) -> None:
    path = tmp_path / "net.toml"
    path.write_text(SUITE.replace('transport = "opcua"', f'transport = "{transport}"'))
    assert load_suite(path).scenarios[0].transport == transport
    _compare(path, tmp_path / "runs")


PACK_SUITE = """
name = "identity"
[defaults]
seed = 22
pack = "{pack}"
controller = "recipe"
duration_h = {hours}
speed_up = 1200.0                 # {hours} h of process time in {wall:g} s of wall time
transport = "opcua"
[defaults.criteria]
records_lost = {{ max = 0 }}
setpoints_outside_clamps = {{ max = 0 }}
"kpi.plant_reads_failed" = {{ max = 0 }}
[[scenario]]
name = "{pack}-opcua"
[scenario.sensors.DO_probe]
quantum = 0.1
"""


@pytest.mark.slow  # two paced batches of 12-15 s wall each, plus the device's start
@pytest.mark.parametrize(
    ("pack", "hours"),
    [("yeast_fedbatch", 4.0), ("penicillin_fedbatch", 5.0)],  # yeast: the feed from 3 h
)
def test_any_model_through_opcua_on_its_identity_mapping_matches_in_process(
    pack: str, hours: float, tmp_path: Path
) -> None:
    assert pack not in MAPPINGS  # no shipped file: the model's identity mapping
    path = tmp_path / "net.toml"
    path.write_text(PACK_SUITE.format(pack=pack, hours=hours, wall=hours * 3.0), encoding="utf-8")
    run = resolve(spec_for(pack, seed=22))
    mapping = mapping_for(run)
    assert mapping.source.startswith(f"identity mapping of model {pack}")
    assert [m.safe for m in mapping.inputs] == list(run.recipe.fallback(0.0))
    _compare(path, tmp_path / "runs")


def _measurements(run_dir: str) -> list[tuple[float, str, float, float]]:
    """Every measurement the loop stored: (t_h, sensor, value, sample time h), in order."""
    from bpcontrol.records import MeasurementRecord
    from services.historian import read_records

    return [
        (r.t_h, r.sensor, r.value, r.t_sample_h)
        for r in read_records(Path(run_dir) / "records.sqlite")
        if isinstance(r, MeasurementRecord)
    ]


@pytest.mark.parametrize("transport", ["opcua", "mqtt"])
def test_in_lockstep_the_network_gives_the_in_process_batch_sample_for_sample(
    transport: str, tmp_path: Path
) -> None:
    """Without a speed_up the device is stepped by the loop's simulated clock: through the
    real protocol the loop receives every sample the in-process plant gives, at the same
    tick with the same sample time, so the batch is the same to rounding (the mapping's
    unit scaling: 1e-12), not only to a paced run's jitter."""
    path = tmp_path / "net.toml"
    path.write_text(
        SUITE.replace("speed_up = 600.0", "").replace(
            'transport = "opcua"', f'transport = "{transport}"'
        ),
        encoding="utf-8",
    )
    (spec,) = load_suite(path).scenarios
    assert spec.transport == transport and spec.speed_up == float("inf")
    remote = run_scenario(spec, str(tmp_path / "runs"))
    local = run_scenario(replace(spec, transport="inprocess"), str(tmp_path / "runs"))
    assert remote.passed and local.passed, (remote.summary_line(), local.summary_line())
    got, want = _measurements(remote.run_dir), _measurements(local.run_dir)
    assert len(got) == len(want) > 100  # 2 h of 1-min probes: nothing skipped or added
    for g, w in zip(got, want, strict=True):
        assert g[1] == w[1] and g[0] == pytest.approx(w[0], abs=1e-12)
        assert g[3] == pytest.approx(w[3], abs=1e-12)
        assert g[2] == pytest.approx(w[2], rel=1e-12, abs=1e-12)
    assert remote.kpis["final_product"] == pytest.approx(local.kpis["final_product"], rel=1e-12)
    assert remote.kpis["rig_stuck_readings"] == local.kpis["rig_stuck_readings"] == 30
    # and it went over the network: every setpoint write confirmed by the device
    assert remote.kpis["transport"] == transport and remote.kpis["transport_clock"] == "lockstep"
    k = remote.kpis
    assert k["gateway_writes"] == k["gateway_writes_confirmed"] == k["device_commands_applied"]
    assert k["device_commands_applied"] >= k["setpoints_applied"] > 0  # + the initial one
    assert local.kpis["transport"] == "inprocess"


def test_a_transport_runs_in_lockstep_without_a_speed_up_and_any_model_has_a_mapping(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        SUITE.replace('pack = "ecoli_fedbatch"', 'pack = "yeast_fedbatch"').replace(
            '"kpi.rig_stuck', '"kpi.rig_x'
        ),
        encoding="utf-8",
    )
    (spec,) = load_suite(path).scenarios  # every model has a device mapping now
    assert spec.pack == "yeast_fedbatch" and spec.transport == "opcua"
    path.write_text(SUITE.replace('transport = "opcua"', 'transport = "carrier-pigeon"'))
    with pytest.raises(SuiteError, match=r"bad.toml: scenario ecoli-rig-opcua: transport"):
        load_suite(path)


def test_a_mapping_that_cannot_be_built_is_one_line_naming_the_scenario(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = hil_transport.mapping_path("ecoli_fedbatch")
    assert shipped is not None
    bad = tmp_path / "yeast_reactor.toml"  # a real file, for the wrong model
    bad.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setitem(hil_transport.MAPPINGS, "yeast_fedbatch", str(bad))
    path = tmp_path / "yeast.toml"
    path.write_text(
        SUITE.replace('pack = "ecoli_fedbatch"', 'pack = "yeast_fedbatch"').replace(
            '"kpi.rig_stuck', '"kpi.rig_x'
        ),
        encoding="utf-8",
    )
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: scenario ecoli-rig-opcua: transport: opcua: {bad}: ")
    assert "device.model: the mapping is for 'ecoli_fedbatch'" in message
