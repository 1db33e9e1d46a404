"""A run folder's lifecycle: its status file, and stopping a run cleanly on a signal.

Every run folder holds ``status.json``: ``{"state": ..., "reason": ..., "updated_utc":
..., ...}`` with ``state`` one of ``running`` (written first, so a folder whose process
died says so), ``completed``, ``interrupted`` (SIGINT or SIGTERM: the loop stopped at
its next tick and what ran was stored, scored and reported) or ``failed`` (the reason
says what and how far the records got). It is replaced atomically, so a reader never
sees half a file.

:class:`StopOnSignals` turns SIGINT (Ctrl-C) and SIGTERM (systemd, a container stop)
into a stop request for the loop instead of an exception at an arbitrary line, so the
run can flush its records and write KPIs, a report and its status before it exits.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

__all__ = [
    "STATUS_FILE",
    "RunState",
    "StopOnSignals",
    "process_alive",
    "read_status",
    "signal_exit_code",
    "write_json",
    "write_status",
]

STATUS_FILE = "status.json"
RunState = Literal["running", "completed", "interrupted", "failed"]
_STATES = ("running", "completed", "interrupted", "failed")


def write_status(run_dir: str | Path, state: RunState, reason: str = "", **details: Any) -> Path:
    """Write ``run_dir/status.json`` atomically (temporary file, then rename).

    ``details`` (JSON-serialisable: the last process time, records stored, ...) are kept
    beside ``state`` and ``reason``. On a full disk, where the temporary file cannot be
    written, the existing file is overwritten in place (it holds the space it needs).
    Raises OSError when neither works: callers that are already failing suppress it.
    """
    if state not in _STATES:
        raise ValueError(f"state must be one of {_STATES}, got {state!r}")
    path = Path(run_dir) / STATUS_FILE
    doc = {
        "state": state,
        "reason": reason,
        "updated_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        **details,
    }
    try:
        write_json(path, doc)
    except OSError:
        if not path.exists():
            raise
        with path.open("r+", encoding="utf-8") as f:  # the space of the old file
            f.write(json.dumps(doc, indent=2, default=str) + "\n")
            f.truncate()
    return path


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (a temporary file beside it, then a
    rename): a reader, or a full disk, never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 probes without sending anything). Another
    user's process counts as alive; a pid too large for the system cannot exist."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # it exists, but belongs to another user
    return True


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The status document of ``run_dir`` (FileNotFoundError when it has none)."""
    doc: dict[str, Any] = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    return doc


def signal_exit_code(signum: int) -> int:
    """The shell's exit status for a process stopped by ``signum`` (128 + number)."""
    return 128 + int(signum)


class StopOnSignals:
    """Within the ``with`` block, SIGINT and SIGTERM call ``request_stop(reason)``.

    The first signal asks for a clean stop (``signum`` and ``reason`` record it); a second
    one while the run winds down raises KeyboardInterrupt as Python would. Outside the main
    thread (signals can only be handled there) it does nothing. The previous handlers come
    back on exit.
    """

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self._request_stop = request_stop
        self._previous: dict[int, Any] = {}
        self.signum: int | None = None
        self.reason = ""

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        self.reason = f"interrupted by {signal.Signals(signum).name}"
        self._request_stop(self.reason)
