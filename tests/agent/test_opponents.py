"""The evaluation opponents, especially the exact tic-tac-toe player, and the registry."""

from __future__ import annotations

import numpy as np

import games
from services.agent.opponents import OPPONENT_GAMES, OPPONENTS, random_opponent, tictactoe_minimax


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


def _near_the_end(name: str, n: int, seed: int):
    """n games of `name` played at random until a few moves before the end of the longest rules
    allow (none ended), so even the 1,000-simulation searches stay fast."""
    game = games.make(name)
    rng = np.random.default_rng(seed)
    left = {"tictactoe": 3, "connect4": 5, "othello": 5}[name]
    for _ in range(100):  # retry until no game ended on the way
        state = game.reset(n, seed)
        for _ in range(game.spec.num_actions - 1 - left if name != "othello" else 60 - left):
            legal = game.legal_actions(state)
            state, _, terminated, _ = game.step(state, np.argmax(legal * rng.random(legal.shape), axis=1))
            if terminated.any():
                break
        else:
            return game, state
    raise AssertionError("no position found")


def test_every_registered_opponent_plays_legal_moves_in_its_games():
    for name, supported in OPPONENT_GAMES.items():
        assert name in OPPONENTS
        for game_name in supported or ("tictactoe", "connect4", "othello"):
            game, state = _near_the_end(game_name, 2, seed=len(name))
            legal = game.legal_actions(state)
            actions = OPPONENTS[name](game.observation(state), legal, np.random.default_rng(0))
            assert actions.dtype == np.int32 and actions.shape == (2,)
            assert legal[np.arange(2), actions].all(), (name, game_name)
