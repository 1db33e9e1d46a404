"""Server-sent events: a client gets every record of a reactor in order, with no gap, over a
whole 30 h accelerated batch; a client too slow for its queue is dropped, never the loop."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

import httpx

from services.api.app import PREFIX, _sse
from services.api.convert import RECORD_TYPES
from services.api.reactors import StreamClient
from services.historian import read_records
from tests.api.conftest import login, make_settings, served_reactor, start_server, stop_server


def _read_stream(
    url: str, token: str, out: list[tuple[str, str, Any]], ready: threading.Event
) -> None:
    """Collect (event, id, data) until the server sends ``end``."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=httpx.Timeout(60.0)) as c, c.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event, ident, data = "", "", ""
        for line in r.iter_lines():
            if line == "":
                if event:
                    out.append((event, ident, json.loads(data)))
                    if event == "hello":
                        ready.set()
                    if event == "end":
                        return
                event, ident, data = "", "", ""
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                data = line[6:]


def test_a_client_gets_every_record_of_a_30_h_batch_in_order(tmp_path: Path) -> None:
    served = served_reactor(tmp_path, "S1", speed_up=math.inf)  # the batch as fast as it goes
    server, thread, base = start_server([served], tmp_path / "audit.jsonl", make_settings())
    try:
        got: list[tuple[str, str, Any]] = []
        ready = threading.Event()
        reader = threading.Thread(
            target=_read_stream,
            args=(f"{base}{PREFIX}/reactors/S1/stream", login(base, "viewer"), got, ready),
        )
        reader.start()
        assert ready.wait(30)
        served.start()
        assert served.thread is not None
        served.thread.join(300)
        summary = served.summary
        assert summary is not None and summary.t_end_h == 30.0 and summary.stopped is None
        served.stop("batch over")  # closes the historian: the stream ends
        reader.join(120)
        assert not reader.is_alive()
    finally:
        stop_server(server, thread)
    records = [(e, int(i), d) for e, i, d in got if e not in ("hello", "end", "dropped")]
    assert [e for e, _, _ in got if e == "dropped"] == []
    assert [i for _, i, _ in records] == list(range(1, len(records) + 1))  # no gap, in order
    stored = read_records(tmp_path / "S1" / "records.sqlite")
    assert len(records) == len(stored) == summary.records
    assert [e for e, _, _ in records] == [RECORD_TYPES[type(r)] for r in stored]
    for (_, _, data), rec in zip(records, stored, strict=True):
        assert data["t_h"] == rec.t_h
    last = stored[-1]
    assert records[-1][2]["kind"] == "batch-end" == getattr(last, "kind", None)
    assert got[-1][0] == "end" and got[-1][2]["last_seq"] == len(records)


def test_a_slow_client_is_dropped_and_the_loop_is_not_slowed(tmp_path: Path) -> None:
    served = served_reactor(tmp_path, "S2", speed_up=math.inf)
    aloop = asyncio.new_event_loop()
    try:
        client = StreamClient(aloop, 50)  # a client that never reads
        served.handle.tee.subscribe(client)
        served.duration_h = 2.0
        served.start()
        assert served.thread is not None
        served.thread.join(120)
        assert served.summary is not None and served.summary.t_end_h == 2.0  # ran to its end
        assert client.dropped
        served.stop("done")
        stored = read_records(tmp_path / "S2" / "records.sqlite")
        assert len(stored) == served.summary.records > 50  # nothing lost in the historian

        async def collect() -> list[str]:
            return [chunk async for chunk in _sse(served.handle, client, 0)]

        text = "".join(aloop.run_until_complete(collect()))
    finally:
        aloop.close()
    assert text.count("\nid: ") + text.startswith("id: ") <= 50
    assert "event: dropped" in text and "fell 50 records behind" in text
    assert text.rstrip().splitlines()[-2] == "event: end"
