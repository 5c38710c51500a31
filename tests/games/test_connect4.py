"""Connect Four rules, checked against hand-worked positions and a plain-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from games.connect4 import ConnectFour

GAME = ConnectFour()
ROWS, COLS = 6, 7


def ref_drop(cells: list[list[int]], col: int) -> int:
    """The row a piece dropped into `col` lands on (row 0 is the top), or -1 if the column is full."""
    for row in range(ROWS - 1, -1, -1):
        if cells[row][col] == 0:
            return row
    return -1


def ref_four_through(cells: list[list[int]], row: int, col: int) -> bool:
    """Whether the piece at (row, col) is part of four in a row (counted outward in 4 directions)."""
    piece = cells[row][col]
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        run = 1
        for sign in (1, -1):
            r, c = row + sign * dr, col + sign * dc
            while 0 <= r < ROWS and 0 <= c < COLS and cells[r][c] == piece:
                run += 1
                r, c = r + sign * dr, c + sign * dc
        if run >= 4:
            return True
    return False


def ref_any_four(cells) -> bool:
    return any(cells[r][c] and ref_four_through(cells, r, c) for r in range(ROWS) for c in range(COLS))


def parse(text: str) -> np.ndarray:
    """A board from 6 lines of 7 characters, top row first: '.' empty, 'X' player 0, 'O' player 1."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return np.array([[".XO".index(ch) for ch in line] for line in lines], np.int8)


def random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(legal * rng.random(legal.shape), axis=1)


def play(state, actions):
    return GAME.step(state, np.asarray(actions))


def test_pieces_drop_to_the_lowest_empty_cell():
    state = GAME.reset(1)
    for col in (3, 3, 3, 0):
        state, reward, terminated, _ = play(state, [col])
        assert reward[0] == 0 and not terminated[0]
    expected = np.zeros((ROWS, COLS), np.int8)
    expected[5, 3], expected[4, 3], expected[3, 3], expected[5, 0] = 1, 2, 1, 2
    np.testing.assert_array_equal(GAME.positions(state)[0], expected)


def test_full_column_is_illegal():
    state = GAME.reset(1)
    for _ in range(6):
        state, _, terminated, _ = play(state, [0])  # alternating colours: no vertical four
        assert not terminated[0]
    legal = GAME.legal_actions(state)[0]
    np.testing.assert_array_equal(legal, [False] + [True] * 6)
    with pytest.raises(ValueError, match="actions"):
        play(state, [0])
    with pytest.raises(ValueError, match="actions"):
        play(state, [7])


HORIZONTAL = """
.......
.......
.......
.......
OOO....
XXX....
"""
HORIZONTAL_GAP = """
.......
.......
.......
.......
OO.O...
XX.X...
"""
VERTICAL = """
.......
.......
X......
X.O....
X.O....
O.XO...
"""
RISING = """
.......
.......
.......
..XO...
.XOO...
XOOX.X.
"""
FALLING = "\n".join(line[::-1] for line in RISING.strip().splitlines())

# (board with player 0 to move, column that wins, the four cells, a column far from the line)
LINES = {
    "horizontal": (HORIZONTAL, 3, [(5, 0), (5, 1), (5, 2), (5, 3)], 6),
    "horizontal-gap": (HORIZONTAL_GAP, 2, [(5, 0), (5, 1), (5, 2), (5, 3)], 6),
    "vertical": (VERTICAL, 0, [(1, 0), (2, 0), (3, 0), (4, 0)], 6),
    "diagonal-rising": (RISING, 3, [(5, 0), (4, 1), (3, 2), (2, 3)], 6),
    "diagonal-falling": (FALLING, 3, [(5, 6), (4, 5), (3, 4), (2, 3)], 0),
}


@pytest.mark.parametrize("player", [0, 1])
@pytest.mark.parametrize("name", list(LINES))
def test_four_in_a_row_wins(name, player):
    text, col, cells, far = LINES[name]
    board = parse(text)
    if player == 1:
        # Swap the colours and give player 1 the move with one more player-0 piece far away.
        board = np.where(board == 0, 0, 3 - board).astype(np.int8)
        board[ref_drop(board.tolist(), far), far] = 1
    assert not ref_any_four(board.tolist())
    state = GAME.state_from_positions(board[None])
    assert GAME.to_play(state)[0] == player
    new, reward, terminated, truncated = play(state, [col])
    assert reward[0] == 1 and terminated[0] and not truncated[0]
    after = GAME.positions(new)[0]
    assert [after[r, c] for r, c in cells] == [player + 1] * 4
    # The same position with the piece dropped elsewhere (not on the line) neither wins nor ends.
    other = 5
    cells_after = board.tolist()
    cells_after[ref_drop(cells_after, other)][other] = player + 1
    assert not ref_four_through(cells_after, ref_drop(board.tolist(), other), other)
    _, reward, terminated, _ = play(state, [other])
    assert reward[0] == 0 and not terminated[0]


