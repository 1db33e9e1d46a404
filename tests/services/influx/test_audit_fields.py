"""The audit trail's fields (issue 21: wall time, old and new value, result, the hash
chain) are kept by both historians: the embedded file (also one written before them,
which reads them as empty) and InfluxDB (a real influxd)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from influx_server import InfluxServer

from bpcontrol.records import AuditRecord, RunIdentity
from services.historian import EmbeddedHistorian, read_records
from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig

RUN = RunIdentity.start(site="s", reactor="R1", batch_id="B1", run_id="r1")
ENTRY = AuditRecord(
    1.5, "ann", "too warm", "setpoint T_set = 36", False, "above the limit 37 degC",
    run=RUN, wall_utc="2026-12-02T10:00:00.000+00:00", old_value='{"T_set": 37.0}',
    new_value='{"T_set": 36.0}', result="refused (422)", seq=7, prev_hash="ab" * 32,
    hash="cd" * 32,
)  # fmt: skip
ADDED = ("wall_utc", "old_value", "new_value", "result", "seq", "prev_hash", "hash")


def test_embedded_file_keeps_every_audit_field(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    with EmbeddedHistorian(path) as hist:
        hist.write(ENTRY)
    (back,) = read_records(path, "audit")
    assert back == ENTRY


def test_a_file_from_before_the_audit_fields_reads_them_empty_and_takes_new_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.sqlite"
    with EmbeddedHistorian(path) as hist:
        hist.write(ENTRY)
    with sqlite3.connect(path) as conn:  # make it a file of the earlier schema
        for column in (*ADDED[:4], "chain_seq", *ADDED[5:]):
            conn.execute(f'ALTER TABLE audit DROP COLUMN "{column}"')
    (old,) = read_records(path, "audit")
    assert (old.who, old.action, old.accepted, old.reason) == (
        ENTRY.who, ENTRY.action, False, ENTRY.reason,
    )  # fmt: skip
    assert (old.wall_utc, old.old_value, old.seq, old.hash) == ("", "", 0, "")
    with EmbeddedHistorian(path) as hist:  # opening for writing adds the columns
        hist.write(ENTRY)
    assert read_records(path, "audit")[1] == ENTRY


def test_influx_keeps_every_audit_field(influx_server: InfluxServer, database: str,
                                        tmp_path: Path) -> None:  # fmt: skip
    hist = InfluxHistorian(
        InfluxConfig(url=influx_server.url, database=database), tmp_path / "buf.sqlite",
        identity=RUN,
    )  # fmt: skip
    hist.write(ENTRY)
    assert hist.flush(30.0)
    hist.close()
    r = httpx.post(
        f"{influx_server.url}/query",
        data={"q": 'SELECT * FROM "audit"', "db": database},
        timeout=30.0,
    ).json()
    series = r["results"][0]["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    for name in ADDED:
        assert row[name] == getattr(ENTRY, name), name
