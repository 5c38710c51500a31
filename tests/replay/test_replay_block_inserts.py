"""Inserts that wait for the rate limiter (--block-inserts): on a real buffer and a real gRPC
server in process. Threads park in the limiter and the tests wait for that state (the limiter
notifies its condition when an inserter parks); nothing is synchronised by sleeps and nothing
asserts durations."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from protos import replay_pb2, replay_pb2_grpc
from replay_helpers import ONE_PLAYER, arrays, record
from services.common.logs import get_logger
from services.replay import metrics as replay_metrics
from services.replay.buffer import ReplayBuffer
from services.replay.client import ReplayClient
from services.replay.config import ReplayConfig
from services.replay.metrics import ReplayMetrics
from services.replay.records import ReplayError
from services.replay.server import serve

# spi 1, error buffer 4: an add of 10 positions leaves the inserts 10 ahead (> 4), so the next
# add waits until 6 positions have been sampled.
BLOCKING = dict(samples_per_insert=1.0, error_buffer=4.0, block_inserts=True)


def games(*specs: tuple[str, int]):
    return [arrays(ONE_PLAYER, record(ONE_PLAYER, id, T, seed=i)) for i, (id, T) in enumerate(specs)]


def park_add(buffer: ReplayBuffer, *specs: tuple[str, int], timeout_s=None):
    """A thread whose add waits in the rate limiter; returns once it waits, with the outcome
    list it fills ("added" / the error code) and the thread."""
    outcome: list = []

    def add() -> None:
        try:
            result = buffer.add_games(games(*specs), timeout_s=timeout_s)
            outcome.append(("added", result.added))
        except ReplayError as error:
            outcome.append(error.code)

    with buffer._changed:
        waiting = buffer.inserts_waiting
    thread = threading.Thread(target=add)
    thread.start()
    wait_until_waiting(buffer, waiting + 1)
    return thread, outcome


def wait_until_waiting(buffer: ReplayBuffer, count: int) -> None:
    with buffer._changed:
        assert buffer._changed.wait_for(lambda: buffer.inserts_waiting == count, timeout=60), \
            f"{buffer.inserts_waiting} adds wait, expected {count}"


def not_stored(buffer: ReplayBuffer, game_id: str) -> bool:
    try:
        buffer.get_game(game_id)
    except ReplayError as error:
        return error.code == "NOT_FOUND"
    return False


# --- the buffer ---------------------------------------------------------------------------------
def test_off_by_default_inserts_are_never_held(make_buffer):
    buffer = make_buffer(samples_per_insert=1.0, error_buffer=0.0)
    assert buffer.config.block_inserts is False and buffer.max_waiting_inserters == 0
    for i in range(5):  # far ahead of the ratio, nothing sampled: every add goes at once
        assert buffer.add_games(games((f"g{i}", 10)), timeout_s=0.0).added == 1
    stats = buffer.stats()
    assert (stats.block_inserts, stats.inserts_waiting, stats.insert_rate_limited_total) == (False, 0, 0)
    assert stats.games == 5
    buffer.sample(5)  # B > 2 x error_buffer is fine while inserts never wait


def test_block_inserts_without_a_ratio_never_holds(make_buffer):
    buffer = make_buffer(samples_per_insert=0.0, block_inserts=True)
    for i in range(3):
        buffer.add_games(games((f"g{i}", 10)), timeout_s=0.0)
    assert buffer.stats().block_inserts is False and buffer.num_games == 3


def test_an_insert_waits_while_ahead_and_goes_once_enough_is_sampled(make_buffer):
    buffer = make_buffer(**BLOCKING)
    assert buffer.add_games(games(("a", 10)), timeout_s=0.0).added == 1  # nothing stored: goes
    thread, outcome = park_add(buffer, ("b", 10))
    assert not_stored(buffer, "b") and buffer.stats().inserts_waiting == 1
    buffer.sample(4)  # D = 10 - 4 = 6 > 4: wakes it, still held
    with buffer._changed:
        assert buffer.inserts_waiting == 1 and outcome == []
    assert not_stored(buffer, "b")
    buffer.sample(2)  # D = 4 <= 4: it goes, whole
    thread.join(60)
    assert outcome == [("added", 1)]
    stats = buffer.stats()
    assert (stats.games, stats.inserts_total, stats.samples_total) == (2, 20, 6)
    assert (stats.block_inserts, stats.inserts_waiting, stats.insert_rate_limited_total) == (True, 0, 1)


def test_a_held_insert_at_its_deadline_stores_nothing_and_names_the_state(tmp_path):
    class Stepping:  # each reading 0.3 s after the last
        now = 0.0

        def __call__(self):
            self.now += 0.3
            return self.now

    waits = []
    config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path / "r"), capacity=1000,
                          min_positions=0, seed=0, **BLOCKING)
    with ReplayBuffer(config, clock=Stepping(), on_insert_wait=waits.append) as buffer:
        buffer.add_games(games(("a", 10)))
        with pytest.raises(ReplayError) as error:
            buffer.add_games(games(("b", 7), ("c", 3)), timeout_s=0.5)
        assert error.value.code == "DEADLINE_EXCEEDED"
        message = error.value.message
        assert message.startswith("rate limiter: waited ") and "inserting is still not allowed" in message
        assert ("samples_per_insert * (10 inserted - min_positions=0) > 0 positions sampled + "
                "error_buffer=4") in message
        assert not_stored(buffer, "b") and not_stored(buffer, "c")
        stats = buffer.stats()
        assert (stats.games, stats.inserts_total, stats.inserts_waiting) == (1, 10, 0)
        assert stats.insert_rate_limited_total == 1 and len(waits) == 1
    with ReplayBuffer(config) as reopened:  # nothing of it on disk either
        assert reopened.num_games == 1 and not_stored(reopened, "b")


def test_a_duplicate_only_add_never_waits(make_buffer):
    buffer = make_buffer(capacity=15, **BLOCKING)
    buffer.add_games(games(("a", 10)))  # D = 10 > 4: a new record would wait
    again = buffer.add_games(games(("a", 10)), timeout_s=0.0)
    assert (again.added, again.duplicates) == (0, 1)
    buffer.sample(6)  # D = 4
    buffer.add_games(games(("b", 10)), timeout_s=0.0)  # evicts a (capacity 15), D = 14
    assert not_stored(buffer, "a")
    remembered = buffer.add_games(games(("a", 10), ("b", 10)), timeout_s=0.0)  # evicted, remembered
    assert (remembered.added, remembered.duplicates) == (0, 2)
    assert buffer.stats().insert_rate_limited_total == 0
    with pytest.raises(ReplayError) as error:  # one new record among duplicates: it waits
        buffer.add_games(games(("b", 10), ("c", 2)), timeout_s=0.0)
    assert error.value.code == "DEADLINE_EXCEEDED" and not_stored(buffer, "c")


def test_release_waiters_answers_a_waiting_insert_unavailable(make_buffer):
    buffer = make_buffer(**BLOCKING)
    buffer.add_games(games(("a", 10)))
    thread, outcome = park_add(buffer, ("b", 10))
    buffer.release_waiters()
    thread.join(60)
    assert outcome == ["UNAVAILABLE"] and not_stored(buffer, "b")


def test_waiting_inserters_are_bounded_and_keep_a_thread_free(make_buffer):
    buffer = make_buffer(max_workers=3, **BLOCKING)  # 1 waiting sampler, 1 waiting inserter
    assert (buffer.max_waiting_samplers, buffer.max_waiting_inserters) == (1, 1)
    buffer.add_games(games(("a", 10)))
    thread, outcome = park_add(buffer, ("b", 10))
    with pytest.raises(ReplayError) as error:
        buffer.add_games(games(("c", 10)), timeout_s=60)
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert error.value.message.startswith("rate limiter: 1 AddGames calls are already waiting")
    buffer.release_waiters()
    thread.join(60)
    assert outcome == ["UNAVAILABLE"]


@pytest.mark.parametrize("workers, samplers, inserters", [(3, 1, 1), (4, 2, 1), (8, 4, 3), (16, 8, 7)])
def test_the_thread_budget_always_leaves_one_thread_that_never_waits(tmp_path, workers, samplers,
                                                                     inserters):
    config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path), capacity=10, max_workers=workers,
                          **BLOCKING)
    assert (config.waiting_samplers, config.waiting_inserters) == (samplers, inserters)
    assert samplers + inserters <= workers - 1


def test_the_setting_flows_from_the_game_and_the_flag(tmp_path):
    from games.base import MuZeroSettings
    from games.settings import ReplaySettings
    from services.replay.__main__ import parse_args

    settings = MuZeroSettings.of(architecture="fc", hidden_size=8, discount=0.9)
    settings = type(settings)(**{**settings.__dict__, "replay": ReplaySettings(
        samples_per_insert=100.0, block_inserts=True)})
    config = ReplayConfig.for_game(ONE_PLAYER, str(tmp_path), settings)
    assert (config.block_inserts, config.inserts_may_block) == (True, True)
    assert config.error_buffer == 10 * settings.training.batch_size  # >= B / 2
    assert ReplaySettings().block_inserts is False
    args = ["--game", "cartpole", "--data-dir", str(tmp_path)]
    assert parse_args(args).block_inserts is False
    flagged = parse_args(args + ["--block-inserts", "--samples-per-insert", "50"])
    assert (flagged.block_inserts, flagged.inserts_may_block) == (True, True)


def test_block_inserts_needs_three_workers(tmp_path):
    with pytest.raises(ValueError, match="max_workers must be >= 3 with block_inserts"):
        ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path), capacity=10, max_workers=2, **BLOCKING)
    ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path), capacity=10, max_workers=2,
                 block_inserts=True)  # no ratio: nothing waits, any thread count


def test_a_batch_over_twice_the_error_buffer_is_refused_while_inserts_may_wait(make_buffer):
    buffer = make_buffer(**BLOCKING)
    buffer.add_games(games(("a", 10)))
    with pytest.raises(ReplayError) as error:
        buffer.sample(9)
    assert error.value.code == "INVALID_ARGUMENT"
    assert "batch_size: B = 9 > 2 x error_buffer = 8" in error.value.message
    assert "--error-buffer >= 4.5" in error.value.message
    assert buffer.sample(8).target_value.shape[0] == 8  # B = 2 E: allowed


@pytest.mark.parametrize("B, error_buffer", [(8, 4.0), (8, 40.0), (5, 2.5)])
def test_a_trainer_and_an_agent_never_deadlock_and_the_ratio_stays_in_bounds(make_buffer, B,
                                                                             error_buffer):
    """One trainer-like sampler (batch B) and one inserter (records of 1..12 positions) run a
    fixed amount of work to its end; every state either sees lies within the bounds
    -E <= D <= E + S * 12, D = S * (inserts - m) - samples, once sampling has begun."""
    S, m, N, longest = 3.0, 10, 60, 12
    buffer = make_buffer(capacity=100_000, min_positions=m, samples_per_insert=S,
                         error_buffer=error_buffer, block_inserts=True, synchronous="NORMAL")
    E = error_buffer
    # enough inserts for N samples: S * (inserts - m) + E >= N * B
    needed = m + (N * B - E) / S
    sizes = np.random.default_rng(0).integers(1, longest + 1, 10_000).tolist()
    errors: list = []
    states: list = []

    def look() -> None:
        with buffer._lock:
            rl = buffer._limiter
            states.append((rl.size, rl.inserts, rl.samples))

    def trainer() -> None:
        try:
            for _ in range(N):
                buffer.sample(B, timeout_s=120)
                look()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(("trainer", repr(error)))

    def agent() -> None:
        try:
            inserted, i = 0, 0
            while inserted < needed:
                inserted += buffer.add_games(games((f"g{i}", sizes[i])), timeout_s=120).positions_added
                i += 1
                look()
        except BaseException as error:  # noqa: BLE001
            errors.append(("agent", repr(error)))

    threads = [threading.Thread(target=agent), threading.Thread(target=trainer)]
    threads[0].start()
    wait_until_waiting(buffer, 1)  # the agent ran ahead and is held: now the trainer starts
    threads[1].start()
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads), "the trainer or the agent is stuck"
    assert not errors, errors
    stats = buffer.stats()
    assert stats.samples_total == N * B and stats.inserts_total >= needed
    assert stats.insert_rate_limited_total >= 1  # the agent was held back (at least at first)
    for size, inserts, samples in states:
        if samples:
            D = S * (inserts - m) - samples
            assert -E <= D <= E + S * longest, (size, inserts, samples)


def test_restart_starts_balanced_neither_blocking_forever_nor_unbounded(make_buffer, tmp_path):
    data = tmp_path / "restart"
    first = make_buffer(data_dir=data, min_positions=5, **BLOCKING)
    first.add_games(games(("a", 10)))  # D = 5 > 4: the next add would wait
    with pytest.raises(ReplayError):
        first.add_games(games(("b", 10)), timeout_s=0.0)
    first.close()
    restarted = make_buffer(data_dir=data, min_positions=5, **BLOCKING)
    rl = restarted._limiter
    assert (rl.size, rl.inserts, rl.samples) == (10, 10.0, 5.0)  # D = 0
    assert restarted.add_games(games(("b", 10)), timeout_s=0.0).added == 1  # goes at once
    with pytest.raises(ReplayError) as error:  # ... and the one after waits for the trainer
        restarted.add_games(games(("c", 10)), timeout_s=0.0)
    assert error.value.code == "DEADLINE_EXCEEDED"
    restarted.sample(8)  # the trainer may go: D = 10 >= B - E
    restarted.sample(2)  # D = 0
    assert restarted.add_games(games(("c", 10)), timeout_s=0.0).added == 1
    restarted.close()
    # a replay restarted below the minimum lets every insert go until it is reached
    below = make_buffer(data_dir=tmp_path / "below", min_positions=50, **BLOCKING)
    below.add_games(games(("x", 10)))
    below.close()
    reopened = make_buffer(data_dir=tmp_path / "below", min_positions=50, **BLOCKING)
    for i in range(4):
        reopened.add_games(games((f"y{i}", 10)), timeout_s=0.0)
    assert reopened.num_positions == 50  # the minimum is reached with D = 0: one more goes
    assert reopened.add_games(games(("z", 10)), timeout_s=0.0).added == 1
    with pytest.raises(ReplayError) as held:  # D = 10 > 4: held until the trainer samples
        reopened.add_games(games(("w", 10)), timeout_s=0.0)
    assert held.value.code == "DEADLINE_EXCEEDED"


# --- the gRPC server ----------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    registry = CollectorRegistry()
    config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path / "replay"), capacity=10_000,
                          min_positions=0, seed=0, port=0, metrics_port=0, discount=0.9,
                          max_workers=4, **BLOCKING)
    server = serve(config, get_logger("replay"), ReplayMetrics(registry))
    server.registry = registry
    try:
        yield server
    finally:
        server.stop(0)


def test_samples_priorities_targets_and_stats_go_on_while_an_add_waits(server):
    buffer = server.buffer
    with ReplayClient(server.address, timeout_s=60) as client:
        client.add_games([record(ONE_PLAYER, "a", 10)])
        outcome: list = []
        adder = threading.Thread(target=lambda: outcome.append(
            client.add_games([record(ONE_PLAYER, "b", 10)], timeout_s=120).added))
        adder.start()
        wait_until_waiting(buffer, 1)
        stats = client.get_stats()
        assert (stats.block_inserts, stats.inserts_waiting, stats.games) == (True, 1, 1)
        assert server.registry.get_sample_value(replay_metrics.INSERTS_WAITING) == 1
        batch = client.sample_batch(4)  # D = 6: the add still waits
        assert client.update_priorities(batch.record_keys, batch.positions,
                                        np.full(4, 2.0)) == (4, 0)
        updated = client.update_targets("a", np.arange(3), np.zeros(3, np.float32),
                                        np.full((3, 2), 0.5, np.float32), model_version=1)
        assert tuple(updated) == (3, 0)
        assert [g.game.id for g in client.sample_games(5)] == ["a"]
        assert client.get_stats().inserts_waiting == 1 and outcome == []
        client.sample_batch(2)  # D = 4: the add goes
        adder.join(60)
        assert outcome == [1]
        stats = client.get_stats()
        assert (stats.games, stats.inserts_waiting, stats.insert_rate_limited_total) == (2, 0, 1)
    assert server.registry.get_sample_value(replay_metrics.INSERTS_WAITING) == 0
    assert server.registry.get_sample_value(replay_metrics.INSERT_RATE_LIMITED_TOTAL) == 1
    assert server.registry.get_sample_value(replay_metrics.INSERT_WAIT_SECONDS + "_count") == 1


def test_a_held_add_fails_at_its_deadline_with_the_state_and_stores_nothing(server):
    with ReplayClient(server.address, timeout_s=60) as client:
        client.add_games([record(ONE_PLAYER, "a", 10)])
        with pytest.raises(grpc.RpcError) as error:
            client.add_games([record(ONE_PLAYER, "b", 10)], timeout_s=0.5)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.value.details().startswith("rate limiter: waited ")
        assert "inserting is still not allowed: samples_per_insert=1" in error.value.details()
        stats = client.get_stats()
        assert (stats.games, stats.inserts_total) == (1, 10)


def test_shutdown_answers_a_waiting_add_unavailable(tmp_path):
    config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path / "replay"), capacity=1000,
                          min_positions=0, port=0, metrics_port=0, discount=0.9, max_workers=4,
                          **BLOCKING)
    server = serve(config, get_logger("replay"), ReplayMetrics(CollectorRegistry()))
    channel = grpc.insecure_channel(server.address)  # no retries: the first answer is seen
    stub = replay_pb2_grpc.ReplayStub(channel)
    try:
        stub.AddGames(replay_pb2.AddGamesRequest(games=[record(ONE_PLAYER, "a", 10)]), timeout=60)
        codes: list = []

        def add() -> None:
            try:
                stub.AddGames(replay_pb2.AddGamesRequest(games=[record(ONE_PLAYER, "b", 10)]),
                              timeout=120)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code())

        adder = threading.Thread(target=add)
        adder.start()
        wait_until_waiting(server.buffer, 1)
        server.stop(10)
        adder.join(60)
        assert codes == [grpc.StatusCode.UNAVAILABLE]
    finally:
        channel.close()
        server.stop(0)
    with ReplayBuffer(config) as reopened:
        assert reopened.num_games == 1 and not_stored(reopened, "b")
