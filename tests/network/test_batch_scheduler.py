"""The network's BatchScheduler, directly: fake runners in NumPy, no TensorFlow, no gRPC.

One batch thread whose runner is held at a gate makes every later request queue up, so what
merges, what is refused and what a failure reaches are decided by the requests, not by timing.
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.network.batching import BatchScheduler, QueueFull, ShuttingDown
from services.network.config import BatchingConfig
from services.network.metrics import NetworkMetrics

KEY = ("muzero", 1, "initial_inference")


class GatedRunner:
    """Doubles its input; the first call waits at the gate. Records the rows of every run."""

    def __init__(self, fail_on_run: int | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.runs: list[int] = []
        self.fail_on_run = fail_on_run

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.runs.append(len(x))
        if len(self.runs) == 1:
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
        if self.fail_on_run == len(self.runs):
            raise RuntimeError("the model failed")
        return {"y": x * 2}


def scheduler(**fields) -> BatchScheduler:
    config = BatchingConfig(num_batch_threads=1, **fields)
    return BatchScheduler(config, NetworkMetrics(CollectorRegistry())).start()


def queued_rows(s: BatchScheduler) -> float:
    return s.metrics.registry.get_sample_value("mufleet_network_queued_rows")


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # polling the scheduler's own state, bounded by the deadline


class Caller(threading.Thread):
    def __init__(self, s: BatchScheduler, runner, values: list[float]) -> None:
        super().__init__(daemon=True)
        self.s, self.runner, self.values = s, runner, values
        self.result: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        x = np.asarray(self.values, np.float32)
        try:
            self.result = self.s.run(KEY, self.runner, {"x": x}, len(x), label="initial_inference")
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            self.error = error


def hold_the_thread(s: BatchScheduler, runner: GatedRunner, rows: int = 1) -> Caller:
    """A first request whose run holds the only batch thread at the gate."""
    first = Caller(s, runner, [0.0] * rows)
    first.start()
    assert runner.entered.wait(30)
    return first


def test_queued_requests_merge_into_one_run_and_each_gets_its_own_rows():
    s, runner = scheduler(max_batch_size=8), GatedRunner()
    first = hold_the_thread(s, runner)
    callers = [Caller(s, runner, [1.0, 2.0]), Caller(s, runner, [3.0]), Caller(s, runner, [4.0, 5.0, 6.0])]
    for caller in callers:
        caller.start()
        wait_until(lambda c=caller: queued_rows(s) >= sum(len(x.values) for x in callers[:callers.index(c) + 1]),
                   "the request to queue")
    runner.gate.set()
    for caller in (first, *callers):
        caller.join(30)
    assert runner.runs == [1, 6]  # the held request, then one merged run of the three
    assert [c.result["y"].tolist() for c in callers] == [[2.0, 4.0], [6.0], [8.0, 10.0, 12.0]]
    s.stop()


def test_a_full_queue_refuses_at_once_and_keeps_what_it_holds():
    s, runner = scheduler(max_batch_size=2, max_enqueued_batches=1), GatedRunner()
    first = hold_the_thread(s, runner)
    waiting = Caller(s, runner, [1.0, 2.0])  # fills the one batch the queue may hold
    waiting.start()
    wait_until(lambda: queued_rows(s) == 2, "the batch to fill")
    with pytest.raises(QueueFull, match="full"):
        s.run(KEY, runner, {"x": np.ones(1, np.float32)}, 1, label="initial_inference")
    assert queued_rows(s) == 2  # the refused request left the queue as it was
    runner.gate.set()
    first.join(30)
    waiting.join(30)
    assert waiting.result["y"].tolist() == [2.0, 4.0]
    s.stop()


def test_a_failing_run_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    s, runner = scheduler(max_batch_size=8), GatedRunner(fail_on_run=2)
    first = hold_the_thread(s, runner)
    doomed = [Caller(s, runner, [1.0]), Caller(s, runner, [2.0])]
    for i, caller in enumerate(doomed):
        caller.start()
        wait_until(lambda i=i: queued_rows(s) == i + 1, "the request to queue")
    runner.gate.set()
    for caller in (first, *doomed):
        caller.join(30)
    assert [str(c.error) for c in doomed] == ["the model failed"] * 2
    after = s.run(KEY, runner, {"x": np.full(1, 7.0, np.float32)}, 1, label="initial_inference")
    assert after["y"].tolist() == [14.0]
    s.stop()


def test_merged_runs_are_padded_to_an_allowed_size_and_the_padding_never_reaches_a_caller():
    s, runner = scheduler(max_batch_size=8, allowed_batch_sizes=(4, 8)), GatedRunner()
    first = hold_the_thread(s, runner)
    callers = [Caller(s, runner, [1.0, 2.0]), Caller(s, runner, [3.0, 4.0, 5.0])]
    for i, caller in enumerate(callers):
        caller.start()
        wait_until(lambda i=i: queued_rows(s) == (2, 5)[i], "the request to queue")
    runner.gate.set()
    for caller in (first, *callers):
        caller.join(30)
    assert runner.runs == [4, 8]  # 1 row padded to 4, then 5 rows padded to 8
    assert [c.result["y"].tolist() for c in callers] == [[2.0, 4.0], [6.0, 8.0, 10.0]]
    s.stop()


def test_stop_runs_what_is_queued_then_refuses():
    s, runner = scheduler(max_batch_size=2, batch_timeout_micros=60_000_000), GatedRunner()
    first = hold_the_thread(s, runner, rows=2)  # a full batch runs at once, whatever the timeout
    queued = Caller(s, runner, [1.0])  # would wait a minute for company, if not for the stop
    queued.start()
    wait_until(lambda: queued_rows(s) == 1, "the request to queue")
    stopper = threading.Thread(target=s.stop, kwargs={"timeout_s": 30})
    stopper.start()
    wait_until(lambda: s._stopping, "the stop to begin")
    runner.gate.set()
    stopper.join(30)
    first.join(30)
    queued.join(30)
    assert queued.result["y"].tolist() == [2.0]
    with pytest.raises(ShuttingDown):
        s.run(KEY, runner, {"x": np.ones(1, np.float32)}, 1)


class Doubler:
    """A runner without reference cycles: freed as soon as nothing refers to it."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}


@pytest.mark.parametrize("threads", [1, 2])
def test_an_idle_scheduler_keeps_no_runner_alive(threads):
    # The runner stands for an evicted version's signature: a queue, a batch or an idle batch
    # thread that still held it would keep that version's whole SavedModel alive.
    s = BatchScheduler(BatchingConfig(num_batch_threads=threads), NetworkMetrics(CollectorRegistry())).start()
    try:
        runners = [Doubler() for _ in range(3)]
        for version, runner in enumerate(runners):
            out = s.run(("muzero", version, "initial_inference"), runner, {"x": np.ones(2, np.float32)}, 2)
            assert out["y"].tolist() == [2.0, 2.0]
        references = [weakref.ref(r) for r in runners]
        del runners, runner
        # run() returns once the results are handed over, possibly before the thread is back
        # to waiting: wait for the references to die (observable state, not the clock).
        wait_until(lambda: all(r() is None for r in references), "the runners to be released")
        assert queued_rows(s) == 0
    finally:
        s.stop()
