"""The forwarder's paths besides the steady state, against a real ``influxd``.

The forwarder normally gets each committed chunk in memory from the buffer thread; when
more than ``_MAX_READY_BYTES`` wait (a long outage) it reads them from the buffer file
instead and goes back to memory once it has caught up. Here that bound is made small
(a module constant, so that a short outage passes it), the server is stopped while the
records are written and started again: every point arrives once, counted per measurement,
with one request in flight and with two.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from influx_producer import expected_points, records
from influx_server import InfluxServer

from bpcontrol.records import RunIdentity
from services.historian import influx
from services.historian.buffer import Batch, ForwardBuffer
from services.historian.influx import InfluxHistorian
from services.historian.influx_client import InfluxConfig

RUN = RunIdentity("basel", "R-101", "B-fwd", "r-fwd", "2026-03-01T08:00:00+00:00")


@pytest.mark.parametrize("in_flight", [1, 2])
def test_chunks_read_from_the_file_after_memory_overflows(
    own_influx: InfluxServer,
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_flight: int,
) -> None:
    # a chunk of 200 lines of this stream is about 47 kB: the bound holds 3 of them
    monkeypatch.setattr(influx, "_MAX_READY_BYTES", 150_000)
    read_from_file: list[int] = []  # chunks the forwarder read back from the file
    after = ForwardBuffer.after

    def counted_after(self: ForwardBuffer, last_id: int, max_points: int) -> list[Batch]:
        out = after(self, last_id, max_points)
        read_from_file.append(len(out))
        return out

    monkeypatch.setattr(ForwardBuffer, "after", counted_after)
    config = InfluxConfig(url=own_influx.url, database=database, timeout_s=2.0)
    h = InfluxHistorian(
        config,
        tmp_path / "buffer.sqlite",
        batch_points=200,
        max_backoff_s=0.2,
        max_in_flight=in_flight,
    )
    n_steps = 60  # 1,692 points, about 400 kB: past the bound
    own_influx.stop()
    for r in records(n_steps, RUN):
        h.write(r)
    assert h.wait_buffered(30.0)
    assert h.delivered_points == 0
    own_influx.start()
    assert h.flush(60.0), f"{h.pending_points} points left, {h.last_error!r}"
    assert sum(read_from_file) >= 3  # past the bound: read back from the file
    read_before = len(read_from_file)
    for first in range(n_steps, 2 * n_steps, 10):  # 10 steps (67 kB) at a time: in memory
        for r in records(10, RUN, first=first):
            h.write(r)
        assert h.flush(60.0), f"{h.pending_points} points left, {h.last_error!r}"
    assert sum(read_from_file[read_before:]) == 0  # caught up: in memory again
    h.close()
    expected = expected_points(2 * n_steps)
    counts = {m: own_influx.count(database, m) for m in expected}
    assert counts == expected  # 0 lost, 0 twice
    assert ForwardBuffer(tmp_path / "buffer.sqlite").totals() == (0, 0)
