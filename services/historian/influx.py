"""The InfluxDB historian: every record to InfluxDB, through a durable store-and-forward buffer.

Path of a record (see ``docs/historian.md``):

1. :meth:`InfluxHistorian.write` (the loop's thread) checks and encodes the record into
   line protocol (:mod:`services.historian.lineprotocol`); a malformed record is refused
   there with an event (:class:`HistorianEvent`, kind ``refused``) and never buffered.
   The lines go onto an in-memory queue; ``write`` returns (a few microseconds; it never
   touches the disk or the network, so an outage cannot block or slow the loop).
2. The *buffer thread* gathers what is queued for up to ``batch_interval_s`` (or until
   ``batch_points`` lines) and commits it as one chunk (one row, one ``INSERT``) to the
   SQLite buffer (:mod:`services.historian.buffer`). From then on the record survives a
   crash of the process. The committed chunk is also handed to the forwarder in memory,
   so that it is not read back from the file (see ``_hand_over``).
3. The *forwarder thread* sends the chunks in id order (up to ``batch_points`` lines per
   request, up to ``max_in_flight`` requests open at once on the sending threads' own
   keep-alive connections) to ``/write``, acknowledges them strictly in order, and deletes
   the acknowledged prefix with one statement (grouped: at most every 0.25 s while busy).
   While the server is down (connection refused, timeout, 5xx, 401/403, an untrusted TLS
   certificate) it retries the oldest chunk with exponential backoff (``0.05 s`` doubling
   up to ``max_backoff_s``), one request at a time; when the server returns it drains the
   buffer in write order. A request answered 4xx is split in halves
   and re-sent until the lines the server refuses are alone; those are set aside in the
   buffer's ``dead_letter`` table with an event (``set-aside``) and the rest goes on.
   Re-sending is idempotent: a line has the same series and timestamp every time, so the
   server overwrites it (no duplicates after a crash between the answer and the delete).

The buffer is bounded (``max_buffer_points``, ``max_buffer_bytes``): at ``alarm_fraction``
of either an event ``buffer-high`` is raised, and when full, records are refused with an
event ``buffer-full`` (counted in :attr:`InfluxHistorian.refused`), so that a long outage
cannot fill the disk. Events also report the server going away and coming back, a missing
database created, an authentication failure. They are kept for :meth:`events` (the caller
drains them, e.g. into the loop's event records) and passed to ``on_event`` if given.

A historian opened on a buffer file that still holds batches (the process was killed while
the server was down) forwards them first.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import math
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    RunIdentity,
    SetpointRecord,
)
from services.historian._batching import STOP, WAKE, Retry, gather
from services.historian.buffer import Batch, ForwardBuffer, ForwardBufferError
from services.historian.embedded import HistorianClosedError, HistorianError
from services.historian.influx_client import InfluxClient, InfluxConfig, InfluxQueryError
from services.historian.lineprotocol import LineEncoder, RecordRefusedError

__all__ = ["HistorianEvent", "HistorianEventKind", "InfluxHistorian"]

_log = logging.getLogger(__name__)

_RECORD_TYPES: Final = (
    MeasurementRecord,
    EstimateRecord,
    PlanRecord,
    SetpointRecord,
    EventRecord,
    AuditRecord,
)
_MAX_READY_BYTES: Final = 64 * 1024**2
"""Committed chunks the forwarder may hold in memory (bytes of line protocol)."""
_DELETE_INTERVAL_S: Final = 0.25
"""While busy, delete the acknowledged chunks at most this often (s)."""


class HistorianEventKind(enum.StrEnum):
    """What a :class:`HistorianEvent` reports."""

    REFUSED = "refused"
    """A malformed record was refused before the buffer (the message says why)."""
    BUFFER_HIGH = "buffer-high"
    """The buffer passed its alarm level (``alarm_fraction`` of its size)."""
    BUFFER_FULL = "buffer-full"
    """The buffer is full: records are refused until the server takes some."""
    BUFFER_OK = "buffer-ok"
    """The buffer fell back below its alarm level."""
    SERVER_DOWN = "server-down"
    """A batch could not be delivered (no connection, timeout, 5xx); retrying."""
    SERVER_UP = "server-up"
    """Delivery works again after a failure (the buffer drains)."""
    AUTH_FAILED = "auth-failed"
    """The server refused the credentials (401/403); retrying, nothing set aside."""
    TLS_FAILED = "tls-failed"
    """The server's TLS certificate could not be verified; retrying, nothing sent."""
    SET_ASIDE = "set-aside"
    """Lines the server refused with a 4xx were set aside in the dead-letter table."""
    DATABASE_CREATED = "database-created"
    """The configured database was missing and was created."""
    BUFFER_FAILED = "buffer-failed"
    """The buffer file could not be written (disk full, say); retrying."""


