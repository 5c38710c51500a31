"""The replay's rate limiter: Reverb's `SampleToInsertRatio`, counted in sampleable positions.

* No sampling until `min_size` sampleable positions are stored.
* With `samples_per_insert` S > 0, a sample of B positions is allowed while
  `samples + B <= S * (inserts - min_size) + error_buffer`. Inserts are never blocked, so
  self-play never stalls; only samplers wait.

A sampler that is not allowed waits on the owner's condition variable (every `insert` wakes the
waiters) until its timeout, and then fails with DEADLINE_EXCEEDED and `describe()`'s account of
the state. At most `max_waiters` samplers wait at once (each holds one of the server's threads);
a further one gets RESOURCE_EXHAUSTED at once, so that adds always find a thread. `cancel()`
(shutdown) answers every waiter, and every later wait, UNAVAILABLE.

Not thread-safe by itself: like a Reverb table's limiter it is guarded by its owner's lock.
Every method is called with `condition`'s lock held.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from services.replay.records import ReplayError


class RateLimiter:
    """Whether a sample of B positions may go now, and the waiting when it may not.

    Args:
      condition: the owner's condition variable; its lock guards this object, `insert`
        notifies it.
      min_size: sampleable positions needed before any sample (at least 1 is always needed).
      samples_per_insert: target ratio of sampled to inserted positions; 0 turns it off.
      error_buffer: how many positions the samplers may run ahead of that ratio.
      max_waiters: samplers allowed to wait at once.
      clock: monotonic seconds (waits and their messages); tests step a fake one.
    """

    def __init__(self, condition: threading.Condition, min_size: int, samples_per_insert: float,
                 error_buffer: float, max_waiters: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.condition = condition
        self.min_size = min_size
        self.samples_per_insert = samples_per_insert
        self.error_buffer = error_buffer
        self.max_waiters = max(1, max_waiters)
        self._clock = clock
        self.size = 0  # sampleable positions stored now
        self.inserts = 0.0  # positions inserted, as the ratio counts them
        self.samples = 0.0  # positions sampled, as the ratio counts them
        self.waiting = 0  # samplers waiting now
        self.waited_total = 0  # samples that were not allowed at once (they waited or were refused)
        self.cancelled = False

    # --- the counts --------------------------------------------------------------------------

    def restore(self, size: int) -> None:
        """Starts balanced on `size` loaded positions: they count as inserted and as already
        sampled at the target ratio, so a restarted trainer neither waits for `min_size` new
        positions nor replays a burst of old ones."""
        self.size = size
        self.inserts = float(size)
        self.samples = max(0.0, self.samples_per_insert * (size - self.min_size))

    def insert(self, count: int) -> None:
        """`count` sampleable positions were stored; wakes the waiting samplers."""
        self.size += count
        self.inserts += count
        self.condition.notify_all()

    def delete(self, count: int) -> None:
        """`count` sampleable positions were evicted (the ratio's counts stay)."""
        self.size -= count

    def sample(self, count: int) -> None:
        """`count` positions were sampled."""
        self.samples += count

    # --- the decision ------------------------------------------------------------------------

    def can_sample(self, batch_size: int) -> bool:
        if self.size < max(1, self.min_size):
            return False
        spi = self.samples_per_insert
        if spi <= 0:
            return True
        return (self.samples + batch_size
                <= spi * (self.inserts - self.min_size) + self.error_buffer)

    def describe(self, batch_size: int) -> str:
        """Why a sample of `batch_size` is not allowed, naming the numbers that decide it."""
        if self.size < max(1, self.min_size):
            return (f"positions={self.size} sampleable positions stored < "
                    f"min_positions={max(1, self.min_size)}")
        return (f"samples_per_insert={self.samples_per_insert:g}: {self.samples:.0f} positions "
                f"sampled + batch_size={batch_size} > samples_per_insert * ({self.inserts:.0f} "
                f"inserted - min_positions={self.min_size}) + error_buffer={self.error_buffer:g}; "
                f"positions={self.size}")

    def await_can_sample(self, batch_size: int, timeout_s: float | None) -> None:
        """Returns once a sample of `batch_size` is allowed (at once if it is). Otherwise waits
        on `condition` (its lock held, released while waiting): DEADLINE_EXCEEDED after
        `timeout_s` (None: no limit), RESOURCE_EXHAUSTED at once if `max_waiters` already wait,
        UNAVAILABLE once cancelled."""
        if self.can_sample(batch_size):
            return
        self.waited_total += 1
        if self.waiting >= self.max_waiters:
            raise ReplayError("RESOURCE_EXHAUSTED",
                              f"rate limiter: {self.waiting} SampleBatch calls are already waiting "
                              f"(the most allowed); sampling is not allowed: "
                              f"{self.describe(batch_size)}")
        started = self._clock()
        self.waiting += 1
        try:
            while not self.can_sample(batch_size):
                if self.cancelled:
                    raise ReplayError("UNAVAILABLE", "replay server is shutting down; sample again "
                                                     "from another server or after the restart")
                left = None if timeout_s is None else timeout_s - (self._clock() - started)
                if left is not None and left <= 0:
                    raise ReplayError("DEADLINE_EXCEEDED",
                                      f"rate limiter: waited {self._clock() - started:.2f}s and "
                                      f"sampling is still not allowed: {self.describe(batch_size)}")
                self.condition.wait(left)
        finally:
            self.waiting -= 1

    def cancel(self) -> None:
        """Answers every waiting sampler, and every later one that would wait, UNAVAILABLE."""
        self.cancelled = True
        self.condition.notify_all()
