"""Random playouts (services/agent/playouts.py): Connect Four's and Othello's own playouts give
the generic playouts' results draw for draw, on random positions with either player to move
(Othello's passes included), and a rollout search with them is the generic search bit for bit;
Connect Four's four-in-a-row test is checked against all 69 lines."""

from __future__ import annotations

import numpy as np
import pytest

import games
from services.agent.alphabeta import LINES
from services.agent.playouts import (_has_four, connect4_random_playouts, draw_legal,
                                     othello_random_playouts, playouts_for, random_playouts, stream_base)
from services.agent.rollout_mcts import RolloutMCTS


def random_positions(game, count: int, seed: int) -> list:
    """Non-ended positions of `count` random games after every ply (the batch shrinks as games end)."""
    rng = np.random.default_rng(seed)
    state, positions = game.reset(count), []
    while state.batch_size:
        actions = draw_legal(rng.integers(0, 2**63, state.batch_size).astype(np.uint64),
                             game.legal_actions(state))
        state, _, terminated, truncated = game.step(state, actions)
        state = state.take(np.flatnonzero(~(terminated | truncated)))
        if state.batch_size:
            positions.append(state)
    return positions


def test_connect4_bitboard_playouts_equal_the_generic_ones():
    game = games.make("connect4")
    rng = np.random.default_rng(1)
    positions = random_positions(game, 60, seed=0)
    # The opening too, and positions rebuilt from the mover's view (player 0 to move, the
    # search's own states), so both to_play values and both piece encodings are covered.
    positions.append(game.reset(30))
    positions += [game.state_from_observation(game.observation(p)) for p in positions[::5]]
    assert {int(t) for p in positions for t in p.to_play} == {0, 1}
    results = []
    for state in positions:
        base = stream_base(rng.integers(0, 2**63, state.batch_size).astype(np.uint64), 2, 3)
        expected = random_playouts(game, state, base)
        np.testing.assert_array_equal(connect4_random_playouts(game, state, base), expected)
        results.append(expected)
    # Wins, draws and losses all occur, so the comparison covers every kind of end.
    assert set(np.concatenate(results).tolist()) == {-1.0, 0.0, 1.0}


def test_othello_playouts_equal_the_generic_ones_passes_included():
    game = games.make("othello")
    rng = np.random.default_rng(4)
    positions = random_positions(game, 40, seed=1)[::3]
    positions += [game.state_from_observation(game.observation(p)) for p in positions[::4]]
    passes, results = 0, []
    for state in positions:
        base = stream_base(rng.integers(0, 2**63, state.batch_size).astype(np.uint64), 2, 5)
        expected = random_playouts(game, state, base)
        np.testing.assert_array_equal(othello_random_playouts(game, state, base), expected)
        results.append(expected)
        passes += int(game.legal_actions(state)[:, 64].sum())
    assert passes > 0  # some playouts start with a pass
    assert set(np.concatenate(results).tolist()) == {-1.0, 0.0, 1.0}


def test_a_full_board_ends_a_playout_in_a_draw():
    game = games.make("connect4")
    # Columns of alternating pairs: no four anywhere; one cell (top right) left to fill.
    rows = ["XXOOXX.", "OOXXOOX", "XXOOXXO", "OOXXOOX", "XXOOXXO", "OOXXOOX"]
    board = np.array([[".XO".index(ch) for ch in row] for row in rows], np.int8)
    state = game.state_from_positions(board[None])
    base = stream_base(np.array([7], np.uint64), 2, 0)
    assert random_playouts(game, state, base).tolist() == [0.0]
    assert connect4_random_playouts(game, state, base).tolist() == [0.0]


def test_four_in_a_row_is_found_on_every_line_and_only_there():
    rng = np.random.default_rng(2)
    lines = np.array(LINES, dtype=np.uint64)
    playable = np.bitwise_or.reduce(lines)  # every cell of the board, no guard bit
    # Random stone sets of every density, and each line alone.
    stones = rng.integers(0, 2**63, 5_000).astype(np.uint64) & rng.integers(0, 2**63, 5_000).astype(np.uint64)
    stones = np.concatenate([stones & playable, lines])
    expected = ((stones[:, None] & lines[None, :]) == lines[None, :]).any(axis=1)
    np.testing.assert_array_equal(_has_four(stones), expected)
    assert expected.sum() > len(lines)  # some random sets hold a line, most do not
    assert (~expected).sum() > 1_000


@pytest.mark.parametrize("name,ply", [("connect4", 6), ("othello", 40)])
def test_a_search_is_the_generic_search_bit_for_bit(name, ply):
    game = games.make(name)
    state = random_positions(game, 4, seed=3)[ply]
    observation, legal = game.observation(state), game.legal_actions(state)
    seeds = np.arange(state.batch_size, dtype=np.uint64) + np.uint64(40)
    fast = RolloutMCTS(name, 60).search(observation, legal, seeds)
    generic = RolloutMCTS(name, 60, fast_playouts=False).search(observation, legal, seeds)
    np.testing.assert_array_equal(fast.visits, generic.visits)
    np.testing.assert_array_equal(fast.value, generic.value)
    np.testing.assert_array_equal(fast.action, generic.action)


@pytest.mark.parametrize("name,fast", [("connect4", connect4_random_playouts), ("othello", othello_random_playouts),
                                       ("tictactoe", random_playouts)])
def test_the_fast_playouts_are_used_where_a_game_has_them(name, fast):
    game = games.make(name)
    assert playouts_for(game) is fast
    assert playouts_for(game, fast=False) is random_playouts
