"""Training targets against hand-computed small games (in-process, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from replay_helpers import ONE_PLAYER, TWO_PLAYER, arrays, record
from services.replay.buffer import ReplayBuffer
from services.replay.targets import off_policy_td_steps, reward_targets, value_targets
from services.replay.wire import batch_from_proto, batch_to_proto


def targets_by_position(buffer: ReplayBuffer, batches: int = 8, batch_size: int = 64, **kwargs):
    """{(record key, position): (value, reward, mask, policy_mask, policy, actions, obs)} over
    several batches; the same position must always get the same targets."""
    table = {}
    for _ in range(batches):
        b = buffer.sample(batch_size, **kwargs)
        for i in range(batch_size):
            key = (int(b.record_keys[i]), int(b.positions[i]))
            row = (b.target_value[i], b.target_reward[i], b.mask[i], b.policy_mask[i],
                   b.target_policy[i], b.observation[i])
            if key in table:
                for seen, now in zip(table[key], row):
                    np.testing.assert_array_equal(seen, now)
            table[key] = row
    return table


def one_game(make_buffer, spec, message, **config) -> tuple[ReplayBuffer, int]:
    buffer = make_buffer(spec, **config)
    result = buffer.add_games([arrays(spec, message)])
    return buffer, result.keys[0]


# --- one player, discount 0.9, n = 2, K = 2, a 4-step game ----------------------------------
# rewards r = [1, 2, 3, 4], root values v = [10, 20, 30, 40].
# Terminated: z_u = r_u + 0.9 r_{u+1} + 0.81 v_{u+2}, the bootstrap dropped at or past the end:
#   z_0 = 1 + 1.8 + 0.81 * 30 = 27.1     z_1 = 2 + 2.7 + 0.81 * 40 = 37.1
#   z_2 = 3 + 0.9 * 4 = 6.6 (u+2 = 4 = T) z_3 = 4 (one reward left)   z_4.. = 0 (past the end)
R, V = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]
TERMINATED_Z = [27.1, 37.1, 6.6, 4.0, 0.0, 0.0]
# Not terminated (cut): the bootstrap moves back to the last stored position, T-1 = 3:
#   z_2 = 3 + 0.9 * v_3 = 39,  z_3 = v_3 = 40.
TRUNCATED_Z = [27.1, 37.1, 39.0, 40.0, 0.0, 0.0]


@pytest.mark.parametrize("terminated, z", [(True, TERMINATED_Z), (False, TRUNCATED_Z)])
def test_one_player_n_step_targets_by_hand(make_buffer, terminated, z):
    buffer, key = one_game(make_buffer, ONE_PLAYER,
                           record(ONE_PLAYER, "g", 4, rewards=R, values=V, terminated=terminated),
                           num_unroll_steps=2, td_steps=2, discount=0.9)
    table = targets_by_position(buffer)
    assert set(table) == {(key, t) for t in range(4)}
    rewards_after = R + [0.0, 0.0]
    for t in range(4):
        value, reward, mask, policy_mask, policy, _ = table[key, t]
        np.testing.assert_allclose(value, z[t:t + 3], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(reward, [0.0, rewards_after[t], rewards_after[t + 1]])
        expected_mask = [1.0 if t + k < 4 else 0.0 for k in range(3)]
        np.testing.assert_array_equal(mask, expected_mask)
        np.testing.assert_array_equal(policy_mask, expected_mask)
        for k in range(3):
            if t + k >= 4:  # past the end: uniform policy target
                np.testing.assert_allclose(policy[k], [0.5, 0.5])


def test_request_overrides_k_n_and_discount(make_buffer):
    buffer, key = one_game(make_buffer, ONE_PLAYER, record(ONE_PLAYER, "g", 4, rewards=R, values=V),
                           num_unroll_steps=5, td_steps=10, discount=0.5)
    b = buffer.sample(32, num_unroll_steps=2, td_steps=2, discount=0.9)
    assert b.target_value.shape == (32, 3) and b.actions.shape == (32, 2)
    assert (b.num_unroll_steps, b.td_steps) == (2, 2) and b.discount == pytest.approx(0.9)
    for i in range(32):
        t = b.positions[i]
        np.testing.assert_allclose(b.target_value[i], TERMINATED_Z[t:t + 3], rtol=1e-6, atol=1e-5)


def test_value_prefix_is_the_running_sum_of_rewards(make_buffer):
    buffer, key = one_game(make_buffer, ONE_PLAYER, record(ONE_PLAYER, "g", 4, rewards=R, values=V),
                           num_unroll_steps=3, td_steps=2, discount=0.9, value_prefix=True)
    table = targets_by_position(buffer)
    expected = {0: [0, 1, 3, 6], 1: [0, 2, 5, 9], 2: [0, 3, 7, 7], 3: [0, 4, 4, 4]}
    for t, prefix in expected.items():
        np.testing.assert_allclose(table[key, t][1], prefix)
    assert buffer.sample(4).value_prefix


def test_value_prefix_restarts_every_horizon_steps(make_buffer):
    # H = 2: k = 1, 2 sum from the unroll's start; k = 3 starts again (EfficientZero's reset).
    buffer, key = one_game(make_buffer, ONE_PLAYER, record(ONE_PLAYER, "g", 4, rewards=R, values=V),
                           num_unroll_steps=3, td_steps=2, discount=0.9, value_prefix=True,
                           value_prefix_horizon=2)
    table = targets_by_position(buffer)
    expected = {0: [0, 1, 3, 3], 1: [0, 2, 5, 4], 2: [0, 3, 7, 0], 3: [0, 4, 4, 0]}
    for t, prefix in expected.items():
        np.testing.assert_allclose(table[key, t][1], prefix)
    # The batch says H, over the wire too, so a trainer that resets elsewhere can refuse it.
    sampled = buffer.sample(4)
    assert sampled.value_prefix_horizon == 2
    assert batch_from_proto(batch_to_proto(sampled)).value_prefix_horizon == 2


def test_a_batch_without_value_prefix_says_horizon_0(make_buffer):
    buffer, _key = one_game(make_buffer, ONE_PLAYER, record(ONE_PLAYER, "g", 4, rewards=R, values=V),
                            num_unroll_steps=3, td_steps=2, discount=0.9, value_prefix_horizon=2)
    sampled = buffer.sample(4)
    assert not sampled.value_prefix and sampled.value_prefix_horizon == 0


def test_reward_targets_with_horizon_match_a_loop():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=(6, 9))
    remaining = np.array([1, 3, 5, 7, 9, 12])
    for K in (1, 4, 7):
        for H in (1, 2, 3, 5, 10):
            got = reward_targets(rewards, remaining, K, True, H)
            for b in range(6):
                prefix, expected = 0.0, [0.0]
                for k in range(1, K + 1):
                    if (k - 1) % H == 0:
                        prefix = 0.0
                    prefix += rewards[b, k - 1] if k - 1 < remaining[b] else 0.0
                    expected.append(prefix)
                np.testing.assert_allclose(got[b], expected, rtol=1e-5, atol=1e-5)


# --- two players: signs flip with the player to move ----------------------------------------
# to_play = [0, 1, 0, 1, 0]; player 0 wins with the last move: r = [0, 0, 0, 0, 1] (from the
# mover's view); root values v = [0.1, -0.2, 0.3, -0.4, 0.5]; discount 1, n = 3, terminated.
#   z_0 = s(0,3) v_3 = -(-0.4) = 0.4       (no rewards before the bootstrap)
#   z_1 = s(1,4) v_4 = -0.5
#   z_2 = s(2,4) r_4 = +1                  (u+3 = 5 = T: no bootstrap)
#   z_3 = s(3,4) r_4 = -1                  z_4 = r_4 = 1
def test_two_player_signs_by_hand(make_buffer):
    buffer, key = one_game(
        make_buffer, TWO_PLAYER,
        record(TWO_PLAYER, "g", 5, rewards=[0, 0, 0, 0, 1], values=[0.1, -0.2, 0.3, -0.4, 0.5],
               to_play=[0, 1, 0, 1, 0]),
        num_unroll_steps=1, td_steps=3, discount=1.0)
    table = targets_by_position(buffer)
    z = [0.4, -0.5, 1.0, -1.0, 1.0, 0.0]
    for t in range(5):
        np.testing.assert_allclose(table[key, t][0], z[t:t + 2], rtol=1e-6, atol=1e-6)
        # the reward target is the mover's reward, unsigned
        np.testing.assert_allclose(table[key, t][1], [0.0, [0, 0, 0, 0, 1][t]])


def test_two_player_discounted_signs_by_hand(make_buffer):
    # discount 0.5, n = 2, rewards r = [1, 2, 0, 0] (from the mover's view), v = [1, 2, 3, 4]:
    #   z_0 = r_0 - 0.5 r_1 + 0.25 v_2 = 1 - 1 + 0.75 = 0.75
    #   z_1 = r_1 - 0.5 r_2 + 0.25 v_3 = 2 + 1 = 3
    #   z_2 = r_2 - 0.5 r_3 = 0;  z_3 = r_3 = 0
    buffer, key = one_game(
        make_buffer, TWO_PLAYER,
        record(TWO_PLAYER, "g", 4, rewards=[1, 2, 0, 0], values=[1, 2, 3, 4], to_play=[0, 1, 0, 1]),
        num_unroll_steps=1, td_steps=2, discount=0.5)
    table = targets_by_position(buffer)
    z = [0.75, 3.0, 0.0, 0.0, 0.0]
    for t in range(4):
        np.testing.assert_allclose(table[key, t][0], z[t:t + 2], rtol=1e-6, atol=1e-6)


# --- chunks of a long game ------------------------------------------------------------------
def test_chunks_with_look_ahead_context_give_the_whole_games_targets(tmp_path, make_buffer):
    # An 8-position episode, and the same episode as two chunks: positions 0..6 (4 sampleable,
    # 3 = K + n of look-ahead context, not terminated) and 4..7 (terminated).
    K, n = 1, 2
    rng = np.random.default_rng(3)
    r, v = rng.normal(size=8).round(2), rng.normal(size=8).round(2)
    pol = rng.dirichlet(np.ones(2), size=8)
    whole, whole_key = one_game(make_buffer, ONE_PLAYER,
                                record(ONE_PLAYER, "whole", 8, rewards=r, values=v, policies=pol),
                                num_unroll_steps=K, td_steps=n, discount=0.9,
                                data_dir=tmp_path / "whole")
    chunks = make_buffer(ONE_PLAYER, num_unroll_steps=K, td_steps=n, discount=0.9,
                         data_dir=tmp_path / "chunks")
    first = record(ONE_PLAYER, "c0", 7, rewards=r[:7], values=v[:7], policies=pol[:7],
                   episode_id="ep", first_move=0, num_sampleable=4, terminated=False)
    second = record(ONE_PLAYER, "c1", 4, rewards=r[4:], values=v[4:], policies=pol[4:],
                    episode_id="ep", first_move=4, terminated=True)
    keys = chunks.add_games([arrays(ONE_PLAYER, first), arrays(ONE_PLAYER, second)]).keys
    assert chunks.num_positions == 8 and chunks.stored_positions == 11
    expected = targets_by_position(whole)
    got = targets_by_position(chunks, batches=16)
    offset = {keys[0]: 0, keys[1]: 4}
    assert {(k, t) for k, t in got} == {(keys[0], t) for t in range(4)} | {(keys[1], t) for t in range(4)}
    for (key, t), row in got.items():
        for mine, theirs in zip(row[:5], expected[whole_key, offset[key] + t][:5]):
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


# --- against a plain loop, on random games -------------------------------------------------
def reference_value(r, v, to_play, terminated, u, n, gamma):
    T = len(r)
    if u >= T:
        return 0.0
    m = min(n, T - u) if terminated else min(n, T - 1 - u)
    sign = lambda a, b: 1.0 if to_play[a] == to_play[b] else -1.0
    z = sum(gamma ** i * sign(u, u + i) * r[u + i] for i in range(m))
    if u + m < T:
        z += gamma ** m * sign(u, u + m) * v[u + m]
    return z


@pytest.mark.parametrize("players", [1, 2])
def test_value_targets_match_a_plain_loop(players):
    rng = np.random.default_rng(players)
    K, n, gamma, W = 3, 4, 0.8, 3 + 4 + 1
    B = 200
    lengths = rng.integers(1, 12, B)
    starts = np.array([rng.integers(0, T) for T in lengths])
    terminated = rng.random(B) < 0.5
    games = [(rng.normal(size=T), rng.normal(size=T), rng.integers(0, players, T)) for T in lengths]
    rewards_w = np.full((B, W), np.nan, np.float32)  # past the end: garbage that must not leak
    values_w = np.full((B, W), np.nan, np.float32)
    to_play_w = rng.integers(0, 2, (B, W)).astype(np.int8)
    for b, (r, v, p) in enumerate(games):
        span = slice(starts[b], min(starts[b] + W, lengths[b]))
        count = span.stop - span.start
        rewards_w[b, :count], values_w[b, :count], to_play_w[b, :count] = r[span], v[span], p[span]
    rewards_w = np.nan_to_num(rewards_w, nan=1e6)
    values_w = np.nan_to_num(values_w, nan=1e6)
    z = value_targets(rewards_w, values_w, to_play_w, lengths - starts, terminated, K, n, gamma)
    for b, (r, v, p) in enumerate(games):
        for k in range(K + 1):
            expected = reference_value(r, v, p, terminated[b], starts[b] + k, n, gamma)
            assert z[b, k] == pytest.approx(expected, rel=1e-5, abs=1e-5), (b, k)


@pytest.mark.parametrize("players", [1, 2])
def test_per_target_td_steps_match_a_plain_loop_and_all_n_is_the_scalar_path(players):
    """The off-policy correction's per-target n: each target is the plain loop's with its own
    n(u); an array of n everywhere gives exactly the scalar path's targets (bit for bit)."""
    rng = np.random.default_rng(10 + players)
    K, n, gamma, W = 3, 4, 0.8, 3 + 4 + 1
    B = 200
    lengths = rng.integers(1, 12, B)
    starts = np.array([rng.integers(0, T) for T in lengths])
    terminated = rng.random(B) < 0.5
    games = [(rng.normal(size=T), rng.normal(size=T), rng.integers(0, players, T)) for T in lengths]
    rewards_w = np.full((B, W), 1e6, np.float32)
    values_w = np.full((B, W), 1e6, np.float32)
    to_play_w = rng.integers(0, 2, (B, W)).astype(np.int8)
    for b, (r, v, p) in enumerate(games):
        span = slice(starts[b], min(starts[b] + W, lengths[b]))
        count = span.stop - span.start
        rewards_w[b, :count], values_w[b, :count], to_play_w[b, :count] = r[span], v[span], p[span]
    args = (rewards_w, values_w, to_play_w, lengths - starts, terminated, K, n, gamma)
    np.testing.assert_array_equal(value_targets(*args, np.full((B, K + 1), n)), value_targets(*args))
    horizons = rng.integers(1, n + 1, (B, K + 1))
    z = value_targets(*args, horizons)
    for b, (r, v, p) in enumerate(games):
        for k in range(K + 1):
            expected = reference_value(r, v, p, terminated[b], starts[b] + k, int(horizons[b, k]), gamma)
            assert z[b, k] == pytest.approx(expected, rel=1e-5, abs=1e-5), (b, k)


