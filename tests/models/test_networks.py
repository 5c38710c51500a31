"""MuZero networks: shapes, normalization, weights, gradients, checkpoints, for "fc" and "resnet"."""

import numpy as np
import pytest
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from models import support
from models.networks import MuZeroNetwork, choose_action_encoding
from tests.models.tolerances import assert_decoded_matches_logits

S = 5
BOARD = GameSpec(name="board6x7", observation_shape=(6, 7, 2), observation_dtype="uint8", num_actions=7,
                 num_players=2, discount=1.0, max_moves=42)
CELLS = GameSpec(name="cells3x3", observation_shape=(3, 3, 2), observation_dtype="uint8", num_actions=9,
                 num_players=2, discount=1.0, max_moves=9)
CELLS_PASS = GameSpec(name="cells4x4pass", observation_shape=(4, 4, 2), observation_dtype="uint8",
                      num_actions=17, num_players=2, discount=1.0, max_moves=60)
PLANES = GameSpec(name="planes4x4", observation_shape=(4, 4, 16), observation_dtype="uint8", num_actions=4,
                  num_players=1, discount=0.997, max_moves=1000)
FC = MuZeroSettings.of(architecture="fc", hidden_size=16, fc_layers=(32, 16), support_size=S)
RESNET = MuZeroSettings.of(architecture="resnet", hidden_size=8, fc_layers=(16,), res_blocks=2, support_size=S)

CASES = [
    pytest.param(CartPole.spec, CartPole.settings.replace(support_size=S), (64,), id="fc-cartpole"),
    pytest.param(BOARD, FC, (16,), id="fc-board-flattened"),
    pytest.param(BOARD, RESNET, (6, 7, 8), id="resnet-6x7"),
    pytest.param(CELLS, RESNET, (3, 3, 8), id="resnet-cells"),
    pytest.param(CELLS_PASS, RESNET, (4, 4, 8), id="resnet-cells-pass"),
    pytest.param(PLANES, RESNET, (4, 4, 8), id="resnet-2048-like"),
]


def random_observation(spec, batch, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *spec.observation_shape)).astype(np.float32)


def randomize(network, seed=0):
    rng = np.random.default_rng(seed)
    network.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype(np.float32) if w.ndim else w
                         for w in network.get_weights()])


@pytest.mark.parametrize("spec,settings,hidden_shape", CASES)
def test_output_shapes_and_normalized_hidden_state(spec, settings, hidden_shape):
    network = MuZeroNetwork(spec, settings, seed=0)
    randomize(network)
    assert network.hidden_shape == hidden_shape
    batch, width = 5, 2 * S + 1
    out = network.initial_inference(random_observation(spec, batch))
    assert out.hidden_state.shape == (batch, *hidden_shape)
    assert out.value_logits.shape == (batch, width) and out.reward_logits.shape == (batch, width)
    assert out.policy_logits.shape == (batch, spec.num_actions)
    assert out.value.shape == (batch,) and out.reward.shape == (batch,)
    np.testing.assert_array_equal(out.reward.numpy(), 0.0)
    np.testing.assert_allclose(tf.nn.softmax(out.reward_logits).numpy()[:, S], 1.0, rtol=1e-6)
    # The same logits decoded in float32 and in float64: only float32 rounding may differ.
    assert_decoded_matches_logits(out.value.numpy(), out.value_logits.numpy(), S, logit_atol=0.0, logit_rtol=0.0)
    action = np.arange(batch) % spec.num_actions
    step = network.recurrent_inference(out.hidden_state, action)
    assert step.hidden_state.shape == (batch, *hidden_shape)
    assert step.policy_logits.shape == (batch, spec.num_actions)
    assert_decoded_matches_logits(step.reward.numpy(), step.reward_logits.numpy(), S, logit_atol=0.0,
                                  logit_rtol=0.0, name="reward")
    for hidden in (out.hidden_state.numpy(), step.hidden_state.numpy()):
        flat = hidden.reshape(batch, -1)
        np.testing.assert_allclose(flat.min(1), 0.0, atol=1e-6)
        np.testing.assert_allclose(flat.max(1), 1.0, atol=1e-5)


