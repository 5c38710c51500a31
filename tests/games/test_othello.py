"""Othello rules, checked against hand-worked positions and a plain-Python reference."""

from __future__ import annotations

import numpy as np
import pytest

from games.othello import Othello

GAME = Othello()
N = 8
PASS = 64
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def ref_flips(cells: list[list[int]], row: int, col: int, piece: int) -> list[tuple[int, int]]:
    """The discs a `piece` (1 or 2) placed at (row, col) flips, walking each direction cell by cell."""
    if cells[row][col] != 0:
        return []
    other = 3 - piece
    flipped = []
    for dr, dc in DIRECTIONS:
        run = []
        r, c = row + dr, col + dc
        while 0 <= r < N and 0 <= c < N and cells[r][c] == other:
            run.append((r, c))
            r, c = r + dr, c + dc
        if run and 0 <= r < N and 0 <= c < N and cells[r][c] == piece:
            flipped += run
    return flipped


def ref_legal(cells, piece) -> list[int]:
    return [r * N + c for r in range(N) for c in range(N) if ref_flips(cells, r, c, piece)]


def parse(text: str) -> np.ndarray:
    """A board from 8 lines of 8 characters, top row first: '.' empty, 'X' player 0 (black), 'O' player 1."""
    lines = [line.strip() for line in text.strip().splitlines()]
    assert len(lines) == N and all(len(line) == N for line in lines)
    return np.array([[".XO".index(ch) for ch in line] for line in lines], np.int8)


def swap(board: np.ndarray) -> np.ndarray:
    return np.where(board == 0, 0, 3 - board).astype(np.int8)


def random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(legal * rng.random(legal.shape), axis=1)


def test_standard_start_and_first_moves():
    state = GAME.reset(1)
    expected = np.zeros((N, N), np.int8)
    expected[3, 3] = expected[4, 4] = 2
    expected[3, 4] = expected[4, 3] = 1
    np.testing.assert_array_equal(GAME.positions(state)[0], expected)
    assert GAME.to_play(state)[0] == 0
    # Black's four opening moves: d3, c4, f5, e6.
    assert np.flatnonzero(GAME.legal_actions(state)[0]).tolist() == [2 * 8 + 3, 3 * 8 + 2, 4 * 8 + 5, 5 * 8 + 4]
    state, reward, terminated, truncated = GAME.step(state, np.array([2 * 8 + 3]))
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    expected[2, 3] = expected[3, 3] = 1
    np.testing.assert_array_equal(GAME.positions(state)[0], expected)
    assert GAME.to_play(state)[0] == 1
    # White's replies: c3, e3, c5.
    assert np.flatnonzero(GAME.legal_actions(state)[0]).tolist() == [2 * 8 + 2, 2 * 8 + 4, 4 * 8 + 2]


# X plays e5 (row 4, col 4). It flips north (one disc), west (two), north-east (two) and
# south-east (one). Not flipped: east (O O O runs into the edge, and wrapping onto the next row's
# X must not count), south (O O O to the edge), north-west (own disc next to it), south-west (empty).
MULTI_BEFORE = """
........
.......X
....X.O.
...XOO..
.XOO.OOO
X...OO..
....O.X.
....O...
"""
MULTI_AFTER = """
........
.......X
....X.X.
...XXX..
.XXXXOOO
X...OX..
....O.X.
....O...
"""


@pytest.mark.parametrize("player", [0, 1])
def test_one_move_flips_in_four_directions_and_nowhere_else(player):
    before, after = parse(MULTI_BEFORE), parse(MULTI_AFTER)
    if player == 1:
        before, after = swap(before), swap(after)
    assert sorted(ref_flips(before.tolist(), 4, 4, player + 1)) == [(2, 6), (3, 4), (3, 5), (4, 2), (4, 3), (5, 5)]
    state = GAME.state_from_positions(before[None], to_play=np.array([player]))
    assert GAME.legal_actions(state)[0, 4 * 8 + 4]
    new, reward, terminated, truncated = GAME.step(state, np.array([4 * 8 + 4]))
    np.testing.assert_array_equal(GAME.positions(new)[0], after)
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    assert GAME.to_play(new)[0] == 1 - player
    np.testing.assert_array_equal(GAME.positions(state)[0], before)  # the input state is unchanged


