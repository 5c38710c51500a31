"""MuZero's three networks (representation h, dynamics g, prediction f) in Keras 3 / TF2.

    network = MuZeroNetwork(game.spec, game.settings, seed=0)
    out = network.initial_inference(observation)           # float32 [B, *observation_shape]
    out = network.recurrent_inference(out.hidden_state, action)   # action int32 [B]
    out.hidden_state, out.value_logits, out.reward_logits, out.policy_logits, out.value, out.reward

Two variants, picked by `MuZeroSettings.network`:

"fc" (vector observations such as cartpole's; any observation is flattened):
  representation  obs -> MLP(fc_layers) -> Dense(hidden_size) -> min-max normalize
  dynamics        [hidden, one_hot(action)] -> MLP(fc_layers) -> Dense(hidden_size) -> normalize
                  reward head: next hidden -> MLP(fc_layers) -> Dense(2S+1)
  prediction      hidden -> MLP(fc_layers) -> Dense(A) policy logits
                  hidden -> MLP(fc_layers) -> Dense(2S+1) value logits
  hidden_shape = (hidden_size,)

"resnet" (channels-last boards [H, W, C]; a [H, W] observation gets one channel):
  representation  conv3x3(hidden_size) + BN + ReLU, res_blocks residual blocks, normalize
  dynamics        [hidden, action planes] -> conv3x3(hidden_size) + BN + ReLU + skip from the
                  hidden state, res_blocks residual blocks, normalize
                  reward head: conv1x1(2) + BN + ReLU -> flatten -> MLP(fc_layers) -> Dense(2S+1)
  prediction      policy head: conv1x1(2) + BN + ReLU -> flatten -> MLP(fc_layers) -> Dense(A)
                  value head:  conv1x1(2) + BN + ReLU -> flatten -> MLP(fc_layers) -> Dense(2S+1)
  hidden_shape = (H, W, hidden_size): boards are small (at most 8x8), so no downsampling.

Action encoding for "resnet" (`action_encoding="auto"`), an injective map of an action to
planes of the board's size that are stacked onto the hidden state:
  "cells"     when A == H*W or A == H*W + 1 (tic-tac-toe, Othello with its pass action): one
              plane with 1 at the played cell, all zeros for the pass action A-1 = H*W. The
              convolutions see *where* the move is, as in MuZero's Go and chess networks.
  "broadcast" otherwise (Connect Four's 7 columns, 2048's 4 directions): A constant planes,
              the action's plane all ones and the others zeros. Cheap for small A, and it makes
              no assumption about what an action means on the board.

The hidden state is min-max normalized per example to [0, 1] over all its elements, as in
MuZero: (s - min) / max(max - min, 1e-5).

Value and reward heads output logits over the support [-S, S] (models/support.py); the decoded
scalars `value` and `reward` are h^-1 of the expected support value. `initial_inference` has no
reward: `reward` is 0 and `reward_logits` put (all but) all mass on the support's 0, so a
reward loss at k = 0 is ~0 and carries no gradient; a trainer should simply skip it.

The final layers of the value and reward heads start at zero, so an untrained network predicts
value 0 and reward 0 and a uniform distribution over its support.

Value prefix (only with `settings.training.value_prefix`, EfficientZero's): the dynamics'
reward head is replaced by a recurrent head that predicts the value prefix, the sum of the
rewards since the last reset, from the unrolled hidden states:
  "fc"      next hidden -> LSTMCell(L) -> BN + ReLU -> MLP(fc_layers) -> Dense(2S+1)
  "resnet"  next hidden -> conv1x1(2) + BN + ReLU -> flatten -> LSTMCell(L) -> BN + ReLU
            -> MLP(fc_layers) -> Dense(2S+1)
  L = value_prefix_lstm_size. The LSTM's state [h, c] travels with the hidden state as
  `value_prefix_state` float32 [B, 2L]: `initial_inference` gives zeros, `recurrent_inference`
  takes the parent's and returns the child's, and its `reward` is the decoded value prefix.
  Whoever unrolls (the trainer's loss, the search) resets the state to zeros every
  `value_prefix_horizon` steps, where the replay's prefix targets restart too.

Stochastic MuZero (Antonoglou et al. 2022; only with C = `settings.network.chance_codes` > 0): chance sits between an action and the next state.
  afterstate dynamics    (state, action) -> afterstate, built as dynamics without its reward head
  afterstate prediction  afterstate -> chance-code logits sigma [B, C], Q value logits,
                         built as prediction with C outputs
  dynamics               (afterstate, chance code) -> next state, reward: the dynamics above with
                         the code in place of the action ("broadcast" planes for "resnet")
  chance encoder         (observation at t, at t+1) -> code logits [B, C]: "fc" an MLP over both
                         flattened, "resnet" a trunk over both boards stacked on the channels
                         and a head as prediction's; training only, not exported.
`afterstate_inference` and `chance_inference` run one half each; `recurrent_inference` takes
an edge of the search's tree, e in [0, A + C), and is what the search calls once per step for
all B games: rows with e < A are actions from a state (afterstate_inference: the afterstate,
its Q as `value`, reward 0, policy_logits [0 x A, sigma]), rows with e >= A codes e - A from an
afterstate (chance_inference: the next state, its value and reward, policy_logits [p, 0 x C]).
Each row runs only its own branch (partition and stitch), so a step costs one network pass a row.

Consistency heads (only when `settings.training.consistency_weight > 0`, for EfficientZero's
temporal consistency loss, services/trainer/losses.py), SimSiam's projector and predictor as in
EfficientZero's `project`:
  projection      hidden state, flattened -> Dense(P_h) + BN + ReLU -> Dense(P_h) + BN + ReLU
                  -> Dense(P) + BN          P_h = projection_hidden_size, P = projection_size
  prediction      projection -> Dense(Q_h) + BN + ReLU -> Dense(P)    Q_h = prediction_hidden_size
They are trained and checkpointed with the network (`variables`, `trainable_variables`) but are
no part of inference: `initial_inference` / `recurrent_inference` never use them and exported
versions (models/export.py) do not contain them.
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.validation import require
from models.support import support_to_scalar, support_width

NORMALIZE_EPSILON = 1e-5


class AfterstateOutput(NamedTuple):
    """What one afterstate step of a Stochastic MuZero network returns (float32, batch B).

    afterstate: [B, *hidden_shape], min-max normalized like a hidden state.
    value_logits: [B, 2S+1], the afterstate's Q value Q(s, a) over the support.
    chance_logits: [B, C], the prior sigma over the C chance codes that may follow.
    value: [B], decoded from value_logits.
    """

    afterstate: tf.Tensor
    value_logits: tf.Tensor
    chance_logits: tf.Tensor
    value: tf.Tensor


class NetworkOutput(NamedTuple):
    """What one inference step returns (all float32, leading batch dimension B).

    hidden_state: [B, *hidden_shape], min-max normalized to [0, 1] per example.
    value_logits: [B, 2S+1] logits over the support (train with cross-entropy against
      `support.scalar_to_support(target)`).
    reward_logits: [B, 2S+1]; from `initial_inference` a constant peaked at 0.
    policy_logits: [B, A].
    value: [B], decoded from value_logits.
    reward: [B], decoded from reward_logits (0 from `initial_inference`); with value prefix,
      the value prefix (the module docstring).
    value_prefix_state: [B, 2L], the value-prefix LSTM's state [h, c] after this step (zeros
      from `initial_inference`); None without value prefix.
    """

    hidden_state: tf.Tensor
    value_logits: tf.Tensor
    reward_logits: tf.Tensor
    policy_logits: tf.Tensor
    value: tf.Tensor
    reward: tf.Tensor
    value_prefix_state: tf.Tensor | None = None


def min_max_normalize(hidden: tf.Tensor) -> tf.Tensor:
    """Scales each example of `hidden` [B, ...] to [0, 1] over all its non-batch elements."""
    axes = list(range(1, len(hidden.shape)))
    low = tf.reduce_min(hidden, axis=axes, keepdims=True)
    high = tf.reduce_max(hidden, axis=axes, keepdims=True)
    return (hidden - low) / tf.maximum(high - low, NORMALIZE_EPSILON)


class _Initializers:
    """Kernel initializers that are reproducible when a seed is given."""

    def __init__(self, seed: int | None) -> None:
        self._seeds: Iterator[int] | None = itertools.count(seed * 1000) if seed is not None else None

    def kernel(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=next(self._seeds) if self._seeds else None)

    def conv(self) -> keras.initializers.Initializer:
        return keras.initializers.HeNormal(seed=next(self._seeds) if self._seeds else None)

    def orthogonal(self) -> keras.initializers.Initializer:
        return keras.initializers.Orthogonal(seed=next(self._seeds) if self._seeds else None)


class _Mlp(keras.layers.Layer):
    """Dense-ReLU layers of `widths`, then a linear Dense(output)."""

    def __init__(self, widths: Sequence[int], output: int, init: _Initializers,
                 zero_output: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        # Sublayers are attributes, not a list: TensorFlow checkpoints do not follow Keras 3's
        # tracked lists, so listed layers would silently be left out of tf.train.Checkpoint.
        self.depth = len(widths)
        for i, width in enumerate(widths):
            setattr(self, f"dense_{i}", keras.layers.Dense(width, activation="relu",
                                                           kernel_initializer=init.kernel()))
        self.out = keras.layers.Dense(output, kernel_initializer="zeros" if zero_output else init.kernel())

    def call(self, x, training=False):
        for i in range(self.depth):
            x = getattr(self, f"dense_{i}")(x)
        return self.out(x)


def _mlp(widths: Sequence[int], output: int, init: _Initializers, name: str,
         zero_output: bool = False) -> _Mlp:
    return _Mlp(widths, output, init, zero_output, name=name)


class _ResidualBlock(keras.layers.Layer):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input, then ReLU (MuZero's block)."""

    def __init__(self, channels: int, init: _Initializers, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                         kernel_initializer=init.conv())
        self.bn1 = keras.layers.BatchNormalization()
        self.conv2 = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                         kernel_initializer=init.conv())
        self.bn2 = keras.layers.BatchNormalization()

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return tf.nn.relu(x + y)