def test_the_off_policy_schedule_by_hand():
    # n = clip(td_steps - floor(age / versions_per_step), 1, td_steps), td_steps 5, 2 per step
    ages = np.array([0, 1, 2, 3, 4, 7, 8, 9, 100])
    np.testing.assert_array_equal(off_policy_td_steps(5, ages, 2), [5, 5, 4, 4, 3, 2, 1, 1, 1])
    np.testing.assert_array_equal(off_policy_td_steps(5, ages, 1000), [5] * 9)


def test_actions_past_the_end_are_random_and_unroll_observations_zero(make_buffer):
    buffer, key = one_game(make_buffer, ONE_PLAYER, record(ONE_PLAYER, "g", 2, rewards=[1, 1], values=[0, 0]),
                           num_unroll_steps=4, td_steps=1)
    stored = buffer.get_game("g").game
    b = buffer.sample(256, include_unroll_observations=True)
    assert b.unroll_observations.shape == (256, 5, 4) and b.unroll_observations.dtype == np.float32
    for i in range(256):
        t = b.positions[i]
        inside = 2 - t
        np.testing.assert_array_equal(b.actions[i, :inside], stored.actions[t:])
        np.testing.assert_array_equal(b.unroll_observations[i, :inside], stored.observations[t:])
        assert not b.unroll_observations[i, inside:].any()
        np.testing.assert_array_equal(b.observation[i], stored.observations[t])
    past = np.concatenate([b.actions[i, 2 - b.positions[i]:] for i in range(256)])
    assert set(past.tolist()) == {0, 1}  # random, not constant
