"""Heartbeat and link supervision, shared by the device side and the gateways.

The controller writes a counter (OPC UA) or publishes a beat (MQTT) every
``heartbeat_period_s``; the device watches it with :class:`HeartbeatWatch` and drops to its
local safe setpoints once no beat came for ``heartbeat_timeout_s`` (wall s). The watch is
armed by the first beat: a device that never had a controller keeps what it holds.
"""

from __future__ import annotations

import math
import socket

__all__ = ["Backoff", "HeartbeatWatch", "free_port"]


class HeartbeatWatch:
    """Whether a heartbeat has been seen within ``timeout_s`` (wall s) of ``now_s``."""

    def __init__(self, timeout_s: float) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._last_s: float | None = None

    def beat(self, now_s: float) -> None:
        """A heartbeat arrived at wall time ``now_s`` (s)."""
        self._last_s = now_s

    @property
    def armed(self) -> bool:
        """True once a first heartbeat was seen."""
        return self._last_s is not None

    def silent_s(self, now_s: float) -> float:
        """Seconds since the last beat (0 before the first)."""
        return 0.0 if self._last_s is None else now_s - self._last_s

    def lost(self, now_s: float) -> bool:
        """True when armed and the last beat is older than the timeout."""
        return self._last_s is not None and now_s - self._last_s > self.timeout_s


class Backoff:
    """Exponential reconnect delays: ``first_s``, doubling, capped at ``max_s`` (wall s)."""

    def __init__(self, first_s: float = 0.1, max_s: float = 2.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._next = first_s

    def next(self) -> float:
        """The delay before the next attempt (s); each call doubles the following one."""
        delay = self._next
        self._next = min(self._next * 2.0, self.max_s)
        return delay

    def reset(self) -> None:
        """A connection succeeded: start from ``first_s`` again."""
        self._next = self.first_s


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