def test_untrained_network_predicts_zero_value_and_reward():
    network = MuZeroNetwork(BOARD, RESNET, seed=3)
    out = network.initial_inference(random_observation(BOARD, 3))
    step = network.recurrent_inference(out.hidden_state, [0, 3, 6])
    np.testing.assert_allclose(out.value.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(step.reward.numpy(), 0.0, atol=1e-6)


def test_action_encodings():
    assert choose_action_encoding((3, 3), 9) == "cells"
    assert choose_action_encoding((8, 8), 65) == "cells"
    assert choose_action_encoding((6, 7), 7) == "broadcast"
    assert choose_action_encoding((4, 4), 4) == "broadcast"
    network = MuZeroNetwork(CELLS_PASS, RESNET, seed=0)
    planes = network.dynamics.action_planes(tf.constant([0, 5, 16])).numpy()
    assert planes.shape == (3, 4, 4, 1)
    assert planes[0, 0, 0, 0] == 1 and planes[0].sum() == 1
    assert planes[1, 1, 1, 0] == 1 and planes[1].sum() == 1
    assert planes[2].sum() == 0  # pass
    board = MuZeroNetwork(BOARD, RESNET, seed=0)
    planes = board.dynamics.action_planes(tf.constant([2])).numpy()
    assert planes.shape == (1, 6, 7, 7) and (planes[0, :, :, 2] == 1).all() and planes.sum() == 42


@pytest.mark.parametrize("spec,settings", [(BOARD, RESNET), (CartPole.spec, FC)], ids=["resnet", "fc"])
def test_actions_change_the_next_state(spec, settings):
    network = MuZeroNetwork(spec, settings, seed=1)
    randomize(network, 1)
    out = network.initial_inference(random_observation(spec, 1))
    hidden = np.repeat(out.hidden_state.numpy(), spec.num_actions, axis=0)
    step = network.recurrent_inference(hidden, np.arange(spec.num_actions))
    flat = step.hidden_state.numpy().reshape(spec.num_actions, -1)
    assert len({row.tobytes() for row in flat}) == spec.num_actions


def test_resnet_needs_a_board():
    with pytest.raises(ValueError, match="resnet"):
        MuZeroNetwork(CartPole.spec, RESNET)
    with pytest.raises(ValueError, match="cells"):
        MuZeroNetwork(BOARD, RESNET, action_encoding="cells")


def test_seed_makes_weights_reproducible_and_set_weights_round_trips():
    a, b = MuZeroNetwork(BOARD, RESNET, seed=7), MuZeroNetwork(BOARD, RESNET, seed=7)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    c = MuZeroNetwork(BOARD, RESNET, seed=8)
    randomize(c, 2)
    a.set_weights(c.get_weights())
    obs = random_observation(BOARD, 2)
    np.testing.assert_array_equal(a.initial_inference(obs).policy_logits.numpy(),
                                  c.initial_inference(obs).policy_logits.numpy())
    with pytest.raises(ValueError, match="expected"):
        a.set_weights(c.get_weights()[:-1])


@pytest.mark.parametrize("spec,settings", [(BOARD, RESNET), (CartPole.spec, FC)], ids=["resnet", "fc"])
def test_every_trainable_variable_gets_a_gradient_through_an_unroll(spec, settings):
    network = MuZeroNetwork(spec, settings, seed=0)
    randomize(network, 3)
    obs = random_observation(spec, 4)
    target = support.scalar_to_support(tf.constant([1.0, -2.0, 0.5, 3.0]), S)
    with tf.GradientTape() as tape:
        out = network.initial_inference(obs, training=True)
        loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(target, out.value_logits))
        loss += tf.reduce_sum(out.policy_logits[:, 0])
        step = network.recurrent_inference(out.hidden_state, [0, 1, 1, 0], training=True)
        loss += tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(target, step.reward_logits))
        loss += tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(target, step.value_logits))
    variables = network.trainable_variables
    grads = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, grads) if g is None]
    assert not missing, missing
    assert len(variables) < len(network.variables) if settings.network.architecture == "resnet" else True


def test_checkpoint_round_trip(tmp_path):
    network = MuZeroNetwork(BOARD, RESNET, seed=0)
    randomize(network, 4)
    path = tf.train.Checkpoint(network=network).save(str(tmp_path / "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("network/")]
    assert len(saved) == len(network.variables)  # every layer, batch-norm statistics included
    other = MuZeroNetwork(BOARD, RESNET, seed=5)
    tf.train.Checkpoint(network=other).restore(path).assert_consumed()
    for x, y in zip(network.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(x, y)
