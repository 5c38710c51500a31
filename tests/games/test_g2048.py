"""2048 rules, checked against hand-worked boards and a plain-Python reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from games.g2048 import MAX_MOVES, Game2048, slide

GAME = Game2048()
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def lines_of(action: int) -> list[list[tuple[int, int]]]:
    """The 4 lines a move slides, each listed from the wall the tiles move towards."""
    if action == UP:
        return [[(r, c) for r in range(4)] for c in range(4)]
    if action == DOWN:
        return [[(r, c) for r in reversed(range(4))] for c in range(4)]
    if action == LEFT:
        return [[(r, c) for c in range(4)] for r in range(4)]
    return [[(r, c) for c in reversed(range(4))] for r in range(4)]


def ref_line(values: list[int]) -> tuple[list[int], int]:
    """Slides one line of exponents towards its start: (new line, reward in tile values)."""
    tiles = [v for v in values if v]
    out, reward, i = [], 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] + 1)
            reward += 2 ** (tiles[i] + 1)
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (4 - len(out)), reward


def ref_move(board: list[list[int]], action: int) -> tuple[list[list[int]], int]:
    new = [[0] * 4 for _ in range(4)]
    total = 0
    for cells in lines_of(action):
        out, reward = ref_line([board[r][c] for r, c in cells])
        total += reward
        for (r, c), v in zip(cells, out):
            new[r][c] = v
    return new, total


def exponents(values: list[int]) -> list[int]:
    return [int(math.log2(v)) if v else 0 for v in values]


def board_with_line(values: list[int], action: int) -> np.ndarray:
    """A board whose first line for `action` (listed from the wall) holds tile `values`."""
    board = np.zeros((4, 4), np.int8)
    for (r, c), e in zip(lines_of(action)[0], exponents(values)):
        board[r, c] = e
    return board


def assert_spawned_once(after: np.ndarray, before_spawn: np.ndarray) -> None:
    """`after` is `before_spawn` plus exactly one new tile of 2 or 4 on an empty cell."""
    diff = np.argwhere(after != before_spawn)
    assert len(diff) == 1, (after, before_spawn)
    r, c = diff[0]
    assert before_spawn[r, c] == 0 and after[r, c] in (1, 2)


LINE_CASES = [  # (tiles from the wall, expected tiles, reward)
    ([2, 2, 2, 2], [4, 4, 0, 0], 8),
    ([2, 2, 4, 0], [4, 4, 0, 0], 4),
    ([4, 2, 2, 0], [4, 4, 0, 0], 4),
    ([2, 2, 2, 0], [4, 2, 0, 0], 4),
    ([2, 0, 0, 2], [4, 0, 0, 0], 4),
    ([4, 4, 8, 8], [8, 16, 0, 0], 24),
    ([8, 4, 2, 2], [8, 4, 4, 0], 4),
    ([0, 0, 0, 2], [2, 0, 0, 0], 0),
    ([0, 2, 0, 4], [2, 4, 0, 0], 0),
    ([1024, 1024, 0, 0], [2048, 0, 0, 0], 2048),
    ([16384, 16384, 32768, 32768], [32768, 65536, 0, 0], 98304),
    ([65536, 65536, 4, 4], [131072, 8, 0, 0], 131080),  # tiles above 2^15
]


@pytest.mark.parametrize("action", [UP, RIGHT, DOWN, LEFT], ids=["up", "right", "down", "left"])
@pytest.mark.parametrize("line, expected, reward", LINE_CASES)
def test_slide_and_merge_once_per_move_in_every_direction(line, expected, reward, action):
    board = board_with_line(line, action)
    want = board_with_line(expected, action)
    got, got_reward = slide(board[None], np.array([action]))
    np.testing.assert_array_equal(got[0], want)
    assert got_reward.dtype == np.float32 and got_reward[0] == reward
    state = GAME.state_from_positions(board[None], seed=0)
    new, step_reward, terminated, truncated = GAME.step(state, np.array([action]))
    assert step_reward[0] == reward and not terminated[0] and not truncated[0]
    assert_spawned_once(GAME.positions(new)[0], want)


@pytest.mark.parametrize("high", [4, 12, 16, 18], ids=lambda h: f"exponents<{h}")
def test_random_boards_slide_like_the_reference(high):
    # Sparse and crowded boards with small and large tiles (a look-up table covers tiles up to
    # 2^15; larger ones take another path).
    rng = np.random.default_rng(high)
    boards = rng.integers(1, high, (400, 4, 4)).astype(np.int8)
    boards[rng.random(boards.shape) < rng.random((400, 1, 1))] = 0
    state = GAME.state_from_positions(boards)
    legal = GAME.legal_actions(state)
    for action in range(4):
        got, reward = slide(boards, np.full(400, action))
        for i, board in enumerate(boards.tolist()):
            want, want_reward = ref_move(board, action)
            assert got[i].tolist() == want and reward[i] == want_reward
            assert legal[i, action] == (want != board)


def test_whole_board_hand_worked_in_all_directions():
    board = np.array([[1, 1, 1, 1], [1, 1, 2, 0], [0, 0, 0, 0], [3, 0, 3, 2]], np.int8)
    expected = {
        UP: ([[2, 2, 1, 1], [3, 0, 2, 2], [0, 0, 3, 0], [0, 0, 0, 0]], 8),
        RIGHT: ([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0], [0, 0, 4, 2]], 28),
        DOWN: ([[0, 0, 0, 0], [0, 0, 1, 0], [2, 0, 2, 1], [3, 2, 3, 2]], 8),
        LEFT: ([[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [4, 2, 0, 0]], 28),
    }
    got, reward = slide(np.stack([board] * 4), np.array([UP, RIGHT, DOWN, LEFT]))
    for action, (want, want_reward) in expected.items():
        np.testing.assert_array_equal(got[action], want)
        assert reward[action] == want_reward
        assert ref_move(board.tolist(), action) == (want, want_reward)


def test_moves_that_change_nothing_are_illegal():
    board = np.array([[1, 0, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]], np.int8)
    state = GAME.state_from_positions(board[None])
    np.testing.assert_array_equal(GAME.legal_actions(state)[0], [False, True, False, False])
    for action in (UP, DOWN, LEFT):
        with pytest.raises(ValueError, match="actions"):
            GAME.step(state, np.array([action]))
    with pytest.raises(ValueError, match="actions"):
        GAME.step(state, np.array([4]))
    # Only a merge makes a full row legal to move along.
    full = np.array([[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [3, 3, 2, 1]], np.int8)
    state = GAME.state_from_positions(full[None])
    np.testing.assert_array_equal(GAME.legal_actions(state)[0], [False, True, False, True])


def test_the_move_that_leaves_no_legal_move_terminates_the_game():
    # Left fills the board whatever spawns (2 or 4 lands next to 16 and 32): no merge remains.
    board = np.array([[3, 4, 3, 4], [4, 3, 4, 3], [3, 4, 3, 4], [0, 5, 6, 5]], np.int8)
    state = GAME.state_from_positions(np.stack([board] * 50), seed=1)
    assert GAME.legal_actions(state)[:, LEFT].all()
    new, reward, terminated, truncated = GAME.step(state, np.full(50, LEFT))
    assert terminated.all() and not truncated.any() and (reward == 0).all()
    assert not GAME.legal_actions(new).any()
    assert (GAME.positions(new)[:, 3, :3] == [5, 6, 5]).all()
    # Down instead moves column 0's 8 from row 0 to row 1, next to the 8 there: a merge remains.
    _, _, terminated, _ = GAME.step(state, np.full(50, DOWN))
    assert not terminated.any()


def test_reset_places_two_tiles_of_2_or_4_uniformly():
    n = 20_000
    board = GAME.positions(GAME.reset(n, seed=5)).reshape(n, 16)
    assert ((board != 0).sum(axis=1) == 2).all()
    assert set(np.unique(board).tolist()) == {0, 1, 2}
    fours = (board == 2).sum() / (2 * n)
    assert 0.09 < fours < 0.11
    per_cell = (board != 0).sum(axis=0)
    assert (np.abs(per_cell - 2 * n / 16) < 300).all(), per_cell


def test_spawn_after_a_move_is_a_2_or_4_on_a_uniform_empty_cell():
    n = 20_000
    board = np.zeros((n, 4, 4), np.int8)
    board[:, 0, 0] = 3
    state = GAME.state_from_positions(board, seed=6)
    new, reward, _, _ = GAME.step(state, np.full(n, RIGHT))  # the 8 moves to (0, 3)
    after = GAME.positions(new).reshape(n, 16)
    assert (after[:, 3] == 3).all() and (reward == 0).all()
    spawned = after.copy()
    spawned[:, 3] = 0
    assert ((spawned != 0).sum(axis=1) == 1).all()
    values = spawned.max(axis=1)
    assert set(np.unique(values).tolist()) == {1, 2}
    assert 0.085 < (values == 2).mean() < 0.115
    per_cell = (spawned != 0).sum(axis=0)
    assert per_cell[3] == 0
    assert (np.abs(np.delete(per_cell, 3) - n / 15) < 250).all(), per_cell


def test_step_is_a_pure_function_of_the_state():
    state = GAME.reset(64, seed=7)
    rng_state = state.rng.bit_generator.state
    board = GAME.positions(state)
    actions = np.argmax(GAME.legal_actions(state), axis=1)
    first = GAME.step(state, actions)
    second = GAME.step(state, actions)
    np.testing.assert_array_equal(GAME.positions(first[0]), GAME.positions(second[0]))
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(GAME.positions(state), board)
    assert state.rng.bit_generator.state == rng_state
    # The new state carries the advanced stream.
    assert first[0].rng is not state.rng and first[0].rng.bit_generator.state != rng_state


def test_batch_slides_and_rewards_equal_single_games():
    rng = np.random.default_rng(8)
    state = GAME.reset(32, seed=8)
    for _ in range(40):
        legal = GAME.legal_actions(state)
        alive = np.flatnonzero(legal.any(axis=1))
        state = state.take(alive)
        legal = legal[alive]
        actions = np.argmax(legal * rng.random(legal.shape), axis=1)
        board = GAME.positions(state)
        batch_board, batch_reward = slide(board, actions)
        new, reward, terminated, _ = GAME.step(state, actions)
        np.testing.assert_array_equal(reward, batch_reward)
        for i in range(len(actions)):
            single_board, single_reward = slide(board[i:i + 1], actions[i:i + 1])
            np.testing.assert_array_equal(single_board[0], batch_board[i])
            single = GAME.step(state.take(np.array([i])), actions[i:i + 1])
            assert single[1][0] == reward[i]
            assert_spawned_once(GAME.positions(single[0])[0], batch_board[i])
            assert_spawned_once(GAME.positions(new)[i], batch_board[i])
        state = new


def test_observation_is_one_hot_exponents_clipped_at_plane_15():
    board = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 15, 16, 17]], np.int8)
    obs = GAME.observation(GAME.state_from_positions(board[None]))
    assert obs.shape == (1, 4, 4, 16) and obs.dtype == np.float32
    assert (obs.sum(axis=-1) == 1).all()
    np.testing.assert_array_equal(np.argmax(obs[0], axis=-1), np.minimum(board, 15))


def test_truncation_at_max_moves_only_when_the_game_goes_on():
    board = np.zeros((2, 4, 4), np.int8)
    board[:, 0, 0] = 1
    state = GAME.state_from_positions(board)
    state = dataclasses.replace(state, moves=np.array([MAX_MOVES - 2, MAX_MOVES - 1], np.int32))
    _, _, terminated, truncated = GAME.step(state, np.array([RIGHT, RIGHT]))
    assert not terminated.any()
    np.testing.assert_array_equal(truncated, [False, True])


def test_state_from_positions_checks_exponents():
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.full((1, 4, 4), 18))
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="positions"):
        GAME.state_from_positions(np.zeros((1, 4, 5)))


def test_random_playouts_match_the_reference():
    n = 200
    rng = np.random.default_rng(9)
    state = GAME.reset(n, seed=9)
    ended = 0
    steps = 0
    while state.batch_size:
        boards = GAME.positions(state).tolist()
        legal = GAME.legal_actions(state)
        moved = [[ref_move(b, a) for a in range(4)] for b in boards]
        for row, b in enumerate(boards):
            assert legal[row].tolist() == [moved[row][a][0] != b for a in range(4)]
        actions = np.argmax(legal * rng.random(legal.shape), axis=1)
        state, reward, terminated, truncated = GAME.step(state, actions)
        after = GAME.positions(state)
        for row, a in enumerate(actions):
            want_board, want_reward = moved[row][a]
            assert reward[row] == want_reward
            assert_spawned_once(after[row], np.array(want_board))
            no_move = all(ref_move(after[row].tolist(), b)[0] == after[row].tolist() for b in range(4))
            assert terminated[row] == no_move
            assert not truncated[row]
        ended += int(terminated.sum())
        steps += len(actions)
        state = state.take(np.flatnonzero(~terminated))
    assert ended == n and steps > 50 * n


def test_episode_statistics_give_the_final_boards_largest_tile():
    """From the observation before each game's last move and that move: the largest tile of the
    final board, as the rules made it (random playouts to their end)."""
    rng = np.random.default_rng(5)
    state = GAME.reset(64, seed=5)
    done = np.zeros(64, bool)
    last_observation = np.zeros((64, 4, 4, 16), np.float32)
    last_action = np.zeros(64, np.int64)
    final_board = np.zeros((64, 4, 4), np.int8)
    while not done.all():
        legal = GAME.legal_actions(state)
        legal[done] = True  # finished games are not stepped again: any action, results ignored
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in legal])
        live = np.flatnonzero(~done)
        observation = GAME.observation(state)
        sub = state.take(live)
        sub, _reward, terminated, truncated = GAME.step(sub, actions[live])
        ended = live[terminated | truncated]
        last_observation[ended], last_action[ended] = observation[ended], actions[ended]
        final_board[live] = GAME.positions(sub)
        state = state.put(live, sub)
        done[ended] = True
    got = GAME.episode_statistics(last_observation, last_action)["max_tile"]
    want = 2 ** np.minimum(final_board.reshape(64, -1).max(axis=1).astype(np.int64), 15)
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) <= {2 ** e for e in range(2, 16)} and got.max() >= 128
