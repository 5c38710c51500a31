"""The search's API: action choice, shapes and dtypes, resets between moves, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from games.base import MuZeroSettings
from services.agent.search import BatchedSearch, ModelOutput, SearchConfig, SearchResult, select_actions

from tests.agent.search_fakes import FakeTreeModel, PredictsFromMethods


class RandomModel(PredictsFromMethods):
    """Random outputs for any hidden shape; reseeded per instance."""

    def __init__(self, batch: int, num_actions: int, hidden_shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.batch, self.num_actions, self.hidden_shape = batch, num_actions, hidden_shape

    def _output(self) -> ModelOutput:
        B, A = self.batch, self.num_actions
        return ModelOutput(self.rng.normal(size=(B, *self.hidden_shape)).astype(np.float32),
                           self.rng.normal(size=B).astype(np.float32), self.rng.normal(size=B).astype(np.float32),
                           self.rng.normal(size=(B, A)).astype(np.float32))

    def initial_inference(self, observation):
        return self._output()

    def recurrent_inference(self, hidden_state, action):
        return self._output()


# ----------------------------------------------------------------------------- select_actions


def test_select_actions_greedy_lowest_index_on_ties():
    counts = np.array([[3, 5, 5, 1], [0, 0, 0, 0], [9, 0, 9, 9], [0, 0, 0, 2]])
    actions = select_actions(counts, 0.0, np.random.default_rng(0))
    assert actions.dtype == np.int32
    assert actions.tolist() == [1, 0, 0, 3]


def test_select_actions_temperature_one_is_proportional_to_visits():
    counts = np.tile([1, 3, 0, 6], (40_000, 1))
    actions = select_actions(counts, 1.0, np.random.default_rng(1))
    freq = np.bincount(actions, minlength=4) / len(actions)
    np.testing.assert_allclose(freq, [0.1, 0.3, 0.0, 0.6], atol=0.01)
    assert freq[2] == 0                                    # unvisited actions are never chosen


def test_select_actions_temperature_half_squares_visits():
    counts = np.tile([1, 2, 0], (40_000, 1))
    actions = select_actions(counts, 0.5, np.random.default_rng(2))
    freq = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(freq, [0.2, 0.8, 0.0], atol=0.01)


def test_select_actions_is_seeded_and_rejects_bad_input():
    counts = np.random.default_rng(3).integers(1, 10, (50, 5))
    a = select_actions(counts, 1.0, np.random.default_rng(7))
    b = select_actions(counts, 1.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="positive count"):
        select_actions(np.array([[0, 0]]), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="temperature"):
        select_actions(np.array([[1, 0]]), -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="visit_counts"):
        select_actions(np.array([1, 0]), 1.0, np.random.default_rng(0))


# ----------------------------------------------------------------------------- shapes and resets


@pytest.mark.parametrize("mode", ["puct", "gumbel"])
@pytest.mark.parametrize("hidden_shape", [(8,), (3, 3, 4)])
def test_shapes_and_dtypes(mode, hidden_shape):
    B, A, S = 5, 4, 12
    search = BatchedSearch(B, A, hidden_shape, SearchConfig(num_simulations=S, search=mode))
    model = RandomModel(B, A, hidden_shape)
    legal = np.ones((B, A), bool)
    legal[0, 1:] = False
    search.start_move(model.initial_inference(None), legal, np.random.default_rng(0))
    hidden, action = search.select()
    assert hidden.shape == (B, *hidden_shape) and hidden.dtype == np.float32
    assert action.shape == (B,) and action.dtype == np.int32
    search.expand_and_backup(model.recurrent_inference(hidden, action))
    for _ in range(S - 1):
        search.expand_and_backup(model.recurrent_inference(*search.select()))
    result = search.finish_move()
    assert isinstance(result, SearchResult)
    for name, shape, dtype in [("action", (B,), np.int32), ("visit_counts", (B, A), np.int32),
                               ("policy", (B, A), np.float32), ("value", (B,), np.float32),
                               ("raw_value", (B,), np.float32), ("qvalues", (B, A), np.float32),
                               ("max_depth", (B,), np.int32)]:
        array = getattr(result, name)
        assert array.shape == shape and array.dtype == dtype, name
    assert (result.visit_counts.sum(axis=1) == S).all()
    np.testing.assert_allclose(result.policy.sum(axis=1), 1.0, rtol=1e-6)
    assert result.action[0] == 0 and result.visit_counts[0].tolist() == [S, 0, 0, 0]
    assert result.policy[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert legal[np.arange(B), result.action].all()
    assert search.hidden_state.shape == (B, S + 1, *hidden_shape)
    assert search.children_index.shape == (B, S + 1, A) and search.children_index.dtype == np.int32
    assert search.node_visits[:, 0].tolist() == [S + (mode == "gumbel")] * B


@pytest.mark.parametrize("mode", ["puct", "gumbel"])
def test_reset_between_moves_gives_identical_results(mode):
    B, A = 8, 5
    config = SearchConfig(num_simulations=20, search=mode, max_considered_actions=4)
    search = BatchedSearch(B, A, (2,), config, two_player=True)
    fake = FakeTreeModel(B, A, seed=4)
    legal = np.random.default_rng(4).random((B, A)) < 0.7
    legal[:, 2] = True
    first = search.run(fake, fake.root_ids, legal, np.random.default_rng(10))
    arrays = {name: getattr(search, name).copy() for name in
              ("children_index", "children_visits", "children_qvalues", "node_value_sum", "hidden_state")}
    # A different move in between (other model, all legal), then the first inputs again.
    other = RandomModel(B, A, (2,), seed=5)
    search.run(other, None, np.ones((B, A), bool), np.random.default_rng(11))
    again = search.run(fake, fake.root_ids, legal, np.random.default_rng(10))
    for field in dataclasses.fields(SearchResult):
        np.testing.assert_array_equal(getattr(first, field.name), getattr(again, field.name), err_msg=field.name)
    for name, array in arrays.items():
        np.testing.assert_array_equal(getattr(search, name), array, err_msg=name)


def test_batched_games_are_independent():
    """A game's answer does not depend on the other games searched with it."""
    A = 4
    config = SearchConfig(num_simulations=24, search="gumbel", max_considered_actions=3)
    fake = FakeTreeModel(6, A, seed=12)
    legal = np.ones((6, A), bool)
    together = BatchedSearch(6, A, (2,), config).run(fake, fake.root_ids, legal, np.random.default_rng(0),
                                                     training=False)
    for b in range(6):
        alone_model = FakeTreeModel(1, A, seed=0)
        alone_model.values, alone_model.rewards = fake.values[b:b + 1], fake.rewards[b:b + 1]
        alone_model.logits, alone_model.root_ids = fake.logits[b:b + 1], fake.root_ids[b:b + 1]
        alone = BatchedSearch(1, A, (2,), config).run(alone_model, alone_model.root_ids, legal[:1],
                                                      np.random.default_rng(0), training=False)
        np.testing.assert_array_equal(alone.visit_counts[0], together.visit_counts[b])
        np.testing.assert_array_equal(alone.policy[0], together.policy[b])
        assert alone.value[0] == together.value[b]


