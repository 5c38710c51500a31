"""Sends finished games to the replay server in the background, never dropping one silently.

A record stays pending until the replay server acknowledges it (which it does only after the
record is on disk). An AddGames that fails transiently (services.common.failures: the replay is
down, restarting or busy) is retried, with backoff, with the same records: AddGames is
idempotent by record id, so a retry after a lost answer never stores a game twice. An AddGames
that fails permanently (INVALID_ARGUMENT: a record longer than the replay's --capacity, a record
of another game) is not retried: the writer stops and the next `put` raises the
`PermanentFailure`, so self-play ends and says what to fix.

A replay started with --block-inserts holds an AddGames back while self-play is ahead of
training (its rate limiter), and answers one still held at its deadline DEADLINE_EXCEEDED (or,
when too many adds already wait, RESOURCE_EXHAUSTED at once) with a message that starts with
"rate limiter:". That is normal operation, not a failure: the same records are sent again (at
once after a DEADLINE_EXCEEDED, which the replay answers only after waiting the call's deadline;
after the policy's backoff after a RESOURCE_EXHAUSTED), never given up on, not passed to
`on_failure` and not logged as `replay_add_failed`: one info event `replay_add_held_back` when a
batch is first held and one `replay_add_resumed` (with the seconds and the times it was held)
when it goes, and `held_back` / `on_held_back` count every held call. Meanwhile `put` blocks
once `max_pending` records wait, so self-play pauses and resumes with nothing lost or stored
twice.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import traceback
from typing import Callable, Sequence

import grpc

from protos import replay_pb2
from services.common.failures import (PermanentFailure, RetryPolicy, is_message_too_large,
                                      status_code, status_details)
from services.common.logs import EventLogger

ADD_GAMES_HINTS = {
    grpc.StatusCode.INVALID_ARGUMENT: (
        "the replay refuses these records: start the agent and the replay with the same --game, "
        "and keep a record (--chunk-length plus the look-ahead of num_unroll_steps + td_steps "
        "moves) within the replay's --capacity"),
}


# The start of the replay's messages for a call its rate limiter held back (rate_limiter.py).
RATE_LIMITER_PREFIX = "rate limiter:"


def held_back(error: BaseException) -> bool:
    """Whether `error` is the replay's rate limiter holding an AddGames back (--block-inserts):
    DEADLINE_EXCEEDED after waiting, or RESOURCE_EXHAUSTED when too many adds already wait."""
    return (status_code(error) in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                   grpc.StatusCode.RESOURCE_EXHAUSTED)
            and status_details(error).startswith(RATE_LIMITER_PREFIX))


ONE_RECORD_TOO_LARGE_HINT = ("one record is larger than the replay server accepts in a request: raise "
                             "the replay's --max-receive-bytes, or lower the agent's --chunk-length")


class _MessageTooLarge(Exception):
    """AddGames refused for the size of its request (more records than fit in one call)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class ReplayWriter:
    """A background thread that drains a queue of records into AddGames calls.

    Args:
      add_games: `add_games(records, timeout_s)` sends records and returns once acknowledged
        (raises grpc.RpcError otherwise), e.g. ReplayClient.add_games.
      log: where retries are logged.
      max_pending: `put` blocks while this many records wait (back-pressure on self-play).
      max_records_per_call: records per AddGames request.
      on_acked: called with the number of records acknowledged by each call.
      on_failure: called with each failed call's error (not with calls the replay's rate
        limiter held back: those are normal operation, see `on_held_back`).
      on_held_back: called once for each AddGames the replay's rate limiter held back.
      stop: when set, `put` no longer waits for room (it queues and returns at once), so the
        caller can wind down and `close` flushes with its grace period.
      policy: which failures are retried and the backoff between attempts.
      call_timeout_s: deadline of one AddGames call, seconds (shortened while closing so that
        `close` keeps its grace period).
      address: the replay's "host:port", for the failure's message.
    """

    def __init__(self, add_games: Callable[..., object], log: EventLogger,
                 max_pending: int = 4096, max_records_per_call: int = 64,
                 on_acked: Callable[[int], None] | None = None,
                 on_failure: Callable[[grpc.RpcError], None] | None = None,
                 stop: threading.Event | None = None, policy: RetryPolicy | None = None,
                 call_timeout_s: float = 30.0, address: str = "",
                 on_held_back: Callable[[], None] | None = None) -> None:
        self._add_games = add_games
        self._log = log
        self._max_pending = max_pending
        self._max_per_call = max_records_per_call
        self._on_acked = on_acked
        self._on_failure = on_failure
        self._on_held_back = on_held_back
        self._stop = stop if stop is not None else threading.Event()
        self._policy = policy or RetryPolicy(initial_backoff_s=0.1, max_backoff_s=5.0)
        self._call_timeout_s = call_timeout_s
        self._address = address
        self._pending: collections.deque[replay_pb2.GameRecord] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self._close_deadline = math.inf
        self._closed = threading.Event()  # ends a backoff wait at close, so the flush begins at once
        self.acked = 0
        self.held_back = 0  # AddGames calls the replay's rate limiter held back
        self.failure: PermanentFailure | None = None  # set once AddGames failed permanently
        self._thread = threading.Thread(target=self._run, name="replay-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (queued or in flight)."""
        with self._cond:
            return len(self._pending) + self._in_flight

    def put(self, records: Sequence[replay_pb2.GameRecord], stop: threading.Event | None = None) -> None:
        """Queues records; blocks while too many are unacknowledged, unless stopped (the
        writer's stop event, or `stop`).

        Raises the writer's PermanentFailure once AddGames failed permanently (the records are
        queued first, so `close` counts them as unsent).
        """
        if not records:
            return
        with self._cond:
            while (len(self._pending) + self._in_flight >= self._max_pending and not self._closing
                   and self.failure is None and not self._stop.is_set()
                   and not (stop is not None and stop.is_set())):
                # The stop event cannot notify this condition: look at it again shortly.
                self._cond.wait(0.1)
            self._pending.extend(records)
            self._cond.notify_all()
            if self.failure is not None:
                raise self.failure

    def _remaining_s(self) -> float:
        """Seconds left of the close grace period (infinite before `close`)."""
        return self._close_deadline - time.monotonic()

    def _give_back(self, batch: list[replay_pb2.GameRecord]) -> None:
        with self._cond:
            self._pending.extendleft(reversed(batch))
            self._in_flight = 0
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = [self._pending.popleft() for _ in range(min(self._max_per_call, len(self._pending)))]
                self._in_flight = len(batch)
            try:
                if not self._send(batch):
                    return
            except _MessageTooLarge as too_large:
                # The replay refused the request's size (its --max-receive-bytes) before reading
                # it: the same records in smaller calls can fit. Only later calls get smaller.
                self._give_back(batch)
                self._max_per_call = max(1, len(batch) // 2)
                self._log.warning("replay_add_split", records=len(batch),
                                  records_per_call=self._max_per_call, details=too_large.details)
                continue
            with self._cond:
                self._in_flight = 0
                self.acked += len(batch)
                self._cond.notify_all()
            if self._on_acked:
                self._on_acked(len(batch))

    def _send(self, batch: list[replay_pb2.GameRecord]) -> bool:
        """Sends `batch` until acknowledged; False (batch given back) when the writer must end:
        a permanent failure, or the close grace period is over."""
        backoff = self._policy.backoff()
        held = self._policy.backoff()  # the waits after RESOURCE_EXHAUSTED held-backs (no give-up)
        held_since: float | None = None  # when the replay first held this batch back
        held_calls = 0
        while True:
            timeout_s = min(self._call_timeout_s, self._remaining_s())
            if timeout_s <= 0:
                self._give_back(batch)
                return False
            try:
                self._add_games(batch, timeout_s=timeout_s)
                if held_since is not None:
                    self._log.info("replay_add_resumed", records=len(batch), held_calls=held_calls,
                                   held_s=round(time.monotonic() - held_since, 2))
                return True
            except grpc.RpcError as error:
                if held_back(error):
                    # Self-play is ahead of training: wait for the trainer, as the replay says.
                    self.held_back += 1
                    held_calls += 1
                    if self._on_held_back:
                        self._on_held_back()
                    if held_since is None:
                        held_since = time.monotonic()
                        self._log.info("replay_add_held_back", code=error.code().name,
                                       details=error.details(), records=len(batch))
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        continue  # the replay waited the whole call: ask again at once
                    delay = held.next_delay()
                    if self._closed.wait(max(0.0, min(delay, self._remaining_s()))):
                        self._closed.clear()
                    continue
                if self._on_failure:
                    self._on_failure(error)
                if is_message_too_large(error):
                    if len(batch) > 1:
                        raise _MessageTooLarge(error.details()) from None
                    self._fail(PermanentFailure.from_error(error, "replay", "AddGames", self._address,
                                                           hint=ONE_RECORD_TOO_LARGE_HINT), batch)
                    return False
                try:
                    delay = backoff.failed(error, "replay", "AddGames", self._address,
                                           hint=ADD_GAMES_HINTS)
                except PermanentFailure as failure:
                    self._fail(failure, batch)
                    return False
                self._log.warning("replay_add_failed", code=error.code().name,
                                  details=error.details(), records=len(batch),
                                  retry_in_s=round(delay, 2))
            except Exception as error:  # a bug on this side: end the writer, and say where
                self._log.error("replay_writer_failed", error=repr(error),
                                traceback=traceback.format_exc())
                self._fail(PermanentFailure("replay", "AddGames", None, repr(error),
                                            "a bug in the agent: see replay_writer_failed",
                                            self._address), batch)
                return False
            # Not the condition: every `put` notifies it, which would cut the backoff short.
            if self._closed.wait(max(0.0, min(delay, self._remaining_s()))):
                self._closed.clear()  # only the first wait after close() is cut short

    def _fail(self, failure: PermanentFailure, batch: list[replay_pb2.GameRecord]) -> None:
        with self._cond:
            self.failure = failure
        self._give_back(batch)

    def close(self, timeout_s: float = 30.0) -> int:
        """Sends what is pending, trying for up to `timeout_s` seconds (the grace period: a call
        in flight is cut at its end); returns the number of records left unsent."""
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._closed.set()
        # A call's deadline ends it at the grace period's end; the margin covers gRPC's own slack.
        self._thread.join(timeout_s + 1.0)
        return self.pending
