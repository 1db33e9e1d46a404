"""The historian outage of the HIL suite, on real ``influxd`` servers (no mocks): parsing,
the outage's kill and restart, nothing missing after it, and a server that never comes back
failing ``historian_points_missing``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from bpcontrol.records import EventKind, EventRecord, MeasurementRecord, RunIdentity
from hil.campaign import prepare_run, run_scenario
from hil.criteria import CriterionSpec, evaluate, measure
from hil.historian import INFLUX_DATABASE, HistorianOutage, RunHistorian, expected_points
from hil.runner import new_run_dir, run_batch
from hil.suite import ScenarioSpec, SuiteError, load_suite
from services.historian import read_records
from services.historian.influx_server import start_influxd

ACCEPTANCE = Path(__file__).resolve().parents[2] / "hil" / "suites" / "acceptance.toml"

SUITE = """
name = "t"
[defaults]
pack = "yeast_fedbatch"
controller = "recipe"
duration_h = 2.5
speed_up = 1500.0   # paced: 2.5 process h in 6 wall s, the outage 1.4 s (flat out: 0.2 s)
[[scenario]]
name = "outage"
historian = "influx"
[[scenario.fault]]
kind = "historian_outage"
start_h = 1.0
{end}
[scenario.criteria]
records_lost = {{ max = 0 }}
historian_points_missing = {{ max = 0 }}
"""


def _spec(tmp_path: Path, end: str = "end_h = 1.6") -> ScenarioSpec:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(end=end), encoding="utf-8")
    (spec,) = load_suite(path).scenarios
    return spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('historian = "influx"', 'historian = "cloud"'), "scenario outage: historian: must be"),
        (('historian = "influx"', ""), 'fault[0]: historian_outage needs historian = "influx"'),
        (
            ('historian = "influx"', 'historian = "embedded"'),
            "scenario outage: fault[0]: historian_outage needs",
        ),
        (("start_h = 1.0", "start_h = 1.0\nevery = 2"), "fault[0]: unknown keys ['every']"),
        (
            ("start_h = 1.0\nend_h = 1.6", "start_h = 2.6\nend_h = 3.0"),
            "fault[0]: start_h 2.6 h is after the run's end",
        ),
    ],
)
def test_bad_historian_keys_name_file_scenario_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(end="end_h = 1.6").replace(*change), encoding="utf-8")
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text


def test_points_missing_criterion_needs_the_influx_historian(tmp_path: Path) -> None:
    text = SUITE.format(end="end_h = 1.6").replace('historian = "influx"', "")
    text = text.replace('[[scenario.fault]]\nkind = "historian_outage"\nstart_h = 1.0\n', "")
    path = tmp_path / "suite.toml"
    path.write_text(text.replace("end_h = 1.6\n", ""), encoding="utf-8")
    with pytest.raises(SuiteError, match=r"criteria.historian_points_missing: needs historian"):
        load_suite(path)


def test_points_missing_measured_and_able_to_fail() -> None:
    args = {
        "kpis": {},
        "records": [],
        "limits": {},
        "records_emitted": 0,
        "fault_start_h": None,
        "fault_end_h": None,
    }
    m = measure(**args, historian_points=(120, 117))  # type: ignore[arg-type]
    assert m["historian_points_missing"] == 3 and m["records_lost"] == 0
    spec = [CriterionSpec(name="historian_points_missing", max=0)]
    (result,) = evaluate(spec, m, {})
    assert not result.passed and "historian_points_missing = 3" in result.message
    (ok,) = evaluate(spec, measure(**args, historian_points=(120, 120)), {})  # type: ignore[arg-type]
    assert ok.passed and ok.measured == 0
    (unmeasured,) = evaluate(spec, measure(**args), {})  # type: ignore[arg-type]
    assert not unmeasured.passed and "not measured" in unmeasured.message


def test_outage_kills_at_start_and_restarts_at_end_on_the_same_port(tmp_path: Path) -> None:
    server = start_influxd(tmp_path / "influxd")
    try:
        url, pid = server.url, server.pid
        assert url.startswith("http://127.0.0.1:")
        outage = HistorianOutage(server, start_h=1.0, end_h=2.0)
        outage.at(0.5)
        assert server.running and outage.down_h is None
        outage.at(1.0)
        assert not server.running and outage.down_h == 1.0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/ping", timeout=1.0)
        outage.at(1.9)
        assert outage.up_h is None
        outage.at(2.05)
        outage.join()
        assert outage.up_h == 2.05 and outage.error == "" and outage.restart_s < 30
        assert server.url == url and server.pid != pid
        assert httpx.get(f"{url}/ping", timeout=5.0).status_code == 204
    finally:
        server.stop()
    assert not server.running


def test_influx_holds_every_record_after_the_restart(tmp_path: Path) -> None:
    """The campaign's pieces by hand, so InfluxDB is queried before the server goes."""
    spec = _spec(tmp_path)
    run, _ = prepare_run(spec)
    run_dir = new_run_dir(tmp_path / "runs", spec.name, spec.seed)
    ident = RunIdentity.start(site="hil", reactor="r", batch_id="b", run_id=run_dir.name)
    run = replace(run, spec=replace(run.spec, identity=ident))
    historian = RunHistorian(spec.historian, spec.faults, run_dir, ident)
    try:
        historian.start()
        result = run_batch(
            run,
            run_dir=run_dir,
            duration_h=spec.duration_h,
            speed_up=spec.speed_up,
            mirror=historian.mirror,
            progress=historian.progress,
            report=False,
        )
        historian.settle()
        (outage,) = historian.outages
        assert outage.down_h is not None and 1.0 <= outage.down_h < 1.1
        assert outage.up_h is not None and 1.6 <= outage.up_h < 1.7 and not outage.error
        records = read_records(run_dir / "records.sqlite")
        assert result.state == "completed" and len(records) == result.summary.records
        messages = [
            r.message
            for r in records
            if isinstance(r, EventRecord) and r.kind is EventKind.HISTORIAN
        ]
        assert any(m.startswith("server-down") for m in messages), messages
        assert any(m.startswith("server-up") for m in messages), messages
        readings = [r for r in records if isinstance(r, MeasurementRecord)]
        where = f"\"run_id\" = '{ident.run_id}'"
        server = historian.server
        assert server.count(INFLUX_DATABASE, "measurement", where) == len(readings)
        during = f'{where} AND "t_h" >= 1.0 AND "t_h" < 1.6'
        assert (
            server.count(INFLUX_DATABASE, "measurement", during)
            == sum(1.0 <= r.t_h < 1.6 for r in readings)
            > 0
        )  # the readings of the outage arrived after it
        held = {m: n for m, n in (historian.held or {}).items() if n}
        assert held == expected_points(records)  # recipe control: no plans, no audits
        assert historian.points(records) == (sum(held.values()),) * 2
        assert result.kpis["mirror_pending_points"] == 0
    finally:
        historian.close()
    assert not (run_dir / "influxd" / "data").exists()
    assert not (run_dir / "influx-buffer.sqlite").exists()  # drained, removed


