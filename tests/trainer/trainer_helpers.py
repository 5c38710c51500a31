"""Helpers of the trainer tests: tiny settings, hand-made batches, a fake network, a log sink."""

from __future__ import annotations

import io
import json

import numpy as np
import tensorflow as tf

from games.base import GameSpec, MuZeroSettings
from games.cartpole import CartPole
from models.networks import NetworkOutput
from services.common.logs import get_logger
from services.trainer.config import TrainerConfig

SPEC = CartPole.spec  # observation [4], 2 actions
S = 5
K = 2
TINY = CartPole.settings.replace(hidden_size=8, fc_layers=(16,), support_size=S, num_unroll_steps=K,
                                 batch_size=16, learning_rate=1e-2, export_interval=3,
                                 lr_decay_steps=1000)
BOARD = GameSpec(name="tictactoe", observation_shape=(3, 3, 2), observation_dtype="uint8",
                 num_actions=9, num_players=2, discount=1.0, max_moves=9)
TINY_RESNET = MuZeroSettings.of(architecture="resnet", hidden_size=4, fc_layers=(8,), res_blocks=1, support_size=1, num_unroll_steps=K, batch_size=8)


def batch(spec: GameSpec = SPEC, B: int = 16, K: int = K, seed: int = 0, learnable: bool = False,
          with_keys: bool = True) -> dict[str, np.ndarray]:
    """A valid batch. `learnable`: one-hot policies and values that follow from the observation,
    so a network can fit the batch down to (nearly) zero loss."""
    rng = np.random.default_rng(seed)
    A = spec.num_actions
    if spec.observation_dtype == "uint8":
        observation = rng.integers(0, 2, (B, *spec.observation_shape)).astype(np.float32)
    else:
        observation = rng.normal(size=(B, *spec.observation_shape)).astype(np.float32)
    if learnable:
        best = rng.integers(0, A, (B, K + 1))
        target_policy = np.eye(A, dtype=np.float32)[best]
        target_value = rng.choice([0.0, 3.0], (B, K + 1)).astype(np.float32)
        target_reward = rng.choice([0.0, 3.0], (B, K + 1)).astype(np.float32)
    else:
        target_policy = rng.dirichlet(np.ones(A), (B, K + 1)).astype(np.float32)
        target_value = rng.uniform(-2, 5, (B, K + 1)).astype(np.float32)
        target_reward = rng.uniform(0, 1, (B, K + 1)).astype(np.float32)
    target_reward[:, 0] = 0.0
    arrays = dict(observation=observation, actions=rng.integers(0, A, (B, K)).astype(np.int32),
                  target_value=target_value, target_reward=target_reward, target_policy=target_policy,
                  mask=np.ones((B, K + 1), np.float32), policy_mask=np.ones((B, K + 1), np.float32),
                  importance_weight=np.ones(B, np.float32))
    if with_keys:
        arrays.update(record_keys=np.arange(B, dtype=np.int64) + 100,
                      positions=np.arange(B, dtype=np.int32), model_version=np.zeros(B, np.int64))
    return arrays


def config(tmp_path, settings: MuZeroSettings = TINY, spec: GameSpec = SPEC, **fields) -> TrainerConfig:
    fields = {"seed": 0, "log_interval": 2, **fields}
    return TrainerConfig(spec=spec, settings=settings, models_dir=str(tmp_path / "models"),
                         checkpoint_dir=str(tmp_path / "checkpoints"), **fields)


def make_trainer(tmp_path, **fields):
    """A Trainer of `config(tmp_path, **fields)` with fresh metrics, and the LogSink it logs to."""
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.trainer import Trainer

    sink = LogSink()
    return Trainer(config(tmp_path, **fields), log=sink.log, metrics=TrainerMetrics()), sink


class LogSink:
    """A logger writing into memory; `events(name)` parses what was logged."""

    def __init__(self, service: str = "trainer") -> None:
        self.stream = io.StringIO()
        self.log = get_logger(service, self.stream)

    def events(self, name: str | None = None) -> list[dict]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [e for e in lines if name is None or e["event"] == name]


class FakeNetwork(tf.Module):
    """Outputs fixed logits at every step (zeros unless given): losses are hand-computable.

    value_logits / reward_logits / policy_logits: [width] or [A] lists, the same for every sample.
    `recurrent_inference` adds `hidden` so gradients have somewhere to go.
    """

    def __init__(self, support_size: int, num_actions: int, value_logits=None, reward_logits=None,
                 policy_logits=None) -> None:
        super().__init__()
        width = 2 * support_size + 1
        self.support_size = support_size
        self.value_logits = tf.constant(value_logits if value_logits is not None else [0.0] * width)
        self.reward_logits = tf.constant(reward_logits if reward_logits is not None else [0.0] * width)
        self.policy_logits = tf.constant(policy_logits if policy_logits is not None else [0.0] * num_actions)
        self.hidden = tf.Variable(tf.zeros([3]))

    def _output(self, batch, hidden) -> NetworkOutput:
        tile = lambda logits: tf.tile(logits[None, :], [batch, 1])  # noqa: E731
        from models.support import support_to_scalar

        value_logits = tile(self.value_logits)
        return NetworkOutput(hidden_state=hidden, value_logits=value_logits,
                             reward_logits=tile(self.reward_logits),
                             policy_logits=tile(self.policy_logits),
                             value=support_to_scalar(value_logits, self.support_size),
                             reward=tf.zeros([batch]))

    def initial_inference(self, observation, training=False) -> NetworkOutput:
        batch = tf.shape(observation)[0]
        return self._output(batch, tf.tile(self.hidden[None, :], [batch, 1]))

    def recurrent_inference(self, hidden_state, action, training=False) -> NetworkOutput:
        return self._output(tf.shape(hidden_state)[0], hidden_state + 1.0)