def test_lines_do_not_wrap_around_the_board_edges():
    # From b3 (row 2, col 1): west is O then the edge (row 1's last cell X is not "west" of it),
    # south-west is O then the edge (row 3's last cell X is not beyond it). From g6 (row 5, col 6)
    # east: O, then the edge; the X at the start of row 6 must not bracket it.
    board = parse("""
        ........
        .......X
        O.......
        O......X
        ........
        .......O
        X.......
        ........
    """)
    for player in (0, 1):
        b = board if player == 0 else swap(board)
        state = GAME.state_from_positions(b[None], to_play=np.array([player]))
        legal = GAME.legal_actions(state)[0]
        expected = ref_legal(b.tolist(), player + 1)
        assert np.flatnonzero(legal[:64]).tolist() == expected
        assert not legal[2 * 8 + 1] and not legal[5 * 8 + 6]
        assert legal[PASS] == (not expected)


def test_pass_is_legal_only_without_a_move_and_the_game_ends_when_neither_can_move():
    # O to move on "X O . . ." (top row): O has no move; X has one (c1, outflanking b1).
    board = np.zeros((N, N), np.int8)
    board[0, 0], board[0, 1] = 1, 2
    state = GAME.state_from_positions(board[None], to_play=np.array([1]))
    legal = GAME.legal_actions(state)[0]
    assert legal[PASS] and legal.sum() == 1
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([0 * 8 + 2]))
    state, reward, terminated, truncated = GAME.step(state, np.array([PASS]))
    assert reward[0] == 0 and not terminated[0] and not truncated[0]
    np.testing.assert_array_equal(GAME.positions(state)[0], board)  # a pass changes nothing
    assert GAME.to_play(state)[0] == 0
    legal = GAME.legal_actions(state)[0]
    assert np.flatnonzero(legal).tolist() == [2] and not legal[PASS]
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([PASS]))
    # X plays c1 and wipes O out: neither side can move, X wins 3-0.
    state, reward, terminated, truncated = GAME.step(state, np.array([2]))
    assert terminated[0] and not truncated[0] and reward[0] == 1
    assert GAME.positions(state)[0, 0, :3].tolist() == [1, 1, 1]


def test_pass_is_illegal_at_the_start_and_so_is_a_move_that_flips_nothing():
    state = GAME.reset(1)
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([PASS]))
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([0]))
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([3 * 8 + 3]))  # occupied
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([65]))


@pytest.mark.parametrize("black_rows, expected_reward", [(3, -1.0), (4, 0.0), (5, 1.0)])
@pytest.mark.parametrize("player", [0, 1])
def test_filling_the_board_ends_the_game_and_disc_count_decides(black_rows, expected_reward, player):
    # The mover owns the first `black_rows` rows except a1 (empty) and b1 (the opponent's);
    # playing a1 flips b1 and fills the board: mover 8 * black_rows discs, opponent the rest.
    board = np.full((N, N), 2, np.int8)
    board[:black_rows] = 1
    board[0, 0], board[0, 1] = 0, 2
    if player == 1:
        board = swap(board)
    state = GAME.state_from_positions(board[None], to_play=np.array([player]))
    assert np.flatnonzero(GAME.legal_actions(state)[0]).tolist() == [0]
    new, reward, terminated, truncated = GAME.step(state, np.array([0]))
    after = GAME.positions(new)[0]
    assert (after == player + 1).sum() == 8 * black_rows
    assert terminated[0] and not truncated[0]
    assert reward[0] == expected_reward


@pytest.mark.parametrize("corner, expected_reward", [(1, 1.0), (3, 0.0), (4, -1.0)])
@pytest.mark.parametrize("player", [0, 1])
def test_game_ends_with_empty_cells_when_neither_side_can_move(corner, expected_reward, player):
    # Mover's a1-c1 line ". O X" and an opponent block of `corner` discs in the h8 corner that
    # nothing can outflank. Playing a1 flips b1; then the mover's 3 discs lie on the top edge
    # and the opponent's in the corner: neither side can move, 57 to 60 cells stay empty, and
    # the disc count (3 against 1, 3 or 4) decides.
    board = np.zeros((N, N), np.int8)
    board[0, 1], board[0, 2] = 2, 1
    for r, c in [(7, 7), (7, 6), (6, 7), (6, 6)][:corner]:
        board[r, c] = 2
    if player == 1:
        board = swap(board)
    state = GAME.state_from_positions(board[None], to_play=np.array([player]))
    assert np.flatnonzero(GAME.legal_actions(state)[0]).tolist() == [0]
    new, reward, terminated, truncated = GAME.step(state, np.array([0]))
    after = GAME.positions(new)[0]
    assert ref_legal(after.tolist(), 1) == [] and ref_legal(after.tolist(), 2) == []
    assert (after == 0).sum() == 64 - 3 - corner
    assert terminated[0] and not truncated[0]
    assert reward[0] == expected_reward


