"""CartPole-v1 as Gymnasium defines it: reset range, physics, termination and truncation.

Gymnasium is not installed: the expected numbers below were computed from its equations
(euler integration, tau = 0.02, gravity 9.8, cart 1.0 kg, pole 0.1 kg, half length 0.5,
force 10 N):
    temp      = (force + m_pole * l * theta_dot^2 * sin(theta)) / (m_cart + m_pole)
    theta_acc = (g * sin(theta) - cos(theta) * temp) / (l * (4/3 - m_pole * cos(theta)^2 / (m_cart + m_pole)))
    x_acc     = temp - m_pole * l * theta_acc * cos(theta) / (m_cart + m_pole)
    x += tau * x_dot; x_dot += tau * x_acc; theta += tau * theta_dot; theta_dot += tau * theta_acc
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from games.cartpole import CartPole

GAME = CartPole()
THETA_LIMIT = 12 * 2 * math.pi / 360  # 0.20943951023931953 rad


def test_reset_is_uniform_in_plus_minus_0_05_and_seeded():
    state = GAME.reset(2000, seed=11)
    physics = GAME.positions(state)
    assert physics.shape == (2000, 4) and physics.dtype == np.float64
    assert (np.abs(physics) <= 0.05).all()
    assert (physics.min(axis=0) < -0.045).all() and (physics.max(axis=0) > 0.045).all()
    assert abs(physics.mean()) < 0.005
    np.testing.assert_array_equal(GAME.positions(GAME.reset(2000, seed=11)), physics)
    assert not np.array_equal(GAME.positions(GAME.reset(2000, seed=12)), physics)
    assert (state.moves == 0).all()
    obs = GAME.observation(state)
    assert obs.dtype == np.float32 and obs.shape == (2000, 4)
    np.testing.assert_array_equal(obs, physics.astype(np.float32))


def test_one_step_matches_gymnasiums_equations():
    start = np.array([[0.01, -0.02, 0.03, -0.04]] * 2)
    state = GAME.state_from_positions(start)
    new, reward, terminated, truncated = GAME.step(state, np.array([1, 0]))
    expected = np.array([
        [0.009600000000000001, 0.17467919574755525, 0.0292, -0.3230687179600081],  # push right
        [0.009600000000000001, -0.21553901710278936, 0.0292, 0.2619952237760392],  # push left
    ])
    np.testing.assert_allclose(GAME.positions(new), expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(reward, [1.0, 1.0])
    assert reward.dtype == np.float32
    assert not terminated.any() and not truncated.any()
    np.testing.assert_array_equal(GAME.positions(state), start)  # the input is unchanged


@pytest.mark.parametrize("physics, ends", [
    ([2.4, 0.0, 0.0, 0.0], False),  # exactly at the boundary: goes on
    ([2.4, 1e-3, 0.0, 0.0], True),  # x = 2.40002
    ([-2.4, 0.0, 0.0, 0.0], False),
    ([-2.4, -1e-3, 0.0, 0.0], True),
    ([2.39, 0.4, 0.0, 0.0], False),  # x = 2.398
    ([0.0, 0.0, THETA_LIMIT, 0.0], False),
    ([0.0, 0.0, THETA_LIMIT, 1e-3], True),
    ([0.0, 0.0, -THETA_LIMIT, 0.0], False),
    ([0.0, 0.0, -THETA_LIMIT, -1e-3], True),
    ([0.0, 0.0, 0.2, 0.4], False),  # theta = 0.208 < 0.2094
    ([0.0, 0.0, 0.2, 0.5], True),  # theta = 0.21
])
def test_termination_exactly_past_2_4_metres_or_12_degrees(physics, ends):
    state = GAME.state_from_positions(np.array([physics]))
    new, reward, terminated, truncated = GAME.step(state, np.array([1]))
    # The limits apply to x and theta after the step, which moves them by tau * velocity.
    assert GAME.positions(new)[0, 0] == physics[0] + 0.02 * physics[1]
    assert GAME.positions(new)[0, 2] == physics[2] + 0.02 * physics[3]
    assert terminated[0] == ends and not truncated[0] and reward[0] == 1


def test_balanced_pole_is_truncated_at_step_500_not_terminated():
    state = GAME.reset(20, seed=3)
    for t in range(1, 501):
        x, x_dot, theta, theta_dot = GAME.positions(state).T
        actions = (10 * theta + 2 * theta_dot + 0.5 * x + x_dot > 0).astype(np.int64)
        state, reward, terminated, truncated = GAME.step(state, actions)
        assert not terminated.any()
        assert truncated.all() == (t == 500) and truncated.any() == (t == 500)
    assert (state.moves == 500).all()


def test_a_fall_on_step_500_is_terminated_not_truncated():
    state = GAME.state_from_positions(np.array([[2.4, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    state = dataclasses.replace(state, moves=np.array([499, 499], np.int32))
    _, _, terminated, truncated = GAME.step(state, np.array([1, 1]))
    np.testing.assert_array_equal(terminated, [True, False])
    np.testing.assert_array_equal(truncated, [False, True])


def test_random_playouts_end_where_the_thresholds_say():
    n = 300
    rng = np.random.default_rng(4)
    state = GAME.reset(n, seed=4)
    ended = 0
    while state.batch_size:
        actions = rng.integers(0, 2, state.batch_size)
        assert GAME.legal_actions(state).all() and GAME.legal_actions(state).shape == (state.batch_size, 2)
        assert (GAME.to_play(state) == 0).all()
        state, reward, terminated, truncated = GAME.step(state, actions)
        x, _, theta, _ = GAME.positions(state).T
        np.testing.assert_array_equal(terminated, (np.abs(x) > 2.4) | (np.abs(theta) > THETA_LIMIT))
        assert not truncated.any() and (reward == 1).all()
        ended += int(terminated.sum())
        state = state.take(np.flatnonzero(~terminated))
    assert ended == n
