"""An accelerated loop-like run into an InfluxHistorian, with an outage of the server in it.

:func:`run_with_outage` paces the producer's control steps with the loop's own clock
(:class:`bpcontrol.clock.PacedClock`), writes each step's records, and at chosen wall
times kills ``influxd`` (SIGKILL) and restarts it on the same data. It returns the wake-up
lateness of every step and the time spent in ``write()`` per step, split into the steps
while the server was up and those while it was down, for the tests and the benchmark.

Run as a script (``python influx_run.py URL DATABASE BUFFER STEPS``) it writes ``STEPS``
steps, waits until they are all in the buffer file, prints ``BUFFERED <points>`` and then
sleeps, so that a test can SIGKILL it with records in its buffer.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from influx_producer import STEP_H, step_records
from influx_server import InfluxServer

from bpcontrol.clock import PacedClock
from bpcontrol.records import RunIdentity
from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig

RUN = RunIdentity("basel", "R-101", "B-outage", "r-outage", "2026-03-01T08:00:00+00:00")


@dataclass
class RunStats:
    """Per-step wall figures of one run (s), split by server state."""

    lateness_up_s: list[float] = field(default_factory=list)
    lateness_down_s: list[float] = field(default_factory=list)
    write_up_s: list[float] = field(default_factory=list)
    write_down_s: list[float] = field(default_factory=list)
    steps: int = 0


def run_with_outage(
    historian: InfluxHistorian,
    server: InfluxServer | None,
    n_steps: int,
    step_wall_s: float,
    outage: tuple[float, float] | None,
    run: RunIdentity = RUN,
) -> RunStats:
    """Write ``n_steps`` control steps, one per ``step_wall_s`` of wall time; kill the server
    at ``outage[0]`` s and start it again at ``outage[1]`` s after the first step."""
    clock = PacedClock(speed_up=STEP_H * 3600.0 / step_wall_s)
    stats = RunStats()
    down = threading.Event()
    restarted: list[BaseException] = []

    def outage_thread() -> None:
        assert outage is not None and server is not None
        time.sleep(outage[0])
        server.stop(kill=True)
        down.set()
        time.sleep(outage[1] - outage[0])
        try:
            server.start()
        except BaseException as exc:  # reported by the caller
            restarted.append(exc)
        down.clear()

    killer = threading.Thread(target=outage_thread, daemon=True) if outage else None
    if killer is not None:
        killer.start()
    for k in range(n_steps):
        late = clock.sleep_until(k * STEP_H)
        is_down = down.is_set()
        t0 = time.perf_counter()
        for r in step_records(k, run):
            historian.write(r)
        spent = time.perf_counter() - t0
        (stats.lateness_down_s if is_down else stats.lateness_up_s).append(late)
        (stats.write_down_s if is_down else stats.write_up_s).append(spent)
        stats.steps += 1
    if killer is not None:
        killer.join()
        if restarted:
            raise restarted[0]
    return stats


def _main(argv: list[str]) -> int:
    url, database, buffer, steps = argv[1], argv[2], argv[3], int(argv[4])
    config = InfluxConfig(url=url, database=database, timeout_s=1.0)
    h = InfluxHistorian(config, Path(buffer), max_backoff_s=0.2)
    for k in range(steps):
        for r in step_records(k, RUN):
            h.write(r)
    if not h.wait_buffered(60.0):
        print("NOT BUFFERED", flush=True)
        return 1
    print(f"BUFFERED {h.pending_points}", flush=True)
    time.sleep(3600)  # until SIGKILLed
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
