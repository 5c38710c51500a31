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


# --- a replay that holds adds back (--block-inserts) ----------------------------------------------
HELD = "rate limiter: waited 0.45s and inserting is still not allowed: samples_per_insert=2: ..."
TOO_MANY_HELD = "rate limiter: 3 AddGames calls are already waiting (the most allowed); ..."


@pytest.mark.parametrize("details, code", [(HELD, grpc.StatusCode.DEADLINE_EXCEEDED),
                                           (TOO_MANY_HELD, grpc.StatusCode.RESOURCE_EXHAUSTED)])
def test_a_held_back_add_is_normal_operation_not_a_failure(details, code):
    """Held back by the replay's rate limiter: sent again (never given up on, even by a policy
    that gives up at once), not a failure, and two info events instead of a warning a call."""
    answers = [FakeRpcError(code, details)] * 5
    calls, failures, held = [], [], []

    def add_games(batch, timeout_s):
        calls.append([r.id for r in batch])
        if answers:
            raise answers.pop()

    sink = LogSink()
    writer = ReplayWriter(add_games, sink.log, on_failure=failures.append,
                          on_held_back=lambda: held.append(1),
                          policy=RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01,
                                             give_up_after_s=0.0))
    writer.put(records("a"))
    assert writer.close(timeout_s=30.0) == 0 and writer.acked == 1 and writer.failure is None
    assert calls == [["a"]] * 6 and writer.held_back == 5 and len(held) == 5 and failures == []
    assert not sink.events("replay_add_failed")
    [first] = sink.events("replay_add_held_back")
    assert (first["code"], first["records"]) == (code.name, 1)
    [resumed] = sink.events("replay_add_resumed")
    assert resumed["held_calls"] == 5


def test_a_plain_deadline_is_still_a_failure():
    answers = [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]

    def add_games(batch, timeout_s):
        if answers:
            raise answers.pop()

    sink = LogSink()
    writer = ReplayWriter(add_games, sink.log, policy=FAST)
    writer.put(records("a"))
    assert writer.close(timeout_s=30.0) == 0 and writer.held_back == 0
    assert len(sink.events("replay_add_failed")) == 1 and not sink.events("replay_add_held_back")


def test_self_play_pauses_and_resumes_against_a_real_replay_that_blocks_inserts(tmp_path):
    """A real replay with --block-inserts holds the writer's adds while no trainer samples:
    `put` blocks (max_pending), the held calls end DEADLINE_EXCEEDED and are sent again; once a
    sampler catches up every record arrives exactly once."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from games.base import GameSpec
    from services.common.logs import get_logger
    from services.replay.client import ReplayClient
    from services.replay.config import ReplayConfig
    from services.replay.metrics import ReplayMetrics
    from services.replay.server import serve
    from services.replay.wire import make_game_record

    spec = GameSpec(name="line", observation_shape=(4,), observation_dtype="float32",
                    num_actions=2, num_players=1, discount=0.9, max_moves=500)
    config = ReplayConfig(spec=spec, data_dir=str(tmp_path / "replay"), capacity=100_000,
                          min_positions=0, seed=0, port=0, metrics_port=0, discount=0.9,
                          max_workers=4, samples_per_insert=2.0, error_buffer=4.0,
                          block_inserts=True)
    server = serve(config, get_logger("replay"), ReplayMetrics(CollectorRegistry()))
    buffer, limiter = server.buffer, server.buffer._limiter
    T, N, max_pending = 10, 8, 2
    rng = np.random.default_rng(0)

    def game(i: int):
        return make_game_record(f"r{i}", rng.normal(size=(T, 4)).astype(np.float32),
                                np.zeros(T, np.int32), np.zeros(T, np.float32),
                                np.zeros(T, np.float32), np.full((T, 2), 0.5, np.float32))

    client = ReplayClient(server.address, timeout_s=30)
    sink = LogSink()
    writer = ReplayWriter(client.add_games, sink.log, max_pending=max_pending,
                          max_records_per_call=1, policy=FAST, call_timeout_s=0.5)
    put: list[int] = []
    try:
        producer = threading.Thread(target=lambda: [put.append(writer.put([game(i)]) or i)
                                                    for i in range(N)])
        producer.start()
        # Self-play ran ahead: the first add went, the second was held to its deadline
        # (DEADLINE_EXCEEDED) and sent again, and is held again now.
        with buffer._changed:
            assert buffer._changed.wait_for(
                lambda: limiter.insert_waited_total >= 2 and limiter.inserts_waiting == 1, timeout=60)
        assert buffer.num_games == 1
        with writer._cond:  # back-pressure: put returns only while max_pending are unacked
            assert len(put) <= writer.acked + max_pending and len(put) < N
        assert producer.is_alive()

        def trainer() -> None:  # samples until every record is stored
            while buffer.num_games < N:
                try:
                    client.sample_batch(8, timeout_s=1.0)
                except grpc.RpcError as error:  # caught up with self-play: wait for an add
                    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error

        sampler = threading.Thread(target=trainer)
        sampler.start()
        producer.join(120)
        sampler.join(120)
        assert not producer.is_alive() and not sampler.is_alive()
        assert writer.close(timeout_s=30.0) == 0
        assert writer.acked == N and writer.failure is None and writer.held_back >= 1
        stats = client.get_stats()
        assert (stats.games, stats.games_added_total, stats.duplicates_total) == (N, N, 0)
        assert len({buffer.get_game(f"r{i}").key for i in range(N)}) == N  # each once
        assert sink.events("replay_add_held_back") and not sink.events("replay_add_failed")
    finally:
        writer.close(timeout_s=1.0)
        client.close()
        server.stop(0)
