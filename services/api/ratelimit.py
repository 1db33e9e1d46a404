"""Writes rate-limited per user: a token bucket (rate per second, burst)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """``allow(key)`` is True while ``key`` stays within ``rate_per_s`` with ``burst``."""

    def __init__(
        self, rate_per_s: float, burst: int, *, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._now = now
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at wall s)

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        with self._lock:
            now = self._now()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True