class _ConvHead(keras.layers.Layer):
    """conv1x1(channels)-BN-ReLU, flatten, MLP: the policy, value and reward heads of "resnet"."""

    def __init__(self, channels: int, widths: Sequence[int], output: int, init: _Initializers,
                 zero_output: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=init.conv())
        self.bn = keras.layers.BatchNormalization()
        self.flatten = keras.layers.Flatten()
        self.mlp = _mlp(widths, output, init, f"{self.name}_mlp", zero_output)

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn(self.conv(x), training=training))
        return self.mlp(self.flatten(y), training=training)


class ValuePrefixHead(keras.layers.Layer):
    """EfficientZero's value-prefix head: features [B, F] and the LSTM state [B, 2L] ->
    (value-prefix logits [B, 2S+1], the next state [B, 2L]); see the module docstring."""

    def __init__(self, lstm_size: int, widths: Sequence[int], output: int, init: _Initializers,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.lstm_size = lstm_size
        self.lstm = keras.layers.LSTMCell(lstm_size, kernel_initializer=init.kernel(),
                                          recurrent_initializer=init.orthogonal())
        self.bn = keras.layers.BatchNormalization()
        self.mlp = _mlp(widths, output, init, f"{self.name}_mlp", zero_output=True)

    def call(self, features, state, training=False):
        h, c = tf.split(state, 2, axis=-1)
        out, (h, c) = self.lstm(features, [h, c], training=training)
        logits = self.mlp(tf.nn.relu(self.bn(out, training=training)), training=training)
        return logits, tf.concat([h, c], axis=-1)


def _reward_head_width(settings: MuZeroSettings) -> int:
    return support_width(settings.network.support_size)


def one_hot_input(action: tf.Tensor, depth: int) -> tf.Tensor:
    """An action or chance code as a float32 vector [B, depth]: int [B] one-hot encoded, or a
    float [B, depth] used as it is (the trainer's straight-through one-hot codes)."""
    action = tf.convert_to_tensor(action)
    if action.dtype.is_floating and action.shape.rank == 2:
        return tf.cast(action, tf.float32)
    return tf.one_hot(tf.cast(action, tf.int32), depth, dtype=tf.float32)


# --- "fc" -------------------------------------------------------------------------------------

class FcRepresentation(keras.layers.Layer):
    def __init__(self, settings: MuZeroSettings, init: _Initializers) -> None:
        super().__init__(name="representation")
        self.flatten = keras.layers.Flatten()
        self.mlp = _mlp(settings.network.fc_layers, settings.network.hidden_size, init, "representation_mlp")

    def call(self, observation, training=False):
        return min_max_normalize(self.mlp(self.flatten(observation), training=training))


class FcDynamics(keras.layers.Layer):
    """(hidden, action) -> next hidden and reward; with `reward=False` the afterstate dynamics
    (hidden, action) -> afterstate, which has no reward head."""

    def __init__(self, settings: MuZeroSettings, num_actions: int, init: _Initializers,
                 name: str = "dynamics", reward: bool = True) -> None:
        super().__init__(name=name)
        self.num_actions = num_actions
        self.state_mlp = _mlp(settings.network.fc_layers, settings.network.hidden_size, init, f"{name}_state")
        self.value_prefix = settings.training.value_prefix
        self.has_reward = reward
        if reward and self.value_prefix:
            self.value_prefix_head = ValuePrefixHead(settings.training.value_prefix_lstm_size,
                                                     settings.network.fc_layers, _reward_head_width(settings),
                                                     init, name="dynamics_value_prefix")
        elif reward:
            self.reward_mlp = _mlp(settings.network.fc_layers, _reward_head_width(settings), init,
                                   "dynamics_reward", zero_output=True)

    def call(self, inputs, value_prefix_state=None, training=False):
        """(hidden [B, H], action [B]) -> (next hidden, reward or value-prefix logits, next
        value-prefix state or None)."""
        hidden, action = inputs
        x = tf.concat([hidden, one_hot_input(action, self.num_actions)], axis=-1)
        next_hidden = min_max_normalize(self.state_mlp(x, training=training))
        if not self.has_reward:
            return next_hidden, None, None
        if self.value_prefix:
            logits, state = self.value_prefix_head(next_hidden, value_prefix_state, training=training)
            return next_hidden, logits, state
        return next_hidden, self.reward_mlp(next_hidden, training=training), None


class FcPrediction(keras.layers.Layer):
    """hidden -> (policy logits [B, A], value logits); as the afterstate prediction, afterstate
    -> (chance-code logits [B, C], Q value logits)."""

    def __init__(self, settings: MuZeroSettings, num_actions: int, init: _Initializers,
                 name: str = "prediction") -> None:
        super().__init__(name=name)
        self.policy_mlp = _mlp(settings.network.fc_layers, num_actions, init, f"{name}_policy")
        self.value_mlp = _mlp(settings.network.fc_layers, support_width(settings.network.support_size), init,
                              f"{name}_value", zero_output=True)

    def call(self, hidden, training=False):
        return self.policy_mlp(hidden, training=training), self.value_mlp(hidden, training=training)


# --- "resnet" ---------------------------------------------------------------------------------

HEAD_CHANNELS = 2


class ResnetRepresentation(keras.layers.Layer):
    def __init__(self, settings: MuZeroSettings, init: _Initializers) -> None:
        super().__init__(name="representation")
        self.stem = keras.layers.Conv2D(settings.network.hidden_size, 3, padding="same", use_bias=False,
                                        kernel_initializer=init.conv())
        self.stem_bn = keras.layers.BatchNormalization()
        self.num_blocks = settings.network.res_blocks
        for i in range(settings.network.res_blocks):  # attributes, not a list (see _Mlp)
            setattr(self, f"block_{i}", _ResidualBlock(settings.network.hidden_size, init, name=f"representation_block_{i}"))

    def call(self, observation, training=False):
        x = tf.nn.relu(self.stem_bn(self.stem(observation), training=training))
        for i in range(self.num_blocks):
            x = getattr(self, f"block_{i}")(x, training=training)
        return min_max_normalize(x)


class ResnetDynamics(keras.layers.Layer):
    """(hidden, action) -> next hidden and reward; with `reward=False` the afterstate dynamics
    (hidden, action) -> afterstate, which has no reward head."""

    def __init__(self, settings: MuZeroSettings, board: tuple[int, int], num_actions: int,
                 action_encoding: str, init: _Initializers, name: str = "dynamics",
                 reward: bool = True) -> None:
        super().__init__(name=name)
        self.board = board
        self.num_actions = num_actions
        self.action_encoding = action_encoding
        self.stem = keras.layers.Conv2D(settings.network.hidden_size, 3, padding="same", use_bias=False,
                                        kernel_initializer=init.conv())
        self.stem_bn = keras.layers.BatchNormalization()
        self.num_blocks = settings.network.res_blocks
        for i in range(settings.network.res_blocks):  # attributes, not a list (see _Mlp)
            setattr(self, f"block_{i}", _ResidualBlock(settings.network.hidden_size, init, name=f"{name}_block_{i}"))
        self.value_prefix = settings.training.value_prefix
        self.has_reward = reward
        if reward and self.value_prefix:
            self.value_prefix_conv = keras.layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False,
                                                         kernel_initializer=init.conv())
            self.value_prefix_bn = keras.layers.BatchNormalization()
            self.value_prefix_flatten = keras.layers.Flatten()
            self.value_prefix_head = ValuePrefixHead(settings.training.value_prefix_lstm_size,
                                                     settings.network.fc_layers, _reward_head_width(settings),
                                                     init, name="dynamics_value_prefix")
        elif reward:
            self.reward_head = _ConvHead(HEAD_CHANNELS, settings.network.fc_layers,
                                         _reward_head_width(settings), init, zero_output=True,
                                         name="dynamics_reward")

    def action_planes(self, action: tf.Tensor) -> tf.Tensor:
        """int [B] (or, "broadcast" only, a float one-hot [B, A]) -> float32 [B, H, W, P] (see
        the module docstring)."""
        rows, cols = self.board
        if self.action_encoding == "cells":
            # Pass (index rows*cols) one-hots past the board's end: an all-zero plane.
            cells = tf.one_hot(action, rows * cols + 1, dtype=tf.float32)[:, :rows * cols]
            return tf.reshape(cells, [-1, rows, cols, 1])
        one_hot = one_hot_input(action, self.num_actions)
        return tf.tile(one_hot[:, None, None, :], [1, rows, cols, 1])

    def call(self, inputs, value_prefix_state=None, training=False):
        """(hidden [B, H, W, C], action [B]) -> (next hidden, reward or value-prefix logits,
        next value-prefix state or None)."""
        hidden, action = inputs
        x = tf.concat([hidden, self.action_planes(action)], axis=-1)
        x = tf.nn.relu(self.stem_bn(self.stem(x), training=training) + hidden)
        for i in range(self.num_blocks):
            x = getattr(self, f"block_{i}")(x, training=training)
        next_hidden = min_max_normalize(x)
        if not self.has_reward:
            return next_hidden, None, None
        if self.value_prefix:
            features = tf.nn.relu(self.value_prefix_bn(self.value_prefix_conv(next_hidden), training=training))
            logits, state = self.value_prefix_head(self.value_prefix_flatten(features), value_prefix_state,
                                                   training=training)
            return next_hidden, logits, state
        return next_hidden, self.reward_head(next_hidden, training=training), None


