"""Helpers of the replay tests: small specs and records built from NumPy."""

from __future__ import annotations

import collections

import numpy as np

from games.base import GameSpec
from protos import replay_pb2
from services.replay.records import decode_record
from services.replay.wire import GameArrays, make_game_record

# A one-player game with vector observations (like cartpole) and a two-player board game
# (like tic-tac-toe), built here so the tests do not depend on other games' modules.
ONE_PLAYER = GameSpec(name="line", observation_shape=(4,), observation_dtype="float32",
                      num_actions=2, num_players=1, discount=0.9, max_moves=500)
TWO_PLAYER = GameSpec(name="board", observation_shape=(3, 3, 2), observation_dtype="uint8",
                      num_actions=9, num_players=2, discount=1.0, max_moves=9)


def record(spec: GameSpec, id: str, T: int, rewards=None, values=None, to_play=None,
           policies=None, seed: int = 0, **fields) -> replay_pb2.GameRecord:
    """A GameRecord of T positions for `spec`; arrays not given are random but valid."""
    rng = np.random.default_rng(seed)
    A = spec.num_actions
    if spec.observation_dtype == "uint8":
        observations = rng.integers(0, 2, (T, *spec.observation_shape)).astype(np.float32)
    else:
        observations = rng.normal(size=(T, *spec.observation_shape)).astype(np.float32)
    if policies is None:
        policies = rng.dirichlet(np.ones(A), size=T).astype(np.float32)
    return make_game_record(
        id, observations, rng.integers(0, A, T),
        rng.normal(size=T) if rewards is None else np.asarray(rewards, np.float32),
        rng.normal(size=T) if values is None else np.asarray(values, np.float32),
        policies,
        to_play=(np.arange(T) % spec.num_players) if to_play is None else np.asarray(to_play),
        legal_actions=np.ones((T, A), bool), **fields)


def arrays(spec: GameSpec, message: replay_pb2.GameRecord) -> GameArrays:
    return decode_record(message, spec)


def check_parts_agree(buffer) -> None:
    """Every part's count of the live records matches a recount from the position arrays."""
    ring, selector, limiter = buffer._ring, buffer._selector, buffer._limiter
    keys = ring.live_keys()
    sampleable = int(ring.num_sampleable[ring.record_slots(keys)].sum())
    assert ring.sampleable == sampleable == len(selector) == limiter.size == buffer._sampleable_slot.sum()
    assert ring.stored == int(ring.length[ring.record_slots(keys)].sum())
    live_slots = ring.slots_of(keys)
    np.testing.assert_array_equal(buffer._key[live_slots],
                                  np.repeat(keys, ring.length[ring.record_slots(keys)]))
    expected_weights = np.zeros(buffer._C)
    mask = buffer._sampleable_slot
    expected_weights[mask] = buffer._priority[mask] ** buffer._alpha
    np.testing.assert_allclose(selector.tree.leaves, expected_weights, rtol=1e-12)
    versions = collections.Counter(int(v) for v in buffer._g_model_version[ring.record_slots(keys)])
    assert buffer.stats().games_per_model_version == dict(sorted(versions.items()))
    # the running per-record sums and counts agree with a recount from the position arrays
    g = ring.record_slots(keys)
    lengths = ring.length[g]
    starts = np.cumsum(lengths) - lengths
    if len(keys):
        np.testing.assert_allclose(buffer._g_priority_sum[g],
                                   np.add.reduceat(buffer._priority[live_slots], starts), rtol=1e-9, atol=1e-9)
        targets = buffer._targets_version[live_slots]
        done = targets >= 0
        np.testing.assert_array_equal(buffer._g_reanalysed[g], np.add.reduceat(done.astype(np.int64), starts))
        effective = np.where(done, targets, np.repeat(buffer._g_model_version[g], lengths))
        np.testing.assert_array_equal(buffer._g_targets_version[g], np.minimum.reduceat(effective, starts))
        assert buffer._reanalysed_positions == int(done.sum())
        assert buffer._reanalysed_version_sum == int(targets[done].sum())
    else:
        assert buffer._reanalysed_positions == buffer._reanalysed_version_sum == 0
