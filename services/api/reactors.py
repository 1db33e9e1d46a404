"""What the API holds per reactor: its loop and a record tee for streams and events.

:class:`RecordTee` wraps the loop's historian (it is a :class:`bpcontrol.interfaces.
Historian` itself): every record goes to the historian first, then gets the reactor's
stream number ``seq`` (1, 2, ... in write order), updates the latest measurements and
events the read endpoints show, and is offered to every stream client's bounded queue.
Offering never blocks the loop: a client whose queue is full is dropped (it gets a message
saying so), never the loop.

The loop's state (mode, limits, operator and supervised setpoints, alarms) is read from its
public snapshot (:meth:`bpcontrol.loop.ControlLoop.snapshot`) only; alarms are the loop's
(:mod:`bpcontrol.alarms`), not the tee's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bpcontrol.alarms import ALARM_KINDS
from bpcontrol.interfaces import Historian
from bpcontrol.loop import ControlLoop
from bpcontrol.records import EventRecord, MeasurementRecord, Record
from bpcontrol.supervisor import SetpointLimits

__all__ = ["ALARM_KINDS", "ReactorHandle", "RecordTee", "StreamClient"]

EVENTS_KEPT = 1000
"""Recent events kept in memory per reactor (older ones: the history endpoint)."""

END = None
"""Queued to a stream client when the reactor's records end (the historian closed)."""


class StreamClient:
    """One stream client's bounded queue of ``(seq, record)``; filled from the loop thread,
    drained on the server's event loop."""

    def __init__(self, aloop: asyncio.AbstractEventLoop, size: int) -> None:
        self._aloop = aloop
        self._queue: queue.Queue[tuple[int, Record] | None] = queue.Queue(size)
        self._ready = asyncio.Event()
        self._notified = False
        self.dropped = False
        self.size = size

    def offer(self, item: tuple[int, Record] | None) -> bool:
        """Queue ``item`` without waiting; False (and the client dropped) when it is full
        or the server's event loop is gone."""
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped = True
        if not self._notified:
            self._notified = True
            try:
                self._aloop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the event loop closed
                self.dropped = True
        return not self.dropped

    async def wait(self, timeout_s: float) -> None:
        """Wait until something was offered (or ``timeout_s`` passed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)

    def drain(self) -> Iterator[tuple[int, Record] | None]:
        """Everything queued so far (called on the event loop)."""
        self._ready.clear()
        self._notified = False
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return


class RecordTee:
    """A historian that passes every record on to ``inner`` and to the API (see module)."""

    def __init__(self, inner: Historian) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._seq = 0
        self._clients: list[StreamClient] = []
        self.measurements: dict[str, MeasurementRecord] = {}
        self.events: collections.deque[tuple[int, EventRecord]] = collections.deque(
            maxlen=EVENTS_KEPT
        )
        self.closed = False

    @property
    def seq(self) -> int:
        """The number of the last record written (0 before the first)."""
        return self._seq

    def write(self, record: Record) -> None:
        """Store ``record`` in the historian, then number it, remember it and stream it."""
        self.inner.write(record)
        with self._lock:
            self._seq += 1
            seq = self._seq
            if isinstance(record, MeasurementRecord):
                self.measurements[record.sensor] = record
            elif isinstance(record, EventRecord):
                self.events.append((seq, record))
            if self._clients:
                self._clients = [c for c in self._clients if c.offer((seq, record))]

    def subscribe(self, client: StreamClient) -> int:
        """Add a stream client; return the seq of the last record it will not get."""
        with self._lock:
            if self.closed:
                client.offer(END)
            else:
                self._clients.append(client)
            return self._seq

    def unsubscribe(self, client: StreamClient) -> None:
        """Remove a stream client (it disconnected)."""
        with self._lock:
            self._clients = [c for c in self._clients if c is not client]

    def flush(self, timeout_s: float | None = None) -> bool:
        """The historian's flush."""
        return self.inner.flush(timeout_s)

    def close(self) -> None:
        """Close the historian and end every stream."""
        with self._lock:
            self.closed = True
            for client in self._clients:
                client.offer(END)
            self._clients = []
        self.inner.close()


@dataclass
class ReactorHandle:
    """One reactor the API serves: its loop, the tee on its historian, its records file.

    Attributes:
        id: the reactor's name in URLs (``R-101``).
        loop: the running loop (commands via ``submit_*``, state via ``snapshot()``).
        tee: the :class:`RecordTee` the loop writes to.
        records_path: the embedded historian file (for history read-back), or None.
    """

    id: str
    loop: ControlLoop
    tee: RecordTee
    records_path: Path | None = None
    state_names: tuple[str, ...] = field(default=())

    @property
    def input_names(self) -> tuple[str, ...]:
        """The loop's inputs (setpoint names), in vector order."""
        return tuple(self.loop.recipe.input_names)

    def limits(self) -> dict[str, SetpointLimits]:
        """The limits in force per input (from the loop's snapshot)."""
        return dict(self.loop.snapshot().limits)

    def operator_setpoints(self) -> dict[str, float]:
        """The operator setpoints (used in MANUAL) per input (from the loop's snapshot)."""
        return dict(self.loop.snapshot().operator)
