"""``bpcontrol run --historian influx`` against a real influxd: every record of the main
job's run (the embedded file of its run folder is the reference) is in InfluxDB, counted
per measurement; a bad configuration is one line naming the file and key, nothing run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from influx_server import InfluxServer

from bpcontrol.records import EstimateRecord, EventRecord, MeasurementRecord, SetpointRecord
from services.historian import read_records

KINDS = {
    MeasurementRecord: "measurement",
    EstimateRecord: "estimate",
    SetpointRecord: "setpoint",
    EventRecord: "event",
}


def _bpcontrol(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bpcontrol.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_run_sends_every_record_to_influx(
    influx_server: InfluxServer, database: str, tmp_path: Path
) -> None:
    config = tmp_path / "influx.toml"
    config.write_text(f'[influx]\nurl = "{influx_server.url}"\ndatabase = "{database}"\n')
    out = tmp_path / "runs"
    proc = _bpcontrol(
        "run", "--controller", "recipe", "--duration", "2", "--json", "--out", str(out),
        "--historian", "influx", "--influx-config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    kpis = json.loads(proc.stdout)
    assert kpis["mirror_pending_points"] == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    stored = Counter(
        KINDS[type(r)] for r in read_records(run_dir / "records.sqlite") if type(r) in KINDS
    )
    assert stored["measurement"] > 100 and stored["setpoint"] > 0  # 2 h of 1-min readings
    for measurement, n in stored.items():
        assert influx_server.count(database, measurement) == n, measurement
    assert (out / "influx-buffer.sqlite").is_file()


def test_bad_influx_config_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    config = tmp_path / "influx.toml"
    config.write_text('[influx]\nurl = "http://127.0.0.1:1"\ndatabse = "x"\n')
    out = tmp_path / "runs"
    proc = _bpcontrol(
        "run", "--duration", "1", "--out", str(out), "--historian", "influx",
        "--influx-config", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(config) in lines[0] and "databse" in lines[0], lines
    assert not out.exists()