def test_a_move_that_leaves_only_the_opponent_without_a_move_does_not_end_the_game():
    # X plays a1 (". O X O" on the top row): flips b1; O then has no move but X still has
    # (it can outflank d1 with e1), so O must pass and the game goes on.
    board = np.zeros((N, N), np.int8)
    board[0, 1:4] = [2, 1, 2]
    state = GAME.state_from_positions(board[None], to_play=np.array([0]))
    new, reward, terminated, truncated = GAME.step(state, np.array([0]))
    assert not terminated[0] and not truncated[0] and reward[0] == 0
    assert np.flatnonzero(GAME.legal_actions(new)[0]).tolist() == [PASS]
    new, _, terminated, _ = GAME.step(new, np.array([PASS]))
    assert not terminated[0]
    assert np.flatnonzero(GAME.legal_actions(new)[0]).tolist() == [4]
    new, reward, terminated, _ = GAME.step(new, np.array([4]))
    assert terminated[0] and reward[0] == 1  # X X X X X: O is gone


def test_observation_is_from_the_movers_view():
    state = GAME.reset(1)
    obs = GAME.observation(state)
    assert obs.shape == (1, N, N, 2) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[0, :, :, 0], GAME.positions(state)[0] == 1)
    state, _, _, _ = GAME.step(state, np.array([2 * 8 + 3]))
    obs = GAME.observation(state)
    np.testing.assert_array_equal(obs[0, :, :, 0], GAME.positions(state)[0] == 2)  # white to move
    np.testing.assert_array_equal(obs[0, :, :, 1], GAME.positions(state)[0] == 1)


def test_state_from_positions_defaults_to_play_to_disc_parity():
    start = GAME.positions(GAME.reset(1))
    after_one, _, _, _ = GAME.step(GAME.reset(1), np.array([19]))
    state = GAME.state_from_positions(np.concatenate([start, GAME.positions(after_one)]))
    np.testing.assert_array_equal(GAME.to_play(state), [0, 1])
    np.testing.assert_array_equal(state.moves, [0, 1])
    with pytest.raises(ValueError, match="to_play"):
        GAME.state_from_positions(start, to_play=np.array([2]))
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.zeros((1, 8, 7)))


def test_random_playouts_match_the_reference():
    n = 200
    rng = np.random.default_rng(3)
    state = GAME.reset(n, seed=3)
    boards = GAME.positions(state).tolist()
    player = [0] * n
    alive = np.arange(n)
    passes = 0
    outcomes = {1.0: 0, -1.0: 0, 0.0: 0}
    while len(alive):
        legal = GAME.legal_actions(state)
        for row, g in enumerate(alive):
            moves = ref_legal(boards[g], player[g] + 1)
            assert np.flatnonzero(legal[row]).tolist() == (moves if moves else [PASS])
        actions = random_legal(legal, rng)
        passes += int((actions == PASS).sum())
        state, reward, terminated, truncated = GAME.step(state, actions)
        positions = GAME.positions(state)
        for row, g in enumerate(alive):
            a = int(actions[row])
            piece = player[g] + 1
            if a != PASS:
                r, c = divmod(a, N)
                for fr, fc in ref_flips(boards[g], r, c, piece):
                    boards[g][fr][fc] = piece
                boards[g][r][c] = piece
            ended = not ref_legal(boards[g], 1) and not ref_legal(boards[g], 2)
            assert terminated[row] == ended
            assert not truncated[row]
            if ended:
                mine = sum(row_.count(piece) for row_ in boards[g])
                theirs = sum(row_.count(3 - piece) for row_ in boards[g])
                assert reward[row] == np.sign(mine - theirs)
                outcomes[float(reward[row])] += 1
            else:
                assert reward[row] == 0
            player[g] = 1 - player[g]
            assert positions[row].tolist() == boards[g]
        keep = np.flatnonzero(~terminated)
        state, alive = state.take(keep), alive[keep]
    assert passes > 0
    assert outcomes[1.0] > 10 and outcomes[-1.0] > 10, outcomes
