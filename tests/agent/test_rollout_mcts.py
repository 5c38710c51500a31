"""The UCT opponent with random playouts (services/agent/rollout_mcts.py): it takes wins, blocks
losses, beats the random player, plays only legal moves (Othello passes included) and searches
each game the same whatever else shares the batch. Every count here passes with the fixed
seeds; the searches are small (B of a few games, at most 200 simulations) to keep this fast."""

from __future__ import annotations

import numpy as np
import pytest

import games
from services.agent.opponents import random_opponent
from services.agent.playouts import draw_legal, stream_base, stream_keys
from services.agent.rollout_mcts import RolloutMCTS, mcts_rollout_opponent


def board(rows: list[str]) -> np.ndarray:
    """A board from its rows, top first: '.' empty, 'X' player 0, 'O' player 1."""
    return np.array([[".XO".index(ch) for ch in row] for row in rows], np.int8)


def moves(name: str, rows: list[str], simulations: int = 200, games_: int = 4) -> set[int]:
    """The moves the opponent picks in `games_` copies of one position, one seed each."""
    game = games.make(name)
    state = game.state_from_positions(np.repeat(board(rows)[None], games_, axis=0))
    opponent = mcts_rollout_opponent(name, simulations)
    actions = opponent(game.observation(state), game.legal_actions(state), np.random.default_rng(0))
    return set(actions.tolist())


def test_it_takes_a_win_in_one_and_blocks_a_loss_in_one():
    # X to move takes the top row's win; O to move blocks it.
    assert moves("tictactoe", ["XX.", "OO.", "..."]) == {2}
    assert moves("tictactoe", ["XX.", ".O.", "..."]) == {2}
    # Connect Four, X to move: its bottom-row four (column 3) comes before blocking O's column 4.
    assert moves("connect4", [".......", ".......", ".......", "....O..", "....O..", "XXX.O.."]) == {3}
    # O to move must block the bottom row at column 3.
    assert moves("connect4", [".......", ".......", ".......", ".......", "....O..", "XXX.O.."]) == {3}
    # O to move must block X's column 1 (three stacked), not the centre.
    assert moves("connect4", [".......", ".......", ".......", ".X.....", ".X..O..", ".X..OO."]) == {1}


def play(first, second, game_name: str, n: int, seed: int, start=None):
    """Plays n games, `first` as player 0; returns the outcomes (+1 player 0 won, -1 lost, 0 draw)
    and the actions each side played. `game.step` raises on an illegal action."""
    game = games.make(game_name)
    rng = np.random.default_rng(seed)
    state = game.reset(n, seed) if start is None else start
    outcome = np.zeros(n)
    done = np.zeros(n, bool)
    played: dict[int, list[int]] = {0: [], 1: []}
    while not done.all():
        live = np.flatnonzero(~done)
        sub = state.take(live)
        mover = game.to_play(sub)
        observation, legal = game.observation(sub), game.legal_actions(sub)
        actions = np.zeros(len(live), np.int64)
        for player, side in ((0, first), (1, second)):
            rows = np.flatnonzero(mover == player)
            if rows.size:
                actions[rows] = side(observation[rows], legal[rows], rng)
                played[player] += actions[rows].tolist()
        sub, reward, terminated, truncated = game.step(sub, actions)
        outcome[live] += np.where(mover == 0, reward, -reward)
        done[live] = terminated | truncated
        state = state.put(live, sub)
    return outcome, played


def test_it_beats_the_random_player_at_tictactoe():
    # 400 simulations (200 already win 28 of these 32 games but lose one as the second player).
    mcts = mcts_rollout_opponent("tictactoe", 400)
    first, _ = play(mcts, random_opponent, "tictactoe", 16, seed=1)
    second, _ = play(random_opponent, mcts, "tictactoe", 16, seed=2)
    results = np.concatenate([first, -second])  # from the search's view
    assert np.mean(results > 0) >= 0.85, results
    assert np.all(results >= 0), results


