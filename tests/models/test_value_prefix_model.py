"""EfficientZero's value-prefix head: an LSTM whose state travels with the hidden state, in the
network, in the exported SavedModel (served like the hidden state) and in the trainer's unroll
(reset every value_prefix_horizon steps)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from models import export
from models.export import VALUE_PREFIX_HORIZON, VALUE_PREFIX_STATE, export_version, load_version
from models.networks import MuZeroNetwork
from services.trainer.losses import batch_signature, muzero_loss, unroll
from tests.models.tolerances import assert_decoded_matches_logits

BOARD = GameSpec(name="board3x3", observation_shape=(3, 3, 2), observation_dtype="uint8", num_actions=9,
                 num_players=2, discount=1.0, max_moves=9)
LSTM = 6
FC = CartPole.settings.replace(hidden_size=16, fc_layers=(16,), value_prefix=True, value_prefix_lstm_size=LSTM,
                               value_prefix_horizon=2)
RESNET = MuZeroSettings.of(architecture="resnet", hidden_size=4, fc_layers=(8,), res_blocks=1, support_size=5,
                           value_prefix=True, value_prefix_lstm_size=LSTM, value_prefix_horizon=2)


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


def test_the_state_starts_at_zero_and_carries_the_past(network):
    assert network.value_prefix and network.value_prefix_state_size == 2 * LSTM
    root = network.initial_inference(observations(network, 4))
    np.testing.assert_array_equal(root.value_prefix_state.numpy(), np.zeros((4, 2 * LSTM)))
    action = np.array([0, 1, 0, 1], np.int32)
    first = network.recurrent_inference(root.hidden_state, action, root.value_prefix_state)
    assert first.value_prefix_state.shape == (4, 2 * LSTM)
    assert np.abs(first.value_prefix_state.numpy()).max() > 0
    # The same step from another LSTM state predicts another prefix: the state is an input.
    again = network.recurrent_inference(root.hidden_state, action, first.value_prefix_state)
    np.testing.assert_array_equal(again.hidden_state.numpy(), first.hidden_state.numpy())
    assert np.abs(again.reward_logits.numpy() - first.reward_logits.numpy()).max() > 1e-4
    # No state means a reset: zeros.
    reset = network.recurrent_inference(root.hidden_state, action)
    np.testing.assert_array_equal(reset.reward_logits.numpy(), first.reward_logits.numpy())


def test_a_network_without_value_prefix_refuses_a_state():
    plain = MuZeroNetwork(CartPole.spec, FC.replace(value_prefix=False), seed=0)
    assert plain.initial_inference(np.zeros((1, 4), np.float32)).value_prefix_state is None
    with pytest.raises(ValueError, match="without value prefix"):
        plain.recurrent_inference(np.zeros((1, 16), np.float32), np.zeros(1, np.int32), np.zeros((1, 12)))


def test_exported_signatures_carry_the_state_and_equal_the_network(network, tmp_path):
    export_version(network, tmp_path, 3)
    model = load_version(tmp_path)
    assert model.value_prefix
    assert sorted(model.input_specs["recurrent_inference"]) == ["action", "hidden_state", VALUE_PREFIX_STATE]
    assert sorted(model.output_specs["initial_inference"]) == sorted(
        (*export.OUTPUTS, VALUE_PREFIX_STATE, VALUE_PREFIX_HORIZON))
    assert sorted(model.output_specs["recurrent_inference"]) == sorted((*export.OUTPUTS, VALUE_PREFIX_STATE))
    for name in ("initial_inference", "recurrent_inference"):
        assert model.output_specs[name][VALUE_PREFIX_STATE].shape.as_list() == [None, 2 * LSTM]
    obs = observations(network, 5, seed=2)
    got, want = model.initial_inference(obs), network.initial_inference(obs)
    np.testing.assert_array_equal(got[VALUE_PREFIX_STATE], 0.0)
    assert got[VALUE_PREFIX_HORIZON].dtype == np.int32 and got[VALUE_PREFIX_HORIZON].tolist() == [2] * 5
    action = np.arange(5, dtype=np.int32) % network.num_actions
    state = np.random.default_rng(3).normal(size=(5, 2 * LSTM)).astype(np.float32)
    got = model.recurrent_inference(got["hidden_state"], action, state)
    want = network.recurrent_inference(want.hidden_state, action, state)
    for name in ("hidden_state", "policy_logits", VALUE_PREFIX_STATE):
        want_value = (want.value_prefix_state if name == VALUE_PREFIX_STATE else getattr(want, name)).numpy()
        np.testing.assert_allclose(got[name], want_value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert_decoded_matches_logits(got["reward"], want.reward_logits.numpy(), network.support_size,
                                  logit_atol=1e-5, logit_rtol=1e-4, name="reward")
    # The served signature needs the state: leaving it out is an error, not a silent reset.
    with pytest.raises(TypeError):
        model.signatures["recurrent_inference"](hidden_state=tf.constant(got["hidden_state"]),
                                                action=tf.constant(action))


class RecordingNetwork:
    """Wraps a network and records the value-prefix state each dynamics step is given."""

    def __init__(self, network: MuZeroNetwork) -> None:
        self.network = network
        self.value_prefix_horizon = network.value_prefix_horizon
        self.states: list[np.ndarray] = []

    def initial_inference(self, observation, training=False):
        return self.network.initial_inference(observation, training=training)

    def recurrent_inference(self, hidden_state, action, value_prefix_state=None, training=False):
        self.states.append(value_prefix_state.numpy())
        return self.network.recurrent_inference(hidden_state, action, value_prefix_state, training=training)


def test_the_unroll_resets_the_state_every_horizon_steps(network):
    recording = RecordingNetwork(network)
    actions = tf.constant(np.zeros((3, 5), np.int32))
    outputs = unroll(recording, observations(network, 3), actions, training=False)
    assert len(outputs) == 6 and len(recording.states) == 5
    # H = 2: steps 1 and 3 and 5 start from zeros; steps 2 and 4 from the step before.
    for k, state in enumerate(recording.states, start=1):
        if (k - 1) % 2 == 0:
            np.testing.assert_array_equal(state, 0.0, err_msg=f"step {k}")
        else:
            np.testing.assert_array_equal(state, outputs[k - 1].value_prefix_state.numpy(), err_msg=f"step {k}")
            assert np.abs(state).max() > 0


def test_the_prefix_loss_trains_the_lstm(network):
    K = 4
    spec = BOARD if network.settings.network.architecture == "resnet" else CartPole.spec
    rng = np.random.default_rng(4)
    batch = {name: tf.constant(rng.uniform(0, 1, [3 if d is None else d for d in s.shape]).astype(s.dtype.as_numpy_dtype))
             for name, s in batch_signature(spec, K).items() if name not in ("actions", "target_policy")}
    batch["actions"] = tf.constant(rng.integers(0, spec.num_actions, (3, K)).astype(np.int32))
    batch["target_policy"] = tf.constant(np.full((3, K + 1, spec.num_actions), 1 / spec.num_actions, np.float32))
    lstm = network.dynamics.value_prefix_head.lstm.trainable_weights
    with tf.GradientTape() as tape:
        losses = muzero_loss(network, batch, network.support_size)
    gradients = tape.gradient(losses.reward, lstm)
    assert np.isfinite(float(losses.total))
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)
