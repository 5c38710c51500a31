"""Board symmetries: each declared map commutes with the game's rules, and `augment` maps a
training batch consistently."""

import numpy as np
import pytest

import games
from games.symmetry import Symmetries, dihedral_cells, mirror_columns_cells

SYMMETRIC_GAMES = ["tictactoe", "connect4", "othello"]


def _map_board(board: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """int8 [B, R, C]: the piece on cell c moves to cells[c]."""
    flat = board.reshape(len(board), -1)
    mapped = np.zeros_like(flat)
    mapped[:, cells] = flat
    return mapped.reshape(board.shape)


@pytest.mark.parametrize("name", SYMMETRIC_GAMES)
def test_every_symmetry_commutes_with_the_rules(name):
    """Along random games: mapping the position then playing the mapped action gives the mapped
    successor, the same reward and ending, and the mapped legal actions."""
    game = games.make(name)
    symmetries = game.symmetries()
    rng = np.random.default_rng(1)
    B = 64
    for g in range(len(symmetries)):
        cells, action_map = symmetries.cells[g], symmetries.actions[g]
        state = game.reset(B, seed=0)
        mapped = game.state_from_positions(_map_board(game.positions(state), cells), game.to_play(state))
        np.testing.assert_array_equal(game.positions(mapped), _map_board(game.positions(state), cells))
        for _ in range(game.spec.max_moves):
            legal = game.legal_actions(state)
            mapped_legal = np.zeros_like(legal)
            mapped_legal[:, action_map] = legal
            np.testing.assert_array_equal(game.legal_actions(mapped), mapped_legal)
            actions = np.argmax(rng.random(legal.shape) * legal, axis=1).astype(np.int32)
            state, reward, terminated, truncated = game.step(state, actions)
            mapped, mapped_reward, mapped_terminated, mapped_truncated = game.step(
                mapped, action_map[actions].astype(np.int32))
            np.testing.assert_array_equal(game.positions(mapped), _map_board(game.positions(state), cells))
            np.testing.assert_array_equal(mapped_reward, reward)
            np.testing.assert_array_equal(mapped_terminated, terminated)
            live = ~(terminated | truncated)
            if not live.any():
                break
            state, mapped = state.take(np.flatnonzero(live)), mapped.take(np.flatnonzero(live))


@pytest.mark.parametrize("name", SYMMETRIC_GAMES)
def test_the_start_is_invariant(name):
    game = games.make(name)
    start = game.positions(game.reset(1, seed=0))
    for cells in game.symmetries().cells:
        np.testing.assert_array_equal(_map_board(start, cells), start)


def test_games_without_symmetries_declare_none():
    assert games.make("cartpole").symmetries() is None


def test_dihedral_maps_are_the_eight_distinct_square_symmetries():
    cells = dihedral_cells(3)
    assert len({tuple(row) for row in cells}) == 8
    # A quarter turn moves the top-left corner to the top-right; the centre never moves.
    assert cells[1][0] == 2 and (cells[:, 4] == 4).all()
    np.testing.assert_array_equal(mirror_columns_cells(2, 3), [[0, 1, 2, 3, 4, 5], [2, 1, 0, 5, 4, 3]])


def test_augment_maps_observation_actions_and_policy_together():
    symmetries = games.make("tictactoe").symmetries()
    observation = np.zeros((2, 3, 3, 2), np.float32)
    observation[:, 0, 0, 0] = 1          # the mover's piece in the top-left corner
    observation[:, 1, 2, 1] = 1          # the opponent's on the right edge (cell 5)
    actions = np.array([[0, 5], [1, 8]])
    policy = np.zeros((2, 3, 9), np.float32)
    policy[:, :, 0] = 0.75
    policy[:, :, 5] = 0.25
    which = np.array([0, 1])             # the identity, and the quarter turn
    obs, mapped_actions, mapped_policy = symmetries.augment(observation, actions, policy, which)
    np.testing.assert_array_equal(obs[0], observation[0])
    np.testing.assert_array_equal(mapped_actions[0], actions[0])
    # Quarter turn: cell 0 -> 2, 5 -> 7, 1 -> 5, 8 -> 6.
    assert obs[1, 0, 2, 0] == 1 and obs[1, 2, 1, 1] == 1 and obs[1].sum() == 2
    np.testing.assert_array_equal(mapped_actions[1], [5, 6])
    assert mapped_actions.dtype == np.int32
    np.testing.assert_allclose(mapped_policy[1, :, 2], 0.75)
    np.testing.assert_allclose(mapped_policy[1, :, 7], 0.25)
    np.testing.assert_allclose(mapped_policy.sum(axis=2), 1.0)


def test_symmetries_are_validated_with_clear_messages():
    with pytest.raises(ValueError, match="permutation"):
        Symmetries(cells=[[0, 1], [0, 0]], actions=[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="identity"):
        Symmetries(cells=[[1, 0]], actions=[[0, 1]])
    with pytest.raises(ValueError, match="same G"):
        Symmetries(cells=[[0, 1]], actions=[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="which"):
        games.make("tictactoe").symmetries().augment(
            np.zeros((1, 3, 3, 2)), np.zeros((1, 1), int), np.zeros((1, 2, 9)), np.array([8]))


def test_2048_symmetries_commute_with_sliding_merging_and_legality():
    """2048's spawn is random, so its rules are checked where they are deterministic: sliding
    the mapped board in the mapped direction gives the mapped board and the same score, and the
    legal moves map too (a spawn is uniform over empty cells, so it commutes in distribution)."""
    from games import g2048

    game = games.make("2048")
    symmetries = game.symmetries()
    assert len(symmetries) == 8 and game.settings.training.augment_symmetries
    rng = np.random.default_rng(4)
    boards = rng.integers(0, 6, (256, 4, 4)).astype(np.int8)
    boards[rng.random(boards.shape) < 0.4] = 0          # empty cells, so that moves differ
    seen_legal = np.zeros(4, bool)
    for g in range(len(symmetries)):
        cells, action_map = symmetries.cells[g], symmetries.actions[g]
        mapped = _map_board(boards, cells)
        legal = g2048.legal_moves(boards)
        mapped_legal = np.zeros_like(legal)
        mapped_legal[:, action_map] = legal
        np.testing.assert_array_equal(g2048.legal_moves(mapped), mapped_legal)
        seen_legal |= legal.any(axis=0)
        for action in range(4):
            actions = np.full(len(boards), action, np.int32)
            slid, score = g2048.slide(boards, actions)
            mapped_slid, mapped_score = g2048.slide(mapped, action_map[actions].astype(np.int32))
            np.testing.assert_array_equal(mapped_slid, _map_board(slid, cells))
            np.testing.assert_array_equal(mapped_score, score)
    assert seen_legal.all()
    # A quarter turn takes up to right; the column mirror swaps left and right only.
    np.testing.assert_array_equal(symmetries.actions[1], [1, 2, 3, 0])
    np.testing.assert_array_equal(symmetries.actions[4], [0, 3, 2, 1])
