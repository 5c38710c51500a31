"""Batches in, priorities out: the trainer's threads that talk to the replay server.

`Prefetcher` is an iterator of decoded NumPy batches that a thread fills from SampleBatch calls
(a bounded queue, so at most `capacity` batches wait). While the replay cannot give a batch it
waits and asks again, with one log line per failed call:

  * DEADLINE_EXCEEDED: the replay's rate limiter held the call (too few positions yet, or the
    trainer is ahead of samples_per_insert); the server's message says which. Ask again at once
    (the call itself was the wait).
  * UNAVAILABLE and the other transient codes of `services.common.failures` (RESOURCE_EXHAUSTED,
    ABORTED, CANCELLED): the replay is down, restarting or busy; ask again after an exponential
    backoff (0.5 s doubling to 10 s).
  * Every other code (INVALID_ARGUMENT, INTERNAL: a bug in the replay, UNKNOWN, ...), or a batch
    whose shapes do not fit the game: permanent; the iterator raises `ReplayFailed` (a
    `PermanentFailure` with a hint of what to fix), which the trainer's `__main__` logs in one
    line before it exits 1.

`PrioritySender` sends UpdatePriorities on its own thread so training never waits for it; when
its queue is full the oldest update is dropped (priorities are a hint: a lost update leaves the
previous priority). It merges the updates of `merge` steps into one call (older first, so a
position sampled twice keeps its newest priority), sent at the latest `max_delay_s` after the
first of them: each call costs the replay about 1 ms of CPU whatever its size, and the replay
shares the machine with the trainer.

Neither imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import grpc
import numpy as np

from games.base import GameSpec
from games.symmetry import Symmetries
from services.common.failures import PermanentFailure, RetryPolicy, status_code, status_details
from services.common.logs import EventLogger

SAMPLE_HINTS = {
    grpc.StatusCode.INVALID_ARGUMENT: "the replay refuses the trainer's SampleBatch: start both for "
                                      "the same --game, with --batch-size and --num-unroll-steps "
                                      "the replay accepts (its message names the field)",
}
BAD_BATCH_HINT = ("the replay serves positions of another game or another K: start the replay "
                  "and the trainer with the same --game (and --num-unroll-steps)")

HOST_KEYS = ("record_keys", "positions", "model_version")
_DTYPES = {"observation": np.float32, "actions": np.int32, "target_value": np.float32,
           "target_reward": np.float32, "target_policy": np.float32, "mask": np.float32,
           "policy_mask": np.float32, "importance_weight": np.float32, "record_keys": np.int64,
           "positions": np.int32, "model_version": np.int64, "unroll_observations": np.float32}


class ReplayFailed(PermanentFailure):
    """The replay answered in a way that retrying cannot fix (a PermanentFailure: peer, method,
    code, details, hint)."""

    @classmethod
    def of(cls, error: BaseException, address: str = "") -> "ReplayFailed":
        """The failure of one SampleBatch call that raised `error`."""
        if isinstance(error, grpc.RpcError):
            failure = PermanentFailure.from_error(error, "replay", "SampleBatch", address,
                                                  SAMPLE_HINTS.get(status_code(error)))
            return cls(failure.peer, failure.method, failure.code, failure.details, failure.hint,
                       address)
        if isinstance(error, (ValueError, TypeError)):  # the answer does not fit the game
            return cls("replay", "SampleBatch", None, str(error), BAD_BATCH_HINT, address)
        return cls("replay", "SampleBatch", None, repr(error),
                   "a bug in the trainer's sampling code: see the traceback", address)


def prepare_batch(batch: Any, spec: GameSpec, num_unroll_steps: int,
                  unroll_observations: bool = False, value_prefix: bool | None = None,
                  value_prefix_horizon: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a batch (a replay `Batch` or a mapping) as a dict in the trainer's dtypes.

    Checks every shape against the game and K; ValueError naming the entry otherwise. Entries
    record_keys, positions and model_version are optional (absent in hand-made batches).
    `unroll_observations`: the batch must carry `unroll_observations` [B, K+1, *obs] (the
    consistency loss's targets; the replay sends them when asked); otherwise that entry is
    left out even if present. `value_prefix`: when given, a batch that says which reward targets
    it holds (a replay `Batch`'s `value_prefix`) must hold those (ValueError otherwise: the
    replay and the trainer were started with different `--value-prefix`); with value prefix on
    both, `value_prefix_horizon`, when given, must be the H the batch says its prefixes
    restart at (`--value-prefix-horizon`; a batch that says 0 or nothing is taken).
    """
    get = (lambda name: batch.get(name)) if isinstance(batch, Mapping) else (
        lambda name: getattr(batch, name, None))
    K, A = num_unroll_steps, spec.num_actions
    served_prefix = get("value_prefix")
    if value_prefix is not None and served_prefix is not None and bool(served_prefix) != value_prefix:
        raise ValueError(f"batch: the replay serves {'value-prefix' if served_prefix else 'per-step'} reward "
                         f"targets, but the trainer's network {'has' if value_prefix else 'has no'} value "
                         f"prefix: start both with the same --value-prefix")
    served_horizon = get("value_prefix_horizon")
    if (value_prefix and value_prefix_horizon is not None and served_prefix and served_horizon
            and int(served_horizon) != int(value_prefix_horizon)):
        raise ValueError(f"batch: the replay's value prefixes restart every {int(served_horizon)} steps, but the "
                         f"trainer's network resets every {int(value_prefix_horizon)}: start both with the same "
                         f"--value-prefix-horizon")
    first = get("observation")
    if first is None:
        raise ValueError("batch: observation is missing")
    B = int(np.shape(first)[0])
    shapes = {"observation": (B, *spec.observation_shape), "actions": (B, K),
              "target_value": (B, K + 1), "target_reward": (B, K + 1), "target_policy": (B, K + 1, A),
              "mask": (B, K + 1), "policy_mask": (B, K + 1), "importance_weight": (B,),
              "record_keys": (B,), "positions": (B,), "model_version": (B,)}
    if unroll_observations:
        shapes["unroll_observations"] = (B, K + 1, *spec.observation_shape)
    arrays = {}
    for name, shape in shapes.items():
        value = get(name)
        if value is None:
            if name in HOST_KEYS:
                continue
            if name == "unroll_observations":
                raise ValueError("batch: unroll_observations is missing (the consistency loss needs "
                                 "them: SampleBatch with include_unroll_observations)")
            raise ValueError(f"batch: {name} is missing")
        array = np.asarray(value)
        if array.shape != shape:
            raise ValueError(f"batch: {name} has shape {list(array.shape)}, expected {list(shape)} "
                             f"(game {spec.name}, K={K})")
        arrays[name] = array.astype(_DTYPES[name], copy=False)
    if B == 0:
        raise ValueError("batch: empty (B = 0)")
    return arrays


