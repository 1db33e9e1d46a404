"""The batching machinery both historians' writer threads share (one copy, not two).

A historian's ``write()`` puts items on a ``queue.SimpleQueue``; its writer thread
:func:`gather` s them into a batch (for up to ``interval_s`` after the first, less when the
batch is full, a flush asks for it (:data:`WAKE`) or the historian closes (:data:`STOP`)),
commits the batch in one transaction and, when that fails (disk full, file locked), keeps
the batch and retries it after the wait :class:`Retry` gives: 0.05 s, doubling up to the
historian's ``max_backoff_s``, while new items keep queueing (the loop never waits for
the disk). :class:`Retry` also remembers since when and why storing fails, for
``failing_for_s()`` and ``failure_cause`` of both historians.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Final

__all__ = ["STOP", "WAKE", "Retry", "gather"]

STOP: Final = object()
"""Queued by ``close()``: commit what is gathered and stop."""
WAKE: Final = object()
"""Queued by ``flush()``: commit what is gathered now, without waiting for the interval."""

_FIRST_BACKOFF_S: Final = 0.05


def gather(
    q: queue.SimpleQueue[Any],
    batch: list[Any],
    *,
    block: bool,
    interval_s: float,
    max_len: int,
    flatten: bool = False,
) -> tuple[bool, int]:
    """Move queued items into ``batch`` (each item appended, or its elements when
    ``flatten``); (whether the stop mark was seen, how many items were taken).

    Blocks for the first item when ``block``. Then gathers for up to ``interval_s`` and
    returns early (to commit) once ``batch`` holds ``max_len`` entries, on a flush request
    or the stop mark, taking along only what is already queued.
    """
    try:
        item = q.get() if block else q.get_nowait()
    except queue.Empty:
        return False, 0
    deadline = time.monotonic() + interval_s
    urgent = stop = False
    taken = 0
    add = batch.extend if flatten else batch.append
    while True:
        if item is STOP:
            stop = urgent = True
        elif item is WAKE:
            urgent = True
        else:
            add(item)
            taken += 1
        if len(batch) >= max_len:
            return stop, taken
        remaining = 0.0 if urgent else deadline - time.monotonic()
        try:
            item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
        except queue.Empty:
            return stop, taken


class Retry:
    """The backoff of a writer thread's failed commits, and since when they fail."""

    def __init__(self, max_backoff_s: float) -> None:
        self.max_backoff_s = float(max_backoff_s)
        self.backoff_s = 0.0
        self.failing_since: float | None = None  # time.monotonic() of the first failure
        self.cause: BaseException | None = None  # the error that began the failures

    def failed(self, exc: BaseException) -> bool:
        """Note a failed commit; True when it is the first of a run of failures."""
        first = self.failing_since is None
        if first:
            self.failing_since = time.monotonic()
            self.cause = exc
        self.backoff_s = min(max(2 * self.backoff_s, _FIRST_BACKOFF_S), self.max_backoff_s)
        return first

    def wait(self) -> None:
        """Sleep the current backoff (the items keep queueing meanwhile)."""
        time.sleep(self.backoff_s)

    def succeeded(self) -> None:
        """Note a commit that worked: the next failure starts from the first backoff."""
        self.backoff_s = 0.0
        self.failing_since = None

    def failing_for_s(self) -> float:
        """How long (s) commits have failed without a success in between; 0 when healthy."""
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def failure_cause(self) -> BaseException | None:
        """The error that began the current run of failures, or None while commits work."""
        return self.cause if self.failing_since is not None else None
