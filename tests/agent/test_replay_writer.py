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
