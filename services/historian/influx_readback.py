"""Read recorded batches back from InfluxDB through the same interface as the embedded store.

:class:`InfluxBatchSource` implements :class:`services.historian.readback.BatchSource`
(``batch_ids()``, ``batch(batch_id)``), so ``bpcontrol fit``, ``bpcontrol compare`` and
:func:`services.historian.readback.write_csv` work on batches read from InfluxDB as on the
embedded SQLite file. It reads the schema of :mod:`services.historian.lineprotocol`:
measurements from ``measurement`` (placed at ``t_sample_h``; NaN readings are left out),
inputs from ``setpoint`` (each point's ``values.<input>`` hold from its ``t_h`` on). The
line protocol records no units and no initial state, so ``units`` and ``initial_state``
are empty. :meth:`InfluxBatchSource.series` reads chosen sensors over a process-time range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from services.historian.influx_client import (
    InfluxClient,
    InfluxConfig,
    InfluxQueryError,
    quote_literal,
)
from services.historian.readback import (
    BatchData,
    ReadbackError,
    Series,
    _profile,
    _unknown_batch,
    series_from_rows,
)

__all__ = ["InfluxBatchSource"]


class InfluxBatchSource:
    """Batches in an InfluxDB database written by the InfluxDB historian.

    Args:
        config: the server and database.
        site: read only batches of this site (tag ``site``); None for all.
        reactor: read only batches of this reactor (tag ``reactor``); None for all.

    Every server problem is a :class:`ReadbackError` naming the URL, database and batch.
    """

    def __init__(
        self, config: InfluxConfig, *, site: str | None = None, reactor: str | None = None
    ) -> None:
        self.config = config
        self.site = site
        self.reactor = reactor
        self._client = InfluxClient(config)
        self.origin = f"{config.url} database {config.database!r}"

    def _where(self, batch_id: str | None = None) -> list[str]:
        where = []
        if self.site is not None:
            where.append(f'"site" = {quote_literal(self.site)}')
        if self.reactor is not None:
            where.append(f'"reactor" = {quote_literal(self.reactor)}')
        if batch_id is not None:
            where.append(f'"batch" = {quote_literal(batch_id)}')
        return where

    def _query(self, q: str, what: str) -> list[dict[str, Any]]:
        try:
            results = self._client.query(q)
        except InfluxQueryError as exc:
            raise ReadbackError(f"{self.origin}: {what}: {exc}") from None
        series: list[dict[str, Any]] = results[0].get("series", []) if results else []
        return series

    def batch_ids(self) -> tuple[str, ...]:
        """The batch tags of the ``measurement`` points (filtered by site/reactor), sorted."""
        where = self._where()
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        q = f'SHOW TAG VALUES FROM "measurement" WITH KEY = "batch"{clause}'
        found = self._query(q, "batch ids")
        return tuple(sorted({str(v[1]) for s in found for v in s.get("values", [])}))

    def series(
        self,
        batch_id: str,
        sensors: Iterable[str] | None = None,
        t_from_h: float | None = None,
        t_to_h: float | None = None,
    ) -> dict[str, Series]:
        """The readings of ``sensors`` (None: all) of one batch with sample time in
        [``t_from_h``, ``t_to_h``] (h; None: open), one :class:`Series` per sensor."""
        where = self._where(batch_id)
        if sensors is not None:
            names = list(sensors)
            if not names:
                return {}
            where.append("(" + " OR ".join(f'"sensor" = {quote_literal(n)}' for n in names))
            where[-1] += ")"
        for op, bound in ((">=", t_from_h), ("<=", t_to_h)):
            if bound is not None:
                if not math.isfinite(bound):
                    raise ReadbackError(f"{self.origin}: time bound {bound!r} is not finite")
                where.append(f'"t_sample_h" {op} {float(bound)!r}')
        q = (
            'SELECT "t_sample_h", "value", "t_h" FROM "measurement" WHERE '
            + " AND ".join(where)
            + ' GROUP BY "sensor"'
        )
        out: dict[str, Series] = {}
        for s in self._query(q, f"batch {batch_id!r}: measurements"):
            sensor = str(s["tags"]["sensor"])
            rows = [
                (float(ts), math.nan if v is None else float(v), float(th))
                for _, ts, v, th in s.get("values", [])
            ]
            out[sensor] = series_from_rows(sensor, rows)
        return dict(sorted(out.items()))

    def _steps(self, batch_id: str) -> dict[str, list[tuple[float, float]]]:
        q = f'SELECT * FROM "setpoint" WHERE {" AND ".join(self._where(batch_id))}'
        steps: dict[str, list[tuple[float, float]]] = {}
        for s in self._query(q, f"batch {batch_id!r}: setpoints"):
            columns: list[str] = s["columns"]
            t_col = columns.index("t_h")
            inputs = [
                (j, c.removeprefix("values."))
                for j, c in enumerate(columns)
                if c.startswith("values.")
            ]
            for row in s.get("values", []):
                for j, name in inputs:
                    if row[j] is not None:
                        steps.setdefault(name, []).append((float(row[t_col]), float(row[j])))
        return steps

    def batch(self, batch_id: str) -> BatchData:
        """One batch (see the module docstring); :class:`ReadbackError` when it is not there."""
        measurements = self.series(batch_id)
        if not measurements:
            raise _unknown_batch(self.origin, batch_id, self.batch_ids())
        return BatchData(
            batch_id=batch_id,
            origin=self.origin,
            measurements=MappingProxyType(measurements),
            inputs=_profile(self.origin, batch_id, self._steps(batch_id)),
            initial_state=MappingProxyType({}),
            units=MappingProxyType({}),
        )

    def close(self) -> None:
        """Close the HTTP connection."""
        self._client.close()

    def __repr__(self) -> str:
        return f"InfluxBatchSource({self.config.url!r}, database={self.config.database!r})"
