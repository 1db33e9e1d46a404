"""The InfluxDB historian against a real influxd: every record delivered once, refusals, 4xx
set aside, the buffer's size alarm, read-back through the BatchSource interface."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from influx_producer import expected_points, records
from influx_server import InfluxServer, free_port

from bpcontrol.interfaces import Historian
from bpcontrol.records import EstimateRecord, EventRecord, MeasurementRecord, RunIdentity
from services.historian import EmbeddedHistorian
from services.historian.buffer import ForwardBuffer
from services.historian.influx import HistorianEvent, HistorianEventKind, InfluxHistorian
from services.historian.influx_client import InfluxConfig
from services.historian.influx_readback import InfluxBatchSource
from services.historian.lineprotocol import RecordRefusedError
from services.historian.readback import BatchSource, EmbeddedBatchSource, ReadbackError

RUN = RunIdentity("basel", "R-101", "B-1", "r1", "2026-03-01T08:00:00+00:00")


def counts(server: InfluxServer, database: str) -> dict[str, int]:
    return {m: server.count(database, m) for m in expected_points(1)}


def test_every_record_delivered_once(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    config = InfluxConfig(url=influx_server.url, database=database)
    h = InfluxHistorian(config, tmp_path / "buffer.sqlite", batch_points=500)
    assert isinstance(h, Historian)
    for r in records(120, RUN):
        h.write(r)
    assert h.flush(60.0)
    assert counts(influx_server, database) == expected_points(120)
    assert h.pending_points == 0 and h.refused == 0
    assert ForwardBuffer(tmp_path / "buffer.sqlite").totals() == (0, 0)  # acknowledged: gone
    h.close()
    h.close()  # idempotent


def test_malformed_records_refused_with_an_event_never_buffered(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    seen = []
    config = InfluxConfig(url=influx_server.url, database=database)
    h = InfluxHistorian(config, tmp_path / "b.sqlite", on_event=seen.append)
    h.write(EstimateRecord(1.0, {"X": math.nan}, {"X": 0.1}, run=RUN))
    h.write(MeasurementRecord(1.0, "", 1.0, 1.0, run=RUN))
    h.write(MeasurementRecord(1.0, "DO", 1.0, 1.0))  # no identity, none configured
    h.write(MeasurementRecord(1.0, "DO", 2.0, 1.0, run=RUN))  # the one good record
    assert h.flush(30.0)
    events = h.events()
    assert [e.kind for e in events] == [HistorianEventKind.REFUSED] * 3
    assert "x['X'] is nan" in events[0].message and "sensor is empty" in events[1].message
    assert "no run identity" in events[2].message
    assert seen == events and h.events() == []  # drained
    assert h.refused == 3 and h.accepted == 1
    assert influx_server.count(database, "measurement") == 1
    assert influx_server.count(database, "estimate") == 0
    with pytest.raises(TypeError, match=r"InfluxHistorian\.write takes"):
        h.write("not a record")  # type: ignore[arg-type]
    h.close()
    strict = InfluxHistorian(config, tmp_path / "s.sqlite", strict=True)
    with pytest.raises(RecordRefusedError, match="sensor is empty"):
        strict.write(MeasurementRecord(1.0, "", 1.0, 1.0, run=RUN))
    strict.close()


def test_batch_answered_4xx_is_set_aside_and_the_rest_goes_on(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    # a field "x.bad" stored as text first: a float "x.bad" in the same shard is a 400
    influx_server.query(f'CREATE DATABASE "{database}"')
    r = httpx.post(
        f"{influx_server.url}/write",
        params={"db": database, "precision": "s"},
        content=b'estimate,batch=B-1,reactor=R-101,site=basel x.bad="text",t_h=-1.0 1772348400',
    )
    assert r.status_code == 204
    config = InfluxConfig(url=influx_server.url, database=database)
    h = InfluxHistorian(config, tmp_path / "b.sqlite", batch_points=400)
    stream = list(records(60, RUN))
    bad = EstimateRecord(0.5, {"bad": 1.0}, {"bad": 0.1}, run=RUN)
    broken = 'two\nlines, a \\ and a "'  # a line break inside a line of the split batch
    for i, rec in enumerate(stream):
        h.write(rec)
        if i == len(stream) // 2:
            h.write(bad)
            h.write(EventRecord(0.5, "phase", broken, "operator", run=RUN))
    assert h.flush(60.0)
    expected = expected_points(60)
    expected["estimate"] += 1  # the text point written above; the bad one is not there
    expected["event"] += 1
    assert counts(influx_server, database) == expected
    found = influx_server.query(
        """SELECT "message" FROM "event" WHERE "source" = 'operator'""", database
    )
    assert found["results"][0]["series"][0]["values"][0][1] == broken  # type: ignore[index]
    assert h.set_aside_points == 1
    kinds = [e.kind for e in h.events()]
    assert kinds == [HistorianEventKind.SET_ASIDE]
    h.close()
    ((status, reason, lines),) = ForwardBuffer(tmp_path / "b.sqlite").dead_letters()
    assert status == 400 and "field type conflict" in reason
    assert len(lines) == 1 and lines[0].startswith("estimate,") and "x.bad=1.0" in lines[0]


def test_buffer_alarm_and_full_refusal_while_the_server_is_away(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = InfluxConfig(url=url, database="d", timeout_s=0.5)
    seen: list[tuple[HistorianEventKind, int]] = []
    made: list[InfluxHistorian] = []

    def on_event(event: HistorianEvent) -> None:  # asks the historian back: must not deadlock
        seen.append((event.kind, made[0].pending_points if made else -1))

    h = InfluxHistorian(
        config,
        tmp_path / "b.sqlite",
        max_buffer_points=100,
        alarm_fraction=0.8,
        max_backoff_s=0.2,
        drain_on_close_s=0.1,
        on_event=on_event,
    )
    made.append(h)
    for k in range(100):  # one point each, plus the run point first
        h.write(MeasurementRecord(k / 60, "DO", 1.0, k / 60, run=RUN))
    assert h.accepted == 99 and h.refused == 1  # 1 run point + 99 = 100 = full
    assert not h.flush(0.5)  # nothing can be delivered
    assert h.wait_buffered(10.0)
    kinds = [e.kind for e in h.events()]
    assert HistorianEventKind.BUFFER_HIGH in kinds and HistorianEventKind.BUFFER_FULL in kinds
    assert HistorianEventKind.SERVER_DOWN in kinds
    assert kinds.index(HistorianEventKind.BUFFER_HIGH) < kinds.index(HistorianEventKind.BUFFER_FULL)
    assert (HistorianEventKind.BUFFER_FULL, 100) in seen
    assert h.stored == h.accepted == 99  # all in the buffer file
    assert h.failing_for_s() == 0.0 and h.failure_cause is None  # a server away is no failure
    assert h.abandon() == 0  # nothing lost: it stays in the file
    assert ForwardBuffer(tmp_path / "b.sqlite").totals()[0] == 100  # kept for the next start


def test_leftovers_of_an_earlier_historian_are_sent_first(
    own_influx: InfluxServer, database: str, tmp_path: Path
) -> None:
    config = InfluxConfig(url=own_influx.url, database=database, timeout_s=1.0)
    own_influx.stop()
    h = InfluxHistorian(config, tmp_path / "b.sqlite", drain_on_close_s=0.2, max_backoff_s=0.2)
    for r in records(30, RUN):
        h.write(r)
    assert h.wait_buffered(10.0)
    h.close()  # server down: everything stays in the buffer file
    own_influx.start()
    h2 = InfluxHistorian(config, tmp_path / "b.sqlite")
    for r in records(30, RUN, first=30):
        h2.write(r)
    assert h2.flush(60.0)
    h2.close()
    assert counts(own_influx, database) == expected_points(60)


def test_read_back_equals_the_embedded_historian(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    config = InfluxConfig(url=influx_server.url, database=database)
    stream = list(records(90, RUN))
    other = RunIdentity("basel", "R-102", "B-2", "r2", "2026-03-02T08:00:00+00:00")
    stream += list(records(10, other))
    influx = InfluxHistorian(config, tmp_path / "b.sqlite")
    embedded = EmbeddedHistorian(tmp_path / "records.sqlite")
    for r in stream:
        influx.write(r)
        embedded.write(r)
    assert influx.flush(60.0)
    influx.close()
    embedded.close()
    src = InfluxBatchSource(config)
    assert isinstance(src, BatchSource)
    ref = EmbeddedBatchSource(tmp_path / "records.sqlite")
    assert src.batch_ids() == ref.batch_ids() == ("B-1", "B-2")
    a, b = src.batch("B-1"), ref.batch("B-1")
    assert sorted(a.measurements) == sorted(b.measurements)
    for name, s in b.measurements.items():
        np.testing.assert_array_equal(a.measurements[name].t_sample_h, s.t_sample_h)
        np.testing.assert_array_equal(a.measurements[name].value, s.value)
        np.testing.assert_array_equal(a.measurements[name].t_h, s.t_h)
    assert a.inputs is not None and b.inputs is not None
    assert a.inputs.names == b.inputs.names
    np.testing.assert_array_equal(a.inputs.times, b.inputs.times)
    np.testing.assert_array_equal(a.inputs.values, b.inputs.values)
    part = src.series("B-1", ["X_offline", "OUR"], t_from_h=0.5, t_to_h=1.0)
    assert sorted(part) == ["OUR", "X_offline"]
    assert part["OUR"].t_sample_h.min() >= 0.5 and part["OUR"].t_sample_h.max() <= 1.0
    assert len(part["OUR"]) == 31  # minutes 30..60
    with pytest.raises(ReadbackError, match="no batch 'B-9'"):
        src.batch("B-9")
    assert InfluxBatchSource(config, reactor="R-102").batch_ids() == ("B-2",)
    src.close()


def test_read_back_from_an_unreachable_server_is_one_error_line() -> None:
    config = InfluxConfig(url=f"http://127.0.0.1:{free_port()}", database="d", timeout_s=0.5)
    with pytest.raises(ReadbackError, match=r"127\.0\.0\.1.*database 'd'.*batch ids"):
        InfluxBatchSource(config).batch_ids()
