"""Must-show: nothing lost, nothing twice, when influxd dies mid-run or the writer is killed.

The default run has a short outage (about 2 s of a 6 s accelerated run); the slow one kills
influxd for 60 s. Records are counted exactly per measurement against
:func:`influx_producer.expected_points` (counted independently of the encoder).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from influx_producer import expected_points
from influx_run import RUN, run_with_outage
from influx_server import InfluxServer

from services.historian.buffer import ForwardBuffer
from services.historian.influx import HistorianEventKind, InfluxHistorian
from services.historian.influx_client import InfluxConfig

HERE = Path(__file__).parent


def counts(server: InfluxServer, database: str) -> dict[str, int]:
    return {m: server.count(database, m) for m in expected_points(1)}


def _outage_run(
    server: InfluxServer,
    database: str,
    tmp_path: Path,
    n_steps: int,
    step_s: float,
    outage: tuple[float, float],
) -> None:
    config = InfluxConfig(url=server.url, database=database, timeout_s=2.0)
    h = InfluxHistorian(config, tmp_path / "buffer.sqlite", max_backoff_s=0.5)
    stats = run_with_outage(h, server, n_steps, step_s, outage)
    assert stats.lateness_down_s, "the outage fell outside the run"
    assert h.flush(120.0), f"not drained: {h.pending_points} points left, {h.last_error!r}"
    h.close()
    assert counts(server, database) == expected_points(n_steps)  # 0 lost, 0 duplicated
    assert ForwardBuffer(tmp_path / "buffer.sqlite").totals() == (0, 0)
    kinds = [e.kind for e in h.events()]
    assert HistorianEventKind.SERVER_DOWN in kinds and HistorianEventKind.SERVER_UP in kinds
    assert not any(k in kinds for k in (HistorianEventKind.REFUSED, HistorianEventKind.SET_ASIDE))
    med = {
        name: 1e3 * statistics.median(v)
        for name, v in (
            ("lateness up", stats.lateness_up_s),
            ("lateness down", stats.lateness_down_s),
            ("write up", stats.write_up_s),
            ("write down", stats.write_down_s),
        )
    }
    print("median ms per step:", {k: round(v, 3) for k, v in med.items()})


def test_short_outage_mid_run_loses_nothing(
    own_influx: InfluxServer, database: str, tmp_path: Path
) -> None:
    _outage_run(own_influx, database, tmp_path, n_steps=1500, step_s=0.004, outage=(1.5, 3.5))


@pytest.mark.slow
def test_sixty_second_outage_mid_run_loses_nothing(
    own_influx: InfluxServer, database: str, tmp_path: Path
) -> None:
    # 100 s of wall time at 20 steps/s: 2000 steps = 33 h of process time at 1-min steps
    _outage_run(own_influx, database, tmp_path, n_steps=2000, step_s=0.05, outage=(20.0, 80.0))


def test_writer_killed_while_the_server_is_down_delivers_once_on_restart(
    own_influx: InfluxServer, database: str, tmp_path: Path
) -> None:
    own_influx.stop(kill=True)
    buffer = tmp_path / "buffer.sqlite"
    n_steps = 200
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "influx_run.py"),
            own_influx.url,
            database,
            str(buffer),
            str(n_steps),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.getcwd()])},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        expected = expected_points(n_steps)
        assert line == f"BUFFERED {sum(expected.values())}", line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert ForwardBuffer(buffer).totals()[0] == sum(expected.values())
    own_influx.start()
    config = InfluxConfig(url=own_influx.url, database=database)
    h = InfluxHistorian(config, buffer)  # a new process would do the same
    assert h.flush(60.0)
    h.close()
    assert counts(own_influx, database) == expected
    # started again on the empty buffer: nothing is sent twice
    h = InfluxHistorian(config, buffer)
    assert h.flush(10.0) and h.delivered_points == 0
    h.close()
    assert counts(own_influx, database) == expected
    assert RUN.batch_id == "B-outage"
