"""A real ``influxd`` (1.x) on free 127.0.0.1 ports with its data in a temporary folder.

Used by the InfluxDB historian tests and by ``benchmarks/bench_influx.py``: the library's
:mod:`services.historian.influx_server` (start it, wait for ``/ping``, stop it by PID:
SIGTERM, then SIGKILL, and start it again on the same data for the outage tests), kept
importable under this name for the tests and the benchmark.
"""

from __future__ import annotations

from services.historian.influx_server import INFLUXD, InfluxServer, free_port, start_influxd

__all__ = ["INFLUXD", "InfluxServer", "free_port", "start_influxd"]