def test_dirichlet_noise_only_in_training_and_only_on_legal_actions():
    B, A = 4, 6
    config = SearchConfig(num_simulations=4, search="puct", root_dirichlet_alpha=0.3, root_exploration_fraction=0.25)
    search = BatchedSearch(B, A, (2,), config)
    fake = FakeTreeModel(B, A, seed=1)
    legal = np.ones((B, A), bool)
    legal[:, ::2] = False
    root = fake.initial_inference(fake.root_ids)
    search.start_move(root, legal, np.random.default_rng(0), training=False)
    clean = search.children_prior[:, 0].copy()
    logits = np.where(legal, root.policy_logits.astype(np.float64), -np.inf)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(clean, expected / expected.sum(axis=1, keepdims=True), rtol=1e-12)
    search.start_move(root, legal, np.random.default_rng(0), training=True)
    noisy = search.children_prior[:, 0].copy()
    assert not np.allclose(noisy, clean)
    assert not noisy[~legal].any()
    np.testing.assert_allclose(noisy.sum(axis=1), 1.0)
    assert (noisy[legal] >= 0.75 * clean[legal] - 1e-12).all()    # (1 - fraction) * prior + fraction * noise
    search.start_move(root, legal, np.random.default_rng(0), training=True)
    np.testing.assert_array_equal(search.children_prior[:, 0], noisy)   # seeded


