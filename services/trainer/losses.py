"""MuZero's training loss, unrolled over K steps, as plain TensorFlow functions.

For a batch of B sampled positions t with K actions (`SampleBatchResponse`, protos/replay.proto):

    s_0        = representation(observation)                   out_0 = prediction(s_0)
    s_k, r_k   = dynamics(s'_{k-1}, actions[:, k-1])           out_k = prediction(s_k)   k = 1..K
    s'_k       = 0.5 s_k + 0.5 stop_gradient(s_k)               (gradient into the past halved)

With value prefix (a network whose outputs carry `value_prefix_state`, models/networks.py) the
dynamics also take and return the value-prefix LSTM's state c: c_0 = 0, c_k from step k, and
c_k is reset to 0 after every step k that is a multiple of the network's value_prefix_horizon
H, where the replay's prefix targets restart (services/replay/targets.py); r_k is then the
value prefix and its target the replay's prefix.

Per sample b and unroll step k (w_0 = 1, w_k = 1/K for k >= 1, so the K unrolled steps together
weigh as much as the root):

    value_k  = CE(two_hot(target_value[b, k]),  value_logits_k)    two_hot: models/support.py
    reward_k = CE(two_hot(target_reward[b, k]), reward_logits_k)   k >= 1 only
    policy_k = CE(target_policy[b, k],          policy_logits_k) * policy_mask[b, k]

    value[b]  = sum_k w_k value_k  * vm[b, k]      vm = 1 everywhere (default), or mask
    reward[b] = sum_k w_k reward_k * rm[b, k]      rm = 1 everywhere (default), or mask[:, k-1]
    policy[b] = sum_k w_k policy_k

    loss = mean_b( importance_weight[b] * (value_loss_weight value[b] + reward[b] + policy[b]
                                           + consistency_weight consistency[b]) )
           + weight_decay * sum over kernels of ||W||^2 / 2

EfficientZero's temporal consistency loss (only when consistency_weight > 0; the batch then
carries `unroll_observations` [B, K+1, *obs], the observations at t+k, zeros past the end):

    p_k  = predict(project(s_k))                                       online, k = 1..K
    z_k  = stop_gradient(project(representation(unroll_observations[:, k])))   target
    consistency_k  = -cos(p_k, z_k) = -<p_k / max(|p_k|, 1e-5), z_k / max(|z_k|, 1e-5)>
    consistency[b] = sum_{k=1..K} w_k consistency_k * mask[b, k]

s_k is the unscaled hidden state of dynamics step k (the one its predictions use). Past the end
(mask 0) there is no observation: the step is masked, and its target is computed from the last
observation inside the record instead of the replay's zeros, so that only real observations
enter the batch-norm statistics of the target branch.

Past a record's end the replay gives value and reward targets 0 (MuZero's absorbing states), a
uniform policy with policy_mask 0 and mask 0. By default the value and reward losses train those
steps toward 0, as MuZero does; the policy loss never trains them. The reward target at step k
is the reward of the move into u = t + k, which is real at the first step past the end (mask 0),
which is why masking the reward uses mask[k-1].

Stochastic MuZero (a network with `stochastic`: network.chance_codes > 0; Antonoglou et al. 2022).
The unroll passes through an afterstate between every two states, and the batch carries
`unroll_observations` for the chance encoder:

    as_k, Q_k, sigma_k = afterstate_inference(s'_k, actions[:, k])             k = 0..K-1
    c^e_{k+1} = softmax(encode_chance(o_{t+k}, o_{t+k+1}))                     [B, C]
    c_{k+1}   = c^e + stop_gradient(onehot(argmax c^e) - c^e)                  straight-through
    s_{k+1}, r_{k+1} = chance_inference(as_k, c_{k+1});  out_{k+1} = prediction(s_{k+1})

and three more terms, each summed over k = 0..K-1 with weight 1/K:

    afterstate_value_k = CE(two_hot(target_value[b, k]), Q_k) * vm[b, k]    Q(s_k, a_k) ~ z_{t+k}
    chance_k     = CE(stop_gradient(onehot_{k+1}), sigma_k) * mask[b, k+1]
    commitment_k = ||stop_gradient(onehot_{k+1}) - c^e_{k+1}||^2 * mask[b, k+1]

    per_sample += value_loss_weight afterstate_value + chance_loss_weight chance
                  + commitment_weight commitment

and one term over the whole batch, against the encoder's collapse onto one code (wav2vec 2.0's
diversity loss; not in the paper): with p_bar the mean of c^e over the real transitions,

    diversity = log C - H(p_bar) = sum_c p_bar_c log p_bar_c + log C      (0 when codes are used evenly)
    total += diversity_weight diversity

Without it the encoder's codes start out as one shared feature of every transition (a gradient
that is the same for all samples pushes them all to one code) and stay there, which makes the
model a deterministic MuZero: measured on 2048, all codes were one after 100 steps (chance
loss 1e-4, commitment 0). `code_perplexity` = exp H(the mean one-hot code) reports how many
codes are in use (1: collapsed; C at most).

mask[b, k+1] is 0 where o_{t+k+1} does not exist (the move into the end or past it): there
the encoder sees the last observation inside the record twice (batch norm sees only real
observations, as the consistency targets do) and its code only serves the reward loss of the
move into the end; chance and commitment do not train on it. The encoder learns through the
straight-through code (the reward, value and policy losses downstream of it) and the
commitment term; the afterstate prediction learns to predict its codes.

New priorities are |value(s_0) - target_value[:, 0]| with value decoded from the support.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import numpy as np
import tensorflow as tf

from games.base import GameSpec
from models.networks import AfterstateOutput, NetworkOutput
from models.support import scalar_to_support

# The batch entries a train step reads (a SampleBatchResponse has a few more: record_keys,
# positions, model_version, which stay on the host).
BATCH_KEYS = ("observation", "actions", "target_value", "target_reward", "target_policy", "mask",
              "policy_mask", "importance_weight")
# What the consistency loss reads besides: float32 [B, K+1, *obs], the observations at t+k.
UNROLL_OBSERVATIONS = "unroll_observations"
# F.normalize's epsilon in EfficientZero's consist_loss_func: x / max(|x|, eps).
COSINE_EPSILON = 1e-5


def batch_keys(unroll_observations: bool = False) -> tuple[str, ...]:
    """The batch entries a train step reads (with the consistency loss or Stochastic MuZero's
    chance encoder: `unroll_observations`)."""
    return (*BATCH_KEYS, UNROLL_OBSERVATIONS) if unroll_observations else BATCH_KEYS


class Network(Protocol):
    def initial_inference(self, observation, training: bool = False) -> NetworkOutput: ...

    def recurrent_inference(self, hidden_state, action, training: bool = False) -> NetworkOutput: ...
    # A value-prefix network (its outputs carry value_prefix_state) also takes
    # `value_prefix_state=` and has `value_prefix_horizon`.

    # Only for the consistency loss (MuZeroNetwork built with consistency heads):
    def represent(self, observation, training: bool = False) -> tf.Tensor: ...

    def project(self, hidden_state, training: bool = False) -> tf.Tensor: ...

    def predict_projection(self, projection, training: bool = False) -> tf.Tensor: ...

    # Only for Stochastic MuZero (a network with `stochastic` True): afterstate_inference,
    # chance_inference and encode_chance (models/networks.py).


class Losses(NamedTuple):
    """One batch's losses. Scalars are importance-weighted batch means.

    total: what is minimized: value_loss_weight * value + reward + policy
      + consistency_weight * consistency + l2 (+ Stochastic MuZero's value_loss_weight *
      afterstate_value + chance_loss_weight * chance + commitment_weight * commitment, and
      diversity_weight * diversity over the whole batch).
    value, reward, policy: the three terms, each summed over unroll steps with weights w_k.
    l2: the weight-decay term (0 from `muzero_loss`; `add_l2` fills it in).
    per_sample: float32 [B], value_loss_weight * value + reward + policy
      (+ consistency_weight * consistency) of each sample before its importance weight.
    priorities: float32 [B], |predicted root value - target_value[:, 0]|.
    value_prediction: float32 [B], the decoded root value.
    consistency: the consistency term (before consistency_weight), summed over unroll steps with
      weights w_k; 0 when the loss is off.
    afterstate_value, chance, commitment, diversity: Stochastic MuZero's terms (before their
      weights; the module docstring); 0 for other networks.
    code_perplexity: exp of the entropy of the batch's code usage (1 = one code; 0 for other
      networks).
    """

    total: tf.Tensor
    value: tf.Tensor
    reward: tf.Tensor
    policy: tf.Tensor
    l2: tf.Tensor
    per_sample: tf.Tensor
    priorities: tf.Tensor
    value_prediction: tf.Tensor
    consistency: tf.Tensor | float = 0.0
    afterstate_value: tf.Tensor | float = 0.0
    chance: tf.Tensor | float = 0.0
    commitment: tf.Tensor | float = 0.0
    diversity: tf.Tensor | float = 0.0
    code_perplexity: tf.Tensor | float = 0.0


def batch_signature(spec: GameSpec, num_unroll_steps: int,
                    unroll_observations: bool = False) -> dict[str, tf.TensorSpec]:
    """The `tf.TensorSpec` of every entry of `batch_keys(unroll_observations)`, batch dimension None."""
    K, A = num_unroll_steps, spec.num_actions
    extra = ({UNROLL_OBSERVATIONS: tf.TensorSpec([None, K + 1, *spec.observation_shape], tf.float32,
                                                 name=UNROLL_OBSERVATIONS)} if unroll_observations else {})
    return {
        "observation": tf.TensorSpec([None, *spec.observation_shape], tf.float32, name="observation"),
        "actions": tf.TensorSpec([None, K], tf.int32, name="actions"),
        "target_value": tf.TensorSpec([None, K + 1], tf.float32, name="target_value"),
        "target_reward": tf.TensorSpec([None, K + 1], tf.float32, name="target_reward"),
        "target_policy": tf.TensorSpec([None, K + 1, A], tf.float32, name="target_policy"),
        "mask": tf.TensorSpec([None, K + 1], tf.float32, name="mask"),
        "policy_mask": tf.TensorSpec([None, K + 1], tf.float32, name="policy_mask"),
        "importance_weight": tf.TensorSpec([None], tf.float32, name="importance_weight"),
        **extra,
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
    unscaled state, which changes nothing forward. A value-prefix network's LSTM state is
    carried from step to step and reset to zeros after every `value_prefix_horizon` steps (the
    module docstring).
    """
    out = network.initial_inference(observation, training=training)
    outputs = [out]
    hidden = out.hidden_state
    prefix_state = getattr(out, "value_prefix_state", None)
    horizon = int(network.value_prefix_horizon) if prefix_state is not None else 0
    for k in range(actions.shape[1]):
        if prefix_state is None:
            out = network.recurrent_inference(hidden, actions[:, k], training=training)
        else:
            out = network.recurrent_inference(hidden, actions[:, k], value_prefix_state=prefix_state,
                                              training=training)
            prefix_state = (tf.zeros_like(out.value_prefix_state) if (k + 1) % horizon == 0
                            else out.value_prefix_state)
        outputs.append(out)
        hidden = scale_gradient(out.hidden_state, gradient_scale)
    return outputs


