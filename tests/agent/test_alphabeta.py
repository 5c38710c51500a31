"""The Connect Four alpha-beta opponent (services/agent/alphabeta.py): wins and blocks in one,
finds a forced win a few plies deep, plays better deeper, and plays only legal moves."""

from __future__ import annotations

import numpy as np
import pytest

import games
from services.agent.alphabeta import (LINES, WIN, AlphaBetaSearch, connect4_alphabeta_opponent,
                                      from_observation, heuristic, winning_cells)

GAME = games.make("connect4")


def state_of(rows: list[str]):
    """One game from its rows, top first: '.' empty, 'X' player 0, 'O' player 1."""
    return GAME.state_from_positions(np.array([[[".XO".index(ch) for ch in row] for row in rows]], np.int8))


def best(rows: list[str], depth: int) -> tuple[list[int], int]:
    return AlphaBetaSearch().best_columns(*from_observation(GAME.observation(state_of(rows))[0]), depth)


def test_bitboards_read_the_observation():
    rows = [".......", ".......", ".......", "...O...", "...X...", "..XOX.O"]
    current, mask, stones = from_observation(GAME.observation(state_of(rows))[0])
    assert stones == 6 and mask.bit_count() == 6 and current.bit_count() == 3  # X to move
    # Column 3 from the bottom: O (height 0), X, O. X's stones are "current".
    assert (current >> (7 * 3)) & 0b111 == 0b010 and (mask >> (7 * 3)) & 0b111 == 0b111
    # Neither player has three stones on a line yet, so neither has a cell that makes four.
    assert winning_cells(current, mask) == 0 and winning_cells(current ^ mask, mask) == 0
    # Hand count, X to move on "XX.O..." with another O on the centre column's O: X has no
    # open line (its pair shares a line with O's stone); O has one open two (the centre
    # column) and two centre stones: -TWO_WEIGHT + CENTRE_WEIGHT * (0 - 2) = -8.
    rows = [".......", ".......", ".......", ".......", "...O...", "XX.O..."]
    current, mask, _ = from_observation(GAME.observation(state_of(rows))[0])
    assert heuristic(current, mask) == -8 and heuristic(current ^ mask, mask) == 8
    assert len(LINES) == 69 and all(line.bit_count() == 4 for line in LINES)


@pytest.mark.parametrize("depth", [1, 4])
def test_it_takes_a_win_in_one_and_blocks_a_loss_in_one(depth):
    # X to move: its bottom-row four (column 3) before blocking O's column 4.
    assert best([".......", ".......", ".......", "....O..", "....O..", "XXX.O.."], depth) == ([3], WIN - 7)
    # O to move must block the bottom row at column 3 (every other move loses at once).
    columns, value = best([".......", ".......", ".......", ".......", "....O..", "XXX.O.."], depth)
    assert columns == [3] and abs(value) < WIN // 2
    # No block is possible against two threats: lost in two plies whatever O plays.
    columns, value = best([".......", ".......", ".......", ".......", "..OO...", ".XXX..."], depth)
    assert value == -(WIN - 7) and sorted(columns) == list(range(7))


FORCED = [".......",
          ".......",
          ".X.....",
          ".X.....",
          ".OX.O..",
          "OXOOX.."]  # X to move: column 2 wins on X's third move from here


def forces_a_win(state, plies: int) -> bool:
    """Whether the player to move wins within `plies` (odd) plies against every defence, by
    trying every line with the game's own rules (no pruning)."""
    legal = np.flatnonzero(GAME.legal_actions(state)[0])
    for action in legal:
        after, reward, terminated, _ = GAME.step(state, np.array([action]))
        if reward[0] == 1:
            return True
        if terminated[0] or plies < 3:
            continue
        replies = np.flatnonzero(GAME.legal_actions(after)[0])
        holds = True
        for reply in replies:
            next_state, reward, terminated, _ = GAME.step(after, np.array([reply]))
            if reward[0] == 1 or terminated[0] or not forces_a_win(next_state, plies - 2):
                holds = False
                break
        if holds:
            return True
    return False


def test_it_finds_a_forced_win_in_five_plies():
    assert best(FORCED, 5) == ([2], WIN - 15)  # the 15th stone, X's third from here
    assert best(FORCED, 2)[1] < WIN // 2  # two plies are not enough to see it
    after, *_ = GAME.step(state_of(FORCED), np.array([2]))
    # After column 2, X wins within 3 more plies against every reply: a plain check.
    for reply in np.flatnonzero(GAME.legal_actions(after)[0]):
        next_state, reward, terminated, _ = GAME.step(after, np.array([reply]))
        assert reward[0] == 0 and not terminated[0]
        assert forces_a_win(next_state, 3)
    opponent = connect4_alphabeta_opponent(5)
    observation = np.repeat(GAME.observation(state_of(FORCED)), 3, axis=0)
    legal = np.repeat(GAME.legal_actions(state_of(FORCED)), 3, axis=0)
    assert opponent(observation, legal, np.random.default_rng(0)).tolist() == [2, 2, 2]


def play(first, second, n: int, seed: int, opening: int = 2) -> np.ndarray:
    """Outcomes of n games (+1: `first` won, -1 lost, 0 draw) after `opening` random moves;
    `GAME.step` raises on an illegal move."""
    rng = np.random.default_rng(seed)
    state = GAME.reset(n, seed)
    for _ in range(opening):
        state, *_ = GAME.step(state, np.argmax(GAME.legal_actions(state) * rng.random((n, 7)), axis=1))
    outcome = np.zeros(n)
    done = np.zeros(n, bool)
    while not done.all():
        live = np.flatnonzero(~done)
        sub = state.take(live)
        mover = GAME.to_play(sub)
        observation, legal = GAME.observation(sub), GAME.legal_actions(sub)
        actions = np.zeros(len(live), np.int64)
        for player, side in ((0, first), (1, second)):
            rows = np.flatnonzero(mover == player)
            if rows.size:
                actions[rows] = side(observation[rows], legal[rows], rng)
        sub, reward, terminated, truncated = GAME.step(sub, actions)
        outcome[live] += np.where(mover == 0, reward, -reward)
        done[live] = terminated | truncated
        state = state.put(live, sub)
    return outcome


def test_depth_five_beats_depth_one():
    shallow, deep = connect4_alphabeta_opponent(1), connect4_alphabeta_opponent(5)
    as_first = play(deep, shallow, 4, seed=1)
    as_second = -play(shallow, deep, 4, seed=2)
    results = np.concatenate([as_first, as_second])  # from depth 5's view
    assert np.sum(results > 0) >= 6 and np.sum(results < 0) <= 1, results


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        connect4_alphabeta_opponent(0)
    with pytest.raises(ValueError, match=r"observation: expected shape \[B, 6, 7, 2\], got \[1, 3, 3, 2\]"):
        connect4_alphabeta_opponent(2)(np.zeros((1, 3, 3, 2)), np.ones((1, 9), bool), np.random.default_rng(0))
