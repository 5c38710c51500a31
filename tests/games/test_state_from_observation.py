"""Rebuilding a board game from the mover's observation (`Game.state_from_observation`): the
rebuilt games have the real ones' legal moves and outcomes, move by move, over random games."""

from __future__ import annotations

import numpy as np
import pytest

import games

BOARDS = ["tictactoe", "connect4", "othello"]


def random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(legal * rng.random(legal.shape), axis=1)


@pytest.mark.parametrize("name", BOARDS)
def test_rebuilt_games_move_and_end_like_the_real_ones(name):
    game = games.make(name)
    rng = np.random.default_rng(7)
    state = game.reset(200, seed=7)
    checked = passes = 0
    while state.batch_size:
        observation = game.observation(state)
        rebuilt = game.state_from_observation(observation)
        assert np.all(game.to_play(rebuilt) == 0)
        np.testing.assert_array_equal(game.observation(rebuilt), observation)
        legal = game.legal_actions(state)
        np.testing.assert_array_equal(game.legal_actions(rebuilt), legal)
        actions = random_legal(legal, rng)
        passes += int(np.sum(actions == 64)) if name == "othello" else 0
        new, reward, terminated, truncated = game.step(state, actions)
        new_rebuilt, reward_r, terminated_r, truncated_r = game.step(rebuilt, actions)
        np.testing.assert_array_equal(reward_r, reward)
        np.testing.assert_array_equal(terminated_r, terminated)
        np.testing.assert_array_equal(truncated_r, truncated)
        # The next mover is the real game's opponent, and sees the same board.
        np.testing.assert_array_equal(game.observation(new_rebuilt), game.observation(new))
        checked += state.batch_size
        state = new.take(np.flatnonzero(~(terminated | truncated)))
    assert checked > 1000
    if name == "othello":
        assert passes > 0  # random games do pass, and passes rebuild like the rest


@pytest.mark.parametrize("name", BOARDS)
def test_bad_observations_are_refused(name):
    game = games.make(name)
    observation = game.observation(game.reset(3))
    with pytest.raises(ValueError, match=r"observation: expected shape"):
        game.state_from_observation(observation[:, :-1])
    bad = observation.copy()
    bad[1, 0, 0] = [1.0, 1.0]
    with pytest.raises(ValueError, match=r"both players' pieces in games \[1\]"):
        game.state_from_observation(bad)
    bad = observation.copy()
    bad[2, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"planes must hold 0 or 1, bad games \[2\]"):
        game.state_from_observation(bad)


def test_games_without_boards_refuse():
    game = games.make("cartpole")
    with pytest.raises(ValueError, match="cartpole: a state cannot be rebuilt"):
        game.state_from_observation(game.observation(game.reset(1)))