class StochasticUnroll(NamedTuple):
    """What `unroll_stochastic` returns.

    outputs: the K+1 state outputs s_0..s_K (as `unroll`'s).
    afterstates: the K afterstate outputs of (s_k, actions[:, k]), k = 0..K-1.
    code_probabilities: float32 [B, K, C], the encoder's c^e_{k+1} (softmax).
    codes: float32 [B, K, C], onehot(argmax c^e_{k+1}) (no gradient).
    """

    outputs: list[NetworkOutput]
    afterstates: list[AfterstateOutput]
    code_probabilities: tf.Tensor
    codes: tf.Tensor


def observations_inside(unroll_observations: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """float32 [B, K+1, *obs]: `unroll_observations` with every step past the record's end
    (mask 0, where the replay sends zeros) replaced by the record's last observation inside
    the unroll, so that batch norm only ever sees real observations."""
    K = unroll_observations.shape[1] - 1
    mask = tf.cast(mask, tf.float32)
    last = tf.maximum(tf.cast(tf.reduce_sum(mask, axis=1), tf.int32) - 1, 0)  # [B]
    steps = tf.range(K + 1, dtype=tf.int32)[None, :]
    index = tf.where(mask > 0, steps, last[:, None])  # [B, K+1]
    return tf.gather(tf.cast(unroll_observations, tf.float32), index, batch_dims=1)


def unroll_stochastic(network: Network, observation: tf.Tensor, actions: tf.Tensor,
                      unroll_observations: tf.Tensor, mask: tf.Tensor, training: bool = True,
                      gradient_scale: float = 0.5) -> StochasticUnroll:
    """Stochastic MuZero's unroll along `actions` [B, K] (the module docstring): states and
    afterstates alternate, and the chance codes come from the encoder over consecutive
    `unroll_observations` [B, K+1, *obs] (mask [B, K+1] says which exist). The state passed on
    to the next step goes through `scale_gradient(., gradient_scale)`, as in `unroll`."""
    K = actions.shape[1]
    if unroll_observations.shape[1] != K + 1:
        raise ValueError(f"unroll_stochastic: unroll_observations has {unroll_observations.shape[1]} "
                         f"steps, expected K+1 = {K + 1}")
    observations = observations_inside(unroll_observations, mask)
    shape = unroll_observations.shape[2:]
    before = tf.reshape(observations[:, :-1], [-1, *shape])  # [B*K, *obs]: one encoder call for all k
    after = tf.reshape(observations[:, 1:], [-1, *shape])
    logits = network.encode_chance(before, after, training=training)
    C = logits.shape[-1]
    probabilities = tf.reshape(tf.nn.softmax(logits, axis=-1), [-1, K, C])
    codes = tf.stop_gradient(tf.one_hot(tf.argmax(probabilities, axis=-1), C, dtype=tf.float32))
    straight_through = probabilities + tf.stop_gradient(codes - probabilities)

    out = network.initial_inference(observation, training=training)
    outputs, afterstates = [out], []
    hidden = out.hidden_state
    for k in range(K):
        afterstate = network.afterstate_inference(hidden, actions[:, k], training=training)
        afterstates.append(afterstate)
        out = network.chance_inference(afterstate.afterstate, straight_through[:, k], training=training)
        outputs.append(out)
        hidden = scale_gradient(out.hidden_state, gradient_scale)
    return StochasticUnroll(outputs=outputs, afterstates=afterstates, code_probabilities=probabilities,
                            codes=codes)


def negative_cosine_similarity(a: tf.Tensor, b: tf.Tensor, epsilon: float = COSINE_EPSILON) -> tf.Tensor:
    """-cos(a, b) [...] of vectors [..., D]: each normalized as x / max(|x|, epsilon)
    (EfficientZero's consist_loss_func)."""
    a = tf.math.l2_normalize(a, axis=-1, epsilon=epsilon ** 2)  # x * rsqrt(max(|x|^2, eps^2))
    b = tf.math.l2_normalize(b, axis=-1, epsilon=epsilon ** 2)
    return -tf.reduce_sum(a * b, axis=-1)


def consistency_targets(network: Network, unroll_observations: tf.Tensor, mask: tf.Tensor,
                        training: bool = True) -> tf.Tensor:
    """float32 [B, K, P]: stop_gradient(project(representation(o_{t+k}))) for k = 1..K.

    unroll_observations [B, K+1, *obs] (index k: the observation at t+k); mask [B, K+1]. Where
    mask[b, k] is 0 (past the record's end: the replay sends zeros) the last observation of
    the record inside the unroll is used instead, so that batch norm sees real observations
    only; those steps are masked out of the loss anyway. No gradient flows into any of it.
    """
    K = unroll_observations.shape[1] - 1
    observations = observations_inside(unroll_observations, mask)[:, 1:]  # [B, K, *obs]
    flat = tf.reshape(observations, [-1, *unroll_observations.shape[2:]])  # [B*K, *obs]
    projection = network.project(network.represent(flat, training=training), training=training)
    return tf.stop_gradient(tf.reshape(projection, [-1, K, projection.shape[-1]]))


def consistency_loss(network: Network, hidden_states: Sequence[tf.Tensor],
                     unroll_observations: tf.Tensor, mask: tf.Tensor,
                     training: bool = True) -> tf.Tensor:
    """float32 [B, K]: -cos(predict(project(s_k)), consistency_targets(...)[:, k-1]) per step,
    neither masked nor weighted (`muzero_loss` does both).

    hidden_states: the K unrolled hidden states s_1..s_K, each [B, *hidden_shape] (the gradient
    flows into them); unroll_observations [B, K+1, *obs]; mask [B, K+1].
    """
    K = len(hidden_states)
    if unroll_observations.shape[1] != K + 1:
        raise ValueError(f"consistency_loss: unroll_observations has {unroll_observations.shape[1]} "
                         f"steps, expected K+1 = {K + 1}")
    target = consistency_targets(network, unroll_observations, mask, training)
    hidden = tf.stack(list(hidden_states), axis=1)  # [B, K, *hidden]
    flat = tf.reshape(hidden, [-1, *hidden.shape[2:]])  # one call for all K steps
    online = network.predict_projection(network.project(flat, training=training), training=training)
    online = tf.reshape(online, [-1, K, online.shape[-1]])
    return negative_cosine_similarity(online, target)


def muzero_loss(network: Network, batch: dict[str, tf.Tensor], support_size: int,
                value_loss_weight: float = 0.25, gradient_scale: float = 0.5,
                train_past_end: bool = True, training: bool = True,
                consistency_weight: float = 0.0, chance_loss_weight: float = 1.0,
                commitment_weight: float = 0.25, diversity_weight: float = 0.0) -> Losses:
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
      consistency_weight: factor of EfficientZero's consistency loss (0: off, nothing of it is
        computed); > 0 needs `unroll_observations` in the batch and a network with
        consistency heads.
      chance_loss_weight, commitment_weight, diversity_weight: factors of Stochastic MuZero's
        chance, commitment and diversity terms (used only with a stochastic network, which also
        needs `unroll_observations`).
    """
    stochastic = bool(getattr(network, "stochastic", False))
    if (consistency_weight > 0 or stochastic) and UNROLL_OBSERVATIONS not in batch:
        raise ValueError(f"muzero_loss: {'a stochastic network' if stochastic else 'consistency_weight > 0'} "
                         f"needs the batch's unroll_observations [B, K+1, *obs] (ask the replay with "
                         f"include_unroll_observations)")
    actions = tf.cast(batch["actions"], tf.int32)
    K = actions.shape[1]
    if K is None:
        raise ValueError("muzero_loss: actions need a static number of unroll steps K")
    mask = tf.cast(batch["mask"], tf.float32)
    if stochastic:
        stochastic_unroll = unroll_stochastic(network, batch["observation"], actions, batch[UNROLL_OBSERVATIONS],
                                              mask, training, gradient_scale)
        outputs = stochastic_unroll.outputs
    else:
        outputs = unroll(network, batch["observation"], actions, training, gradient_scale)
    value_logits = tf.stack([o.value_logits for o in outputs], axis=1)  # [B, K+1, 2S+1]
    reward_logits = tf.stack([o.reward_logits for o in outputs], axis=1)
    policy_logits = tf.stack([o.policy_logits for o in outputs], axis=1)  # [B, K+1, A]

    weights = step_weights(K)[None, :]  # [1, K+1]
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
    if consistency_weight > 0:
        steps = consistency_loss(network, [o.hidden_state for o in outputs[1:]],
                                 batch[UNROLL_OBSERVATIONS], mask, training)  # [B, K]
        consistency = tf.reduce_sum(weights[:, 1:] * mask[:, 1:] * steps, axis=1)  # [B]
        per_sample = per_sample + consistency_weight * consistency
    if stochastic:
        q_logits = tf.stack([a.value_logits for a in stochastic_unroll.afterstates], axis=1)  # [B, K, 2S+1]
        chance_logits = tf.stack([a.chance_logits for a in stochastic_unroll.afterstates], axis=1)  # [B, K, C]
        codes = stochastic_unroll.codes
        transition = mask[:, 1:]  # o_{t+k+1} exists
        afterstate_value = tf.reduce_sum(
            value_mask[:, :-1] * support_cross_entropy(q_logits, batch["target_value"][:, :-1], support_size),
            axis=1) / K
        chance = tf.reduce_sum(transition * policy_cross_entropy(chance_logits, codes), axis=1) / K
        commitment = tf.reduce_sum(
            transition * tf.reduce_sum(tf.square(codes - stochastic_unroll.code_probabilities), axis=-1),
            axis=1) / K
        per_sample = (per_sample + value_loss_weight * afterstate_value + chance_loss_weight * chance
                      + commitment_weight * commitment)
        # Code usage over the real transitions of the batch.
        real = tf.maximum(tf.reduce_sum(transition), 1.0)
        mean_probability = tf.reduce_sum(transition[..., None] * stochastic_unroll.code_probabilities, axis=[0, 1]) / real
        C = codes.shape[-1]
        diversity = tf.reduce_sum(mean_probability * tf.math.log(mean_probability + 1e-12)) + float(np.log(C))
        usage = tf.reduce_sum(transition[..., None] * codes, axis=[0, 1]) / real
        code_perplexity = tf.exp(-tf.reduce_sum(usage * tf.math.log(usage + 1e-12)))

    importance = tf.cast(batch["importance_weight"], tf.float32)

    def weighted_mean(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(importance * x)

    root_value = outputs[0].value
    priorities = tf.stop_gradient(tf.abs(root_value - tf.cast(batch["target_value"][:, 0], tf.float32)))
    total = weighted_mean(per_sample) + (diversity_weight * diversity if stochastic else 0.0)
    return Losses(total=total, value=weighted_mean(value),
                  reward=weighted_mean(reward), policy=weighted_mean(policy),
                  l2=tf.constant(0.0), per_sample=per_sample, priorities=priorities,
                  value_prediction=tf.stop_gradient(root_value),
                  consistency=weighted_mean(consistency) if consistency_weight > 0 else tf.constant(0.0),
                  **({"afterstate_value": weighted_mean(afterstate_value), "chance": weighted_mean(chance),
                      "commitment": weighted_mean(commitment), "diversity": diversity,
                      "code_perplexity": tf.stop_gradient(code_perplexity)} if stochastic else {}))


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
