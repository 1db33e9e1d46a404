"""Must-show with the real loop: an accelerated closed-loop batch (simulated E. coli plant,
EKF, supervisor, recipe; no NMPC, to keep it short) into InfluxDB, influxd SIGKILLed in the
middle and started again: every record of the run in InfluxDB, counted per measurement
against the embedded historian's copy of the same records; the loop's tick lateness printed
beside that of a run where the server stayed up."""

from __future__ import annotations

import math
import statistics
import threading
import time
from pathlib import Path

import pytest
from influx_server import InfluxServer

from bpcontrol.adapters import LoopEstimator
from bpcontrol.clock import PacedClock
from bpcontrol.loop import ControlLoop
from bpcontrol.recipe import default_recipe_path, load_recipe
from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    RunIdentity,
    SetpointRecord,
)
from bpcontrol.supervisor import Supervisor, SupervisorConfig
from estimators import ExtendedKalmanFilter, OnlineEstimator, default_ekf_config
from hil.plant import ecoli_plant
from models import load_model
from services.historian import EmbeddedHistorian, read_records
from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig

MODEL = load_model("ecoli_fedbatch")
RECIPE = load_recipe(default_recipe_path(MODEL.name), MODEL)
MEASUREMENTS = ("measurement", "estimate", "plan", "plan_prediction", "setpoint", "event", "audit")


class Both:
    """Every record to InfluxDB and to an embedded file (the reference count)."""

    def __init__(self, influx: InfluxHistorian, embedded: EmbeddedHistorian) -> None:
        self.influx, self.embedded = influx, embedded

    def write(self, record: Record) -> None:
        self.influx.write(record)
        self.embedded.write(record)

    def flush(self, timeout_s: float | None = None) -> bool:
        return self.embedded.flush(timeout_s)

    def close(self) -> None:
        self.embedded.close()


def expected(records: list[Record]) -> dict[str, int]:
    """Points per measurement that these records make (counted without the encoder)."""
    out = dict.fromkeys(MEASUREMENTS, 0)
    kinds: dict[type, str] = {
        MeasurementRecord: "measurement",
        EstimateRecord: "estimate",
        PlanRecord: "plan",
        SetpointRecord: "setpoint",
        EventRecord: "event",
        AuditRecord: "audit",
    }
    for r in records:
        out[kinds[type(r)]] += 1
        if isinstance(r, PlanRecord):
            out["plan_prediction"] += len(r.t_nodes_h)
    return out


def run_loop(
    server: InfluxServer,
    folder: Path,
    database: str,
    hours: float,
    speed_up: float,
    outage: tuple[float, float] | None,
) -> tuple[list[float], dict[str, int], dict[str, int]]:
    """One batch; (tick lateness s, expected points, points found)."""
    identity = RunIdentity.start(site="basel", reactor="R-101", batch_id=database)
    config = InfluxConfig(url=server.url, database=database, timeout_s=2.0)
    influx = InfluxHistorian(config, folder / "buffer.sqlite", max_backoff_s=0.5)
    embedded = EmbeddedHistorian(folder / "records.sqlite")
    ekf = ExtendedKalmanFilter(MODEL, default_ekf_config(MODEL))
    loop = ControlLoop(
        recipe=RECIPE,
        plant=ecoli_plant(MODEL, seed=3),
        estimator=LoopEstimator(OnlineEstimator(ekf), RECIPE.initial_state(MODEL)),
        controller=None,
        supervisor=Supervisor(
            SupervisorConfig(MODEL.input_names, RECIPE.limits, RECIPE.fallback, 1.0)
        ),
        historian=Both(influx, embedded),
        clock=PacedClock(speed_up),
        controller_deadline_s=1.0,
        identity=identity,
    )
    killer = None
    if outage is not None:

        def kill_and_restart() -> None:
            time.sleep(outage[0])
            server.stop(kill=True)
            time.sleep(outage[1] - outage[0])
            server.start()

        killer = threading.Thread(target=kill_and_restart, daemon=True)
        killer.start()
    summary = loop.run(duration_h=hours)
    if killer is not None:
        killer.join()
    embedded.close()
    assert influx.flush(120.0), f"{influx.pending_points} points not delivered"
    influx.close()
    assert influx.refused == 0, influx.events()
    want = expected(read_records(folder / "records.sqlite"))
    found = {m: server.count(database, m) for m in MEASUREMENTS}
    return list(summary.lateness_s), want, found


@pytest.mark.slow
def test_real_loop_with_influxd_killed_mid_run(own_influx: InfluxServer, tmp_path: Path) -> None:
    # 1 h of process time at 60x (one 1-min tick per wall second; the EKF takes up to
    # about 0.3 s a tick on a loaded 2-core machine): 60 s, influxd away from 15 s to 45 s
    for name in ("warm", "up", "down"):
        (tmp_path / name).mkdir()
    # the same batch once unpaced first, so that every JAX function the EKF needs is
    # compiled before the two timed runs (the first run would pay it otherwise)
    run_loop(own_influx, tmp_path / "warm", "warm", 0.25, math.inf, None)
    late_up, want, found = run_loop(own_influx, tmp_path / "up", "up", 1.0, 60.0, None)
    assert found == want and want["measurement"] > 100
    late_down, want, found = run_loop(
        own_influx, tmp_path / "down", "down", 1.0, 60.0, (15.0, 45.0)
    )
    assert found == want  # 0 lost, 0 duplicated, per measurement
    for name, late in (("server up", late_up), ("influxd killed 30 s", late_down)):
        ms = sorted(1e3 * v for v in late)
        print(
            f"{name}: {len(ms)} ticks, lateness median {statistics.median(ms):.2f} ms, "
            f"p99 {ms[int(0.99 * (len(ms) - 1))]:.2f} ms, max {ms[-1]:.2f} ms"
        )
