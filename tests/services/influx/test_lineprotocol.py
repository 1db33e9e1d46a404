"""Line protocol of the InfluxDB historian: escaping round-trips through a real influxd, and
what the encoder refuses."""

from __future__ import annotations

import math

import httpx
import pytest
from influx_server import InfluxServer

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    RunIdentity,
    SetpointRecord,
)
from services.historian.lineprotocol import LineEncoder, RecordRefusedError, escape_tag

RUN = RunIdentity("basel", "R-101", "B-1", "r1", "2026-03-01T08:00:00+00:00")
START_NS = 1772352000 * 10**9  # 2026-03-01T08:00:00Z


def _write(server: InfluxServer, database: str, lines: list[str]) -> None:
    server.query(f'CREATE DATABASE "{database}"')
    r = httpx.post(
        f"{server.url}/write",
        params={"db": database, "precision": "ns"},
        content="\n".join(lines).encode(),
    )
    assert r.status_code == 204, r.text


def _rows(server: InfluxServer, database: str, q: str) -> list[dict[str, object]]:
    res = server.query(q, database)
    results = res["results"]
    assert isinstance(results, list)
    out = []
    for s in results[0].get("series", []):
        for v in s["values"]:
            row = dict(zip(s["columns"], v, strict=True))
            row.update(s.get("tags", {}))
            out.append(row)
    return out


AWKWARD = [
    "plain",
    "with space",
    "comma,inside",
    "equals=inside",
    "all , = three",
    "back\\slash inside",
    'double"quote',
    "ünïcødé µ °C",
    "trailing space ",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_tags_and_strings_round_trip(influx_server: InfluxServer, database: str, text: str) -> None:
    run = RunIdentity(text, text, text, "r1", "2026-03-01T08:00:00+00:00")
    enc = LineEncoder()
    lines = enc.encode(MeasurementRecord(0.5, text, 1.25, 0.25, run=run))
    message = f'{text}\nsecond line with \\ and " and {text}'
    lines += enc.encode(EventRecord(0.5, "phase", message, text, run=run))
    _write(influx_server, database, lines)
    (m,) = _rows(influx_server, database, 'SELECT * FROM "measurement" GROUP BY *')
    assert (m["site"], m["reactor"], m["batch"], m["sensor"]) == (text, text, text, text)
    assert m["value"] == 1.25 and m["t_h"] == 0.5 and m["t_sample_h"] == 0.25
    assert m["time"] == START_NS + 15 * 60 * 10**9  # stamped at the sample time
    (e,) = _rows(influx_server, database, 'SELECT * FROM "event" GROUP BY *')
    assert e["message"] == message and e["source"] == text and e["kind"] == "phase"


def test_every_record_type_round_trips(influx_server: InfluxServer, database: str) -> None:
    enc = LineEncoder(RUN)  # records without a run get the encoder's identity
    records = [
        EstimateRecord(
            1.0,
            {"X": 1.5, "a b": -2e-300},
            {"X": 0.1, "a b": 0.2},
            {"mu": 0.3},
            {"mu": 0.01},
            math.nan,
            3,
            False,
        ),
        PlanRecord(
            1.0,
            "solved",
            math.nan,
            (1.0, 1.5, 2.0),
            {"X": (1.0, 2.0, 3.0)},
            {"F": (0.1, 0.2)},
            'ok "quoted"',
        ),
        SetpointRecord(1.0, {"F": 0.25, "T,x": 37.0}, "nmpc", ("F",)),
        AuditRecord(1.0, "ann", "why, not", "setpoint F = 0.2", False, "too high"),
        MeasurementRecord(1.0, "DO", math.nan, 1.0),
    ]
    lines = [line for r in records for line in enc.encode(r)]
    _write(influx_server, database, lines)
    (est,) = _rows(influx_server, database, 'SELECT * FROM "estimate"')
    assert est["x.X"] == 1.5 and est["x.a b"] == -2e-300 and est["parameters.mu"] == 0.3
    assert est.get("nis") is None and est["dof"] == 3 and est["healthy"] is False
    (plan,) = _rows(influx_server, database, 'SELECT * FROM "plan" GROUP BY *')
    assert plan["status"] == "solved" and plan.get("solve_time_s") is None
    assert plan["message"] == 'ok "quoted"' and plan["n_nodes"] == 3
    pred = _rows(influx_server, database, 'SELECT * FROM "plan_prediction" GROUP BY *')
    by_k = {int(str(p["k"])): p for p in pred}
    assert sorted(by_k) == [0, 1, 2]
    assert [by_k[k]["x.X"] for k in range(3)] == [1.0, 2.0, 3.0]
    assert [by_k[k]["u.F"] for k in range(3)] == [0.1, 0.2, None]  # N intervals, N+1 nodes
    assert by_k[2]["time"] == START_NS + 2 * 3600 * 10**9  # at the node's future time
    assert all(p["plan_t_h"] == 1.0 for p in pred)
    (sp,) = _rows(influx_server, database, 'SELECT * FROM "setpoint" GROUP BY *')
    assert sp["values.T,x"] == 37.0 and sp["source"] == "nmpc" and sp["clamped"] == '["F"]'
    (au,) = _rows(influx_server, database, 'SELECT * FROM "audit"')
    assert au["why"] == "why, not" and au["accepted"] is False and au["reason"] == "too high"
    (m,) = _rows(influx_server, database, 'SELECT * FROM "measurement"')
    assert m.get("value") is None and m["value_nan"] is True
    (r,) = _rows(influx_server, database, 'SELECT * FROM "run" GROUP BY *')
    assert r["run_id"] == "r1" and r["started_utc"] == RUN.started_utc and r["time"] == START_NS


def test_same_time_points_of_one_series_get_distinct_timestamps(
    influx_server: InfluxServer, database: str
) -> None:
    enc = LineEncoder(RUN)
    lines = []
    for i in range(3):  # three events of one kind and source in one step
        lines += enc.encode(EventRecord(2.0, "estimator-gated", f"sensor {i}", "estimator"))
    lines += enc.encode(EventRecord(2.0, "phase", "other series", "loop"))
    _write(influx_server, database, lines)
    rows = _rows(influx_server, database, 'SELECT * FROM "event" GROUP BY *')
    assert len(rows) == 4
    gated = sorted((int(str(r["time"])), r["message"]) for r in rows if r["kind"] != "phase")
    base = START_NS + 2 * 3600 * 10**9
    assert gated == [(base, "sensor 0"), (base + 1, "sensor 1"), (base + 2, "sensor 2")]
    # the same lines again (a re-send after a crash) overwrite: still 4 points
    _write(influx_server, database, lines)
    assert influx_server.count(database, "event") == 4


def _bypass(record: object, name: str, value: object) -> object:
    object.__setattr__(record, name, value)
    return record


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (EstimateRecord(1.0, {"X": math.nan}, {"X": 0.1}, run=RUN), "x['X'] is nan"),
        (EstimateRecord(1.0, {"X": 1.0}, {"X": math.inf}, run=RUN), "x_sigma['X'] is inf"),
        (SetpointRecord(1.0, {"F": math.nan}, "nmpc", run=RUN), "values['F'] is nan"),
        (PlanRecord(1.0, "solved", 0.1, (1.0, 2.0), {"X": (1.0, math.nan)}, run=RUN), "x_pred"),
        (PlanRecord(1.0, "solved", 0.1, (1.0, math.inf), run=RUN), "t_nodes_h[1]"),
        (PlanRecord(1.0, "solved", 0.1, (1.0, 2.0), {"X": (1.0,)}, run=RUN), "1 values for 2"),
        (MeasurementRecord(1.0, "", 1.0, 1.0, run=RUN), "sensor is empty"),
        (MeasurementRecord(1.0, "  ", 1.0, 1.0, run=RUN), "sensor is empty"),
        (MeasurementRecord(1.0, "DO\\", 1.0, 1.0, run=RUN), "backslash"),
        (MeasurementRecord(1.0, "D\nO", 1.0, 1.0, run=RUN), "line break"),
        (EventRecord(1.0, "phase", "m", "", run=RUN), "source is empty"),
        (MeasurementRecord(1.0, "DO", 1.0, 1.0), "no run identity"),
        (_bypass(MeasurementRecord(1.0, "DO", 1.0, 1.0, run=RUN), "t_h", math.nan), "t_h"),
        (
            _bypass(MeasurementRecord(1.0, "DO", 1.0, 1.0, run=RUN), "t_sample_h", math.inf),
            "not a finite",
        ),
        (MeasurementRecord(1e9, "DO", 1.0, 1e9, run=RUN), "outside the timestamps"),
        (
            MeasurementRecord(
                1.0,
                "DO",
                1.0,
                1.0,
                run=RUN,
            ),
            None,
        ),
    ],
)
def test_malformed_records_are_refused(record: object, words: str | None) -> None:
    enc = LineEncoder()
    if words is None:  # the control case: the same record, well formed, encodes
        assert len(enc.encode(record)) == 2  # type: ignore[arg-type]
        return
    with pytest.raises(RecordRefusedError, match=words.replace("[", r"\[").replace("(", r"\(")):
        enc.encode(record)  # type: ignore[arg-type]
    # refused as a whole: the encoder did not even note the run as seen
    ok = MeasurementRecord(1.0, "DO", 1.0, 1.0, run=RUN)
    assert [line.split(",")[0] for line in enc.encode(ok)] == ["run", "measurement"]