def test_puct_temperature_defaults():
    B, A = 64, 3
    config = SearchConfig(num_simulations=16, search="puct", temperature=1.0)
    search = BatchedSearch(B, A, (4,), config)
    model = RandomModel(B, A, (4,), seed=1)
    greedy = search.run(model, None, np.ones((B, A), bool), np.random.default_rng(0), training=False)
    np.testing.assert_array_equal(greedy.action, np.argmax(greedy.visit_counts, axis=1))
    sampled = search.run(model, None, np.ones((B, A), bool), np.random.default_rng(0), training=True)
    assert (sampled.visit_counts[np.arange(B), sampled.action] > 0).all()
    forced = search.run(model, None, np.ones((B, A), bool), np.random.default_rng(0), training=True, temperature=0)
    np.testing.assert_array_equal(forced.action, np.argmax(forced.visit_counts, axis=1))


# ----------------------------------------------------------------------------- configuration and misuse


def test_config_from_settings_and_validation():
    settings = MuZeroSettings.of(architecture="fc", hidden_size=16, num_simulations=32, search="puct", discount=0.99, max_considered_actions=4)
    config = SearchConfig.from_settings(settings)
    assert (config.num_simulations, config.search, config.discount,
            config.max_considered_actions) == (32, "puct", 0.99, 4)
    assert SearchConfig.from_settings(settings, search="gumbel").search == "gumbel"
    assert BatchedSearch(2, 3, 4, settings).config == config
    for field, bad in [("num_simulations", 0), ("search", "uct"), ("discount", 0.0), ("discount", 1.5),
                       ("pb_c_base", 0.0), ("root_dirichlet_alpha", 0.0), ("root_exploration_fraction", 2.0),
                       ("max_considered_actions", 0), ("gumbel_scale", -1.0), ("temperature", -0.1)]:
        with pytest.raises(ValueError, match=f"SearchConfig.{field}"):
            SearchConfig(**{field: bad})


def test_misuse_and_bad_shapes_are_rejected():
    B, A = 3, 4
    search = BatchedSearch(B, A, (2,), SearchConfig(num_simulations=2, search="puct"))
    model = RandomModel(B, A, (2,))
    with pytest.raises(ValueError, match="select"):
        search.select()
    with pytest.raises(ValueError, match="legal_actions"):
        search.start_move(model.initial_inference(None), np.ones((B, A - 1), bool), np.random.default_rng(0))
    no_legal = np.ones((B, A), bool)
    no_legal[1] = False
    with pytest.raises(ValueError, match=r"games \[1\] have no legal action"):
        search.start_move(model.initial_inference(None), no_legal, np.random.default_rng(0))
    bad = dataclasses.replace(model.initial_inference(None), policy_logits=np.zeros((B, A + 1)))
    with pytest.raises(ValueError, match="root.policy_logits"):
        search.start_move(bad, np.ones((B, A), bool), np.random.default_rng(0))
    search.start_move(model.initial_inference(None), np.ones((B, A), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="expand_and_backup"):
        search.expand_and_backup(model.recurrent_inference(None, None))
    hidden, action = search.select()
    bad = dataclasses.replace(model.recurrent_inference(hidden, action), hidden_state=np.zeros((B, 3), np.float32))
    with pytest.raises(ValueError, match="output.hidden_state"):
        search.expand_and_backup(bad)
    search.expand_and_backup(model.recurrent_inference(hidden, action))
    with pytest.raises(ValueError, match="finish_move"):
        search.finish_move()
    search.expand_and_backup(model.recurrent_inference(*search.select()))
    with pytest.raises(ValueError, match="select"):
        search.select()
    search.finish_move()


def test_any_object_with_the_four_fields_is_a_model_output():
    """E.g. the network client's Inference (which adds a version) drives the search as is."""
    import types

    B, A = 2, 3
    search = BatchedSearch(B, A, (4,), SearchConfig(num_simulations=3, search="gumbel"))
    model = RandomModel(B, A, (4,))

    def duck(output: ModelOutput) -> types.SimpleNamespace:
        return types.SimpleNamespace(version=7, **dataclasses.asdict(output))

    search.start_move(duck(model.initial_inference(None)), np.ones((B, A), bool), np.random.default_rng(0))
    for _ in range(3):
        search.expand_and_backup(duck(model.recurrent_inference(*search.select())))
    assert search.finish_move().visit_counts.sum() == 3 * B
