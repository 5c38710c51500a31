"""The value and reward ranges every game declares: derived from its rules, reached or respected
in play, and held by its settings' support (a support too small is refused, naming both numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import games
from games import g2048
from games.base import (check_support, discounted_steps, inverse_value_transform,
                        smallest_support, support_limit, value_transform)
from games.cartpole import CartPole
from games.othello import Othello
from games.tictactoe import TicTacToe

NAMES = games.names()


def test_the_transform_is_the_networks_transform():
    support = pytest.importorskip("models.support")  # imports TensorFlow
    x = np.array([-1e6, -259.1, -1.0, -1e-3, 0.0, 0.5, 1.0, 117.4, 259.1, 1069909.3])
    assert [value_transform(v) for v in x] == pytest.approx(support.scalar_transform_np(x), rel=1e-12)
    y = np.array([-2104.0, -16.0, -1.0, 0.0, 0.3, 1.0, 10.0, 300.0])
    assert [inverse_value_transform(v) for v in y] == pytest.approx(
        support.inverse_scalar_transform_np(y), rel=1e-9)
    assert support.EPSILON == 0.001


def test_what_a_support_holds():
    assert support_limit(10) == pytest.approx(117.43, abs=0.01)  # the old cartpole support
    assert support_limit(1) == pytest.approx(2.99, abs=0.01)
    for size in (1, 2, 10, 16, 300, 2104):
        assert value_transform(support_limit(size)) == pytest.approx(size, rel=1e-12)
        assert smallest_support(0.0, support_limit(size) * (1 - 1e-9)) == size
        assert smallest_support(-support_limit(size) * (1 + 1e-9), 0.0) == size + 1
    assert smallest_support(0.0, 0.0) == 1
    assert discounted_steps(1.0, 9) == 9.0
    assert discounted_steps(0.5, 3) == pytest.approx(1.75)


@pytest.mark.parametrize("name", NAMES)
def test_every_game_declares_ranges_its_default_support_holds(name):
    game = games.make(name)
    for low, high in (game.value_range, game.reward_range):
        assert low <= 0.0 <= high
    assert game.check_settings(game.settings) is game.settings
    S = game.settings.network.support_size
    assert support_limit(S) >= max(abs(v) for v in (*game.value_range, *game.reward_range))
    # No support larger than needed: the smallest that holds the values and rewards.
    assert S == max(smallest_support(*game.value_range), smallest_support(*game.reward_range))
    K = game.settings.training.num_unroll_steps
    game.check_settings(game.settings.replace(value_prefix=True))  # the prefixes fit as well
    low, high = game.value_prefix_range(K)
    assert low <= 0.0 <= high


def test_cartpole_returns_reach_the_geometric_sum():
    """A balancing controller keeps every pole up for the 500 steps: the discounted return of
    those games is exactly the declared bound, sum_{t<500} 0.997^t."""
    assert CartPole.value_range == (0.0, pytest.approx(sum(0.997 ** t for t in range(500)), rel=1e-12))
    assert CartPole.value_range[1] == pytest.approx(259.124, abs=1e-3)
    assert CartPole.reward_range == (0.0, 1.0)
    game = CartPole()
    state = game.reset(16, seed=0)
    returns = np.zeros(16)
    for t in range(500):
        x, x_dot, theta, theta_dot = state.physics.T
        actions = (theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0).astype(np.int32)
        state, reward, terminated, truncated = game.step(state, actions)
        assert not terminated.any() and (reward == 1.0).all()
        returns += 0.997 ** t * reward.astype(np.float64)
    assert truncated.all()
    np.testing.assert_allclose(returns, CartPole.value_range[1], rtol=1e-9)
    # The old support clips them; the new one, the smallest that holds them, does not.
    assert support_limit(10) < 117.5 < returns.min()
    assert support_limit(15) < returns.min() <= support_limit(16) == support_limit(CartPole.settings.network.support_size)


def signed_returns(rewards: np.ndarray, to_play: np.ndarray) -> np.ndarray:
    """float [T]: the undiscounted return from each position of one two-player game, from the
    view of the player to move there (rewards are from the view of the player who moved)."""
    return np.array([sum(r if p == to_play[t] else -r for r, p in zip(rewards[t:], to_play[t:]))
                     for t in range(len(rewards))])


@pytest.mark.parametrize("name", ["tictactoe", "connect4", "othello"])
def test_board_game_returns_and_rewards_stay_in_their_ranges(name):
    game = games.make(name)
    B = 64
    state = game.reset(B, seed=1)
    rng = np.random.default_rng(1)
    rewards, players, ended = [], [], np.zeros(B, bool)
    while not ended.all():
        legal = game.legal_actions(state)
        legal[ended] = True  # ended games are not stepped: any action will do
        actions = np.argmax(np.where(legal, rng.random(legal.shape), -1), axis=1)
        live = np.flatnonzero(~ended)
        players.append(np.where(ended, -1, game.to_play(state)))
        step = game.step(state.take(live), actions[live])
        reward = np.zeros(B, np.float32)
        reward[live] = step[1]
        rewards.append(reward)
        state = state.put(live, step[0])
        ended[live] |= step[2] | step[3]
    rewards, players = np.array(rewards).T, np.array(players).T  # [B, T]
    low, high = game.value_range
    for b in range(B):
        moves = players[b] >= 0
        r, p = rewards[b][moves], players[b][moves]
        assert np.count_nonzero(r) <= game.rewarded_moves
        assert game.reward_range[0] <= r.min() and r.max() <= game.reward_range[1]
        z = signed_returns(r, p)
        assert low <= z.min() and z.max() <= high
    assert np.abs(rewards).max() == 1.0  # some game was won: the bound is reached


def potential(board: np.ndarray) -> np.ndarray:
    """Phi of 2048 boards (int8 exponents [B, 4, 4]): sum of v (log2 v - 1) over the tiles."""
    e = board.astype(np.int64)
    return np.where(e > 0, (2 ** e) * (e - 1), 0).sum(axis=(1, 2))


def unbuilt(board: np.ndarray) -> np.ndarray:
    """P of 2048 boards: sum of v (MAX_EXPONENT - log2 v) over the tiles."""
    e = board.astype(np.int64)
    return np.where(e > 0, (2 ** e) * (g2048.MAX_EXPONENT - e), 0).sum(axis=(1, 2))


def test_2048_merges_score_exactly_what_they_add_to_the_potential():
    """The step the 2048 bounds rest on: a move's reward is Phi after its merges minus Phi
    before, on boards with any tiles, and a spawn adds 0 (a 2) or 4 (a 4) to Phi."""
    rng = np.random.default_rng(0)
    board = rng.integers(0, g2048.MAX_EXPONENT, size=(4096, 4, 4)).astype(np.int8)
    board[rng.random(board.shape) < 0.3] = 0
    legal = g2048.legal_moves(board)
    keep = legal.any(axis=1)
    board, legal = board[keep], legal[keep]
    actions = np.argmax(np.where(legal, rng.random(legal.shape), -1), axis=1)
    slid, reward = g2048.slide(board, actions)
    np.testing.assert_array_equal(reward.astype(np.int64), potential(slid) - potential(board))
    spawned = g2048.spawn(slid, rng)
    assert set(np.unique(potential(spawned) - potential(slid))) <= {0, 4}
    assert reward.max() <= g2048.MAX_REWARD
    assert unbuilt(board).max() <= g2048.MAX_UNBUILT


def test_2048_partial_sums_of_rewards_stay_under_the_bound_in_play():
    """Over random games, the rewards of any j moves from a board sum to at most P(board) + 64 j
    (the lemma behind value_range), and every return is far under the declared bound."""
    game = g2048.Game2048()
    B, T = 64, 400
    state = game.reset(B, seed=3)
    rng = np.random.default_rng(3)
    rewards, unbuilt_at, alive = np.zeros((B, T)), np.zeros((B, T)), np.ones(B, bool)
    for t in range(T):
        unbuilt_at[:, t] = unbuilt(state.board)
        live = np.flatnonzero(alive)
        if len(live) == 0:
            break
        legal = game.legal_actions(state)
        legal[~alive] = True  # ended games are not stepped: any action will do
        actions = np.argmax(np.where(legal, rng.random(legal.shape), -1), axis=1)
        new, reward, terminated, _ = game.step(state.take(live), actions[live])
        rewards[live, t] = reward
        state = state.put(live, new)
        alive[live] &= ~terminated
    sums = np.cumsum(rewards, axis=1)
    for t in range(0, T, 37):
        partial = sums[:, t:] - (sums[:, t - 1:t] if t else 0.0)  # rewards of moves t..t+j-1
        j = np.arange(1, T - t + 1)
        assert (partial <= unbuilt_at[:, t:t + 1] + g2048.SCORE_PER_SPAWN * j).all()
    returns = (rewards * 0.997 ** np.arange(T)).sum(axis=1)
    assert returns.max() < g2048.Game2048.value_range[1]


def test_2048_declared_ranges_follow_from_its_constants():
    assert g2048.MAX_REWARD == 8 * 2 ** 17 == 2 ** 20
    assert g2048.MAX_UNBUILT == 16 * max(2 ** e * (17 - e) for e in range(1, 18)) == 2 ** 20
    assert g2048.SCORE_PER_SPAWN == 4 * 16
    geometric = sum(0.997 ** t for t in range(g2048.MAX_MOVES))
    assert g2048.Game2048.reward_range == (0.0, 2.0 ** 20)
    assert g2048.Game2048.value_range == (0.0, pytest.approx(2 ** 20 + 64 * geometric, rel=1e-9))
    assert g2048.Game2048.value_range[1] == pytest.approx(1_069_909.3, abs=0.1)
    assert g2048.Game2048.value_prefix_range(5) == (0.0, 2 ** 20 + 64 * 5)
    assert g2048.Game2048.settings.network.support_size == 2104
    assert support_limit(2103) < g2048.Game2048.value_range[1] <= support_limit(2104)


def test_too_small_a_support_is_refused_naming_both_numbers():
    with pytest.raises(ValueError) as error:
        CartPole.check_settings(CartPole.settings.replace(support_size=10))
    assert str(error.value) == ("MuZeroSettings.support_size=10 holds values up to 117.4, but "
                                "cartpole's returns reach 259.1; a support_size of at least 16 "
                                "holds them")
    with pytest.raises(ValueError, match=r"support_size=300 holds values up to 58705\.6, but "
                                         r"2048's returns reach 1069909\.3; .* at least 2104"):
        g2048.Game2048.check_settings(g2048.Game2048.settings.replace(support_size=300))


def test_a_game_defined_with_too_small_a_support_is_refused_at_once():
    with pytest.raises(ValueError, match="support_size=15 holds values up to 247.2, but cartpole's returns reach 259.1"):
        class SmallSupport(CartPole):  # noqa: F841 - defining it is the test
            settings = CartPole.settings.replace(support_size=15)

    class Enough(CartPole):  # the smallest that holds the range is accepted
        settings = CartPole.settings.replace(support_size=16)

    assert Enough.settings.network.support_size == 16


def test_rewards_and_value_prefixes_are_checked_too():
    with pytest.raises(ValueError, match=r"holds rewards up to 278\.6, but cartpole's rewards reach 500\.0"):
        class Spiky(CartPole):  # noqa: F841
            reward_range = (0.0, 500.0)

    with pytest.raises(ValueError, match=r"support_size=1 holds rewards down to -2\.99, but othello's rewards reach -3\.00; .* at least 2 holds"):
        class Harsh(Othello):  # noqa: F841
            reward_range = (-3.0, 1.0)

    long_unroll = CartPole.settings.replace(num_unroll_steps=300)
    CartPole.check_settings(long_unroll)  # without value_prefix, the prefixes do not matter
    with pytest.raises(ValueError) as error:
        CartPole.check_settings(long_unroll.replace(value_prefix=True))
    assert str(error.value).startswith(
        "MuZeroSettings.support_size=16 holds value prefixes up to 278.6, but cartpole's value "
        "prefixes (sums of up to num_unroll_steps=300 rewards) reach 300.0")
    # One rewarded move a game: a board game's prefixes are its rewards, whatever K.
    assert TicTacToe.value_prefix_range(300) == TicTacToe.reward_range == (0.0, 1.0)
    TicTacToe.check_settings(TicTacToe.settings.replace(value_prefix=True, num_unroll_steps=300))


def test_check_support_without_a_game_class():
    settings = CartPole.settings.replace(support_size=1)
    check_support(settings, "coin", (-1.0, 1.0), (-1.0, 1.0))
    with pytest.raises(ValueError, match="coin's returns reach -4.0"):
        check_support(settings, "coin", (-4.0, 1.0), (-1.0, 1.0))
    with pytest.raises(ValueError, match="declares no value_prefix_range"):
        check_support(settings.replace(value_prefix=True), "coin", (-1.0, 1.0), (-1.0, 1.0))
    assert math.isclose(support_limit(1), 2.988, abs_tol=1e-3)
