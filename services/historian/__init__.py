"""Historians: where the loop's records are stored (the :class:`bpcontrol.interfaces.Historian`).

- :class:`EmbeddedHistorian`: one SQLite file in the run folder, no server (the default);
- :func:`read_records`, :func:`load_frame`: read such a file back (during a run and after).

InfluxDB with store-and-forward, behind the same interface (imported from their modules, so
that this package does not pull in the HTTP client): :mod:`services.historian.influx`
(:class:`~services.historian.influx.InfluxHistorian`), its configuration and client
:mod:`services.historian.influx_client`, and :mod:`services.historian.influx_readback`
(:class:`~services.historian.influx_readback.InfluxBatchSource`). See ``docs/historian.md``.
"""

from services.historian.embedded import (
    TABLES,
    EmbeddedHistorian,
    HistorianClosedError,
    HistorianError,
    load_frame,
    read_records,
)

__all__ = [
    "TABLES",
    "EmbeddedHistorian",
    "HistorianClosedError",
    "HistorianError",
    "load_frame",
    "read_records",
]
