"""ReplayWriter's failure policy: permanent failures are not retried, a stop ends back-pressure,
close keeps its grace period."""

from __future__ import annotations

import threading

import grpc
import pytest

from protos import replay_pb2
from services.agent.replay_writer import ReplayWriter
from services.common.failures import PermanentFailure, RetryPolicy
from tests.agent.agent_fakes import FakeRpcError, LogSink

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


def wait_for(condition, timeout_s: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met")


def records(*ids: str) -> list[replay_pb2.GameRecord]:
    return [replay_pb2.GameRecord(id=i) for i in ids]


def test_a_permanent_failure_is_not_retried_and_the_next_put_raises_it():
    calls = []

    def add_games(batch, timeout_s):
        calls.append([r.id for r in batch])
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           "games[0].observations: T = 900 positions exceed the server's capacity 500")

    sink = LogSink()
    writer = ReplayWriter(add_games, sink.log, policy=FAST, address="127.0.0.1:50001")
    writer.put(records("a", "b"))
    wait_for(lambda: writer.failure is not None)
    with pytest.raises(PermanentFailure) as raised:
        writer.put(records("c"))
    failure = raised.value
    assert (failure.peer, failure.method, failure.code, failure.address) == (
        "replay", "AddGames", "INVALID_ARGUMENT", "127.0.0.1:50001")
    assert "--capacity" in failure.hint and "--game" in failure.hint
    assert calls == [["a", "b"]], "INVALID_ARGUMENT must not be sent again"
    assert writer.close(timeout_s=1.0) == 3  # a, b and c stayed unsent, and are counted
    assert not sink.events("replay_add_failed")  # that event is for retries


def test_internal_is_permanent_too():
    writer = ReplayWriter(lambda batch, timeout_s: (_ for _ in ()).throw(
        FakeRpcError(grpc.StatusCode.INTERNAL, "AddGames failed: KeyError")), LogSink().log, policy=FAST)
    writer.put(records("a"))
    writer.close(timeout_s=5.0)
    assert writer.failure is not None and writer.failure.code == "INTERNAL"


def test_a_stop_releases_a_put_held_by_back_pressure():
    def unavailable(batch, timeout_s):
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    stop = threading.Event()
    writer = ReplayWriter(unavailable, LogSink().log, max_pending=2, policy=FAST, stop=stop)
    writer.put(records("a", "b"))
    blocked = threading.Thread(target=writer.put, args=(records("c", "d"),))
    blocked.start()
    stop.set()
    blocked.join(30)
    assert not blocked.is_alive(), "put must return once the stop event is set"
    assert writer.close(timeout_s=0.2) == 4  # the replay stayed down: all four unsent, counted


def test_close_cuts_calls_to_its_grace_period():
    timeouts = []
    never = threading.Event()

    def add_games(batch, timeout_s):
        timeouts.append(timeout_s)
        if timeout_s > 1000:  # before close: the replay is down (fails at once)
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        never.wait(timeout_s)  # while closing: a replay that takes each call's whole deadline
        raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    writer = ReplayWriter(add_games, LogSink().log, policy=FAST, call_timeout_s=3600.0)
    writer.put(records("a"))
    wait_for(lambda: timeouts)
    assert writer.close(timeout_s=0.5) == 1
    cut = [t for t in timeouts if t <= 1000]
    assert cut and all(t <= 0.5 for t in cut), timeouts
    assert all(t == 3600.0 for t in timeouts if t > 1000)


def test_a_bug_in_add_games_ends_the_writer_with_a_failure_not_a_silent_thread():
    def broken(batch, timeout_s):
        raise KeyError("oops")

    sink = LogSink()
    writer = ReplayWriter(broken, sink.log, policy=FAST)
    writer.put(records("a"))
    assert writer.close(timeout_s=5.0) == 1
    assert writer.failure is not None and "KeyError" in writer.failure.details
    assert sink.events("replay_writer_failed")


# grpcio's refusal of a request over the server's max_receive_message_length, as a real
# ServiceServer answers it (tests/common/test_service_server.py checks the code).
TOO_LARGE = "SERVER: Received message larger than max (5242990 vs. 4194304)"


def test_a_call_too_large_for_the_replay_is_split_and_every_record_acknowledged():
    calls = []

    def add_games(batch, timeout_s):
        calls.append(len(batch))
        if len(batch) > 3:
            raise FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE)

    sink = LogSink()
    writer = ReplayWriter(add_games, sink.log, policy=FAST, max_records_per_call=16)
    writer.put(records(*[f"r{i}" for i in range(16)]))
    assert writer.close(timeout_s=10.0) == 0 and writer.acked == 16 and writer.failure is None
    assert calls[:3] == [16, 8, 4] and set(calls[3:]) <= {3, 2, 1} and sum(calls[3:]) == 16
    assert [e["records_per_call"] for e in sink.events("replay_add_split")] == [8, 4, 2]


def test_one_record_too_large_for_the_replay_is_a_permanent_failure():
    def add_games(batch, timeout_s):
        raise FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE)

    writer = ReplayWriter(add_games, LogSink().log, policy=FAST, max_records_per_call=2)
    writer.put(records("a", "b"))
    wait_for(lambda: writer.failure is not None)
    assert writer.failure.code == "RESOURCE_EXHAUSTED"
    assert "--max-receive-bytes" in writer.failure.hint and "--chunk-length" in writer.failure.hint
    assert writer.close(timeout_s=1.0) == 2