class ResnetPrediction(keras.layers.Layer):
    """hidden -> (policy logits [B, A], value logits); as the afterstate prediction, afterstate
    -> (chance-code logits [B, C], Q value logits)."""

    def __init__(self, settings: MuZeroSettings, num_actions: int, init: _Initializers,
                 name: str = "prediction") -> None:
        super().__init__(name=name)
        self.policy_head = _ConvHead(HEAD_CHANNELS, settings.network.fc_layers, num_actions, init,
                                     name=f"{name}_policy")
        self.value_head = _ConvHead(HEAD_CHANNELS, settings.network.fc_layers,
                                    support_width(settings.network.support_size), init, zero_output=True,
                                    name=f"{name}_value")

    def call(self, hidden, training=False):
        return self.policy_head(hidden, training=training), self.value_head(hidden, training=training)


# --- Stochastic MuZero's chance encoder ---------------------------------------------------------

class FcChanceEncoder(keras.layers.Layer):
    """(observation before, observation after) -> chance-code logits [B, C]: both flattened and
    concatenated -> MLP(fc_layers) -> Dense(C)."""

    def __init__(self, settings: MuZeroSettings, init: _Initializers) -> None:
        super().__init__(name="chance_encoder")
        self.flatten = keras.layers.Flatten()
        self.mlp = _mlp(settings.network.fc_layers, settings.network.chance_codes, init, "chance_encoder_mlp")

    def call(self, inputs, training=False):
        before, after = inputs
        return self.mlp(tf.concat([self.flatten(before), self.flatten(after)], axis=-1), training=training)


