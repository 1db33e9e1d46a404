"""Export of recorded batches from InfluxDB and from the embedded file: the same files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from influx_producer import records
from influx_server import InfluxServer

from bpcontrol.records import RunIdentity
from services.historian import EmbeddedHistorian
from services.historian.export import export_batches, open_any_source
from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig
from services.historian.influx_readback import InfluxBatchSource
from services.historian.readback import CsvBatchSource, ReadbackError

RUN = RunIdentity("basel", "R-101", "B-1", "r1", "2026-03-01T08:00:00+00:00")


def test_export_from_influx_equals_export_from_embedded(
    influx_server: InfluxServer, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = InfluxConfig(url=influx_server.url, database=database)
    influx = InfluxHistorian(config, tmp_path / "b.sqlite")
    embedded = EmbeddedHistorian(tmp_path / "run" / "records.sqlite")
    for r in records(40, RUN):
        influx.write(r)
        embedded.write(r)
    assert influx.flush(60.0)
    influx.close()
    embedded.close()
    monkeypatch.setenv("BPCONTROL_INFLUX_URL", influx_server.url)
    monkeypatch.setenv("BPCONTROL_INFLUX_DATABASE", database)
    src = open_any_source("influx")
    assert isinstance(src, InfluxBatchSource)
    ref = open_any_source(str(tmp_path / "run"))
    a = export_batches(src, ["B-1"], tmp_path / "from-influx")
    b = export_batches(ref, ["B-1"], tmp_path / "from-embedded")
    for fa, fb in zip(a, b, strict=True):
        assert fa.read_text() == fb.read_text(), fa.name
    assert len(CsvBatchSource(tmp_path / "from-influx").batch("B-1").series("OUR")) == 40
    (m, i, _) = export_batches(src, ["B-1"], tmp_path / "pq", "parquet")
    frame = pd.read_parquet(m)
    assert len(frame) == 160 and set(frame["sensor"]) == {
        "CER",
        "DO_probe",
        "OUR",
        "X_offline",
        "pH",
    }
    assert list(pd.read_parquet(i).columns) == ["batch_id", "t_h", "input", "value", "unit"]


def test_export_of_an_unknown_batch_writes_nothing(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    config = InfluxConfig(url=influx_server.url, database=database)
    h = InfluxHistorian(config, tmp_path / "b.sqlite")
    for r in records(3, RUN):
        h.write(r)
    assert h.flush(30.0)
    h.close()
    with pytest.raises(ReadbackError, match="no batch 'B-9'"):
        export_batches(InfluxBatchSource(config), ["B-1", "B-9"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ReadbackError, match="unknown export format 'xls'"):
        export_batches(InfluxBatchSource(config), ["B-1"], tmp_path / "out", "xls")  # type: ignore[arg-type]
    bad = tmp_path / "bad.toml"
    bad.write_text("[influx]\nurl = 1\n")
    with pytest.raises(ReadbackError, match=r"bad\.toml: \[influx\]: url must be text"):
        open_any_source(f"influx:{bad}")
