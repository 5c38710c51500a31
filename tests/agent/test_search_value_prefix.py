"""Value prefix in the search (EfficientZero): a backup with prefixes equals a backup with the
equivalent per-step rewards, and the search resets the model's LSTM state every H steps, H
being what the model's root output says.

The value-prefix fake wraps `FakeTreeModel`: its LSTM state is [sum of the rewards since the
last reset, 1], and its `reward` is that sum (what a trained value-prefix model predicts). The
fake's rewards are multiples of 1/8, so the sums and the search's differences are exact and the
two searches' trees can be compared bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pytest

from services.agent.inference import (INITIAL_INFERENCE, RECURRENT_INFERENCE, VALUE_PREFIX_HORIZON,
                                      VALUE_PREFIX_STATE, Answered, VersionedOutput)
from services.agent.search import BatchedSearch, SearchConfig
from services.agent.search.tree import Tree

from tests.agent.search_fakes import FakeTreeModel

B, A = 6, 3


def exact_rewards_model(seed: int) -> FakeTreeModel:
    model = FakeTreeModel(B, A, seed)
    model.rewards = np.round(model.rewards * 8) / 8          # exact in float32, sums too
    return model


class ValuePrefixFake:
    """A value-prefix model of horizon H over `base`: state [prefix since the last reset, 1],
    reward = prefix."""

    version = 1

    def __init__(self, base: FakeTreeModel, horizon: int, horizons=None) -> None:
        self.base = base
        self.horizons = np.full(B, horizon, np.int32) if horizons is None else np.asarray(horizons, np.int32)
        self.states_seen: list[np.ndarray] = []

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> Answered:
        if signature == INITIAL_INFERENCE:
            out = dataclasses.replace(self.base.initial_inference(inputs["observation"]),
                                      value_prefix_horizon=self.horizons)
            state = np.zeros((B, 2), np.float32)
        else:
            assert signature == RECURRENT_INFERENCE
            state_in = inputs[VALUE_PREFIX_STATE]
            assert state_in.dtype == np.float32 and state_in.shape == (B, 2)
            self.states_seen.append(state_in.copy())
            step = self.base.recurrent_inference(inputs["hidden_state"], inputs["action"])
            prefix = (state_in[:, 0] + step.reward).astype(np.float32)
            out = dataclasses.replace(step, reward=prefix)
            state = np.stack([prefix, np.ones(B, np.float32)], axis=1)
        return Answered(VersionedOutput(**{**dataclasses.asdict(out), VALUE_PREFIX_STATE: state},
                                        version=self.version))


class PerStepFake:
    """`base` through the model protocol, per-step rewards (no value prefix)."""

    version = 1

    def __init__(self, base: FakeTreeModel) -> None:
        self.base = base

    def predict_future(self, signature, inputs, version=None, timeout_s=None) -> Answered:
        if signature == INITIAL_INFERENCE:
            out = self.base.initial_inference(inputs["observation"])
        else:
            assert VALUE_PREFIX_STATE not in inputs
            out = self.base.recurrent_inference(inputs["hidden_state"], inputs["action"])
        return Answered(VersionedOutput(**dataclasses.asdict(out), version=self.version))


def searched(model, config: SearchConfig, seed: int) -> tuple[BatchedSearch, object]:
    search = BatchedSearch(B, A, (2,), config)
    observations = model.base.root_ids.astype(np.float32)
    result = search.run(model, observations, np.ones((B, A), bool), np.random.default_rng(seed))
    return search, result


@pytest.mark.parametrize("policy", ["puct", "gumbel"])
@pytest.mark.parametrize("horizon", [1, 2, 3, 100])
def test_value_prefix_backup_equals_the_per_step_backup(policy, horizon):
    base = exact_rewards_model(seed=horizon)
    config = SearchConfig(num_simulations=48, search=policy, discount=0.9, max_considered_actions=3)
    plain, plain_result = searched(PerStepFake(base), config, seed=5)
    prefixed, prefixed_result = searched(ValuePrefixFake(base, horizon), config, seed=5)
    assert prefixed.value_prefix_horizon == horizon
    assert plain.tree.node_depth.max() >= 4                  # deep enough to cross resets
    for name in Tree.ARRAYS:
        np.testing.assert_array_equal(getattr(prefixed.tree, name), getattr(plain.tree, name), err_msg=name)
    for field in dataclasses.fields(plain_result):
        np.testing.assert_array_equal(getattr(prefixed_result, field.name), getattr(plain_result, field.name),
                                      err_msg=field.name)


def test_the_search_resets_the_state_at_multiples_of_the_horizon():
    model = ValuePrefixFake(exact_rewards_model(seed=0), horizon=2)
    search = BatchedSearch(B, A, (2,), SearchConfig(num_simulations=40, search="puct"))
    search.run(model, model.base.root_ids.astype(np.float32), np.ones((B, A), bool), np.random.default_rng(1))
    tree = search.tree
    # A node's prefix is the sum of the per-step rewards since its path's last reset.
    for b in range(B):
        for node in range(1, 41):
            depth, prefix, total = tree.node_depth[b, node], tree.node_value_prefix[b, node], 0.0
            walk = node
            for _ in range((depth - 1) % 2 + 1):                # back to the last reset depth
                total += tree.node_reward[b, walk]
                walk = tree.node_parent[b, walk]
            assert prefix == total, (b, node)
    # Every state the model was given at a reset depth was zeros (no marker), the others not.
    assert any(s[:, 1].min() == 0 for s in model.states_seen)
    assert any(s[:, 1].max() == 1 for s in model.states_seen)


class WithoutHorizon(ValuePrefixFake):
    """A value-prefix model whose root leaves out its horizon."""

    def predict_future(self, signature, inputs, version=None, timeout_s=None) -> Answered:
        answer = super().predict_future(signature, inputs, version, timeout_s).result()
        if signature == INITIAL_INFERENCE:
            answer = dataclasses.replace(answer, value_prefix_horizon=None)
        return Answered(answer)


def test_a_model_must_say_one_horizon_and_keep_to_value_prefix_all_move():
    base = exact_rewards_model(seed=0)
    observations = base.root_ids.astype(np.float32)
    legal = np.ones((B, A), bool)
    search = BatchedSearch(B, A, (2,), SearchConfig(num_simulations=4))
    for horizons in (np.zeros(B), [2, 2, 2, 2, 2, 3]):
        with pytest.raises(ValueError, match="one H >= 1"):
            search.run(ValuePrefixFake(base, 0, horizons), observations, legal, np.random.default_rng(0))
    with pytest.raises(ValueError, match="must give its value_prefix_horizon"):
        search.run(WithoutHorizon(base, 2), observations, legal, np.random.default_rng(0))
    # A recurrent answer without the state after a value-prefix root: refused, not misread.
    root = ValuePrefixFake(base, 2).predict_future(INITIAL_INFERENCE, {"observation": observations}).result()
    search.start_move(root, legal, np.random.default_rng(0))
    inputs = search.select_inputs()
    plain_step = PerStepFake(base).predict_future(
        RECURRENT_INFERENCE, {"hidden_state": inputs["hidden_state"], "action": inputs["action"]}).result()
    with pytest.raises(ValueError, match="value_prefix_state is missing"):
        search.expand_and_backup(plain_step)


def test_a_plain_model_after_a_value_prefix_one_searches_as_on_a_fresh_search():
    base = exact_rewards_model(seed=0)
    observations = base.root_ids.astype(np.float32)
    legal = np.ones((B, A), bool)
    fresh = BatchedSearch(B, A, (2,), SearchConfig(num_simulations=12)).run(
        PerStepFake(base), observations, legal, np.random.default_rng(3))
    reused = BatchedSearch(B, A, (2,), SearchConfig(num_simulations=12))
    reused.run(ValuePrefixFake(base, 2), observations, legal, np.random.default_rng(3))
    after = reused.run(PerStepFake(base), observations, legal, np.random.default_rng(3))
    assert reused.value_prefix_horizon == 0
    for field in dataclasses.fields(fresh):
        np.testing.assert_array_equal(getattr(after, field.name), getattr(fresh, field.name), err_msg=field.name)