def split_batch(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """`arrays` (from `prepare_batch`) of n * batch_size positions, drawn by one SampleBatch
    call, as n batches of batch_size, each one's importance weights normalized to max 1 as the
    replay normalizes a batch's. The replay draws with replacement, independently per position,
    so each part is what a call for batch_size positions would have drawn (with the priorities
    of that moment). ValueError if the size is not a multiple of batch_size."""
    total = len(arrays["observation"])
    if total == batch_size:
        return [arrays]
    if total % batch_size:
        raise ValueError(f"batch: {total} positions, not a multiple of the batch size {batch_size}")
    parts = []
    for start in range(0, total, batch_size):
        part = {name: value[start:start + batch_size] for name, value in arrays.items()}
        weights = part["importance_weight"]
        part["importance_weight"] = (weights / max(float(weights.max()), np.finfo(np.float32).tiny)
                                     ).astype(np.float32)
        parts.append(part)
    return parts


def augment_batch(arrays: dict[str, np.ndarray], symmetries: Symmetries,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`arrays` (from `prepare_batch`) with each sample under a uniformly drawn symmetry:
    observation, actions and target_policy mapped, and `unroll_observations` if present (every
    one of its K+1 boards under the sample's map), the other entries unchanged. Priorities
    still go to the stored position (record_keys and positions are untouched)."""
    observation = arrays["observation"]
    which = rng.integers(len(symmetries), size=len(observation))
    unroll = arrays.get("unroll_observations")
    if unroll is None:
        observation, actions, policy = symmetries.augment(observation, arrays["actions"],
                                                          arrays["target_policy"], which)
        return {**arrays, "observation": observation, "actions": actions, "target_policy": policy}
    # A map moves cells and keeps the planes axis, so the K+1 boards stacked as more planes of
    # the observation move with it under the same map, in one call.
    B, H, W, C = observation.shape
    frames = unroll.shape[1]
    planes = np.concatenate([observation, np.moveaxis(unroll, 1, 3).reshape(B, H, W, frames * C)], axis=-1)
    planes, actions, policy = symmetries.augment(planes, arrays["actions"], arrays["target_policy"], which)
    unroll = np.ascontiguousarray(np.moveaxis(planes[..., C:].reshape(B, H, W, frames, C), 3, 1))
    return {**arrays, "observation": np.ascontiguousarray(planes[..., :C]), "actions": actions,
            "target_policy": policy, "unroll_observations": unroll}


@dataclasses.dataclass
class _Fatal:
    error: ReplayFailed


class Prefetcher:
    """An iterator of prepared batches, filled by a thread from `sample(timeout_s)`.

    Args:
      sample: draws one batch, e.g. `lambda t: client.sample_batch(B, K, timeout_s=t)`; raises
        grpc.RpcError on failure.
      prepare: turns what `sample` returns into the dict the trainer takes (`prepare_batch`),
        or into a list of them (one call's positions split into batches, `split_batch`).
      log: where `waiting_for_replay`, `replay_unavailable` and `replay_ready` go.
      metrics: a TrainerMetrics (prefetched_batches, replay_waits) or None.
      capacity: batches the queue holds.
      sample_timeout_s: deadline of each sample call.
      backoff_s: (first, max) wait after a transient failure; doubles each time.
      stop: an Event that ends the iterator (StopIteration) when set; `close()` sets it too.
      address: the replay's "host:port", for failure messages.

    `next()` raises StopIteration once stopped and `ReplayFailed` (a PermanentFailure) after a
    failure that retrying cannot fix; the thread does not log it, the caller reports it.
    """

    def __init__(self, sample: Callable[[float], Any], prepare: Callable[[Any], dict[str, np.ndarray]],
                 log: EventLogger, metrics: Any = None, capacity: int = 4,
                 sample_timeout_s: float = 10.0, backoff_s: tuple[float, float] = (0.5, 10.0),
                 stop: threading.Event | None = None, address: str = "") -> None:
        self._sample = sample
        self._prepare = prepare
        self.log = log
        self.metrics = metrics
        self.sample_timeout_s = sample_timeout_s
        self.address = address
        self._policy = RetryPolicy(initial_backoff_s=backoff_s[0], max_backoff_s=backoff_s[1])
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._stop = stop if stop is not None else threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-prefetch", daemon=True)
        self.batches_fetched = 0
        self.waits = 0

    def start(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._stop.is_set() or self._closed.is_set():
                raise StopIteration
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    if self._stopping():  # stopped while this call waited: that ended the thread
                        raise StopIteration from None
                    raise ReplayFailed("replay", "SampleBatch", None, "the prefetch thread has ended",
                                       "a bug in the trainer: see its log", self.address) from None
                continue
            self._set_gauge()
            if isinstance(item, _Fatal):
                raise item.error
            return item

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stops the thread (it exits after the call in flight; it is a daemon thread)."""
        self._closed.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout_s)

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._closed.is_set()

    def _set_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.prefetched_batches.set(self._queue.qsize())

    def _put(self, item: Any) -> None:
        while not self._stopping():
            try:
                self._queue.put(item, timeout=0.1)
                self._set_gauge()
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        backoff = self._policy.backoff((self._stop, self._closed))
        waiting_since: float | None = None
        while not self._stopping():
            called = time.monotonic()
            try:
                batch = self._sample(self.sample_timeout_s)
            except grpc.RpcError as error:
                if self._stopping():
                    return
                code = status_code(error)
                details = status_details(error)
                waiting_since = waiting_since or called
                self.waits += 1
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # Here the replay's rate limiter held the call: the call itself was the wait.
                    self._count_wait("rate_limited")
                    self.log.info("waiting_for_replay", reason="rate_limited", message=details,
                                  waited_s=round(time.monotonic() - waiting_since, 1))
                    continue
                try:
                    delay = backoff.failed(error, "replay", "SampleBatch", self.address,
                                           hint=SAMPLE_HINTS)
                except PermanentFailure:
                    self._put(_Fatal(ReplayFailed.of(error, self.address)))
                    return
                self._count_wait("unavailable")
                self.log.warning("replay_unavailable", code=code.name, message=details,
                                 retry_in_s=delay, waited_s=round(time.monotonic() - waiting_since, 1))
                backoff.pause(delay)
                continue
            except BaseException as error:  # a bug in `sample`: surface it in the train loop
                self._put(_Fatal(ReplayFailed.of(error, self.address)))
                return
            if waiting_since is not None:
                self.log.info("replay_ready", waited_s=round(time.monotonic() - waiting_since, 1))
                waiting_since = None
            backoff.reset()
            try:
                arrays = self._prepare(batch)
            except (ValueError, TypeError) as error:
                self._put(_Fatal(ReplayFailed.of(error, self.address)))
                return
            # `prepare` may split one call's positions into several batches (`split_batch`).
            for part in arrays if isinstance(arrays, list) else [arrays]:
                self.batches_fetched += 1
                self._put(part)

    def _count_wait(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.replay_waits.labels(reason).inc()


class PrioritySender:
    """Sends new priorities on a thread; calling it never blocks.

    Args:
      update: `update(record_keys, positions, priorities, timeout_s)`, e.g.
        ReplayClient.update_priorities; may raise grpc.RpcError.
      log: where failures go (one line per failure, at most one every 30 s).
      metrics: a TrainerMetrics (priority_updates, priority_updates_dropped) or None.
      capacity: updates waiting before the oldest is dropped.
      timeout_s: deadline of each call.
      merge: updates (one per step) sent together in one call.
      max_delay_s: the longest an update waits for others to merge with.
    """

    def __init__(self, update: Callable[..., Any], log: EventLogger, metrics: Any = None,
                 capacity: int = 64, timeout_s: float = 5.0, merge: int = 1,
                 max_delay_s: float = 0.5) -> None:
        self._update = update
        self.log = log
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.merge = max(1, merge)
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="trainer-priorities", daemon=True)
        self._thread.start()
        self._last_failure_log = -1e9
        self.sent = 0
        self.dropped = 0

    def __call__(self, record_keys: np.ndarray, positions: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.nan_to_num(np.abs(np.asarray(priorities, np.float32)), nan=0.0,
                                   posinf=0.0, neginf=0.0)
        item = (np.asarray(record_keys, np.int64), np.asarray(positions, np.int32), priorities)
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        old = self._queue.get_nowait()
                    except queue.Empty:
                        continue
                    if old is not None:
                        self._drop(len(old[0]))

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self.metrics is not None:
            self.metrics.priority_updates_dropped.inc(n)

    def _collect(self) -> tuple[list[tuple[np.ndarray, ...]], bool]:
        """The next updates to send together (up to `merge`, waiting at most `max_delay_s`
        after the first), and whether close() asked to stop."""
        first = self._queue.get()
        if first is None:
            return [], True
        items = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(items) < self.merge:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
        return items, False

    def _run(self) -> None:
        while True:
            items, closing = self._collect()
            if items:
                self._send(items)
            if closing:
                return

    def _send(self, items: list[tuple[np.ndarray, ...]]) -> None:
        if len(items) == 1:
            keys, positions, priorities = items[0]
        else:
            keys, positions, priorities = (np.concatenate(column) for column in zip(*items))
        try:
            self._update(keys, positions, priorities, timeout_s=self.timeout_s)
        except grpc.RpcError as error:
            self._drop(len(keys))
            now = time.monotonic()
            if now - self._last_failure_log >= 30.0:
                self._last_failure_log = now
                code = error.code() if callable(getattr(error, "code", None)) else None
                self.log.warning("priority_update_failed", code=getattr(code, "name", None),
                                 message=error.details() if callable(getattr(error, "details", None))
                                 else str(error), dropped_total=self.dropped)
            return
        except Exception as error:  # never let the sender die silently
            self._drop(len(keys))
            self.log.error("priority_update_failed", code=None, message=repr(error))
            return
        self.sent += len(keys)
        if self.metrics is not None:
            self.metrics.priority_updates.inc(len(keys))

    def close(self, timeout_s: float = 5.0) -> bool:
        """Sends what is queued (within `timeout_s`) and stops; True if everything was sent."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