class ResnetChanceEncoder(keras.layers.Layer):
    """(board before, board after) [B, H, W, C_obs] each -> chance-code logits [B, C]: stacked
    on the channels -> conv3x3(hidden_size) + BN + ReLU -> res_blocks residual blocks ->
    conv1x1(2) + BN + ReLU -> flatten -> MLP(fc_layers) -> Dense(C)."""

    def __init__(self, settings: MuZeroSettings, init: _Initializers) -> None:
        super().__init__(name="chance_encoder")
        self.stem = keras.layers.Conv2D(settings.network.hidden_size, 3, padding="same", use_bias=False,
                                        kernel_initializer=init.conv())
        self.stem_bn = keras.layers.BatchNormalization()
        self.num_blocks = settings.network.res_blocks
        for i in range(settings.network.res_blocks):  # attributes, not a list (see _Mlp)
            setattr(self, f"block_{i}", _ResidualBlock(settings.network.hidden_size, init,
                                                       name=f"chance_encoder_block_{i}"))
        self.head = _ConvHead(HEAD_CHANNELS, settings.network.fc_layers, settings.network.chance_codes,
                              init, name="chance_encoder_head")

    def call(self, inputs, training=False):
        before, after = inputs
        x = tf.nn.relu(self.stem_bn(self.stem(tf.concat([before, after], axis=-1)), training=training))
        for i in range(self.num_blocks):
            x = getattr(self, f"block_{i}")(x, training=training)
        return self.head(x, training=training)


