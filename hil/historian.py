"""A scenario's historians: the run's embedded file, and with ``historian = "influx"`` also
InfluxDB on a server of the run's own, which a ``historian_outage`` fault crashes.

With ``historian = "embedded"`` (the default) nothing here runs: the run folder's
``records.sqlite`` is the only store. With ``"influx"`` :class:`RunHistorian` starts an
``influxd`` of the run's own (:func:`services.historian.influx_server.start_influxd`: a
free 127.0.0.1 port, its data in ``<run folder>/influxd``) and hands
:func:`hil.runner.run_batch` the InfluxDB mirror
(:class:`services.historian.influx.InfluxHistorian` through the buffer file
``<run folder>/influx-buffer.sqlite``), as ``bpcontrol run --historian influx`` does.

A ``historian_outage`` fault is driven by process time, as the other faults are: the
loop's progress callback sees each tick's ``t_h``; at the first tick at or after
``start_h`` the server is killed (SIGKILL, a crash) and at the first tick at or after
``end_h`` it is started again on the same port and data (in a thread: the loop does not
wait for it). After the run :meth:`RunHistorian.settle` counts what InfluxDB holds for the
run (``/query``, per measurement, ``WHERE run_id = ...``) against the points the embedded
store's records make (encoded as the mirror encodes them): the measure
``historian_points_missing`` (:mod:`hil.criteria`). :meth:`RunHistorian.close` stops the
server and removes its data (its log and config, a few kB, stay) and the buffer file once
it is drained (what an outage left undelivered stays in it).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpcontrol.loop import LoopSnapshot
from bpcontrol.records import Record, RunIdentity

__all__ = [
    "HISTORIANS",
    "INFLUX_DATABASE",
    "HistorianOutage",
    "RunHistorian",
    "expected_points",
]

HISTORIANS = ("embedded", "influx")
"""The values of a scenario's ``historian`` key."""
INFLUX_DATABASE = "hil"
"""The database of a run's own server (one server per run: no other run writes to it)."""
RESTART_TIMEOUT_S = 60.0
"""How long (wall s) a restarted server may take to answer ``/ping``."""


@dataclass
class HistorianOutage:
    """Kill ``server`` at process time ``start_h`` and start it again at ``end_h`` (h).

    Call :meth:`at` with each tick's process time; the kill is immediate (SIGKILL), the
    restart runs in a thread (``influxd`` takes about a wall second to answer ``/ping``).
    ``down_h`` / ``up_h``: the process times (h) of the ticks that killed and restarted it
    (None: not yet); ``restart_s``: the wall s the restart took; ``error``: why it failed.
    """

    server: Any  # services.historian.influx_server.InfluxServer
    start_h: float
    end_h: float
    down_h: float | None = None
    up_h: float | None = None
    restart_s: float = math.nan
    error: str = ""
    _thread: threading.Thread | None = None

    def at(self, t_h: float) -> None:
        """The loop is at process time ``t_h`` (h): crash or restart the server when due."""
        if self.down_h is None and t_h >= self.start_h - 1e-9:
            self.down_h = t_h
            self.server.kill()
        elif self.down_h is not None and self.up_h is None and t_h >= self.end_h - 1e-9:
            self.up_h = t_h
            self._thread = threading.Thread(
                target=self._restart, name="historian-outage-restart", daemon=True
            )
            self._thread.start()

    def _restart(self) -> None:
        t0 = time.perf_counter()
        try:
            self.server.start(RESTART_TIMEOUT_S)
        except Exception as exc:  # reported in the KPIs; the points stay missing
            self.error = f"{type(exc).__name__}: {exc}"
        self.restart_s = time.perf_counter() - t0

    def join(self) -> None:
        """Wait for a restart in progress (at most its timeout)."""
        if self._thread is not None:
            self._thread.join(RESTART_TIMEOUT_S + 5.0)


def expected_points(records: Sequence[Record]) -> dict[str, int]:
    """How many InfluxDB points ``records`` make, per measurement, encoded as the mirror
    encodes them (records it would refuse make none)."""
    from services.historian.lineprotocol import LineEncoder, RecordRefusedError

    encoder = LineEncoder()
    out: dict[str, int] = {}
    for record in records:
        try:
            lines = encoder.encode(record)
        except RecordRefusedError:
            continue
        for line in lines:
            name = line.split(",", 1)[0]
            out[name] = out.get(name, 0) + 1
    return out


