"""The evaluation opponents, especially the exact tic-tac-toe player."""

from __future__ import annotations

import numpy as np

import games
from services.agent.opponents import random_opponent, tictactoe_minimax


def _state(board):
    game = games.make("tictactoe")
    return game, game.state_from_positions(np.array([board], np.int8))


def _optimal(board):
    game, state = _state(board)
    rng = np.random.default_rng(0)
    moves = {int(tictactoe_minimax(game.observation(state), game.legal_actions(state), rng)[0])
             for _ in range(200)}
    return moves


def test_minimax_takes_a_win_blocks_a_loss_and_treats_the_empty_board_as_a_draw():
    # X (1) to move with two in the top row: only the win at cell 2.
    assert _optimal([[1, 1, 0], [2, 2, 0], [0, 0, 0]]) == {2}
    # O (2) to move, X threatens the top row: only the block at cell 2 keeps the draw.
    assert _optimal([[1, 1, 0], [0, 2, 0], [0, 0, 0]]) == {2}
    # Every first move draws with perfect play.
    assert _optimal([[0, 0, 0], [0, 0, 0], [0, 0, 0]]) == set(range(9))
    # After X takes a corner, only the centre holds the draw for O.
    assert _optimal([[1, 0, 0], [0, 0, 0], [0, 0, 0]]) == {4}


def _play(first, second, n, seed):
    game = games.make("tictactoe")
    rng = np.random.default_rng(seed)
    state = game.reset(n, seed)
    outcome = np.zeros(n)  # +1 first player won, -1 second won
    done = np.zeros(n, bool)
    while not done.all():
        live = np.flatnonzero(~done)
        sub = state.take(live)
        mover = game.to_play(sub)
        observation, legal = game.observation(sub), game.legal_actions(sub)
        actions = np.where(mover == 0, first(observation, legal, rng), second(observation, legal, rng))
        sub, reward, terminated, truncated = game.step(sub, actions)
        outcome[live] += np.where(mover == 0, reward, -reward)
        done[live] = terminated | truncated
        state = state.put(live, sub)
    return outcome


def test_minimax_never_loses_and_draws_against_itself():
    assert np.all(_play(tictactoe_minimax, tictactoe_minimax, 100, seed=1) == 0)
    assert np.all(_play(tictactoe_minimax, random_opponent, 200, seed=2) >= 0)
    assert np.all(_play(random_opponent, tictactoe_minimax, 200, seed=3) <= 0)
    # Against a random player the solver wins most games as X.
    assert np.mean(_play(tictactoe_minimax, random_opponent, 200, seed=4) > 0) > 0.8