@dataclass(frozen=True)
class HistorianEvent:
    """Something the historian wants a person to know (``t_utc``: when, ISO-8601 UTC)."""

    kind: HistorianEventKind
    message: str
    t_utc: str


def _now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _positive(name: str, value: float, *, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not (ok and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} > 0, got {value!r}")


class InfluxHistorian:
    """A :class:`bpcontrol.interfaces.Historian` that stores records in InfluxDB.

    Args:
        config: where the server is (:class:`services.historian.influx_client.InfluxConfig`).
        buffer_path: the store-and-forward buffer file (e.g. ``runs/<id>/influx-buffer.sqlite``
            or one per host); batches left in it by an earlier process are sent first.
        identity: stamped on records that carry no run identity (the loop stamps its own).
        batch_points: the most lines sent in one request (and committed in one buffer batch).
        batch_interval_s: how long (s) the buffer thread gathers lines before it commits them.
        max_buffer_points: the buffer's size in lines (queued + buffered).
        max_buffer_bytes: the buffer's size in bytes of buffered line protocol (queued lines
            count by their length).
        alarm_fraction: the share of either size at which ``buffer-high`` is raised.
        max_backoff_s: the longest wait (s) between retries of an undelivered batch.
        drain_on_close_s: how long (s) :meth:`close` lets the forwarder deliver; what is
            left stays in the buffer file for the next start.
        max_in_flight: how many requests the forwarder keeps open at once while the server
            takes them (each on its own keep-alive connection), so that the server never
            waits for this process between two batches; chunks are sent in write order and
            acknowledged (removed) strictly in order; after a failure one at a time.
        strict: raise :class:`RecordRefusedError` from :meth:`write` for a malformed record
            (besides the event); by default the record is refused with the event only, so
            that bad data never stops the loop.
        on_event: called with every :class:`HistorianEvent` (from the historian's threads
            or from ``write``; must return quickly; its exceptions are ignored).
        max_events: how many undrained events :meth:`events` keeps (the oldest go first).

    Raises:
        HistorianError: the buffer file cannot be opened.
        ValueError: a size or time setting that is not a positive number.
    """

    def __init__(
        self,
        config: InfluxConfig,
        buffer_path: str | Path,
        *,
        identity: RunIdentity | None = None,
        batch_points: int = 5000,
        batch_interval_s: float = 0.1,
        max_buffer_points: int = 10_000_000,
        max_buffer_bytes: int = 2 * 1024**3,
        alarm_fraction: float = 0.8,
        max_backoff_s: float = 2.0,
        drain_on_close_s: float = 5.0,
        max_in_flight: int = 2,
        strict: bool = False,
        on_event: Callable[[HistorianEvent], None] | None = None,
        max_events: int = 1000,
    ) -> None:
        _positive("batch_points", batch_points, integer=True)
        _positive("max_buffer_points", max_buffer_points, integer=True)
        _positive("max_buffer_bytes", max_buffer_bytes, integer=True)
        _positive("max_events", max_events, integer=True)
        _positive("max_in_flight", max_in_flight, integer=True)
        for name, value in (
            ("batch_interval_s", batch_interval_s),
            ("max_backoff_s", max_backoff_s),
            ("drain_on_close_s", drain_on_close_s),
        ):
            _positive(name, value)
        if not (isinstance(alarm_fraction, float | int) and 0 < alarm_fraction <= 1):
            raise ValueError(f"alarm_fraction must be in (0, 1], got {alarm_fraction!r}")
        self.config = config
        self.buffer_path = Path(buffer_path)
        self._batch_points = batch_points
        self._interval = float(batch_interval_s)
        self._max_points = max_buffer_points
        self._max_bytes = max_buffer_bytes
        self._alarm = float(alarm_fraction)
        self._max_backoff = float(max_backoff_s)
        self._drain_s = float(drain_on_close_s)
        self._strict = strict
        self._on_event = on_event
        self._events: deque[HistorianEvent] = deque(maxlen=max_events)
        self._events_lock = threading.Lock()
        self._encoder = LineEncoder(identity)

        try:
            self._writer_buf = ForwardBuffer(self.buffer_path)
            self._forward_buf = ForwardBuffer(self.buffer_path)
        except ForwardBufferError as exc:
            raise HistorianError(str(exc)) from exc
        start_points, start_bytes = self._writer_buf.totals()

        self._write_lock = threading.Lock()  # write(): the encoder and the queue's order
        self._lock = threading.Lock()  # counters shared by write() and the threads
        self._progress = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued_points = 0
        self._queued_bytes = 0
        self._buffered_points = start_points  # committed, not yet acknowledged
        self._buffered_bytes = start_bytes
        self._accepted_points = start_points  # target of flush(): earlier leftovers first
        self._committed_points = start_points
        self._settled_points = 0  # delivered or set aside
        self._delivered_points = 0
        self._set_aside_points = 0
        self._accepted = 0
        self._refused = 0
        self._high = False
        self._full = False
        self._closed = False
        self._stop_forwarding = threading.Event()
        self._drain_deadline: float | None = None
        self._new_data = threading.Event()
        if start_points:
            self._new_data.set()
        self._last_error: BaseException | None = None
        self._retry = Retry(max_backoff_s)  # failed commits to the buffer file (not the server)
        self._abandoned = False
        self._batch_records = 0  # records in the buffer thread's current batch
        self._stored = 0  # records committed to the buffer file
        self._ready: deque[Batch] = deque()  # committed chunks handed over in memory
        self._ready_bytes = 0
        self._ready_lock = threading.Lock()
        self._in_memory = False  # the forwarder first reads the file (leftovers)
        self._clean = True  # every acknowledged chunk deleted from the file
        self._max_in_flight = max_in_flight
        self._local = threading.local()  # the sending threads' clients
        self._clients: list[InfluxClient] = []
        self._clients_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db_ready = not config.create_database

        self._buffer_thread = threading.Thread(
            target=self._buffer_loop, name=f"influx-buffer:{self.buffer_path.name}", daemon=True
        )
        self._forward_thread = threading.Thread(
            target=self._forward_loop, name=f"influx-forward:{self.buffer_path.name}", daemon=True
        )
        self._buffer_thread.start()
        self._forward_thread.start()
        atexit.register(self._close_at_exit)
        self._check_level()

    # -- public API ------------------------------------------------------------------

    def write(self, record: Record) -> None:
        """Check, encode and queue ``record``; returns at once (never waits for disk or network).

        A malformed record, or one that does not fit in a full buffer, is refused with an
        event (and with :class:`RecordRefusedError` when ``strict``); nothing of it is kept.

        Raises:
            TypeError: ``record`` is not a record of :mod:`bpcontrol.records`.
            HistorianClosedError: the historian was closed.
            RecordRefusedError: only when ``strict`` (see above).
        """
        if not isinstance(record, _RECORD_TYPES):
            raise TypeError(
                "InfluxHistorian.write takes a bpcontrol.records record "
                f"(MeasurementRecord, EstimateRecord, ...), got {type(record).__name__}"
            )
        event: tuple[HistorianEventKind, str] | None = None  # emitted after the locks
        refusal: RecordRefusedError | None = None
        # The encoder (not thread-safe) and the queue's order under the writers' lock; the
        # counters the historian's threads share under the short inner one, so that a
        # thread that wants those never waits for a record being encoded.
        with self._write_lock:
            if self._closed:
                raise self._closed_error(record)
            try:
                lines = self._encoder.encode(record)
            except RecordRefusedError as exc:
                with self._lock:
                    self._refused += 1
                refusal = exc
                event = (HistorianEventKind.REFUSED, f"record refused: {exc}")
            else:
                event, refusal = self._enqueue(record, lines)
        if event is not None:
            self._emit(*event)
        if refusal is not None and self._strict:
            raise refusal

    def _closed_error(self, record: Record) -> HistorianClosedError:
        return HistorianClosedError(
            f"InfluxDB historian ({self.buffer_path}) is closed; "
            f"{type(record).__name__} at t_h={record.t_h} h not stored"
        )

    def _enqueue(
        self, record: Record, lines: list[str]
    ) -> tuple[tuple[HistorianEventKind, str] | None, RecordRefusedError | None]:
        """Queue the encoded ``lines`` of ``record`` when they fit in the buffer; the event
        to raise and the refusal, if any."""
        event: tuple[HistorianEventKind, str] | None = None
        nbytes = sum(map(len, lines)) + len(lines)
        with self._lock:
            if self._closed:  # closed while it was encoded: after the stop mark
                raise self._closed_error(record)
            points = self._queued_points + self._buffered_points + len(lines)
            size = self._queued_bytes + self._buffered_bytes + nbytes
            if points > self._max_points or size > self._max_bytes:
                self._refused += 1
                refusal = RecordRefusedError(
                    f"buffer full ({points - len(lines)} of {self._max_points} points, "
                    f"{size - nbytes} of {self._max_bytes} bytes): "
                    f"{type(record).__name__} at t_h={record.t_h} h refused"
                )
                if not self._full:
                    self._full = True
                    event = (HistorianEventKind.BUFFER_FULL, str(refusal))
                return event, refusal
            self._queue.put(lines)
            self._queued_points += len(lines)
            self._queued_bytes += nbytes
            self._accepted_points += len(lines)
            self._accepted += 1
            level = max(points / self._max_points, size / self._max_bytes)
            if level >= self._alarm and not self._high:
                self._high = True
                event = (
                    HistorianEventKind.BUFFER_HIGH,
                    f"store-and-forward buffer at {points} of {self._max_points} "
                    f"points, {size} of {self._max_bytes} bytes (alarm at "
                    f"{self._alarm:.0%}); the server at {self.config.url} is not "
                    "taking records fast enough",
                )
        return event, None

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record accepted so far (and what an earlier process left in the
        buffer) is delivered to the server or set aside; False when ``timeout_s`` ran out
        (the server is down, say: the records stay safe in the buffer)."""
        self._queue.put(WAKE)
        with self._lock:
            target = self._accepted_points
        self._new_data.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._progress:
            while self._settled_points < target or not self._clean:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self._settled_points >= target
                if not self._forward_thread.is_alive():
                    return self._settled_points >= target
                self._progress.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def wait_buffered(self, timeout_s: float | None = None) -> bool:
        """Wait until every record accepted so far is committed to the buffer file (safe from
        a crash of this process); False when ``timeout_s`` ran out."""
        self._queue.put(WAKE)
        with self._lock:
            target = self._accepted_points
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._progress:
            while self._committed_points < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self._buffer_thread.is_alive():
                    return False
                self._progress.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse further writes, commit what is queued to the buffer file, let the forwarder
        deliver for up to ``drain_on_close_s`` and stop (idempotent). What is not delivered
        stays in the buffer file and is sent by the next historian opened on it.

        Raises:
            HistorianError: the queued records could not be committed within ``timeout_s``.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(STOP)
        self._buffer_thread.join(timeout_s)
        if self._buffer_thread.is_alive():
            raise HistorianError(
                f"InfluxDB historian: {self._queued_points} points not yet in the buffer file "
                f"{self.buffer_path} after {timeout_s} s (last error: {self._last_error!r})"
            )
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self._drain_s
        self._stop_forwarding.set()
        self._new_data.set()
        self._forward_thread.join(self._drain_s + self.config.timeout_s + 5.0)
        if not self._forward_thread.is_alive():
            with contextlib.suppress(Exception):
                self._writer_buf.close()
                self._forward_buf.close()
        atexit.unregister(self._close_at_exit)

    def abandon(self) -> int:
        """Give up (after a :meth:`close` that timed out on a buffer file that cannot be
        written, a full disk say): both threads stop without waiting. Returns how many
        accepted records never reached the buffer file (lost); what is in it stays there."""
        with self._lock:
            self._closed = True
            self._abandoned = True
            self._queue.put(STOP)
        self._drain_deadline = time.monotonic()
        self._stop_forwarding.set()
        self._new_data.set()
        self._buffer_thread.join(self._max_backoff + 1.0)
        self._forward_thread.join(self.config.timeout_s + 1.0)
        atexit.unregister(self._close_at_exit)
        return self._accepted - self._stored

    def failing_for_s(self) -> float:
        """How long (s) writing the *buffer file* has failed (0 when it works). A server
        that is down is not a failure: records wait in the buffer (see ``pending_points``)."""
        return self._retry.failing_for_s()

    @property
    def failure_cause(self) -> BaseException | None:
        """The error that began the current run of failed buffer writes, or None."""
        return self._retry.failure_cause

    @property
    def stored(self) -> int:
        """Records committed to the buffer file (safe from a crash) since this was opened."""
        return self._stored

    def events(self) -> list[HistorianEvent]:
        """The events since the last call, oldest first (they are removed)."""
        with self._events_lock:
            out = list(self._events)
            self._events.clear()
        return out

    @property
    def pending_points(self) -> int:
        """Lines accepted and not yet delivered or set aside (queued + buffered)."""
        with self._lock:
            return self._queued_points + self._buffered_points

    @property
    def buffered_bytes(self) -> int:
        """Bytes of line protocol waiting in the buffer file (plus the queue)."""
        with self._lock:
            return self._buffered_bytes + self._queued_bytes

    @property
    def delivered_points(self) -> int:
        """Lines the server acknowledged since this historian was opened."""
        return self._delivered_points

    @property
    def set_aside_points(self) -> int:
        """Lines the server refused (4xx), kept in the dead-letter table."""
        return self._set_aside_points

    @property
    def accepted(self) -> int:
        """Records accepted by :meth:`write`."""
        return self._accepted

    @property
    def refused(self) -> int:
        """Records refused by :meth:`write` (malformed, or the buffer was full)."""
        return self._refused

    @property
    def last_error(self) -> BaseException | None:
        """The most recent delivery or buffer error."""
        return self._last_error

    def __enter__(self) -> InfluxHistorian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"InfluxHistorian({self.config.url!r}, db={self.config.database!r}, "
            f"buffer={str(self.buffer_path)!r}, pending={self.pending_points})"
        )

    # -- events ----------------------------------------------------------------------

    def _emit(self, kind: HistorianEventKind, message: str) -> None:
        event = HistorianEvent(kind, message, _now_utc())
        with self._events_lock:
            self._events.append(event)
        _log.warning("%s: %s", kind.value, message)
        if self._on_event is not None:
            with contextlib.suppress(Exception):
                self._on_event(event)

    def _check_level(self) -> None:
        """Clear the full/high marks (with an event) once the buffer fell below the alarm
        level less a tenth of its size; raise the high mark for leftovers at start."""
        with self._lock:
            points = self._queued_points + self._buffered_points
            size = self._queued_bytes + self._buffered_bytes
            level = max(points / self._max_points, size / self._max_bytes)
            back = self._high and level < self._alarm - 0.1
            if back:
                self._high = self._full = False
            elif self._full and level < 1.0 - 0.1:
                self._full = False
            up = not self._high and level >= self._alarm
            if up:
                self._high = True
        if back:
            self._emit(
                HistorianEventKind.BUFFER_OK,
                f"store-and-forward buffer back to {points} points, {size} bytes",
            )
        if up:
            self._emit(
                HistorianEventKind.BUFFER_HIGH,
                f"store-and-forward buffer at {points} of {self._max_points} points "
                f"(alarm at {self._alarm:.0%})",
            )

    # -- the buffer thread -----------------------------------------------------------

    def _gather(self, batch: list[str], block: bool) -> bool:
        """Move queued lines into ``batch`` (:func:`services.historian._batching.gather`:
        up to ``batch_interval_s`` or ``batch_points`` lines); True at the stop mark."""
        stop, records = gather(
            self._queue,
            batch,
            block=block,
            interval_s=self._interval,
            max_len=self._batch_points,
            flatten=True,
        )
        self._batch_records += records
        return stop

    def _buffer_loop(self) -> None:
        batch: list[str] = []
        stop = False
        retry = self._retry
        while True:
            if not stop:
                stop = self._gather(batch, block=not batch)
            if batch:
                try:
                    chunk = self._writer_buf.append(batch)
                except Exception as exc:  # disk full, file locked: keep the batch, retry
                    self._last_error = exc
                    if self._abandoned:
                        return
                    if retry.failed(exc):
                        self._emit(
                            HistorianEventKind.BUFFER_FAILED,
                            f"cannot write the buffer file {self.buffer_path}: {exc}; retrying",
                        )
                    retry.wait()
                    continue
                retry.succeeded()
                self._hand_over(chunk)
                n = len(batch)
                qbytes = sum(map(len, batch)) + n
                with self._progress:
                    self._queued_points -= n
                    self._queued_bytes -= qbytes
                    self._buffered_points += n
                    self._buffered_bytes += chunk.nbytes
                    self._committed_points += n
                    self._stored += self._batch_records
                    self._batch_records = 0
                    self._progress.notify_all()
                batch = []
                self._new_data.set()
            if stop and not batch:
                return

    # -- the forwarder thread --------------------------------------------------------
    #
    # The forwarder takes the committed chunks in id order. While it has seen every chunk
    # committed since it last found the file drained (``_in_memory``), the buffer thread
    # hands each committed chunk over in memory as well (up to ``_MAX_READY_BYTES``), so
    # the forwarder does not read back what was just written; otherwise (leftovers of an
    # earlier process, a long outage) it reads the chunks after the last one it took from
    # the file. Acknowledged chunks are deleted with one statement for the whole
    # acknowledged prefix, at most every ``_DELETE_INTERVAL_S`` while busy and whenever
    # the forwarder is idle (a crash in between re-sends them: idempotent).

    def _hand_over(self, chunk: Batch) -> None:
        """Give a chunk just committed to the forwarder in memory, while that is safe."""
        with self._ready_lock:
            if not self._in_memory:
                return
            if self._ready_bytes + chunk.nbytes > _MAX_READY_BYTES:
                self._in_memory = False  # the forwarder reads from the file until drained
                self._ready.clear()
                self._ready_bytes = 0
                return
            self._ready.append(chunk)
            self._ready_bytes += chunk.nbytes

    def _take(self, last_id: int) -> list[Batch]:
        """The next chunks after id ``last_id``, up to ``batch_points`` lines (at least one
        chunk when there is one): from memory, or from the file."""
        with self._ready_lock:
            if self._in_memory:
                ready = self._ready
                out: list[Batch] = []
                total = 0
                while ready:
                    chunk = ready[0]
                    if chunk.id <= last_id:  # pragma: no cover - taken from the file before
                        ready.popleft()
                        self._ready_bytes -= chunk.nbytes
                        continue
                    if out and total + chunk.points > self._batch_points:
                        break
                    ready.popleft()
                    self._ready_bytes -= chunk.nbytes
                    out.append(chunk)
                    total += chunk.points
                return out
            # under the lock: a chunk committed after this read is handed over in memory
            out = self._forward_buf.after(last_id, self._batch_points)
            if not out:
                self._in_memory = True
            return out

    def _delete_acknowledged(self, acked_id: int) -> bool:
        """Delete the acknowledged prefix of the buffer (ids up to ``acked_id``); False when
        the file is locked or unwritable just now (tried again later)."""
        try:
            self._forward_buf.acknowledge(acked_id)
        except Exception as exc:
            self._last_error = exc
            return False
        return True

    def _forward_loop(self) -> None:
        jobs: queue.SimpleQueue[_Send | None] = queue.SimpleQueue()
        senders = [
            threading.Thread(
                target=self._send_loop,
                args=(jobs,),
                name=f"influx-send-{i}:{self.buffer_path.name}",
                daemon=True,
            )
            for i in range(self._max_in_flight)
        ]
        for t in senders:
            t.start()
        try:
            self._forward(jobs)
        finally:
            for _ in senders:
                jobs.put(None)
            for t in senders:
                t.join(self.config.timeout_s + 1.0)
            with self._clients_lock:
                for client in self._clients:
                    client.close()
                self._clients.clear()

    def _send_loop(self, jobs: queue.SimpleQueue[_Send | None]) -> None:
        """A sending thread: deliver the chunks of each job (own keep-alive connection)."""
        while (job := jobs.get()) is not None:
            try:
                job.refused = self._deliver_batches(job.chunks)
            except BaseException as exc:  # handed to the forwarder, which decides
                job.error = exc
            job.done.set()

    def _forward(self, jobs: queue.SimpleQueue[_Send | None]) -> None:
        """Send the chunks in id order, up to ``max_in_flight`` requests at once while the
        server takes them (one at a time after a failure); acknowledge strictly in order."""
        backoff = 0.0
        down = False
        inflight: deque[_Send] = deque()
        again: deque[list[Batch]] = deque()  # taken, to be sent again (after a failure)
        last_id = -1  # the highest chunk id taken
        acked_id = -1  # the highest chunk id acknowledged (or set aside)
        deleted_id = -1  # the acknowledged prefix is deleted up to here
        last_delete = time.monotonic()
        try:
            while True:
                if self._stop_forwarding.is_set():
                    deadline = self._drain_deadline or 0.0
                    if time.monotonic() >= deadline:
                        return
                while len(inflight) < (1 if down else self._max_in_flight):
                    if again:
                        chunks = again.popleft()
                    else:
                        try:
                            chunks = self._take(last_id)
                        except Exception as exc:  # the file is locked by a writer for long
                            self._last_error = exc
                            break
                        if not chunks:
                            break
                        last_id = chunks[-1].id
                    job = _Send(chunks)
                    jobs.put(job)
                    inflight.append(job)
                if not inflight:
                    if acked_id > deleted_id and self._delete_acknowledged(acked_id):
                        deleted_id = acked_id
                        last_delete = time.monotonic()
                        with self._progress:
                            self._clean = True
                            self._progress.notify_all()
                    if self._stop_forwarding.is_set() and not self._buffer_thread.is_alive():
                        return
                    self._new_data.wait(1.0)
                    self._new_data.clear()
                    continue
                head = inflight.popleft()
                chunks = head.chunks
                try:
                    refused = head.result()
                except _RetryLaterError as exc:
                    # later requests are sent again after this one, whatever they got
                    again.extendleft(reversed([chunks, *_settle(inflight)]))
                    self._last_error = exc.cause
                    if not down:
                        down = True
                        self._emit(exc.kind, exc.message)
                    backoff = min(max(2 * backoff, 0.05), self._max_backoff)
                    self._sleep(backoff)
                    continue
                upto = chunks[-1].id
                if refused:  # set aside and delete in one transaction
                    try:
                        self._forward_buf.acknowledge(upto, refused)
                    except Exception as exc:  # locked: send them again (4xx again)
                        self._last_error = exc
                        again.extendleft(reversed([chunks, *_settle(inflight)]))
                        self._sleep(0.05)
                        continue
                    deleted_id = upto
                acked_id = upto
                if deleted_id != acked_id and time.monotonic() - last_delete >= _DELETE_INTERVAL_S:
                    if self._delete_acknowledged(acked_id):
                        deleted_id = acked_id
                    last_delete = time.monotonic()
                n_lines = sum(b.points for b in chunks)
                nbytes = sum(b.nbytes for b in chunks)
                n_refused = sum(len(r[0]) for r in refused)
                with self._progress:
                    self._buffered_points -= n_lines
                    self._buffered_bytes -= nbytes
                    self._settled_points += n_lines
                    self._delivered_points += n_lines - n_refused
                    self._set_aside_points += n_refused
                    self._clean = deleted_id == acked_id
                    self._progress.notify_all()
                for bad, status, reason in refused:
                    self._emit(
                        HistorianEventKind.SET_ASIDE,
                        f"{len(bad)} line(s) refused by the server ({status}: {reason}) set "
                        f"aside in the dead-letter table of {self.buffer_path}; "
                        f"first: {bad[0][:200]!r}",
                    )
                if down:
                    down = False
                    self._emit(
                        HistorianEventKind.SERVER_UP,
                        f"delivering to {self.config.url} again; draining "
                        f"{self._buffered_points} buffered points",
                    )
                backoff = 0.0
                self._check_level()
        finally:
            _settle(inflight)  # answers not acknowledged: those chunks are sent again
            if acked_id > deleted_id:
                self._delete_acknowledged(acked_id)

    def _http(self) -> InfluxClient:
        """This sending thread's own client (its own keep-alive connection)."""
        client: InfluxClient | None = getattr(self._local, "client", None)
        if client is None:
            client = InfluxClient(self.config)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless close() asks the forwarder to stop (then returns early)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stop_forwarding.is_set() and time.monotonic() >= (self._drain_deadline or 0):
                return
            time.sleep(min(left, 0.05))

    def _ensure_database(self) -> None:
        """Create the database once (when configured to); _RetryLaterError when unreachable."""
        if self._db_ready:
            return
        with self._db_lock:
            if not self._db_ready:
                self._create_database()

    def _create_database(self) -> None:
        try:
            self._http().create_database()
        except InfluxQueryError as exc:
            if _certificate_refused(exc):
                raise self._tls_error(exc) from exc
            if exc.status in (401, 403):
                raise _RetryLaterError(
                    HistorianEventKind.AUTH_FAILED,
                    f"InfluxDB at {self.config.url} refused the credentials ({exc}); check the "
                    "token or user; records stay in the buffer, retrying",
                    exc,
                ) from exc
            raise _RetryLaterError(
                HistorianEventKind.SERVER_DOWN,
                f"cannot create database {self.config.database!r} at {self.config.url}: "
                f"{exc}; records stay in the buffer, retrying",
                exc,
            ) from exc
        self._db_ready = True

    def _deliver_batches(self, batches: list[Batch]) -> list[tuple[list[str], int, str]]:
        """Send buffered ``batches`` in one request; split into lines only after a 4xx."""
        body = batches[0].body if len(batches) == 1 else b"\n".join(b.body for b in batches)
        lines: list[str] | None = None
        return self._deliver(lines, body, batches)

    def _deliver(
        self, lines: list[str] | None, body: bytes | None = None, batches: list[Batch] | None = None
    ) -> list[tuple[list[str], int, str]]:
        """Send ``lines`` (or the ready ``body`` of ``batches``); the refused sub-batches
        (lines, status, reason). Raises _RetryLaterError when nothing could be decided
        (server down, 5xx, authentication)."""
        self._ensure_database()
        if body is None:
            assert lines is not None
            body = "\n".join(lines).encode("utf-8")
        try:
            r = self._http().write(body)
        except httpx.HTTPError as exc:
            if _certificate_refused(exc):
                raise self._tls_error(exc) from exc
            raise _RetryLaterError(
                HistorianEventKind.SERVER_DOWN,
                f"InfluxDB at {self.config.url} unreachable ({type(exc).__name__}: {exc}); "
                "records stay in the buffer, retrying",
                exc,
            ) from exc
        status = r.status_code
        if 200 <= status < 300:
            return []
        reason = r.text.strip()[:300]
        if status in (401, 403):
            raise _RetryLaterError(
                HistorianEventKind.AUTH_FAILED,
                f"InfluxDB at {self.config.url} refused the credentials ({status}: {reason}); "
                "check the token or user; records stay in the buffer, retrying",
                RuntimeError(reason),
            )
        if status == 404 and "database not found" in reason:
            if not self.config.create_database:
                raise _RetryLaterError(
                    HistorianEventKind.SERVER_DOWN,
                    f"database {self.config.database!r} does not exist at {self.config.url} "
                    "(create_database is off); records stay in the buffer, retrying",
                    RuntimeError(reason),
                )
            with self._db_lock:
                self._db_ready = False
                self._create_database()
                self._emit(
                    HistorianEventKind.DATABASE_CREATED,
                    f"created database {self.config.database!r} at {self.config.url}",
                )
            return self._deliver(lines, body, batches)
        if status >= 500 or status in (404, 408, 429):
            raise _RetryLaterError(
                HistorianEventKind.SERVER_DOWN,
                f"InfluxDB at {self.config.url} answered {status} ({reason}); retrying",
                RuntimeError(reason),
            )
        # 4xx: the data. Split until the refused lines are alone (re-sends overwrite).
        if lines is None:
            assert batches is not None
            lines = [line for b in batches for line in b.lines()]
        if len(lines) == 1:
            return [(lines, status, reason)]
        mid = len(lines) // 2
        return self._deliver(lines[:mid]) + self._deliver(lines[mid:])

    def _tls_error(self, exc: BaseException) -> _RetryLaterError:
        return _RetryLaterError(
            HistorianEventKind.TLS_FAILED,
            f"the TLS certificate of {self.config.url} could not be verified ({exc}); "
            "nothing is sent to a server this process cannot trust: give its CA as ca_file "
            "(BPCONTROL_INFLUX_CA_FILE); records stay in the buffer, retrying",
            exc,
        )

    def _close_at_exit(self) -> None:
        """At interpreter exit, commit what is queued to the buffer file (bounded)."""
        with contextlib.suppress(HistorianError):
            self.close(timeout_s=10.0)


class _Send:
    """One request of the forwarder: its chunks, and the outcome once ``done``."""

    __slots__ = ("chunks", "done", "error", "refused")

    def __init__(self, chunks: list[Batch]) -> None:
        self.chunks = chunks
        self.done = threading.Event()
        self.refused: list[tuple[list[str], int, str]] = []
        self.error: BaseException | None = None

    def result(self) -> list[tuple[list[str], int, str]]:
        """The refused lines once answered (raises what delivering raised)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.refused


def _settle(inflight: deque[_Send]) -> list[list[Batch]]:
    """Wait for the requests in flight and forget their answers (sent again later):
    their chunks, in order."""
    out = []
    while inflight:
        job = inflight.popleft()
        job.done.wait()
        out.append(job.chunks)
    return out


def _certificate_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a failed verification of the server certificate."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _RetryLaterError(Exception):
    """Delivery of a batch must be retried later (the event to raise, the cause)."""

    def __init__(self, kind: HistorianEventKind, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.cause = cause
