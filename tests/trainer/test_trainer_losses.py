"""The MuZero loss: components on hand-checkable cases, masks, weights, gradient scaling."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models import support
from models.networks import MuZeroNetwork
from services.trainer.losses import (batch_signature, decayed_variables, l2_loss, muzero_loss,
                                     policy_cross_entropy, scale_gradient, step_weights,
                                     support_cross_entropy, unroll)
from trainer_helpers import BOARD, FakeNetwork, K, S, SPEC, TINY, TINY_RESNET, batch

W = 2 * S + 1  # support width
A = SPEC.num_actions


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return logits - np.log(np.sum(np.exp(logits)))


def test_support_cross_entropy_of_a_one_hot_target():
    # h(0) = 0 puts all mass on the support's middle entry (index S).
    logits = np.arange(W, dtype=np.float32)[None, :] * 0.3
    got = support_cross_entropy(logits, np.array([0.0], np.float32), S).numpy()
    np.testing.assert_allclose(got, [-log_softmax(logits[0])[S]], rtol=1e-5)


def test_support_cross_entropy_of_a_two_hot_target():
    # h(x) = 1.5: half on support value 1 (index S+1), half on 2 (index S+2).
    x = float(support.inverse_scalar_transform_np(np.array(1.5)))
    logits = np.linspace(-1, 2, W).astype(np.float32)
    expected = -(0.5 * log_softmax(logits)[S + 1] + 0.5 * log_softmax(logits)[S + 2])
    got = support_cross_entropy(logits[None, :], np.array([x], np.float32), S).numpy()
    np.testing.assert_allclose(got, [expected], rtol=1e-4)
    # Uniform logits: log(2S+1) whatever the target.
    uniform = support_cross_entropy(np.zeros((3, W), np.float32), np.array([-4.0, 0.0, 7.0], np.float32), S)
    np.testing.assert_allclose(uniform.numpy(), math.log(W), rtol=1e-6)


def test_policy_cross_entropy():
    logits = np.array([[0.0, math.log(3.0)]], np.float32)  # softmax = [1/4, 3/4]
    np.testing.assert_allclose(policy_cross_entropy(logits, np.array([[0.0, 1.0]], np.float32)).numpy(),
                               [-math.log(0.75)], rtol=1e-6)
    np.testing.assert_allclose(policy_cross_entropy(logits, np.array([[0.5, 0.5]], np.float32)).numpy(),
                               [-(0.5 * math.log(0.25) + 0.5 * math.log(0.75))], rtol=1e-6)


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = tf.Variable([1.0, -2.0, 3.0])
    with tf.GradientTape() as tape:
        y = scale_gradient(x, 0.5)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [0.5, 1.0, 1.5])


def test_step_weights():
    np.testing.assert_allclose(step_weights(4).numpy(), [1.0, 0.25, 0.25, 0.25, 0.25])


def test_each_component_on_a_fake_network_with_uniform_logits():
    # Uniform logits: every value/reward cross-entropy is log W, every policy one log A.
    fake = FakeNetwork(S, A)
    data = batch(B=4)
    losses = muzero_loss(fake, data, S, value_loss_weight=0.25)
    # value: root 1 + K steps of 1/K = 2 log W; reward: K steps of 1/K (none at k=0) = log W.
    np.testing.assert_allclose(losses.value.numpy(), 2 * math.log(W), rtol=1e-5)
    np.testing.assert_allclose(losses.reward.numpy(), math.log(W), rtol=1e-5)
    np.testing.assert_allclose(losses.policy.numpy(), 2 * math.log(A), rtol=1e-5)
    np.testing.assert_allclose(losses.total.numpy(), 0.25 * 2 * math.log(W) + math.log(W) + 2 * math.log(A),
                               rtol=1e-5)
    assert losses.per_sample.shape == (4,) and losses.priorities.shape == (4,)
    np.testing.assert_allclose(losses.priorities.numpy(), np.abs(data["target_value"][:, 0]), rtol=1e-4,
                               atol=1e-4)  # the fake predicts value 0


def test_known_logits_value_reward_policy():
    value_logits = np.linspace(-1.0, 1.0, W).astype(np.float32)
    reward_logits = np.linspace(1.0, -1.0, W).astype(np.float32)
    policy_logits = np.array([0.0, math.log(3.0)], np.float32)
    fake = FakeNetwork(S, A, value_logits, reward_logits, policy_logits)
    data = batch(B=1)
    data["target_value"][:] = 0.0  # one-hot on index S
    data["target_reward"][:] = 0.0
    data["target_policy"][:] = [0.0, 1.0]
    losses = muzero_loss(fake, data, S, value_loss_weight=1.0)
    np.testing.assert_allclose(losses.value.numpy(), -2 * log_softmax(value_logits)[S], rtol=1e-5)
    np.testing.assert_allclose(losses.reward.numpy(), -log_softmax(reward_logits)[S], rtol=1e-5)
    np.testing.assert_allclose(losses.policy.numpy(), -2 * math.log(0.75), rtol=1e-5)


def test_importance_weights_scale_each_sample():
    fake = FakeNetwork(S, A)
    data = batch(B=2)
    plain = muzero_loss(fake, data, S)
    data["importance_weight"] = np.array([1.0, 0.5], np.float32)
    weighted = muzero_loss(fake, data, S)
    np.testing.assert_allclose(weighted.per_sample.numpy(), plain.per_sample.numpy())  # before weights
    np.testing.assert_allclose(weighted.total.numpy(), np.mean(plain.per_sample.numpy() * [1.0, 0.5]),
                               rtol=1e-6)
    np.testing.assert_allclose(weighted.total.numpy(), 0.75 * plain.total.numpy(), rtol=1e-6)


def test_policy_mask_removes_policy_steps():
    fake = FakeNetwork(S, A)
    data = batch(B=2)
    data["policy_mask"][:] = [1.0, 1.0, 0.0]  # K = 2: the last step has no search policy
    losses = muzero_loss(fake, data, S)
    np.testing.assert_allclose(losses.policy.numpy(), (1 + 1 / K) * math.log(A), rtol=1e-5)


def test_past_the_end_value_and_reward_train_toward_zero_by_default():
    fake = FakeNetwork(S, A)
    data = batch(B=2)
    data["mask"][:] = [1.0, 0.0, 0.0]  # the record ends right after t
    data["target_value"][:, 1:] = 0.0
    data["target_reward"][:, 2:] = 0.0
    losses = muzero_loss(fake, data, S)  # train_past_end=True: masks do not matter
    np.testing.assert_allclose(losses.value.numpy(), 2 * math.log(W), rtol=1e-5)
    np.testing.assert_allclose(losses.reward.numpy(), math.log(W), rtol=1e-5)


def test_past_the_end_masked_when_asked():
    fake = FakeNetwork(S, A)
    data = batch(B=2)
    data["mask"][:] = [1.0, 0.0, 0.0]
    losses = muzero_loss(fake, data, S, train_past_end=False)
    # value: only k = 0. reward: k = 1 (the last real move, mask[0] = 1) but not k = 2.
    np.testing.assert_allclose(losses.value.numpy(), math.log(W), rtol=1e-5)
    np.testing.assert_allclose(losses.reward.numpy(), math.log(W) / K, rtol=1e-5)


def real_network(seed=0):
    network = MuZeroNetwork(SPEC, TINY, seed=seed)
    rng = np.random.default_rng(seed)  # non-zero heads, so every output depends on the input
    network.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(np.float32)
                         for w in network.get_weights()])
    return network


def test_gradient_into_earlier_hidden_states_is_halved_per_dynamics_step():
    network = real_network()
    data = batch(B=8)
    probe = np.random.default_rng(1).normal(size=(8, A)).astype(np.float32)
    variables = network.representation.trainable_weights

    def gradients(k, scale):
        with tf.GradientTape() as tape:
            outputs = unroll(network, data["observation"], data["actions"], gradient_scale=scale)
            target = tf.reduce_sum(outputs[k].policy_logits * probe)
        return [g.numpy() for g in tape.gradient(target, variables)]

    # Step 1's predictions see s_0 through one dynamics step and no scaled state: unchanged.
    for full, half in zip(gradients(1, 1.0), gradients(1, 0.5)):
        np.testing.assert_allclose(half, full, rtol=1e-5, atol=1e-7)
    # Step 2's see s_0 through the scaled s_1: the representation's gradient is halved.
    full_2, half_2 = gradients(2, 1.0), gradients(2, 0.5)
    assert any(np.abs(g).max() > 1e-6 for g in full_2)
    for full, half in zip(full_2, half_2):
        np.testing.assert_allclose(half, 0.5 * full, rtol=1e-4, atol=1e-7)


def test_real_network_shapes_and_priorities():
    network = real_network()
    data = batch(B=6)
    losses = muzero_loss(network, data, S)
    for name in ("total", "value", "reward", "policy"):
        assert getattr(losses, name).shape == () and np.isfinite(getattr(losses, name).numpy())
    assert losses.per_sample.shape == (6,) and losses.priorities.shape == (6,)
    predicted = network.initial_inference(data["observation"]).value.numpy()
    np.testing.assert_allclose(losses.priorities.numpy(), np.abs(predicted - data["target_value"][:, 0]),
                               rtol=1e-4, atol=1e-4)
    # The gradient scale does not change the forward pass.
    np.testing.assert_allclose(muzero_loss(network, data, S, gradient_scale=1.0).total.numpy(),
                               losses.total.numpy(), rtol=1e-6)


def test_resnet_network_and_signature():
    network = MuZeroNetwork(BOARD, TINY_RESNET, seed=0)
    data = batch(BOARD, B=4)
    signature = batch_signature(BOARD, K)
    for name, spec in signature.items():
        assert spec.is_compatible_with(tf.constant(data[name])), name
    losses = muzero_loss(network, data, 1, training=True)
    assert np.isfinite(losses.total.numpy())


def test_weight_decay_applies_to_kernels_only():
    network = real_network()
    kernels = decayed_variables(network.trainable_variables)
    assert kernels and all(v.path.endswith("kernel") for v in kernels)
    assert len(kernels) < len(network.trainable_variables)  # biases are left out
    expected = 1e-3 * sum(0.5 * np.sum(v.numpy() ** 2) for v in kernels)
    np.testing.assert_allclose(l2_loss(network.trainable_variables, 1e-3).numpy(), expected, rtol=1e-5)
    assert float(l2_loss(network.trainable_variables, 0.0)) == 0.0


def test_signature_fixes_k():
    signature = batch_signature(SPEC, 3)
    assert signature["actions"].shape.as_list() == [None, 3]
    assert signature["target_policy"].shape.as_list() == [None, 4, A]
