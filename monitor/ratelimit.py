"""A token bucket: the play endpoint's rate limit."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; each request takes one.

    `clock` (seconds, monotonic) is injectable so that tests step time instead of waiting for it.
    A `rate_per_s` of 0 means no limit.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 if a token was taken; else the seconds until one is there (nothing is taken)."""
        if self.rate_per_s <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate_per_s


def retry_after(seconds: float) -> str:
    """The Retry-After header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