def test_it_plays_legal_othello_moves_and_passes():
    game = games.make("othello")
    # O to move on "X O . . ." (top row): only a pass is legal.
    cells = np.zeros((1, 8, 8), np.int8)
    cells[0, 0, 0], cells[0, 0, 1] = 1, 2
    state = game.state_from_positions(cells, to_play=np.array([1]))
    mcts = mcts_rollout_opponent("othello", 8)
    assert mcts(game.observation(state), game.legal_actions(state), np.random.default_rng(0)).tolist() == [64]
    # Random games to 48 discs, then the search against the random player to the end.
    rng = np.random.default_rng(3)
    state = game.reset(6, seed=3)
    for _ in range(44):
        state, _, terminated, _ = game.step(state, draw_legal(rng.integers(0, 2**63, 6).astype(np.uint64),
                                                               game.legal_actions(state)))
        assert not terminated.any()
    _, played = play(mcts_rollout_opponent(None, 12), random_opponent, "othello", 6, seed=4, start=state)
    assert len(played[0]) >= 6 * 5  # the search played, and every move it played was legal


@pytest.mark.parametrize("name", ["tictactoe", "connect4", "othello"])
def test_a_game_is_searched_the_same_alone_and_in_a_batch(name):
    game = games.make(name)
    rng = np.random.default_rng(5)
    state = game.reset(5, seed=5)
    # Five different positions; Othello's nearer the end, as its playouts are long and slow.
    for _ in range(40 if name == "othello" else 3):
        state, *_ = game.step(state, draw_legal(rng.integers(0, 2**63, 5).astype(np.uint64),
                                                game.legal_actions(state)))
    observation, legal = game.observation(state), game.legal_actions(state)
    seeds = np.arange(10, 15, dtype=np.uint64)
    search = RolloutMCTS(name, 16 if name == "othello" else 60)
    together = search.search(observation, legal, seeds)
    for i in range(5):
        alone = search.search(observation[i:i + 1], legal[i:i + 1], seeds[i:i + 1])
        np.testing.assert_array_equal(alone.visits[0], together.visits[i])
        np.testing.assert_array_equal(alone.value[0], together.value[i])
        assert alone.action[0] == together.action[i]
    assert together.visits.sum(axis=1).tolist() == [search.simulations] * 5
    # Another seed is another search.
    other = search.search(observation, legal, seeds + np.uint64(100))
    assert not np.array_equal(other.visits, together.visits)


def test_the_most_visited_action_is_played_ties_to_the_lowest_index():
    game = games.make("tictactoe")
    state = game.reset(2)
    # One simulation visits one root action, chosen at random per game.
    result = RolloutMCTS("tictactoe", 1).search(game.observation(state), game.legal_actions(state),
                                                np.array([1, 2], np.uint64))
    assert result.visits.sum(axis=1).tolist() == [1, 1]
    np.testing.assert_array_equal(result.action, np.argmax(result.visits, axis=1))
    # With no visit difference among the untried actions the lowest index wins.
    state = game.state_from_positions(board(["XO.", "...", "..."])[None])
    result = RolloutMCTS("tictactoe", 7).search(game.observation(state), game.legal_actions(state),
                                                np.array([3], np.uint64))
    assert result.visits[0].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert result.action.tolist() == [2]


def test_random_draws_cover_the_legal_actions_uniformly():
    legal = np.array([[True, False, True, True]] * 30_000)
    keys = stream_keys(stream_base(np.arange(30_000, dtype=np.uint64), 1, 0), 0)
    counts = np.bincount(draw_legal(keys, legal), minlength=4)
    assert counts[1] == 0
    # 10,000 expected each; 5 standard deviations are about 400.
    assert np.all(np.abs(counts[[0, 2, 3]] - 10_000) < 400), counts


def test_bad_arguments_are_refused():
    game = games.make("connect4")
    state = game.reset(2)
    observation, legal = game.observation(state), game.legal_actions(state)
    with pytest.raises(ValueError, match="simulations must be >= 1, got 0"):
        RolloutMCTS("connect4", 0)
    with pytest.raises(ValueError, match="game_name must be one of tictactoe, connect4, othello"):
        RolloutMCTS("cartpole", 10)
    search = RolloutMCTS(None, 4)
    with pytest.raises(ValueError, match=r"observation: shape \[4\] is none of the board games'"):
        search.search(np.zeros((2, 4), np.float32), legal, np.zeros(2, np.uint64))
    wrong = legal.copy()
    wrong[1, 3] = False
    with pytest.raises(ValueError, match=r"legal_actions: not the observation's legal moves in games \[1\]"):
        search.search(observation, wrong, np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match=r"seeds: expected shape \(2,\)"):
        search.search(observation, legal, np.zeros(3, np.uint64))
