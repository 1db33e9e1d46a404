"""One historian port over two stores: the run's own file and a mirror (InfluxDB, say).

The loop writes each record once; :class:`TeeHistorian` writes it to the primary store
(the embedded file of the run folder, from which the KPIs and the report are read) and
then to the mirror. A mirror that raises never costs the primary its record: the error is
counted and kept for the caller, the record stays in the primary store.
"""

from __future__ import annotations

import threading

from bpcontrol.interfaces import Historian
from bpcontrol.records import Record

__all__ = ["TeeHistorian"]


class TeeHistorian:
    """A :class:`bpcontrol.interfaces.Historian` that writes to ``primary`` and ``mirror``.

    ``primary`` errors propagate (the loop handles them as it handles its only store's);
    ``mirror`` errors are counted in :attr:`mirror_errors`, the last kept in
    :attr:`mirror_error`. :meth:`flush` and :meth:`close` go to both, primary first.
    """

    def __init__(self, primary: Historian, mirror: Historian) -> None:
        self.primary = primary
        self.mirror = mirror
        self.mirror_errors = 0
        self.mirror_error: BaseException | None = None
        self._lock = threading.Lock()

    def write(self, record: Record) -> None:
        """Store ``record`` in the primary store, then hand it to the mirror."""
        self.primary.write(record)
        try:
            self.mirror.write(record)
        except Exception as exc:  # the mirror's trouble is the mirror's, not the loop's
            with self._lock:
                self.mirror_errors += 1
                self.mirror_error = exc

    def flush(self, timeout_s: float | None = None) -> bool:
        """Flush both; True when both finished within ``timeout_s`` each."""
        ok = self.primary.flush(timeout_s)
        return self.mirror.flush(timeout_s) and ok

    def close(self) -> None:
        """Close the primary store, then the mirror (even if the first raised)."""
        try:
            self.primary.close()
        finally:
            self.mirror.close()
