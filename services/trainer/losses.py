"""MuZero's training loss, unrolled over K steps, as plain TensorFlow functions.

For a batch of B sampled positions t with K actions (`SampleBatchResponse`, protos/replay.proto):

    s_0        = representation(observation)                   out_0 = prediction(s_0)
    s_k, r_k   = dynamics(s'_{k-1}, actions[:, k-1])           out_k = prediction(s_k)   k = 1..K
    s'_k       = 0.5 s_k + 0.5 stop_gradient(s_k)               (gradient into the past halved)

Per sample b and unroll step k (w_0 = 1, w_k = 1/K for k >= 1, so the K unrolled steps together
weigh as much as the root):

    value_k  = CE(two_hot(target_value[b, k]),  value_logits_k)    two_hot: models/support.py
    reward_k = CE(two_hot(target_reward[b, k]), reward_logits_k)   k >= 1 only
    policy_k = CE(target_policy[b, k],          policy_logits_k) * policy_mask[b, k]

    value[b]  = sum_k w_k value_k  * vm[b, k]      vm = 1 everywhere (default), or mask
    reward[b] = sum_k w_k reward_k * rm[b, k]      rm = 1 everywhere (default), or mask[:, k-1]
    policy[b] = sum_k w_k policy_k

    loss = mean_b( importance_weight[b] * (value_loss_weight value[b] + reward[b] + policy[b]) )
           + weight_decay * sum over kernels of ||W||^2 / 2

Past a record's end the replay gives value and reward targets 0 (MuZero's absorbing states), a
uniform policy with policy_mask 0 and mask 0. By default the value and reward losses train those
steps toward 0, as MuZero does; the policy loss never trains them. The reward target at step k
is the reward of the move into u = t + k, which is real at the first step past the end (mask 0),
which is why masking the reward uses mask[k-1].

New priorities are |value(s_0) - target_value[:, 0]| with value decoded from the support.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import tensorflow as tf

from games.base import GameSpec
from models.networks import NetworkOutput
from models.support import scalar_to_support

# The batch entries a train step reads (a SampleBatchResponse has a few more: record_keys,
# positions, model_version, which stay on the host).
BATCH_KEYS = ("observation", "actions", "target_value", "target_reward", "target_policy", "mask",
              "policy_mask", "importance_weight")


class Network(Protocol):
    def initial_inference(self, observation, training: bool = False) -> NetworkOutput: ...

    def recurrent_inference(self, hidden_state, action, training: bool = False) -> NetworkOutput: ...


class Losses(NamedTuple):
    """One batch's losses. Scalars are importance-weighted batch means.

    total: what is minimized: value_loss_weight * value + reward + policy + l2.
    value, reward, policy: the three terms, each summed over unroll steps with weights w_k.
    l2: the weight-decay term (0 from `muzero_loss`; `add_l2` fills it in).
    per_sample: float32 [B], value_loss_weight * value + reward + policy of each sample before
      its importance weight.
    priorities: float32 [B], |predicted root value - target_value[:, 0]|.
    value_prediction: float32 [B], the decoded root value.
    """

    total: tf.Tensor
    value: tf.Tensor
    reward: tf.Tensor
    policy: tf.Tensor
    l2: tf.Tensor
    per_sample: tf.Tensor
    priorities: tf.Tensor
    value_prediction: tf.Tensor


def batch_signature(spec: GameSpec, num_unroll_steps: int) -> dict[str, tf.TensorSpec]:
    """The `tf.TensorSpec` of every entry of BATCH_KEYS, batch dimension None."""
    K, A = num_unroll_steps, spec.num_actions
    return {
        "observation": tf.TensorSpec([None, *spec.observation_shape], tf.float32, name="observation"),
        "actions": tf.TensorSpec([None, K], tf.int32, name="actions"),
        "target_value": tf.TensorSpec([None, K + 1], tf.float32, name="target_value"),
        "target_reward": tf.TensorSpec([None, K + 1], tf.float32, name="target_reward"),
        "target_policy": tf.TensorSpec([None, K + 1, A], tf.float32, name="target_policy"),
        "mask": tf.TensorSpec([None, K + 1], tf.float32, name="mask"),
        "policy_mask": tf.TensorSpec([None, K + 1], tf.float32, name="policy_mask"),
        "importance_weight": tf.TensorSpec([None], tf.float32, name="importance_weight"),
    }


def scale_gradient(x: tf.Tensor, scale: float) -> tf.Tensor:
    """Identity forward; multiplies the gradient flowing back through it by `scale`."""
    return x * scale + tf.stop_gradient(x) * (1.0 - scale)


def support_cross_entropy(logits: tf.Tensor, targets: tf.Tensor, support_size: int) -> tf.Tensor:
    """Cross-entropy [...] of logits [..., 2S+1] against scalar targets [...] as two-hot
    distributions over the support (after MuZero's h transform)."""
    target_probabilities = scalar_to_support(targets, support_size)
    return -tf.reduce_sum(target_probabilities * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def policy_cross_entropy(logits: tf.Tensor, target_policy: tf.Tensor) -> tf.Tensor:
    """Cross-entropy [...] of policy logits [..., A] against target distributions [..., A]."""
    return -tf.reduce_sum(target_policy * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def step_weights(num_unroll_steps: int) -> tf.Tensor:
    """float32 [K+1]: 1 for the root, 1/K for each unrolled step."""
    K = num_unroll_steps
    return tf.constant([1.0] + [1.0 / K] * K, tf.float32)


def unroll(network: Network, observation: tf.Tensor, actions: tf.Tensor, training: bool = True,
           gradient_scale: float = 0.5) -> list[NetworkOutput]:
    """The K+1 network outputs of representation + K dynamics steps along `actions` [B, K].

    After every dynamics step the hidden state passed on to the next one goes through
    `scale_gradient(., gradient_scale)` (MuZero's pseudocode); each step's predictions use the
    unscaled state, which changes nothing forward.
    """
    out = network.initial_inference(observation, training=training)
    outputs = [out]
    hidden = out.hidden_state
    for k in range(actions.shape[1]):
        out = network.recurrent_inference(hidden, actions[:, k], training=training)
        outputs.append(out)
        hidden = scale_gradient(out.hidden_state, gradient_scale)
    return outputs


def muzero_loss(network: Network, batch: dict[str, tf.Tensor], support_size: int,
                value_loss_weight: float = 0.25, gradient_scale: float = 0.5,
                train_past_end: bool = True, training: bool = True) -> Losses:
    """The loss of one batch (entries BATCH_KEYS) without weight decay (l2 = 0).

    Args:
      network: a MuZeroNetwork (or anything with its two inference methods).
      batch: observation [B, *obs], actions int32 [B, K], target_value / target_reward / mask /
        policy_mask [B, K+1], target_policy [B, K+1, A], importance_weight [B].
      support_size: S of the value and reward supports.
      value_loss_weight: factor of the value term in per_sample and total.
      gradient_scale: see `unroll`.
      train_past_end: value and reward losses on every step (True) or only where the replay's
        mask says the step is inside the record (see the module docstring).
      training: passed to the network (batch norm).
    """
    actions = tf.cast(batch["actions"], tf.int32)
    K = actions.shape[1]
    if K is None:
        raise ValueError("muzero_loss: actions need a static number of unroll steps K")
    outputs = unroll(network, batch["observation"], actions, training, gradient_scale)
    value_logits = tf.stack([o.value_logits for o in outputs], axis=1)  # [B, K+1, 2S+1]
    reward_logits = tf.stack([o.reward_logits for o in outputs], axis=1)
    policy_logits = tf.stack([o.policy_logits for o in outputs], axis=1)  # [B, K+1, A]

    weights = step_weights(K)[None, :]  # [1, K+1]
    mask = tf.cast(batch["mask"], tf.float32)
    if train_past_end:
        value_mask = tf.ones_like(mask)
        reward_mask = tf.ones_like(mask)
    else:
        value_mask = mask
        reward_mask = tf.concat([tf.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
    reward_mask = tf.concat([tf.zeros_like(reward_mask[:, :1]), reward_mask[:, 1:]], axis=1)  # no k=0

    value_ce = support_cross_entropy(value_logits, batch["target_value"], support_size)
    reward_ce = support_cross_entropy(reward_logits, batch["target_reward"], support_size)
    policy_ce = policy_cross_entropy(policy_logits, batch["target_policy"])

    value = tf.reduce_sum(weights * value_mask * value_ce, axis=1)  # [B]
    reward = tf.reduce_sum(weights * reward_mask * reward_ce, axis=1)
    policy = tf.reduce_sum(weights * tf.cast(batch["policy_mask"], tf.float32) * policy_ce, axis=1)
    per_sample = value_loss_weight * value + reward + policy

    importance = tf.cast(batch["importance_weight"], tf.float32)

    def weighted_mean(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(importance * x)

    root_value = outputs[0].value
    priorities = tf.stop_gradient(tf.abs(root_value - tf.cast(batch["target_value"][:, 0], tf.float32)))
    return Losses(total=weighted_mean(per_sample), value=weighted_mean(value),
                  reward=weighted_mean(reward), policy=weighted_mean(policy),
                  l2=tf.constant(0.0), per_sample=per_sample, priorities=priorities,
                  value_prediction=tf.stop_gradient(root_value))


def decayed_variables(variables: Sequence[tf.Variable]) -> list[tf.Variable]:
    """The variables weight decay applies to: kernels of dense and convolution layers (not
    biases, nor batch-norm scales and offsets)."""
    return [v for v in variables if _short_name(v) == "kernel"]


def _short_name(variable: tf.Variable) -> str:
    name = getattr(variable, "path", None) or variable.name
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def l2_loss(variables: Sequence[tf.Variable], weight_decay: float) -> tf.Tensor:
    """weight_decay * sum ||W||^2 / 2 over `decayed_variables(variables)` (MuZero's pseudocode)."""
    kernels = decayed_variables(variables)
    if weight_decay == 0 or not kernels:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])


def add_l2(losses: Losses, l2: tf.Tensor) -> Losses:
    """`losses` with the weight-decay term added to `total`."""
    return losses._replace(total=losses.total + l2, l2=l2)
