"""Historians: where the loop's records are stored (the :class:`bpcontrol.interfaces.Historian`).

- :class:`EmbeddedHistorian`: one SQLite file in the run folder, no server (the default);
- :func:`read_records`, :func:`load_frame`: read such a file back (during a run and after).

InfluxDB with store-and-forward arrives later behind the same interface.
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
