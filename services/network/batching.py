"""Cross-request batching, modelled on TensorFlow Serving's SharedBatchScheduler.

Requests for the same (model, version, signature) share a queue of batches. A request joins
the queue's open batch if its rows fit (at most `max_batch_size` rows per batch), otherwise it
closes that batch and opens a new one. A batch is ready to run when it is full or closed, when
its first request has waited `batch_timeout_micros`, or when the server is draining for
shutdown. `num_batch_threads` threads take ready batches (oldest first, across all queues),
concatenate the inputs along the batch dimension, run the model once and hand every request
its own rows back.

Backpressure: a queue holds at most `max_enqueued_batches` batches (the open one counts, a
batch taken by a thread does not). A request that would need one more is rejected at once
with `QueueFull` (gRPC UNAVAILABLE), and the queue is left as it was.

A request with more rows than `max_batch_size` is not queued: the caller runs it alone.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Hashable

import numpy as np
from prometheus_client import CollectorRegistry

from services.network.config import BatchingConfig
from services.network.metrics import NetworkMetrics

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class QueueFull(Exception):
    """The batch queue of a request is full (gRPC UNAVAILABLE)."""


class ShuttingDown(Exception):
    """The scheduler is stopped (gRPC UNAVAILABLE)."""


class _Task:
    __slots__ = ("inputs", "rows", "done", "outputs", "error")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("tasks", "rows", "created", "closed")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.rows = 0
        self.created = time.monotonic()
        self.closed = False


class _Queue:
    __slots__ = ("key", "runner", "label", "batches")

    def __init__(self, key: Hashable, runner: Runner, label: str) -> None:
        self.key = key
        self.runner = runner
        self.label = label
        self.batches: collections.deque[_Batch] = collections.deque()


class BatchScheduler:
    """Merges concurrent requests into batches run by a pool of threads."""

    def __init__(self, config: BatchingConfig, metrics: NetworkMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else NetworkMetrics(CollectorRegistry())
        self._timeout_s = config.batch_timeout_micros / 1e6
        self._queues: dict[Hashable, _Queue] = {}
        self._cond = threading.Condition()
        self._draining = False
        self._stopping = False
        self._queued_rows = 0
        self._threads = [threading.Thread(target=self._work, name=f"{config.thread_pool_name}_{i}",
                                          daemon=True) for i in range(config.num_batch_threads)]

    def start(self) -> "BatchScheduler":
        for thread in self._threads:
            thread.start()
        return self

    def fits(self, rows: int) -> bool:
        """Whether a request of `rows` rows is batched (else the caller runs it alone)."""
        return rows <= self.config.max_batch_size

    def run(self, key: Hashable, runner: Runner, inputs: dict[str, np.ndarray], rows: int,
            label: str = "") -> dict[str, np.ndarray]:
        """Queues one request and blocks until its batch has run; returns its own rows.

        Args:
          key: the queue, e.g. (model, version, signature); requests with equal keys merge.
          runner: runs a merged batch (the same for every request of a key).
          inputs: name -> array whose first dimension is `rows`.
          label: the signature name, for metrics.
        Raises:
          QueueFull, ShuttingDown, or whatever the runner raised for the batch.
        """
        task = _Task(inputs, rows)
        max_rows = self.config.max_batch_size
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the network server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, runner, label)
            last = queue.batches[-1] if queue.batches else None
            if last is None or last.closed or last.rows + rows > max_rows:
                if len(queue.batches) >= self.config.max_enqueued_batches:
                    raise QueueFull(
                        f"the batch queue for {label or key} is full ({len(queue.batches)} batches "
                        f"of up to {max_rows} rows waiting); retry later")
                if last is not None:
                    last.closed = True
                last = _Batch()
                queue.batches.append(last)
            last.tasks.append(task)
            last.rows += rows
            if last.rows >= max_rows:
                last.closed = True
            self._queued_rows += rows
            self.metrics.queued_rows.set(self._queued_rows)
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def drain(self) -> None:
        """From now on every batch is ready at once (used when the server stops)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Runs what is queued, then stops the threads; later requests get ShuttingDown."""
        with self._cond:
            self._draining = True
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- batch threads ------------------------------------------------------------------------

    def _next_batch(self) -> tuple[_Queue, _Batch] | None:
        """Waits for a ready batch and takes it off its queue; None when stopping and empty."""
        with self._cond:
            while True:
                now = time.monotonic()
                taken, next_deadline = self._take_ready(now)
                if taken is not None:
                    return taken
                if self._stopping:
                    return None
                self._cond.wait(None if next_deadline is None else max(0.0, next_deadline - now))

    def _take_ready(self, now: float) -> tuple[tuple[_Queue, _Batch] | None, float | None]:
        """(the oldest ready batch, taken off its queue, or None; when the next batch is due,
        monotonic seconds, or None). Call with `_cond` held.

        A separate function so that the scan's loop variables die with it: left in the frame of
        a thread that then waits, they would keep the last queue scanned, and the evicted
        version its runner belongs to, alive until the next request."""
        best: tuple[_Queue, _Batch] | None = None
        next_deadline: float | None = None
        for queue in self._queues.values():
            head = queue.batches[0]  # a queue exists only while it holds batches
            ready_at = head.created + self._timeout_s
            if head.closed or self._draining or now >= ready_at:
                if best is None or head.created < best[1].created:
                    best = (queue, head)
            elif next_deadline is None or ready_at < next_deadline:
                next_deadline = ready_at
        if best is None:
            return None, next_deadline
        queue, batch = best
        queue.batches.popleft()
        if not queue.batches:
            # Queues are keyed by version: dropped when empty, so the queues (and runners) of
            # evicted versions never pile up; the next request of a key makes a new one.
            del self._queues[queue.key]
        batch.closed = True
        self._queued_rows -= batch.rows
        self.metrics.queued_rows.set(self._queued_rows)
        return best, next_deadline

    def _work(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            self._run_batch(*taken)
            # Let go before waiting for the next batch: an idle thread holding the last queue it
            # ran would keep that queue's runner, and so an evicted version's whole SavedModel,
            # alive (and the batch's arrays) until the next request comes.
            del taken

    def _run_batch(self, queue: _Queue, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            if len(tasks) == 1:
                inputs = tasks[0].inputs
            else:
                inputs = {name: np.concatenate([t.inputs[name] for t in tasks])
                          for name in tasks[0].inputs}
            padded = self._padded_size(batch.rows)
            if padded > batch.rows:
                inputs = {name: np.concatenate([x, np.repeat(x[:1], padded - batch.rows, axis=0)])
                          for name, x in inputs.items()}
            self.metrics.batch_size.observe(batch.rows)
            self.metrics.batch_requests.observe(len(tasks))
            started = time.perf_counter()
            outputs = queue.runner(inputs)
            self.metrics.run_seconds.labels(queue.label).observe(time.perf_counter() - started)
        except BaseException as error:  # noqa: BLE001 - every waiting request must learn of it
            for task in tasks:
                task.error = error
                task.done.set()
            return
        start = 0
        for task in tasks:
            stop = start + task.rows
            task.outputs = outputs if len(tasks) == 1 and padded == batch.rows else \
                {name: array[start:stop] for name, array in outputs.items()}
            start = stop
            task.done.set()

    def _padded_size(self, rows: int) -> int:
        for size in self.config.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows
