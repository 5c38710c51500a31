"""What every game promises through games/base.py: shapes and dtypes, pure steps, batches that
behave like single games, mover-relative observations, position round trips, take and put."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import games
from games.base import Game, MuZeroSettings

NAMES = ["cartpole", "tictactoe", "connect4", "2048", "othello"]
BOARDS = ["tictactoe", "connect4", "othello"]
CHANCE = {"2048"}  # spawns come from the batch's shared random stream


def random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.argmax(legal * rng.random(legal.shape), axis=1)


def arrays(state) -> dict[str, np.ndarray]:
    return {f.name: getattr(state, f.name).copy() for f in dataclasses.fields(state) if f.name != "rng"}


def playout(game: Game, n: int, seed: int, max_steps: int = 1000):
    """Yields (state, actions, new state, reward, terminated, truncated) of random games, dropping
    ended ones, until all ended or `max_steps` steps."""
    rng = np.random.default_rng(seed)
    state = game.reset(n, seed=seed)
    for _ in range(max_steps):
        if state.batch_size == 0:
            return
        actions = random_legal(game.legal_actions(state), rng)
        new, reward, terminated, truncated = game.step(state, actions)
        yield state, actions, new, reward, terminated, truncated
        state = new.take(np.flatnonzero(~(terminated | truncated)))


def test_registry_has_the_five_games():
    assert games.names() == NAMES
    with pytest.raises(ValueError, match="known games"):
        games.make("chess")


@pytest.mark.parametrize("name", NAMES)
def test_spec_and_settings_agree(name):
    game = games.make(name)
    spec, settings = game.spec, game.settings
    assert spec.name == name
    assert isinstance(settings, MuZeroSettings)
    assert settings.discount == spec.discount
    assert 2 <= settings.search.max_considered_actions <= spec.num_actions
    assert settings.search.max_considered_actions == min(16, spec.num_actions)
    assert settings.search.search == "gumbel" and 16 <= settings.search.num_simulations <= 32
    assert settings.training.num_unroll_steps == 5
    if len(spec.observation_shape) == 3:
        assert settings.network.architecture == "resnet" and 32 <= settings.network.hidden_size <= 64
        assert 1 <= settings.network.res_blocks <= 2 and spec.observation_dtype == "uint8"
    if spec.num_players == 2:
        assert spec.discount == 1.0 and settings.training.td_steps >= spec.max_moves


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_seeded_resets(name):
    game = games.make(name)
    spec = game.spec
    state = game.reset(5, seed=1)
    assert state.batch_size == 5
    obs = game.observation(state)
    assert obs.shape == (5, *spec.observation_shape) and obs.dtype == np.float32
    legal = game.legal_actions(state)
    assert legal.shape == (5, spec.num_actions) and legal.dtype == bool and legal.any(axis=1).all()
    to_play = game.to_play(state)
    assert to_play.dtype == np.int32 and (to_play == 0).all()
    np.testing.assert_array_equal(game.positions(game.reset(5, seed=1)), game.positions(state))
    assert game.reset(0).batch_size == 0


@pytest.mark.parametrize("name", NAMES)
def test_playouts_keep_the_contract(name):
    game = games.make(name)
    spec = game.spec
    dtype = np.dtype(spec.observation_dtype)
    steps = 0
    for state, actions, new, reward, terminated, truncated in playout(game, 32, seed=2):
        before = arrays(state)
        assert reward.shape == terminated.shape == truncated.shape == (state.batch_size,)
        assert reward.dtype == np.float32 and terminated.dtype == bool and truncated.dtype == bool
        assert not (terminated & truncated).any()
        for key, value in arrays(state).items():  # the step did not touch its input
            np.testing.assert_array_equal(value, before[key], err_msg=key)
        obs = game.observation(new)
        np.testing.assert_array_equal(obs.astype(dtype).astype(np.float32), obs)  # exact in the spec's dtype
        alive = ~(terminated | truncated)
        assert game.legal_actions(new)[alive].any(axis=1).all()
        if spec.num_players == 2:
            np.testing.assert_array_equal(game.to_play(new), 1 - game.to_play(state))
        steps += 1
    assert steps > 0


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_plays_exactly_like_single_games(name):
    game = games.make(name)
    checked = 0
    for state, actions, new, reward, terminated, truncated in playout(game, 8, seed=3, max_steps=60):
        for i in range(state.batch_size):
            one = state.take(np.array([i]))
            single, r, te, tr = game.step(one, actions[i:i + 1])
            assert r[0] == reward[i]
            if name in CHANCE:
                continue  # where the tile spawns depends on the shared stream (see test_g2048.py)
            assert te[0] == terminated[i] and tr[0] == truncated[i]
            np.testing.assert_array_equal(game.positions(single)[0], game.positions(new)[i])
            np.testing.assert_array_equal(game.observation(single)[0], game.observation(new)[i])
            np.testing.assert_array_equal(game.legal_actions(single)[0], game.legal_actions(new)[i])
            np.testing.assert_array_equal(game.to_play(single)[0], game.to_play(new)[i])
            checked += 1
    assert checked > 20 or name in CHANCE


@pytest.mark.parametrize("name", BOARDS)
def test_observations_are_from_the_movers_view_and_swap_after_a_move(name):
    game = games.make(name)
    for state, actions, new, reward, terminated, truncated in playout(game, 16, seed=4):
        for s in (state, new):
            obs, pos, me = game.observation(s), game.positions(s), game.to_play(s)[:, None, None]
            np.testing.assert_array_equal(obs[..., 0], pos == me + 1)
            np.testing.assert_array_equal(obs[..., 1], pos == 2 - me)
        before, after = game.observation(state), game.observation(new)
        # The player who moved is now the opponent: their pieces (plus the new one and, in
        # Othello, the flipped ones) are in plane 1; plane 0 only lost pieces (flips).
        assert (after[..., 1] >= before[..., 0]).all()
        assert (after[..., 0] <= before[..., 1]).all()
        if name != "othello":
            assert (after[..., 1].sum(axis=(1, 2)) == before[..., 0].sum(axis=(1, 2)) + 1).all()
            np.testing.assert_array_equal(after[..., 0], before[..., 1])


@pytest.mark.parametrize("name", NAMES)
def test_positions_round_trip(name):
    game = games.make(name)
    for state, actions, new, *_ in playout(game, 16, seed=5, max_steps=8):
        positions = game.positions(new)
        rebuilt = game.state_from_positions(positions, to_play=game.to_play(new))
        np.testing.assert_array_equal(game.positions(rebuilt), positions)
        np.testing.assert_array_equal(game.to_play(rebuilt), game.to_play(new))
        np.testing.assert_array_equal(game.legal_actions(rebuilt), game.legal_actions(new))
        np.testing.assert_array_equal(game.observation(rebuilt), game.observation(new))
        if name in ("tictactoe", "connect4"):
            derived = game.state_from_positions(positions)
            np.testing.assert_array_equal(game.to_play(derived), game.to_play(new))
            np.testing.assert_array_equal(derived.moves, new.moves)
        positions[:] = 0  # positions are a copy, not a view of the state
        assert game.positions(new).any()


@pytest.mark.parametrize("name", NAMES)
def test_take_and_put(name):
    game = games.make(name)
    rng = np.random.default_rng(6)
    state = game.reset(6, seed=6)
    for _ in range(3):  # make the games differ
        state, *_ = game.step(state, random_legal(game.legal_actions(state), rng))
    positions = game.positions(state)
    taken = state.take(np.array([4, 1]))
    np.testing.assert_array_equal(game.positions(taken), positions[[4, 1]])
    np.testing.assert_array_equal(game.observation(taken), game.observation(state)[[4, 1]])
    assert taken.rng is state.rng
    put = state.put(np.array([0, 2]), taken)
    expected = positions.copy()
    expected[[0, 2]] = positions[[4, 1]]
    np.testing.assert_array_equal(game.positions(put), expected)
    np.testing.assert_array_equal(game.legal_actions(put)[[0, 2]], game.legal_actions(state)[[4, 1]])
    np.testing.assert_array_equal(game.positions(state), positions)  # put copies
    fresh = game.reset(2, seed=7)
    replaced = state.put(np.array([3, 5]), fresh)
    np.testing.assert_array_equal(game.positions(replaced)[[3, 5]], game.positions(fresh))
    np.testing.assert_array_equal(game.to_play(replaced)[[3, 5]], [0, 0])


@pytest.mark.parametrize("name", [n for n in NAMES if n != "cartpole"])
def test_bad_actions_raise_value_error(name):
    game = games.make(name)
    state = game.reset(3, seed=8)
    with pytest.raises(ValueError, match="actions"):
        game.step(state, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="actions"):
        game.step(state, np.full(3, game.spec.num_actions))
    with pytest.raises(ValueError, match="actions"):
        game.step(state, np.full(3, -1))
    with pytest.raises(ValueError, match="actions"):
        game.step(state, np.zeros(3, np.float32))
