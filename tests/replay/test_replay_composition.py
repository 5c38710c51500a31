"""How the buffer composes its parts: ring, selector, rate limiter and running counters stay in
step through adds, evictions and restarts, and the sample read outside the lock is checked."""

from __future__ import annotations

import numpy as np
import pytest

from replay_helpers import ONE_PLAYER, arrays, check_parts_agree, record
from services.replay.buffer import ReplayBuffer
from services.replay.config import ReplayConfig


def add(buffer, *messages):
    return buffer.add_games([arrays(buffer.spec, m) for m in messages])


def test_parts_agree_through_adds_evictions_updates_and_a_restart(make_buffer, tmp_path):
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "replay"
    buffer = make_buffer(data_dir=data_dir, capacity=300)
    for i in range(60):
        T = int(rng.integers(1, 40))
        ns = int(rng.integers(1, T + 1))
        add(buffer, *[record(ONE_PLAYER, f"g{i}-{j}", T, seed=i, num_sampleable=ns,
                             terminated=ns == T, model_version=i % 4) for j in range(rng.integers(1, 4))])
        batch = buffer.sample(32)
        buffer.update_priorities(batch.record_keys, batch.positions, rng.random(32) * 10)
        stored = buffer.sample_games(1, order="oldest_targets_first")[0]
        T = stored.game.length
        chosen = rng.choice(T, int(rng.integers(1, T + 1)), replace=False)
        buffer.update_targets(stored.game.id, chosen, rng.normal(size=len(chosen)),
                              np.full((len(chosen), 2), 0.5), int(rng.integers(0, 8)))
        check_parts_agree(buffer)
    buffer.close()
    reopened = make_buffer(data_dir=data_dir, capacity=200)  # smaller: evicts at start
    check_parts_agree(reopened)
    assert reopened.stored_positions <= 200


def test_update_priorities_with_repeated_pairs_keeps_the_last(make_buffer):
    buffer = make_buffer()
    key = add(buffer, record(ONE_PLAYER, "g", 3)).keys[0]
    buffer.update_priorities(np.array([key, key, key]), np.array([1, 1, 2]), np.array([5.0, 0.5, 2.0]))
    np.testing.assert_array_equal(buffer.priorities("g"), [1.0, 0.5, 2.0])
    check_parts_agree(buffer)
    assert buffer.stats().max_priority == 5.0  # the running max saw every value sent


class RacingBuffer(ReplayBuffer):
    """A buffer in which a write lands between a sample's draw and its gather, as another
    thread's would (the gather runs outside the lock)."""

    race = None

    def _gather(self, *args, **kwargs):
        race, self.race = self.race, None
        if race is not None:
            race()
        return super()._gather(*args, **kwargs)


@pytest.fixture
def racing(tmp_path):
    opened = []

    def make(**fields) -> RacingBuffer:
        fields = {"min_positions": 0, "seed": 0, "discount": ONE_PLAYER.discount, **fields}
        config = ReplayConfig(spec=ONE_PLAYER, data_dir=str(tmp_path / f"r{len(opened)}"), **fields)
        opened.append(RacingBuffer(config))
        return opened[-1]

    yield make
    for buffer in opened:
        buffer.close()


def stored_observations(buffer, batch) -> np.ndarray:
    by_key = {g.key: g.game for g in buffer.sample_games(1000)}
    return np.stack([by_key[k].observations[p] for k, p in zip(batch.record_keys, batch.positions)])


def test_a_sample_whose_records_are_overwritten_during_the_gather_is_drawn_again(racing):
    buffer = racing(capacity=20)
    add(buffer, record(ONE_PLAYER, "old", 10, seed=1))
    add(buffer, record(ONE_PLAYER, "mid", 10, seed=2))
    # the race: two adds evict both records and overwrite all 20 slots with new ones
    buffer.race = lambda: (add(buffer, record(ONE_PLAYER, "new1", 10, seed=3)),
                           add(buffer, record(ONE_PLAYER, "new2", 10, seed=4)))
    batch = buffer.sample(64)
    assert buffer.sample_retries == 1
    live = {g.key for g in buffer.sample_games(10)}
    assert set(batch.record_keys.tolist()) <= live  # drawn again from what is stored now
    np.testing.assert_array_equal(batch.observation, stored_observations(buffer, batch))


def test_a_write_elsewhere_in_the_ring_does_not_force_a_retry(racing):
    buffer = racing(capacity=100)
    add(buffer, record(ONE_PLAYER, "a", 10, seed=1))
    buffer.race = lambda: add(buffer, record(ONE_PLAYER, "b", 10, seed=2))  # free slots only
    batch = buffer.sample(64)
    assert buffer.sample_retries == 0
    np.testing.assert_array_equal(batch.observation, stored_observations(buffer, batch))


def test_targets_rewritten_during_the_gather_force_a_retry(racing):
    buffer = racing(capacity=100, num_unroll_steps=1, td_steps=1, discount=0.5)
    add(buffer, record(ONE_PLAYER, "g", 3, rewards=[1, 1, 1], values=[0, 0, 0]))
    buffer.race = lambda: buffer.update_targets("g", np.array([1]), np.array([4.0]),
                                                np.array([[0.9, 0.1]]), 3)
    batch = buffer.sample(256)
    assert buffer.sample_retries == 1
    # z_0 = r_0 + 0.5 v_1 with the new v_1 = 4: the batch saw the update whole
    np.testing.assert_allclose(batch.target_value[batch.positions == 0, 0], 3.0)


class CallContext:
    """What a servicer reads of a gRPC call's context in these tests."""

    def time_remaining(self) -> float:
        return 30.0

    def abort(self, code, details):
        raise AssertionError(f"the call was aborted: {code} {details}")


def test_the_servicer_counts_a_retried_sample_in_its_metrics(racing):
    from prometheus_client import CollectorRegistry

    from protos import replay_pb2
    from services.common.logs import get_logger
    from services.replay import metrics as replay_metrics
    from services.replay.metrics import ReplayMetrics
    from services.replay.server import ReplayServicer

    buffer = racing(capacity=20)
    add(buffer, record(ONE_PLAYER, "old", 10, seed=1))
    add(buffer, record(ONE_PLAYER, "mid", 10, seed=2))
    registry = CollectorRegistry()
    servicer = ReplayServicer(buffer, get_logger("replay"), ReplayMetrics(registry))
    buffer.race = lambda: (add(buffer, record(ONE_PLAYER, "new1", 10, seed=3)),
                           add(buffer, record(ONE_PLAYER, "new2", 10, seed=4)))
    servicer.SampleBatch(replay_pb2.SampleBatchRequest(batch_size=8), CallContext())
    assert registry.get_sample_value(replay_metrics.SAMPLE_RETRIES_TOTAL) == 1
    servicer.SampleBatch(replay_pb2.SampleBatchRequest(batch_size=8), CallContext())  # no race
    assert registry.get_sample_value(replay_metrics.SAMPLE_RETRIES_TOTAL) == 1
