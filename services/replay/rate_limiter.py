"""The replay's rate limiter: Reverb's `SampleToInsertRatio`, counted in sampleable positions.

Let S = samples_per_insert, m = min_size, E = error_buffer and D = S * (inserts - m) - samples
(how far the inserts are ahead of the ratio, in sampled positions).

* No sampling until max(1, m) sampleable positions are stored.
* With S > 0, a sample of B positions is allowed while `samples + B <= S * (inserts - m) + E`,
  i.e. while D >= B - E.
* With S > 0 and `block_inserts`, an insert is allowed unless the minimum is reached and the
  inserts are ahead: it waits while `S * (inserts - m) > samples + E`, i.e. while D > E. An
  insert is a whole record of many positions, so the check is on the state before the add and
  the add then goes in whole (D may end up to S * its positions above E). Without
  `block_inserts` (the default) inserts are never blocked and only samplers wait.

Deadlock-freedom (block_inserts): below the minimum every insert is allowed. At or above it an
insert waits only when D > E, and then a sample of B is allowed whenever E >= B / 2 (for then
D > E >= B - E). So in every state one side may go, and each side's progress is what the other
waits for (an insert raises D by S times its positions, a sample of B lowers it by B), and
wakes it.
The buffer refuses (INVALID_ARGUMENT) a sample with B > 2 E while inserts may block, because
there the band E < D < B - E would stop both sides for good.

The counts are bounded: once sampling has begun, -E <= D <= E + S * (the largest record's
positions) (a sample needs D >= B - E and lowers D by B; an insert needs D <= E).

A sampler or inserter that is not allowed waits on the owner's condition variable (every
`insert` and, while inserters wait, every `sample` notify it) until its timeout, and then fails
with DEADLINE_EXCEEDED and `describe()` / `describe_insert()`'s account of the state. At most
`max_waiters` samplers and `max_insert_waiters` inserters wait at once (each holds one of the
server's threads); a further one gets RESOURCE_EXHAUSTED at once, so that the server always
keeps a thread for the other calls. `cancel()` (shutdown) answers every waiter, and every later
wait, UNAVAILABLE.

Not thread-safe by itself: like a Reverb table's limiter it is guarded by its owner's lock.
Every method is called with `condition`'s lock held.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from services.replay.records import ReplayError

SHUTTING_DOWN = ("replay server is shutting down; {what} again from another server or after the "
                 "restart")


class RateLimiter:
    """Whether a sample of B positions (or an insert) may go now, and the waiting when not.

    Args:
      condition: the owner's condition variable; its lock guards this object, `insert`
        notifies it (and `sample` too, while inserters wait).
      min_size: sampleable positions needed before any sample (at least 1 is always needed).
      samples_per_insert: target ratio of sampled to inserted positions; 0 turns it off.
      error_buffer: how many positions either side may run ahead of that ratio.
      max_waiters: samplers allowed to wait at once.
      clock: monotonic seconds (waits and their messages); tests step a fake one.
      block_inserts: inserts wait too while they are ahead of the ratio (see the module's
        docstring); only with samples_per_insert > 0.
      max_insert_waiters: inserters allowed to wait at once.
    """

    def __init__(self, condition: threading.Condition, min_size: int, samples_per_insert: float,
                 error_buffer: float, max_waiters: int,
                 clock: Callable[[], float] = time.monotonic, block_inserts: bool = False,
                 max_insert_waiters: int = 1) -> None:
        self.condition = condition
        self.min_size = min_size
        self.samples_per_insert = samples_per_insert
        self.error_buffer = error_buffer
        self.max_waiters = max(1, max_waiters)
        self.block_inserts = bool(block_inserts) and samples_per_insert > 0
        self.max_insert_waiters = max(1, max_insert_waiters)
        self._clock = clock
        self.size = 0  # sampleable positions stored now
        self.inserts = 0.0  # positions inserted, as the ratio counts them
        self.samples = 0.0  # positions sampled, as the ratio counts them
        self.waiting = 0  # samplers waiting now
        self.waited_total = 0  # samples that were not allowed at once (they waited or were refused)
        self.inserts_waiting = 0  # inserters waiting now
        self.insert_waited_total = 0  # inserts not allowed at once (they waited or were refused)
        self.cancelled = False

    # --- the counts --------------------------------------------------------------------------

    def restore(self, size: int) -> None:
        """Starts balanced on `size` loaded positions: they count as inserted and as already
        sampled at the target ratio (D = 0 once the minimum is reached), so a restarted trainer
        neither waits for `min_size` new positions nor replays a burst of old ones, and a
        restarted agent's first add goes at once (D = 0 <= E) while the ones after it wait for
        the trainer again: neither side is held forever nor let run unbounded."""
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
        """`count` positions were sampled; wakes the waiting inserters (if any)."""
        self.samples += count
        if self.inserts_waiting:
            self.condition.notify_all()

    # --- the decision ------------------------------------------------------------------------

    def _below_min(self) -> bool:
        return self.size < max(1, self.min_size)

    def can_sample(self, batch_size: int) -> bool:
        if self._below_min():
            return False
        spi = self.samples_per_insert
        if spi <= 0:
            return True
        return (self.samples + batch_size
                <= spi * (self.inserts - self.min_size) + self.error_buffer)

    def can_insert(self) -> bool:
        """Whether an insert may go now: always, unless `block_inserts` and the minimum is
        reached and S * (inserts - min_size) > samples + error_buffer."""
        if not self.block_inserts or self._below_min():
            return True
        return (self.samples_per_insert * (self.inserts - self.min_size)
                <= self.samples + self.error_buffer)

    def describe(self, batch_size: int) -> str:
        """Why a sample of `batch_size` is not allowed, naming the numbers that decide it."""
        if self._below_min():
            return (f"positions={self.size} sampleable positions stored < "
                    f"min_positions={max(1, self.min_size)}")
        return (f"samples_per_insert={self.samples_per_insert:g}: {self.samples:.0f} positions "
                f"sampled + batch_size={batch_size} > samples_per_insert * ({self.inserts:.0f} "
                f"inserted - min_positions={self.min_size}) + error_buffer={self.error_buffer:g}; "
                f"positions={self.size}")

    def describe_insert(self) -> str:
        """Why an insert is not allowed, naming the numbers that decide it."""
        return (f"samples_per_insert={self.samples_per_insert:g}: samples_per_insert * "
                f"({self.inserts:.0f} inserted - min_positions={self.min_size}) > "
                f"{self.samples:.0f} positions sampled + error_buffer={self.error_buffer:g} "
                f"(the trainer is behind); positions={self.size}")

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
            self._wait_until(lambda: self.can_sample(batch_size), started, timeout_s, "sample", "sampling",
                             lambda: self.describe(batch_size))
        finally:
            self.waiting -= 1

    def await_can_insert(self, timeout_s: float | None, started: float | None = None) -> float:
        """Returns once an insert is allowed (at once if it is), and the clock reading when
        this add began to wait. Otherwise waits on `condition` (its lock held, released while
        waiting), `timeout_s` (None: no limit) counted from `started` (None: now, a new wait,
        counted in `insert_waited_total`; the owner passes the first wait's start again when it
        lost the race for the state after a wait): DEADLINE_EXCEEDED after it,
        RESOURCE_EXHAUSTED at once if `max_insert_waiters` already wait, UNAVAILABLE once
        cancelled. Entering the wait notifies `condition` once (tests learn that an inserter
        parked without polling)."""
        now = self._clock()
        if self.can_insert():
            return now if started is None else started
        if started is None:
            started = now
            self.insert_waited_total += 1
        if self.cancelled:
            raise ReplayError("UNAVAILABLE", SHUTTING_DOWN.format(what="add the games"))
        if self.inserts_waiting >= self.max_insert_waiters:
            raise ReplayError("RESOURCE_EXHAUSTED",
                              f"rate limiter: {self.inserts_waiting} AddGames calls are already "
                              f"waiting (the most allowed); inserting is not allowed: "
                              f"{self.describe_insert()}")
        self.inserts_waiting += 1
        self.condition.notify_all()
        try:
            self._wait_until(self.can_insert, started, timeout_s, "add the games", "inserting",
                             self.describe_insert)
        finally:
            self.inserts_waiting -= 1
        return started

    def _wait_until(self, allowed, started: float, timeout_s: float | None, what: str, doing: str,
                    describe) -> None:
        """Waits on `condition` until `allowed()`: UNAVAILABLE once cancelled ("... to `what`"),
        DEADLINE_EXCEEDED `timeout_s` after `started` ("`doing` is still not allowed: ...")."""
        while not allowed():
            if self.cancelled:
                raise ReplayError("UNAVAILABLE", SHUTTING_DOWN.format(what=what))
            left = None if timeout_s is None else timeout_s - (self._clock() - started)
            if left is not None and left <= 0:
                raise ReplayError("DEADLINE_EXCEEDED",
                                  f"rate limiter: waited {self._clock() - started:.2f}s and "
                                  f"{doing} is still not allowed: {describe()}")
            self.condition.wait(left)

    def cancel(self) -> None:
        """Answers every waiting sampler and inserter, and every later one that would wait,
        UNAVAILABLE."""
        self.cancelled = True
        self.condition.notify_all()