def test_escape_tag_rules() -> None:
    assert escape_tag("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_tag("back\\slash") == "back\\slash"  # kept literally by 1.x
    with pytest.raises(RecordRefusedError):
        escape_tag("")


def _encode_all(enc: LineEncoder, stream: list[MeasurementRecord]) -> list[object]:
    out: list[object] = []
    for r in stream:
        try:
            out.append(enc.encode(r))
        except RecordRefusedError as exc:
            out.append(str(exc))
    return out


def test_short_path_of_known_sensors_writes_the_same_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The short path for readings of known sensors against the general path on the
    cases it must hand over: same microsecond twice, NaN, infinity, an int value, a
    non-ASCII sensor, another run in between, a time out of range."""
    other = RunIdentity("basel", "R-101", "B-2", "r2", "2026-03-01T08:00:00+00:00")
    stream = []
    for k in range(50):
        t = k / 60
        stream += [
            MeasurementRecord(t, "DO", float(k), t, run=RUN),
            MeasurementRecord(t, "DO", 2.0, t, run=RUN),  # same microsecond: +1 ns
            MeasurementRecord(t, "pH", math.nan, t, run=RUN),
            MeasurementRecord(t, "DO", math.inf, t, run=RUN),
            MeasurementRecord(t, "DO", 3, t, run=RUN),
            MeasurementRecord(t, "\u00e9-sensor", 1.0, t, run=RUN),
            MeasurementRecord(1e9, "DO", 1.0, 1e9, run=RUN),
            MeasurementRecord(t, "OUR", 10.0 + k, t, run=RUN),
        ]
        if k % 10 == 9:
            stream.append(MeasurementRecord(t, f"s{k}", 1.5, t, run=other))
    enc = LineEncoder()
    short = _encode_all(enc, stream)
    monkeypatch.setattr(LineEncoder, "_known_measurement", lambda self, record: None)
    general = _encode_all(LineEncoder(), stream)
    assert short == general
    assert sum(isinstance(x, str) for x in short) == 100  # inf and out of range refused
