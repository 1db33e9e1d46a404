"""Solver and integrator messages into the run's events instead of over the progress bar.

CasADi routes its warnings and its solvers' and integrators' messages ("NaN detected",
CVODES step failures, IPOPT's complaints) through Python's ``sys.stderr``; so do Python
warnings. During a run those lines would land in the middle of the progress bar and be
lost with the terminal. :class:`StderrToEvents` replaces ``sys.stderr`` for the duration
of the loop: each complete line goes to a sink (the loop records it as an event) and to a
log file in the run folder, so nothing is lost. Consecutive repeats are collapsed and at
most ``max_events`` lines become events (the log keeps them all). Output written
straight to file descriptor 2 by native code, and streams that hold the real stderr
(a progress bar created before), are not affected.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TextIO

__all__ = ["StderrToEvents"]


class _LineWriter(io.TextIOBase):
    """A text stream that hands complete lines to ``on_line``."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        super().__init__()
        self._on_line = on_line
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._on_line(line)
        return len(s)

    def flush(self) -> None:
        """Nothing to do: a line is handed on when it is complete (a writer that flushes
        mid-line, as ``print(..., end="")`` callers do, must not split it)."""

    def drain(self) -> None:
        """Hand on an unfinished last line (at the end of the capture)."""
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest:
            self._on_line(rest)


class StderrToEvents:
    """Within the ``with`` block, lines written to ``sys.stderr`` go to ``sink`` and ``log``.

    ``sink(line)`` gets each non-blank line (a repeat of the previous line is counted
    instead and reported with the next different one or at the end, "(N more times)"),
    at most ``max_events`` times, then once a note that the rest is only in the log.
    ``lines`` counts every line seen.
    """

    def __init__(
        self, sink: Callable[[str], None], log: Path | None = None, *, max_events: int = 200
    ) -> None:
        self._sink = sink
        self._log_path = log
        self._max = max_events
        self._log: TextIO | None = None
        self._saved: TextIO | None = None
        self._last: str | None = None
        self._repeats = 0
        self._sent = 0
        self.lines = 0

    def __enter__(self) -> StderrToEvents:
        self._saved = sys.stderr
        sys.stderr = _LineWriter(self._line)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        writer = sys.stderr
        if self._saved is not None:
            sys.stderr = self._saved
        if isinstance(writer, _LineWriter):
            writer.drain()
        self._flush_repeats()
        if self._log is not None:
            with contextlib.suppress(OSError):  # a full disk: the events are what there is
                self._log.close()
            self._log = None

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.lines += 1
        self._write_log(line)
        if line == self._last:
            self._repeats += 1
            return
        self._flush_repeats()
        self._last = line
        self._emit(line)

    def _flush_repeats(self) -> None:
        if self._repeats and self._last is not None:
            self._emit(f"{self._last} ({self._repeats} more times)")
        self._repeats = 0

    def _emit(self, text: str) -> None:
        if self._sent < self._max:
            self._sink(text)
        elif self._sent == self._max:
            where = f" ({self._log_path})" if self._log_path is not None else ""
            self._sink(f"further solver output only in the log{where}")
        self._sent += 1

    def _write_log(self, line: str) -> None:
        if self._log_path is None:
            return
        try:
            if self._log is None:
                self._log = self._log_path.open("a", encoding="utf-8", errors="replace")
            self._log.write(line + "\n")
            self._log.flush()
        except OSError:  # a full disk: the event is what there is
            self._log_path = None
