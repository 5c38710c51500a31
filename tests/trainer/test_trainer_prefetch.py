"""The prefetch thread and the priority sender, against fake replay calls (no servers)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from services.trainer.metrics import TrainerMetrics
from services.trainer.prefetch import Prefetcher, PrioritySender, ReplayFailed, prepare_batch
from trainer_helpers import K, SPEC, LogSink, batch


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def scripted(*outcomes):
    """A sample function that raises or returns `outcomes` in order, then keeps returning
    batches; records the timeouts it was called with."""
    calls = []
    remaining = list(outcomes)

    def sample(timeout_s):
        calls.append(timeout_s)
        outcome = remaining.pop(0) if remaining else batch(seed=len(calls))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return sample, calls


def prefetcher(sample, **kwargs):
    sink = LogSink()
    metrics = TrainerMetrics()
    fetcher = Prefetcher(sample, lambda b: prepare_batch(b, SPEC, K), sink.log, metrics,
                         backoff_s=(0.01, 0.02), sample_timeout_s=3.0, **kwargs)
    return fetcher.start(), sink, metrics


def test_waits_while_rate_limited_or_unavailable_then_delivers():
    limited = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "rate limiter: positions=60 < min_positions=100")
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    sample, calls = scripted(limited, limited, down, down, batch(seed=7))
    fetcher, sink, metrics = prefetcher(sample)
    try:
        got = next(fetcher)
    finally:
        fetcher.close()
    np.testing.assert_array_equal(got["observation"], batch(seed=7)["observation"])
    assert got["actions"].dtype == np.int32 and got["record_keys"].dtype == np.int64
    assert calls[:5] == [3.0] * 5
    waits = sink.events("waiting_for_replay")
    assert len(waits) == 2 and "min_positions=100" in waits[0]["message"]
    unavailable = sink.events("replay_unavailable")
    assert [e["retry_in_s"] for e in unavailable] == [0.01, 0.02]
    assert sink.events("replay_ready")
    assert metrics.replay_waits.labels("rate_limited")._value.get() == 2
    assert metrics.replay_waits.labels("unavailable")._value.get() == 2


def test_invalid_argument_is_fatal():
    sample, _ = scripted(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "batch_size: must be >= 1"))
    fetcher, sink, _ = prefetcher(sample)
    with pytest.raises(ReplayFailed, match="batch_size"):
        next(fetcher)
    assert sink.events("replay_failed")[0]["code"] == "INVALID_ARGUMENT"


def test_a_batch_of_the_wrong_game_is_fatal():
    wrong = batch(seed=0)
    wrong["target_policy"] = np.zeros((16, K + 1, 9), np.float32)
    sample, _ = scripted(wrong)
    fetcher, sink, _ = prefetcher(sample)
    with pytest.raises(ReplayFailed, match="target_policy has shape"):
        next(fetcher)


def test_stop_ends_the_iterator():
    stop = threading.Event()
    blocked = threading.Event()

    def sample(timeout_s):
        blocked.set()
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "rate limiter")

    fetcher, _, _ = prefetcher(sample, stop=stop)
    blocked.wait(10)
    stop.set()
    with pytest.raises(StopIteration):
        next(fetcher)
    fetcher.close()


def test_the_queue_is_bounded():
    sample, calls = scripted()
    fetcher, _, metrics = prefetcher(sample, capacity=2)
    first = next(fetcher)
    while fetcher.qsize() < 2:
        threading.Event().wait(0.01)
    assert fetcher.batches_fetched <= 4  # one taken, two queued, at most one waiting to be put
    fetcher.close()
    assert first["observation"].shape == (16, 4)


def test_prepare_batch_names_the_bad_entry():
    data = batch()
    del data["mask"]
    with pytest.raises(ValueError, match="mask is missing"):
        prepare_batch(data, SPEC, K)
    with pytest.raises(ValueError, match=r"actions has shape \[16, 2\], expected \[16, 3\]"):
        prepare_batch(batch(), SPEC, 3)


def test_priority_sender_sends_off_thread_and_survives_failures():
    received = []
    failing = threading.Event()

    def update(keys, positions, priorities, timeout_s):
        if failing.is_set():
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
        received.append((keys.copy(), positions.copy(), priorities.copy()))

    sink = LogSink()
    metrics = TrainerMetrics()
    sender = PrioritySender(update, sink.log, metrics)
    sender(np.array([1, 2]), np.array([0, 5]), np.array([0.5, np.nan], np.float32))
    assert sender.close(timeout_s=10)
    keys, positions, priorities = received[0]
    assert keys.dtype == np.int64 and positions.dtype == np.int32
    np.testing.assert_array_equal(priorities, [0.5, 0.0])  # never a NaN priority on the wire
    assert metrics.priority_updates._value.get() == 2

    failing.set()
    sender = PrioritySender(update, sink.log, metrics)
    sender(np.array([3]), np.array([1]), np.array([1.0]))
    assert sender.close(timeout_s=10)
    assert sender.dropped == 1 and sink.events("priority_update_failed")