# --- consistency heads (EfficientZero) ---------------------------------------------------------

class ConsistencyHeads(keras.layers.Layer):
    """SimSiam's projection and prediction heads over a flattened hidden state (module docstring).

    `project(hidden [N, *hidden_shape]) -> [N, P]`; `predict(projection [N, P]) -> [N, P]`.
    """

    def __init__(self, projection_hidden_size: int, projection_size: int, prediction_hidden_size: int,
                 init: _Initializers, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        # Attributes, not lists (see _Mlp).
        self.projection_dense_0 = keras.layers.Dense(projection_hidden_size, use_bias=False,
                                                     kernel_initializer=init.kernel())
        self.projection_bn_0 = keras.layers.BatchNormalization()
        self.projection_dense_1 = keras.layers.Dense(projection_hidden_size, use_bias=False,
                                                     kernel_initializer=init.kernel())
        self.projection_bn_1 = keras.layers.BatchNormalization()
        self.projection_dense_2 = keras.layers.Dense(projection_size, use_bias=False,
                                                     kernel_initializer=init.kernel())
        self.projection_bn_2 = keras.layers.BatchNormalization()
        self.prediction_dense_0 = keras.layers.Dense(prediction_hidden_size, use_bias=False,
                                                     kernel_initializer=init.kernel())
        self.prediction_bn_0 = keras.layers.BatchNormalization()
        self.prediction_dense_1 = keras.layers.Dense(projection_size, kernel_initializer=init.kernel())

    def project(self, hidden, training=False):
        x = self.flatten(hidden)
        x = tf.nn.relu(self.projection_bn_0(self.projection_dense_0(x), training=training))
        x = tf.nn.relu(self.projection_bn_1(self.projection_dense_1(x), training=training))
        return self.projection_bn_2(self.projection_dense_2(x), training=training)

    def predict(self, projection, training=False):
        x = tf.nn.relu(self.prediction_bn_0(self.prediction_dense_0(projection), training=training))
        return self.prediction_dense_1(x)

    def call(self, hidden, training=False):
        return self.predict(self.project(hidden, training=training), training=training)


# --- the network ------------------------------------------------------------------------------

def board_shape(observation_shape: Sequence[int]) -> tuple[int, int, int]:
    """The channels-last board [H, W, C] a "resnet" sees for an observation shape."""
    shape = tuple(observation_shape)
    require(len(shape) in (2, 3),
            f"network 'resnet' needs a board observation [H, W] or [H, W, C], got shape {list(shape)}")
    return shape if len(shape) == 3 else (*shape, 1)  # type: ignore[return-value]


def choose_action_encoding(board: tuple[int, int], num_actions: int) -> str:
    """"cells" when actions are board cells (optionally plus a pass), else "broadcast"."""
    return "cells" if num_actions in (board[0] * board[1], board[0] * board[1] + 1) else "broadcast"


class MuZeroNetwork(tf.Module):
    """Representation, dynamics and prediction networks of one game, built from its settings.

    Args:
      spec: the game's spec (observation shape, number of actions).
      settings: the game's MuZeroSettings (network, hidden_size, fc_layers, res_blocks,
        support_size).
      seed: makes the initial weights reproducible (None: random).
      action_encoding: "auto", "cells" or "broadcast" (only for "resnet"; see module docstring).
      consistency_heads: build the projection and prediction heads of the consistency loss
        (None: when `settings.training.consistency_weight > 0`).

    Attributes:
      observation_shape, hidden_shape, num_actions, support_size.
      representation, dynamics, prediction: the three networks (Keras layers).
      consistency: the `ConsistencyHeads`, or None.
      value_prefix: whether the reward head is EfficientZero's value-prefix LSTM;
      value_prefix_state_size: 2L, the width of its state (0 without value prefix);
      value_prefix_horizon: H, the steps after which an unroll resets that state.
      stochastic: whether it is Stochastic MuZero's (afterstate_dynamics,
      afterstate_prediction, chance_encoder: more Keras layers); num_chance_codes: C (0 if not).

    The network is a `tf.Module`: `tf.train.Checkpoint(network=network)` saves and restores
    all its variables (including batch-norm statistics), and `models.export.export_version`
    writes it as a SavedModel.
    """

    def __init__(self, spec: GameSpec, settings: MuZeroSettings, seed: int | None = None,
                 action_encoding: str = "auto", consistency_heads: bool | None = None) -> None:
        super().__init__(name="muzero_network")
        self.spec = spec
        self.settings = settings
        self.observation_shape = tuple(spec.observation_shape)
        self.num_actions = spec.num_actions
        self.support_size = settings.network.support_size
        self.value_prefix = bool(settings.training.value_prefix)
        self.value_prefix_state_size = 2 * settings.training.value_prefix_lstm_size if self.value_prefix else 0
        self.value_prefix_horizon = settings.training.value_prefix_horizon
        self.stochastic = settings.stochastic
        self.num_chance_codes = settings.network.chance_codes
        init = _Initializers(seed)
        if settings.network.architecture == "fc":
            require(action_encoding in ("auto",),
                    f"action_encoding applies to 'resnet' only, got {action_encoding!r} for 'fc'")
            self.action_encoding = "one_hot"
            self.hidden_shape: tuple[int, ...] = (settings.network.hidden_size,)
            self.representation = FcRepresentation(settings, init)
            # Stochastic MuZero's dynamics starts from an afterstate and reads a chance code.
            self.dynamics = FcDynamics(settings, self.num_chance_codes or spec.num_actions, init)
            self.prediction = FcPrediction(settings, spec.num_actions, init)
            self._board_shape: tuple[int, ...] | None = None
            if self.stochastic:
                self.afterstate_dynamics = FcDynamics(settings, spec.num_actions, init,
                                                      name="afterstate_dynamics", reward=False)
                self.afterstate_prediction = FcPrediction(settings, self.num_chance_codes, init,
                                                          name="afterstate_prediction")
                self.chance_encoder = FcChanceEncoder(settings, init)
        else:
            board = board_shape(spec.observation_shape)
            require(action_encoding in ("auto", "cells", "broadcast"),
                    f"action_encoding must be 'auto', 'cells' or 'broadcast', got {action_encoding!r}")
            if action_encoding == "auto":
                action_encoding = choose_action_encoding(board[:2], spec.num_actions)
            require(action_encoding != "cells"
                    or spec.num_actions in (board[0] * board[1], board[0] * board[1] + 1),
                    f"action_encoding 'cells' needs H*W or H*W+1 actions, got {spec.num_actions} "
                    f"for a {board[0]}x{board[1]} board")
            self.action_encoding = action_encoding
            self._board_shape = board
            self.hidden_shape = (board[0], board[1], settings.network.hidden_size)
            self.representation = ResnetRepresentation(settings, init)
            if self.stochastic:
                # Codes have no place on the board: always "broadcast" planes.
                self.dynamics = ResnetDynamics(settings, board[:2], self.num_chance_codes, "broadcast", init)
            else:
                self.dynamics = ResnetDynamics(settings, board[:2], spec.num_actions, action_encoding, init)
            self.prediction = ResnetPrediction(settings, spec.num_actions, init)
            if self.stochastic:
                self.afterstate_dynamics = ResnetDynamics(settings, board[:2], spec.num_actions, action_encoding,
                                                          init, name="afterstate_dynamics", reward=False)
                self.afterstate_prediction = ResnetPrediction(settings, self.num_chance_codes, init,
                                                              name="afterstate_prediction")
                self.chance_encoder = ResnetChanceEncoder(settings, init)
        if consistency_heads is None:
            consistency_heads = settings.training.consistency_weight > 0
        # Built after the three networks, so that their seeded initial weights do not change.
        training = settings.training
        self.consistency = (ConsistencyHeads(training.projection_hidden_size, training.projection_size,
                                             training.prediction_hidden_size, init, name="consistency")
                            if consistency_heads else None)
        self._build()

    def _build(self) -> None:
        """Creates every variable with one dummy call."""
        observation = np.zeros((1, *self.observation_shape), np.float32)
        out = self.initial_inference(observation)
        if self.stochastic:
            after = self.afterstate_inference(out.hidden_state, np.zeros((1,), np.int32))
            self.chance_inference(after.afterstate, np.zeros((1,), np.int32))
            self.encode_chance(observation, observation)
        else:
            self.recurrent_inference(out.hidden_state, np.zeros((1,), np.int32))
        if self.consistency is not None:
            self.consistency(out.hidden_state)

    # -- consistency heads (training only) -----------------------------------------------------

    def project(self, hidden_state, training: bool = False) -> tf.Tensor:
        """hidden_state [N, *hidden_shape] -> projection float32 [N, projection_size]."""
        return self._heads().project(hidden_state, training=training)

    def predict_projection(self, projection, training: bool = False) -> tf.Tensor:
        """projection [N, projection_size] -> the prediction head's output [N, projection_size]."""
        return self._heads().predict(projection, training=training)

    def _heads(self) -> ConsistencyHeads:
        if self.consistency is None:
            raise ValueError("this network has no consistency heads: build it with "
                             "training.consistency_weight > 0 (or consistency_heads=True)")
        return self.consistency

    def inference_module(self) -> tf.Module:
        """A module holding only the inference networks (what an exported version saves: the
        consistency heads and the chance encoder are left out)."""
        module = tf.Module(name="muzero_network")
        module.representation = self.representation
        module.dynamics = self.dynamics
        module.prediction = self.prediction
        if self.stochastic:  # the chance encoder is training only, too
            module.afterstate_dynamics = self.afterstate_dynamics
            module.afterstate_prediction = self.afterstate_prediction
        return module

    # -- inference ----------------------------------------------------------------------------

    def _observation_input(self, observation: tf.Tensor) -> tf.Tensor:
        observation = tf.convert_to_tensor(observation, tf.float32)
        if self._board_shape is not None and len(self.observation_shape) == 2:
            observation = observation[..., None]
        return observation

    def represent(self, observation, training: bool = False) -> tf.Tensor:
        """observation float32 [B, *observation_shape] -> hidden state [B, *hidden_shape]: the
        representation alone (the first output of `initial_inference`, without its heads)."""
        return self.representation(self._observation_input(observation), training=training)

    def initial_inference(self, observation, training: bool = False) -> NetworkOutput:
        """observation float32 [B, *observation_shape] -> NetworkOutput (reward 0; with value
        prefix, a zero value_prefix_state)."""
        hidden = self.representation(self._observation_input(observation), training=training)
        policy_logits, value_logits = self.prediction(hidden, training=training)
        batch = tf.shape(hidden)[0]
        reward_logits = tf.tile(self._zero_reward_logits()[None, :], [batch, 1])
        return NetworkOutput(hidden_state=hidden, value_logits=value_logits,
                             reward_logits=reward_logits, policy_logits=policy_logits,
                             value=support_to_scalar(value_logits, self.support_size),
                             reward=tf.zeros([batch], tf.float32),
                             value_prefix_state=self.zero_value_prefix_state(batch) if self.value_prefix else None)

    def recurrent_inference(self, hidden_state, action, value_prefix_state=None,
                            training: bool = False) -> NetworkOutput:
        """hidden_state float32 [B, *hidden_shape], action int [B] in [0, A) -> NetworkOutput.

        With value prefix, `value_prefix_state` float32 [B, 2L] is the parent's LSTM state
        (None: zeros, a reset) and the output's `reward` is the value prefix; without, it must
        be None.

        A stochastic network takes edges of the search's tree instead, `action` in [0, A + C):
        the module docstring's one recurrent step for both kinds of node."""
        hidden_state = tf.convert_to_tensor(hidden_state, tf.float32)
        action = tf.cast(tf.convert_to_tensor(action), tf.int32)
        if self.stochastic:
            require(value_prefix_state is None, "recurrent_inference: a stochastic network has no value prefix")
            return self._edge_inference(hidden_state, action)
        if self.value_prefix:
            if value_prefix_state is None:
                value_prefix_state = self.zero_value_prefix_state(tf.shape(hidden_state)[0])
            value_prefix_state = tf.convert_to_tensor(value_prefix_state, tf.float32)
        elif value_prefix_state is not None:
            raise ValueError("recurrent_inference: value_prefix_state given to a network without "
                             "value prefix (training.value_prefix is False)")
        next_hidden, reward_logits, next_state = self.dynamics(
            (hidden_state, action), value_prefix_state=value_prefix_state, training=training)
        policy_logits, value_logits = self.prediction(next_hidden, training=training)
        return NetworkOutput(hidden_state=next_hidden, value_logits=value_logits,
                             reward_logits=reward_logits, policy_logits=policy_logits,
                             value=support_to_scalar(value_logits, self.support_size),
                             reward=support_to_scalar(reward_logits, self.support_size),
                             value_prefix_state=next_state)

    # -- Stochastic MuZero (afterstates and chance codes) -----------------------------------------

    def afterstate_inference(self, hidden_state, action, training: bool = False) -> AfterstateOutput:
        """hidden_state float32 [B, *hidden_shape], action int [B] in [0, A) -> the afterstate
        and its predictions (Q value, chance-code logits [B, C]). Stochastic networks only."""
        self._require_stochastic("afterstate_inference")
        hidden_state = tf.convert_to_tensor(hidden_state, tf.float32)
        afterstate, _, _ = self.afterstate_dynamics((hidden_state, action), training=training)
        chance_logits, value_logits = self.afterstate_prediction(afterstate, training=training)
        return AfterstateOutput(afterstate=afterstate, value_logits=value_logits, chance_logits=chance_logits,
                                value=support_to_scalar(value_logits, self.support_size))

    def chance_inference(self, afterstate, chance_code, training: bool = False) -> NetworkOutput:
        """afterstate float32 [B, *hidden_shape], chance_code int [B] in [0, C) or a float
        one-hot [B, C] (the trainer's straight-through code) -> NetworkOutput of the next state
        (reward, policy_logits [B, A], value). Stochastic networks only."""
        self._require_stochastic("chance_inference")
        afterstate = tf.convert_to_tensor(afterstate, tf.float32)
        next_hidden, reward_logits, _ = self.dynamics((afterstate, chance_code), training=training)
        policy_logits, value_logits = self.prediction(next_hidden, training=training)
        return NetworkOutput(hidden_state=next_hidden, value_logits=value_logits,
                             reward_logits=reward_logits, policy_logits=policy_logits,
                             value=support_to_scalar(value_logits, self.support_size),
                             reward=support_to_scalar(reward_logits, self.support_size))

    def encode_chance(self, observation_before, observation_after, training: bool = False) -> tf.Tensor:
        """The chance encoder: observations float32 [B, *observation_shape] at t and t+1 ->
        logits [B, C] of the code of what chance did between them (training only)."""
        self._require_stochastic("encode_chance")
        return self.chance_encoder((self._observation_input(observation_before),
                                    self._observation_input(observation_after)), training=training)

    def _edge_inference(self, hidden_state: tf.Tensor, edge: tf.Tensor) -> NetworkOutput:
        """The search's one recurrent step for both kinds of node (module docstring): rows
        with edge < A run `afterstate_inference`, the others `chance_inference` with code edge
        - A; each row runs only its own branch (partition, then stitch)."""
        A, C = self.num_actions, self.num_chance_codes
        kind = tf.cast(edge >= A, tf.int32)                        # 0: from a state, 1: from an afterstate
        rows = tf.dynamic_partition(tf.range(tf.shape(edge)[0]), kind, 2)
        states = tf.dynamic_partition(hidden_state, kind, 2)
        edges = tf.dynamic_partition(edge, kind, 2)
        n_after, n_following = tf.shape(edges[0])[0], tf.shape(edges[1])[0]
        # One spare row in each branch, dropped after: TensorFlow's convolutions get a part with
        # no rows wrong (the output keeps the input's channels), and a step may have no row of
        # one kind.
        spare_state, spare_edge = hidden_state[:1], tf.zeros([1], tf.int32)

        def run(branch, part_states, part_edges):
            out = branch(tf.concat([part_states, spare_state], axis=0), tf.concat([part_edges, spare_edge], axis=0))
            return type(out)(*(None if x is None else x[:-1] for x in out))

        after = run(self.afterstate_inference, states[0], edges[0])
        following = run(self.chance_inference, states[1], edges[1] - A)

        def stitch(from_state: tf.Tensor, from_afterstate: tf.Tensor) -> tf.Tensor:
            return tf.dynamic_stitch(rows, [from_state, from_afterstate])

        logits = stitch(tf.concat([tf.zeros([n_after, A]), after.chance_logits], axis=1),
                        tf.concat([following.policy_logits, tf.zeros([n_following, C])], axis=1))
        reward_logits = stitch(tf.tile(self._zero_reward_logits()[None, :], [n_after, 1]),
                               following.reward_logits)
        return NetworkOutput(hidden_state=stitch(after.afterstate, following.hidden_state),
                             value_logits=stitch(after.value_logits, following.value_logits),
                             reward_logits=reward_logits, policy_logits=logits,
                             value=stitch(after.value, following.value),
                             reward=stitch(tf.zeros([n_after]), following.reward))

    def _require_stochastic(self, caller: str) -> None:
        if not self.stochastic:
            raise ValueError(f"{caller}: this network is not stochastic (build it with network.chance_codes > 0)")

    def zero_value_prefix_state(self, batch) -> tf.Tensor:
        """float32 [batch, 2L] zeros: the value-prefix LSTM's state at a reset."""
        return tf.zeros([batch, self.value_prefix_state_size], tf.float32)

    def _zero_reward_logits(self) -> tf.Tensor:
        """Logits with (all but) all probability on the support's 0: log of a one-hot, clipped."""
        width = support_width(self.support_size)
        return tf.one_hot(self.support_size, width, on_value=0.0, off_value=-1e4, dtype=tf.float32)

    # -- variables ----------------------------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        """Every trainable variable of the three networks, then of the stochastic ones (afterstate
        dynamics and prediction, chance encoder) and the consistency heads if any (for
        tape.gradient and optimizers)."""
        heads = self.consistency.trainable_weights if self.consistency is not None else []
        return [*self.representation.trainable_weights, *self.dynamics.trainable_weights,
                *self.prediction.trainable_weights,
                *(w for layer in self._stochastic_layers() for w in layer.trainable_weights), *heads]

    @property
    def variables(self) -> list:
        """All variables, including batch-norm statistics, in a fixed order (the stochastic
        networks' after the three, the consistency heads' last)."""
        heads = self.consistency.weights if self.consistency is not None else []
        return [*self.representation.weights, *self.dynamics.weights, *self.prediction.weights,
                *(w for layer in self._stochastic_layers() for w in layer.weights), *heads]

    def _stochastic_layers(self) -> list:
        """Afterstate dynamics, afterstate prediction and chance encoder ([] if not stochastic)."""
        return ([self.afterstate_dynamics, self.afterstate_prediction, self.chance_encoder]
                if self.stochastic else [])

    def get_weights(self) -> list[np.ndarray]:
        """Copies of all variables (the order of `variables`)."""
        return [np.array(v.numpy()) for v in self.variables]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Assigns `weights` (as from `get_weights`); ValueError naming a mismatch."""
        variables = self.variables
        require(len(weights) == len(variables),
                f"set_weights: expected {len(variables)} arrays, got {len(weights)}")
        for variable, value in zip(variables, weights):
            value = np.asarray(value)
            require(tuple(variable.shape) == value.shape,
                    f"set_weights: {variable.path} has shape {tuple(variable.shape)}, got {value.shape}")
            variable.assign(value.astype(variable.dtype))

    def summary(self) -> str:
        """One line: variant, shapes and parameter count."""
        heads = self.consistency.trainable_weights if self.consistency is not None else []
        params = sum(int(np.prod(v.shape)) for v in self.trainable_variables) - sum(
            int(np.prod(v.shape)) for v in heads)
        text = (f"{self.settings.network.architecture} network: observation {list(self.observation_shape)}, "
                f"hidden {list(self.hidden_shape)}, {self.num_actions} actions, support "
                f"{support_width(self.support_size)}, {params} parameters")
        if heads:
            text += f" (+ {sum(int(np.prod(v.shape)) for v in heads)} in the consistency heads)"
        return text