class RunHistorian:
    """The InfluxDB side of one scenario's run (nothing for ``historian = "embedded"``).

    Args:
        kind: the scenario's ``historian`` (``embedded`` or ``influx``).
        faults: the scenario's faults (its ``historian_outage`` ones are scheduled here).
        run_dir: the run folder (the server's folder and the buffer file go in it).
        identity: the run's identity (its ``run_id`` selects the run's points).

    :meth:`start` starts the server and the mirror; :meth:`close` is idempotent.
    """

    def __init__(
        self, kind: str, faults: Sequence[Any], run_dir: Path, identity: RunIdentity
    ) -> None:
        self.kind = kind
        self.faults = [f for f in faults if f.kind == "historian_outage"]
        self.run_dir = Path(run_dir)
        self.identity = identity
        self.server: Any = None
        self.mirror: Any = None
        self.outages: list[HistorianOutage] = []
        self.held: dict[str, int] | None = None

    @property
    def enabled(self) -> bool:
        """Whether the run has an InfluxDB mirror."""
        return self.kind == "influx"

    def start(self) -> None:
        """Start the run's ``influxd`` and the mirror (no-op for ``embedded``)."""
        if not self.enabled:
            return
        from services.historian.influx import InfluxHistorian
        from services.historian.influx_client import InfluxConfig
        from services.historian.influx_server import start_influxd

        self.server = start_influxd(self.run_dir / "influxd")
        config = InfluxConfig(url=self.server.url, database=INFLUX_DATABASE, timeout_s=2.0)
        self.mirror = InfluxHistorian(
            config,
            self.run_dir / "influx-buffer.sqlite",
            identity=self.identity,
            max_backoff_s=0.5,
        )
        self.outages = [HistorianOutage(self.server, f.start_h, f.end_h) for f in self.faults]

    def progress(self, snapshot: LoopSnapshot) -> None:
        """The loop's progress callback: the outages see its process time."""
        for outage in self.outages:
            outage.at(snapshot.t_h)

    def settle(self) -> None:
        """After the run (the mirror closed): wait for a restart, count what InfluxDB holds
        for the run per measurement (:attr:`held`). A server still down (an outage that
        outlasted the run) is started again to be counted: the closed mirror sends nothing
        more, so what its buffer file kept stays missing."""
        if not self.enabled or self.server is None:
            return
        for outage in self.outages:
            outage.join()
        if not self.server.running:
            self.server.start(RESTART_TIMEOUT_S)
        from services.historian.influx_client import quote_literal
        from services.historian.lineprotocol import TAG_KEYS

        where = f'"run_id" = {quote_literal(self.identity.run_id)}'
        self.held = {m: self.server.count(INFLUX_DATABASE, m, where) for m in TAG_KEYS}

    def points(self, records: Sequence[Record]) -> tuple[int, int] | None:
        """(points the embedded store's ``records`` make, points InfluxDB holds of them,
        per measurement at most as many as expected); None without a mirror."""
        if not self.enabled:
            return None
        expected = expected_points(records)
        held = self.held or {}
        return sum(expected.values()), sum(min(held.get(m, 0), n) for m, n in expected.items())

    def kpis(self) -> dict[str, Any]:
        """The historian's figures for ``kpis.json``: what InfluxDB holds, each outage's
        process times (h) and restart (wall s)."""
        if not self.enabled:
            return {}
        out: dict[str, Any] = {}
        if self.held is not None:
            out["influx_points_held"] = sum(self.held.values())
        for i, o in enumerate(self.outages):
            key = "historian_outage" if i == 0 else f"historian_outage{i + 1}"
            out[f"{key}_down_h"] = math.nan if o.down_h is None else o.down_h
            out[f"{key}_up_h"] = math.nan if o.up_h is None else o.up_h
            out[f"{key}_restart_s"] = o.restart_s
            if o.error:
                out[f"{key}_error"] = o.error
        return out

    def close(self) -> None:
        """Close the mirror (idempotent: :func:`hil.runner.run_batch` closed it unless the
        run failed before its loop) and remove its buffer file when drained, stop the
        server (SIGTERM, then SIGKILL) and remove its data; idempotent."""
        for outage in self.outages:
            outage.join()
        if self.mirror is not None:
            with contextlib.suppress(Exception):
                self.mirror.close(timeout_s=1.0)
            if self.mirror.pending_points == 0:  # drained: the empty buffer file goes too
                for suffix in ("", "-wal", "-shm"):
                    path = self.mirror.buffer_path
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
        if self.server is not None:
            self.server.stop()
            for sub in ("data", "meta", "wal"):
                shutil.rmtree(self.server.root / sub, ignore_errors=True)
            self.server = None
