"""Sends finished games to the replay server in the background, never dropping one.

A record stays pending until the replay server acknowledges it (which it does only after the
record is on disk). A failed AddGames is retried, with backoff, with the same records: AddGames
is idempotent by record id, so a retry after a lost answer never stores a game twice.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Sequence

import grpc

from protos import replay_pb2
from services.common.logs import EventLogger


class ReplayWriter:
    """A background thread that drains a queue of records into AddGames calls.

    Args:
      add_games: sends records and returns once acknowledged (raises grpc.RpcError otherwise).
      log: where retries are logged.
      max_pending: `put` blocks while this many records wait (back-pressure on self-play).
      max_records_per_call: records per AddGames request.
      on_acked: called with the number of records acknowledged by each call.
    """

    def __init__(self, add_games: Callable[[Sequence[replay_pb2.GameRecord]], object], log: EventLogger,
                 max_pending: int = 4096, max_records_per_call: int = 64,
                 on_acked: Callable[[int], None] | None = None,
                 on_failure: Callable[[grpc.RpcError], None] | None = None) -> None:
        self._add_games = add_games
        self._log = log
        self._max_pending = max_pending
        self._max_per_call = max_records_per_call
        self._on_acked = on_acked
        self._on_failure = on_failure
        self._pending: collections.deque[replay_pb2.GameRecord] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._closing = False
        self.acked = 0
        self._thread = threading.Thread(target=self._run, name="replay-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (queued or in flight)."""
        with self._cond:
            return len(self._pending) + self._in_flight

    def put(self, records: Sequence[replay_pb2.GameRecord]) -> None:
        """Queues records; blocks while too many are unacknowledged."""
        if not records:
            return
        with self._cond:
            while len(self._pending) + self._in_flight >= self._max_pending and not self._closing:
                self._cond.wait(1.0)
            self._pending.extend(records)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff_s = 0.1
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = [self._pending.popleft() for _ in range(min(self._max_per_call, len(self._pending)))]
                self._in_flight = len(batch)
            while True:
                try:
                    self._add_games(batch)
                    break
                except grpc.RpcError as error:
                    if self._on_failure:
                        self._on_failure(error)
                    self._log.warning("replay_add_failed", code=error.code().name,
                                      details=error.details(), records=len(batch),
                                      retry_in_s=round(backoff_s, 2))
                    with self._cond:
                        if self._closing and self._close_deadline < time.monotonic():
                            self._pending.extendleft(reversed(batch))
                            self._in_flight = 0
                            self._cond.notify_all()
                            return
                    time.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
            backoff_s = 0.1
            with self._cond:
                self._in_flight = 0
                self.acked += len(batch)
                self._cond.notify_all()
            if self._on_acked:
                self._on_acked(len(batch))

    def close(self, timeout_s: float = 30.0) -> int:
        """Sends what is pending (trying for up to `timeout_s`); returns records left unsent."""
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s + 10)
        return self.pending
