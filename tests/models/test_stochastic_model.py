"""Stochastic MuZero's networks (afterstate dynamics and prediction, dynamics from a chance code,
the chance encoder) in process and exported: the search's one recurrent step for both kinds of
node equals the two halves run apart, and the SavedModel serves all of it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from models.export import (AFTERSTATE_INFERENCE, CHANCE_INFERENCE, INITIAL_INFERENCE, NUM_CHANCE_CODES,
                           RECURRENT_INFERENCE, VersionExporter, export_version, load_version)
from models.networks import MuZeroNetwork

BOARD = GameSpec(name="board4x4", observation_shape=(4, 4, 3), observation_dtype="uint8", num_actions=4,
                 num_players=1, discount=0.99, max_moves=100)
C = 5
FC = CartPole.settings.replace(hidden_size=16, fc_layers=(16,), chance_codes=C)
RESNET = MuZeroSettings.of(architecture="resnet", hidden_size=4, fc_layers=(8,), res_blocks=1, support_size=5,
                           chance_codes=C)


def perturbed(spec, settings, seed=1) -> MuZeroNetwork:
    network = MuZeroNetwork(spec, settings, seed=seed)
    rng = np.random.default_rng(seed)
    network.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(np.float32) for w in network.get_weights()])
    return network


@pytest.fixture(scope="module", params=["fc", "resnet"])
def network(request):
    spec, settings = (CartPole.spec, FC) if request.param == "fc" else (BOARD, RESNET)
    return perturbed(spec, settings)


def observations(network, batch, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, *network.observation_shape)).astype(np.float32)


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=atol)


def test_the_settings_make_it_stochastic_and_refuse_what_cannot_combine():
    assert FC.stochastic and not CartPole.settings.stochastic
    with pytest.raises(ValueError, match="value_prefix"):
        FC.replace(value_prefix=True)
    with pytest.raises(ValueError, match="search 'stochastic' needs a model with chance codes"):
        CartPole.settings.replace(search="stochastic")
    assert FC.replace(search="stochastic").search.search == "stochastic"
    with pytest.raises(ValueError, match="NetworkSettings.chance_codes must be >= 0"):
        CartPole.settings.replace(chance_codes=-1)


def test_a_plain_network_has_none_of_it():
    plain = MuZeroNetwork(CartPole.spec, FC.replace(chance_codes=0), seed=1)
    assert not plain.stochastic and plain.num_chance_codes == 0
    assert not hasattr(plain, "afterstate_dynamics") and not hasattr(plain, "chance_encoder")
    with pytest.raises(ValueError, match="not stochastic"):
        plain.afterstate_inference(np.zeros((1, 16), np.float32), np.zeros(1, np.int32))


def test_the_recurrent_step_runs_each_row_through_its_own_half(network):
    A = network.num_actions
    root = network.initial_inference(observations(network, 6))
    assert root.policy_logits.shape == (6, A)
    hidden = root.hidden_state.numpy()
    edge = np.array([0, A + 2, A - 1, A, 1, A + C - 1], np.int32)
    step = network.recurrent_inference(hidden, edge)
    assert step.policy_logits.shape == (6, A + C)
    to_afterstate, from_afterstate = np.flatnonzero(edge < A), np.flatnonzero(edge >= A)
    after = network.afterstate_inference(hidden[to_afterstate], edge[to_afterstate])
    following = network.chance_inference(hidden[from_afterstate], edge[from_afterstate] - A)
    logits, value, reward = step.policy_logits.numpy(), step.value.numpy(), step.reward.numpy()
    close(step.hidden_state.numpy()[to_afterstate], after.afterstate)
    close(logits[to_afterstate, A:], after.chance_logits)
    close(value[to_afterstate], after.value, atol=1e-4)
    assert np.all(logits[to_afterstate, :A] == 0) and np.all(reward[to_afterstate] == 0)
    close(step.hidden_state.numpy()[from_afterstate], following.hidden_state)
    close(logits[from_afterstate, :A], following.policy_logits)
    close(reward[from_afterstate], following.reward, atol=1e-4)
    assert np.all(logits[from_afterstate, A:] == 0)
    # A code changes the next state: the dynamics reads it.
    other = network.chance_inference(hidden[from_afterstate], (edge[from_afterstate] - A + 1) % C)
    assert np.abs(other.hidden_state.numpy() - following.hidden_state.numpy()).max() > 1e-4


@pytest.mark.parametrize("kind", ["actions only", "codes only"])
def test_a_step_of_one_kind_of_node_only(network, kind):
    A = network.num_actions
    hidden = network.initial_inference(observations(network, 3)).hidden_state.numpy()
    edge = np.array([0, 1, 1], np.int32) + (A if kind == "codes only" else 0)
    step = network.recurrent_inference(hidden, edge)
    want = (network.afterstate_inference(hidden, edge).afterstate if kind == "actions only"
            else network.chance_inference(hidden, edge - A).hidden_state)
    close(step.hidden_state, want)
    # The same in a graph, where the empty half has no rows at all.
    graph = tf.function(lambda h, e: network.recurrent_inference(h, e).hidden_state)
    close(graph(hidden, edge), want)


def test_a_straight_through_one_hot_code_is_the_code(network):
    hidden = network.initial_inference(observations(network, 4)).hidden_state
    code = np.array([0, 3, 4, 1], np.int32)
    by_index = network.chance_inference(hidden, code)
    by_vector = network.chance_inference(hidden, tf.one_hot(code, C))
    close(by_vector.hidden_state, by_index.hidden_state)
    close(by_vector.reward_logits, by_index.reward_logits)


def test_the_encoder_reads_both_observations(network):
    before, after = observations(network, 4, seed=1), observations(network, 4, seed=2)
    logits = network.encode_chance(before, after).numpy()
    assert logits.shape == (4, C) and np.isfinite(logits).all()
    assert np.abs(network.encode_chance(before, before).numpy() - logits).max() > 1e-4
    assert np.abs(network.encode_chance(after, after).numpy() - logits).max() > 1e-4


def test_every_part_is_trained_and_checkpointed(network):
    names = [v.path for v in network.trainable_variables]
    for part in ("afterstate_dynamics", "afterstate_prediction", "chance_encoder"):
        assert any(part in name for name in names), part
    weights = network.get_weights()
    assert len(weights) == len(network.variables)
    network.set_weights(weights)


@pytest.fixture(scope="module")
def exported(network, tmp_path_factory):
    base = tmp_path_factory.mktemp("stochastic")
    export_version(network, base / "slow", 1)
    VersionExporter(network).export(base / "fast", 1)
    return network, base


@pytest.mark.parametrize("writer", ["slow", "fast"])
def test_the_exported_model_serves_both_kinds_and_both_halves(exported, writer):
    network, base = exported
    model = load_version(base / writer, 1)
    A = network.num_actions
    assert model.stochastic and set(model.signatures) == {INITIAL_INFERENCE, RECURRENT_INFERENCE,
                                                          AFTERSTATE_INFERENCE, CHANCE_INFERENCE}
    assert model.num_actions() == A + C
    assert {name: model.action_range(name) for name in model.signatures} == {
        INITIAL_INFERENCE: A + C, RECURRENT_INFERENCE: A + C, AFTERSTATE_INFERENCE: A, CHANCE_INFERENCE: C}
    observation = observations(network, 5, seed=3)
    root = model.initial_inference(observation)
    assert root["policy_logits"].shape == (5, A + C) and np.all(root["policy_logits"][:, A:] == 0)
    close(root["policy_logits"][:, :A], network.initial_inference(observation).policy_logits)
    assert root[NUM_CHANCE_CODES].tolist() == [C] * 5
    edge = np.array([A + 1, 0, A + C - 1, A - 1, A], np.int32)
    step = model.recurrent_inference(root["hidden_state"], edge)
    want = network.recurrent_inference(root["hidden_state"], edge)
    close(step["hidden_state"], want.hidden_state)
    close(step["policy_logits"], want.policy_logits)
    after = model.run(AFTERSTATE_INFERENCE, {"hidden_state": root["hidden_state"], "action": edge % A})
    close(after["chance_logits"], network.afterstate_inference(root["hidden_state"], edge % A).chance_logits)
    following = model.run(CHANCE_INFERENCE, {"afterstate": after["afterstate"], "chance_code": edge % C})
    close(following["policy_logits"], network.chance_inference(after["afterstate"], edge % C).policy_logits)
    for signature, inputs in [(RECURRENT_INFERENCE, {"hidden_state": root["hidden_state"][:1],
                                                     "action": np.array([A + C], np.int32)}),
                              (AFTERSTATE_INFERENCE, {"hidden_state": root["hidden_state"][:1],
                                                      "action": np.array([A], np.int32)}),
                              (CHANCE_INFERENCE, {"afterstate": root["hidden_state"][:1],
                                                  "chance_code": np.array([C], np.int32)})]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be in"):
            model.run(signature, inputs)


def test_the_chance_encoder_stays_out_of_the_saved_model(exported):
    _network, base = exported
    names = [name for name, _shape in tf.train.list_variables(str(base / "slow" / "1" / "variables" / "variables"))]
    assert any("afterstate_dynamics" in name for name in names)
    assert not any("chance_encoder" in name for name in names)