def test_outage_scenario_passes_with_nothing_missing(tmp_path: Path) -> None:
    outcome = run_scenario(_spec(tmp_path), str(tmp_path / "runs"))
    assert outcome.passed, outcome.summary_line()
    assert outcome.measures["historian_points_missing"] == 0
    assert outcome.measures["records_lost"] == 0
    kpis = outcome.kpis
    assert kpis["influx_points_held"] == kpis["mirror_delivered_points"] > 0
    assert kpis["mirror_pending_points"] == 0
    assert kpis["historian_outage_down_h"] >= 1.0 and kpis["historian_outage_up_h"] >= 1.6


def test_server_that_never_comes_back_fails_points_missing(tmp_path: Path) -> None:
    outcome = run_scenario(_spec(tmp_path, end=""), str(tmp_path / "runs"))
    assert not outcome.passed and outcome.state == "completed", outcome.summary_line()
    failed = {c.name for c in outcome.failed_criteria()}
    assert failed == {"historian_points_missing"}, outcome.summary_line()
    kpis = outcome.kpis
    missing = outcome.measures["historian_points_missing"]
    assert missing == kpis["mirror_pending_points"] > 0  # what the buffer file kept
    assert outcome.measures["records_lost"] == 0  # the embedded store has every record
    assert math.isnan(kpis["historian_outage_up_h"])
    assert (Path(outcome.run_dir) / "influx-buffer.sqlite").exists()  # the points kept


@pytest.mark.slow
def test_acceptance_historian_outage_scenario_passes(tmp_path: Path) -> None:
    (spec,) = load_suite(ACCEPTANCE).only(["yeast-historian-outage"]).scenarios
    outcome = run_scenario(spec, str(tmp_path / "runs"))
    assert outcome.passed, outcome.summary_line()
    assert outcome.measures["historian_points_missing"] == 0
    assert outcome.kpis["influx_points_held"] == outcome.kpis["mirror_delivered_points"]
    assert outcome.kpis["historian_outage_down_h"] == pytest.approx(14.5, abs=0.05)