def test_a_line_of_three_with_an_opponent_piece_is_no_win():
    # X X X O on the bottom row is no four; X plays on top of the O.
    board = parse("""
        .......
        .......
        .......
        .......
        OO.....
        XXXO...
    """)
    state = GAME.state_from_positions(board[None])
    _, reward, terminated, _ = play(state, [3])
    assert reward[0] == 0 and not terminated[0]


def draw_board() -> np.ndarray:
    """A full board without four in a row: column pairs of alternating colours, shifted."""
    block = [0, 0, 1, 1, 0, 0, 1]
    board = np.zeros((ROWS, COLS), np.int8)
    for c in range(COLS):
        for height in range(ROWS):
            board[ROWS - 1 - height, c] = 1 if (height + block[c]) % 2 == 0 else 2
    return board


def test_full_board_without_four_is_a_draw():
    full = draw_board()
    assert not ref_any_four(full.tolist())
    assert (full == 1).sum() == (full == 2).sum() == 21
    col = next(c for c in range(COLS) if full[0, c] == 2)  # player 1 makes move 42
    before = full.copy()
    before[0, col] = 0
    state = GAME.state_from_positions(before[None])
    assert GAME.to_play(state)[0] == 1 and state.moves[0] == 41
    new, reward, terminated, truncated = play(state, [col])
    assert reward[0] == 0 and terminated[0] and not truncated[0]
    np.testing.assert_array_equal(GAME.positions(new)[0], full)
    assert not GAME.legal_actions(new).any()


def test_observation_is_from_the_movers_view():
    state, _, _, _ = play(GAME.reset(1), [2])  # X at (5, 2); O to move
    obs = GAME.observation(state)
    assert obs.shape == (1, ROWS, COLS, 2) and obs.dtype == np.float32
    assert obs[0, :, :, 0].sum() == 0 and obs[0, 5, 2, 1] == 1 and obs[0, :, :, 1].sum() == 1
    state, _, _, _ = play(state, [2])  # O at (4, 2); X to move
    obs = GAME.observation(state)
    assert obs[0, 5, 2, 0] == 1 and obs[0, :, :, 0].sum() == 1
    assert obs[0, 4, 2, 1] == 1 and obs[0, :, :, 1].sum() == 1


def test_state_from_positions_rejects_floating_pieces_and_bad_counts():
    floating = np.zeros((1, ROWS, COLS), np.int8)
    floating[0, 4, 0] = 1
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(floating)
    two_of_one = np.zeros((1, ROWS, COLS), np.int8)
    two_of_one[0, 5, :2] = 1
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(two_of_one)


def test_random_playouts_match_the_reference():
    n = 300
    rng = np.random.default_rng(2)
    state = GAME.reset(n, seed=2)
    boards = [[[0] * COLS for _ in range(ROWS)] for _ in range(n)]
    player = [0] * n
    alive = np.arange(n)
    outcomes = {"x": 0, "o": 0, "draw": 0}
    while len(alive):
        legal = GAME.legal_actions(state)
        for row, g in enumerate(alive):
            assert legal[row].tolist() == [boards[g][0][c] == 0 for c in range(COLS)]
        actions = random_legal(legal, rng)
        state, reward, terminated, truncated = GAME.step(state, actions)
        for row, g in enumerate(alive):
            col = int(actions[row])
            r = ref_drop(boards[g], col)
            boards[g][r][col] = player[g] + 1
            won = ref_four_through(boards[g], r, col)
            full = all(boards[g][0])
            assert reward[row] == (1.0 if won else 0.0)
            assert terminated[row] == (won or full)
            assert not truncated[row]
            if won or full:
                outcomes["draw" if not won else "xo"[player[g]]] += 1
            player[g] = 1 - player[g]
        np.testing.assert_array_equal(GAME.positions(state), [boards[g] for g in alive])
        keep = np.flatnonzero(~terminated)
        state, alive = state.take(keep), alive[keep]
    assert outcomes["x"] > 50 and outcomes["o"] > 50, outcomes
