"""Tic-tac-toe rules, checked against hand-worked positions and a plain-Python reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from games.tictactoe import TicTacToe

GAME = TicTacToe()
# The 8 lines, written out by hand (not taken from the game's own tables).
LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8),  # rows
         (0, 3, 6), (1, 4, 7), (2, 5, 8),  # columns
         (0, 4, 8), (2, 4, 6)]  # diagonals


def ref_winner(cells: list[int]) -> int:
    """0 if no line, else the piece value (1 or 2) that has one."""
    for a, b, c in LINES:
        if cells[a] != 0 and cells[a] == cells[b] == cells[c]:
            return cells[a]
    return 0


def board(cells: list[int] | str) -> np.ndarray:
    """A 3x3 board from 9 cells; a string uses '.', 'X' (player 0) and 'O' (player 1)."""
    if isinstance(cells, str):
        cells = [".XO".index(ch) for ch in cells.replace(" ", "")]
    return np.array(cells, np.int8).reshape(3, 3)


def random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(legal * rng.random(legal.shape), axis=1)


def winning_cases():
    """(board before, to_play, action) for every line, every cell of it played last, both players."""
    cases = []
    for line in LINES:
        others = [c for c in range(9) if c not in line]
        for last in line:
            for player in (0, 1):
                cells = [0] * 9
                for c in line:
                    if c != last:
                        cells[c] = player + 1
                # The opponent has 2 pieces if player 0 moves, 3 if player 1 moves (player 0
                # moved first); they must not form a line themselves (checked by the reference).
                need = 2 if player == 0 else 3
                for chosen in itertools.combinations(others, need):
                    trial = list(cells)
                    for c in chosen:
                        trial[c] = 2 - player
                    if ref_winner(trial) == 0:
                        break
                else:
                    raise AssertionError("no filler found")
                cases.append((board(trial), player, last))
    return cases


def test_every_line_wins_for_both_players_whichever_cell_is_played_last():
    cases = winning_cases()
    assert len(cases) == 8 * 3 * 2
    positions = np.stack([c[0] for c in cases])
    state = GAME.state_from_positions(positions)
    np.testing.assert_array_equal(GAME.to_play(state), [c[1] for c in cases])
    new, reward, terminated, truncated = GAME.step(state, np.array([c[2] for c in cases]))
    np.testing.assert_array_equal(reward, np.ones(len(cases), np.float32))
    assert reward.dtype == np.float32
    assert terminated.all() and not truncated.any()
    after = GAME.positions(new).reshape(len(cases), 9)
    for i, (_, player, last) in enumerate(cases):
        assert after[i, last] == player + 1


def test_a_move_that_completes_no_line_neither_wins_nor_ends():
    # X X . / O O . / . . .  with X to move: playing 6 (not 2) does not win.
    state = GAME.state_from_positions(board("XX. OO. ...")[None])
    _, reward, terminated, truncated = GAME.step(state, np.array([6]))
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    # Two of mine and one of theirs on a line is no win either: X X O on the top row.
    state = GAME.state_from_positions(board("X.O .O. X..")[None])
    _, reward, terminated, _ = GAME.step(state, np.array([1]))
    assert reward[0] == 0 and not terminated[0]


def test_draw_game_hand_played():
    # X:0 O:4 X:8 O:2 X:6 O:3 X:5 O:7 X:1 ends  X X O / O O X / X O X, no line.
    state = GAME.reset(1, seed=0)
    moves = [0, 4, 8, 2, 6, 3, 5, 7, 1]
    for i, move in enumerate(moves):
        assert GAME.to_play(state)[0] == i % 2
        state, reward, terminated, truncated = GAME.step(state, np.array([move]))
        assert reward[0] == 0
        assert terminated[0] == (i == 8)
        assert not truncated[0]
    np.testing.assert_array_equal(GAME.positions(state)[0], board("XXO OOX XOX"))


def test_win_with_the_ninth_move_is_a_win_not_a_draw():
    # X O X / O X O / O X .  X plays 8: diagonal 0-4-8 on a full board.
    state = GAME.state_from_positions(board("XOX OXO OX.")[None])
    assert GAME.to_play(state)[0] == 0
    _, reward, terminated, truncated = GAME.step(state, np.array([8]))
    assert reward[0] == 1 and terminated[0] and not truncated[0]


def test_legal_actions_are_the_empty_cells_and_occupied_cells_are_rejected():
    state = GAME.state_from_positions(board("X.. .O. ..X")[None])
    np.testing.assert_array_equal(GAME.legal_actions(state)[0],
                                  [False, True, True, True, False, True, True, True, False])
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([4]))
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([9]))
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([1, 2]))


def test_observation_is_from_the_movers_view():
    state = GAME.reset(1)
    state, _, _, _ = GAME.step(state, np.array([4]))  # X in the centre; O to move
    obs = GAME.observation(state)
    assert obs.shape == (1, 3, 3, 2) and obs.dtype == np.float32
    assert obs[0, :, :, 0].sum() == 0  # O (the mover) has nothing
    assert obs[0, 1, 1, 1] == 1 and obs[0, :, :, 1].sum() == 1  # the opponent's X
    state, _, _, _ = GAME.step(state, np.array([0]))  # O in the corner; X to move
    obs = GAME.observation(state)
    assert obs[0, 1, 1, 0] == 1 and obs[0, :, :, 0].sum() == 1
    assert obs[0, 0, 0, 1] == 1 and obs[0, :, :, 1].sum() == 1


def test_state_from_positions_derives_to_play_and_rejects_impossible_counts():
    state = GAME.state_from_positions(np.stack([board("... ... ..."), board("X.. ... ..."), board("XO. ... ...")]))
    np.testing.assert_array_equal(GAME.to_play(state), [0, 1, 0])
    np.testing.assert_array_equal(state.moves, [0, 1, 2])
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(board("XX. ... ...")[None])
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(board("O.. ... ...")[None])
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.full((1, 3, 3), 3))
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.zeros((1, 3, 4)))


def test_random_playouts_match_the_reference():
    n = 300
    rng = np.random.default_rng(1)
    state = GAME.reset(n, seed=1)
    boards = [[0] * 9 for _ in range(n)]
    player = [0] * n
    alive = np.arange(n)
    outcomes = {"x": 0, "o": 0, "draw": 0}
    while len(alive):
        legal = GAME.legal_actions(state)
        for row, g in enumerate(alive):
            assert legal[row].tolist() == [c == 0 for c in boards[g]]
            assert GAME.to_play(state)[row] == player[g]
        actions = random_legal(legal, rng)
        state, reward, terminated, truncated = GAME.step(state, actions)
        for row, g in enumerate(alive):
            boards[g][actions[row]] = player[g] + 1
            won = ref_winner(boards[g]) == player[g] + 1
            full = all(boards[g])
            assert reward[row] == (1.0 if won else 0.0)
            assert terminated[row] == (won or full)
            assert not truncated[row]
            if won or full:
                outcomes["draw" if not won else "xo"[player[g]]] += 1
            player[g] = 1 - player[g]
        np.testing.assert_array_equal(GAME.positions(state).reshape(-1, 9), [boards[g] for g in alive])
        keep = np.flatnonzero(~terminated)
        state, alive = state.take(keep), alive[keep]
    assert sum(outcomes.values()) == n
    assert min(outcomes.values()) > 10, outcomes
