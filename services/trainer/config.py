"""The trainer's configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import games
from games.base import GameSpec, MuZeroSettings
from games.validation import require
from games.symmetry import Symmetries

# Settings a trainer flag may override (the rest come from the game's MuZeroSettings).
SETTINGS_OVERRIDES = ("batch_size", "learning_rate", "lr_decay_steps", "lr_decay_rate", "export_interval",
                      "ema_decay", "num_unroll_steps", "augment_symmetries", "optimizer", "weight_decay",
                      "consistency_weight", "projection_hidden_size", "projection_size",
                      "prediction_hidden_size", "value_prefix", "value_prefix_horizon",
                      "value_prefix_lstm_size", "chance_loss_weight", "commitment_weight", "diversity_weight")
# Network settings a trainer flag may override: what the exported model carries with it, so that
# every searcher reads it from the model itself: its size (the hidden state's width or channels,
# the residual blocks) and its kind (Stochastic MuZero's chance codes).
NETWORK_OVERRIDES = ("hidden_size", "res_blocks", "chance_codes")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """What the trainer trains, where it writes, and how it talks to the replay server.

    `TrainerConfig.for_game(name, models_dir, checkpoint_dir, ...)` takes the hyperparameters from
    the game's `MuZeroSettings` (with some overridden); tests build one around any spec/settings.

    Attributes:
      spec: the game (observation shape, number of actions).
      settings: the game's settings; the trainer reads the `network` and `training` sections
        (K = settings.training.num_unroll_steps; the consistency loss and its heads:
        settings.training.consistency_weight and the head sizes).
      models_dir: the model's base path: version v (= training step v) is written as
        `<models_dir>/<v>/`, a SavedModel (models/export.py).
      checkpoint_dir: where `tf.train.CheckpointManager` keeps checkpoints (network, optimizer,
        step).
      replay_address: "host:port" of the replay server (None when batches come from elsewhere,
        e.g. in tests).
      resume: restore the newest checkpoint in checkpoint_dir if there is one (and otherwise start
        fresh). Without it, a checkpoint_dir that already holds checkpoints is refused.
      steps: stop after this training step (0 = train until stopped).
      keep_versions: exported versions kept in models_dir (older ones are pruned).
      checkpoint_interval: steps between checkpoints (checkpoints are also written at every
        export, at the end and on SIGTERM).
      keep_checkpoints: checkpoints kept in checkpoint_dir.
      tensorboard_dir: where TensorBoard event files go (None: `<checkpoint_dir>/../tensorboard`).
      log_interval: steps between `train` log lines and TensorBoard summaries.
      seed: seed of the initial weights and of TensorFlow's random ops (None: random).
      value_loss_weight: factor of the value loss in the total loss (MuZero Reanalyse and
        EfficientZero use 0.25).
      max_grad_norm: gradients are clipped to this global norm (0 = no clipping).
      gradient_scale: factor of the gradient that flows from one dynamics step back into the
        previous hidden state (MuZero: 0.5).
      train_past_end: whether the value and reward losses also train unroll steps past the end
        of a record toward the replay's targets there (0: MuZero's absorbing states). False
        masks them with the replay's `mask` (reward at step k with mask[k-1], since the reward
        target at k belongs to the move from u-1 to u).
      prefetch_batches: decoded batches held ready by the prefetch thread.
      sample_timeout_s: deadline of one SampleBatch call (the replay's rate limiter holds a
        call up to it and then answers DEADLINE_EXCEEDED; the trainer then asks again).
      priority_queue: priority updates waiting to be sent before the oldest is dropped.
      priority_merge: steps whose new priorities go to the replay in one UpdatePriorities call
        (sent at the latest 0.5 s after the first of them; 1: a call per step). Each call costs
        the replay about 1 ms of CPU whatever its size, so merging leaves that CPU to the
        trainer and the replay's sampling when they share a machine; the priorities arrive a
        few steps later, as hints.
      sample_merge: batches drawn in one SampleBatch call (of sample_merge * batch_size
        positions, split into batches with their importance weights normalized per batch).
        Each call costs the replay about 0.5 ms of CPU besides its positions' work, so fewer
        calls leave more CPU to training when both share a machine. If the replay refuses the
        bigger call (INVALID_ARGUMENT, e.g. over its max_sample_bytes) the trainer logs
        `sample_merge_refused` and asks for one batch per call from then on.
      jit_compile: compile the train step with XLA.
      symmetries: the game's board symmetries when its settings ask for `augment_symmetries`
        (every batch is then trained under a random map per sample), else None.
      host, metrics_port: where /metrics listens (port 0 picks a free one).
    """

    spec: GameSpec
    settings: MuZeroSettings
    models_dir: str
    checkpoint_dir: str
    replay_address: str | None = None
    resume: bool = False
    steps: int = 0
    keep_versions: int = 5
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 3
    tensorboard_dir: str | None = None
    log_interval: int = 100
    seed: int | None = None
    value_loss_weight: float = 0.25
    max_grad_norm: float = 5.0
    gradient_scale: float = 0.5
    train_past_end: bool = True
    prefetch_batches: int = 4
    sample_timeout_s: float = 10.0
    priority_queue: int = 64
    priority_merge: int = 8
    sample_merge: int = 2
    jit_compile: bool = False
    symmetries: Symmetries | None = None
    host: str = "127.0.0.1"
    metrics_port: int = 9104

    def __post_init__(self) -> None:
        require(isinstance(self.spec, GameSpec), f"TrainerConfig.spec must be a GameSpec, got {self.spec!r}")
        require(isinstance(self.settings, MuZeroSettings),
                f"TrainerConfig.settings must be MuZeroSettings, got {self.settings!r}")
        require(bool(self.models_dir), f"TrainerConfig.models_dir must be non-empty, got {self.models_dir!r}")
        require(bool(self.checkpoint_dir),
                f"TrainerConfig.checkpoint_dir must be non-empty, got {self.checkpoint_dir!r}")
        require(self.replay_address is None or ":" in self.replay_address,
                f"TrainerConfig.replay_address must be host:port, got {self.replay_address!r}")
        require(self.steps >= 0, f"TrainerConfig.steps must be >= 0, got {self.steps}")
        for name in ("keep_versions", "checkpoint_interval", "keep_checkpoints", "log_interval",
                     "prefetch_batches", "priority_queue", "priority_merge", "sample_merge"):
            value = getattr(self, name)
            require(value >= 1, f"TrainerConfig.{name} must be >= 1, got {value}")
        require(self.value_loss_weight >= 0,
                f"TrainerConfig.value_loss_weight must be >= 0, got {self.value_loss_weight}")
        require(self.max_grad_norm >= 0, f"TrainerConfig.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        require(0 <= self.gradient_scale <= 1,
                f"TrainerConfig.gradient_scale must be in [0, 1], got {self.gradient_scale}")
        require(self.sample_timeout_s > 0,
                f"TrainerConfig.sample_timeout_s must be > 0, got {self.sample_timeout_s}")
        if self.symmetries is not None:
            cells, actions = self.symmetries.cells.shape[1], self.symmetries.actions.shape[1]
            board = int(np.prod(self.spec.observation_shape[:2])) if len(self.spec.observation_shape) == 3 else None
            require(board == cells and actions == self.spec.num_actions,
                    f"TrainerConfig.symmetries map {cells} cells and {actions} actions, but game "
                    f"{self.spec.name} has observation {list(self.spec.observation_shape)} and "
                    f"{self.spec.num_actions} actions")
        require(bool(self.host), f"TrainerConfig.host must be non-empty, got {self.host!r}")
        require(0 <= self.metrics_port <= 65535,
                f"TrainerConfig.metrics_port must be in [0, 65535], got {self.metrics_port}")

    @property
    def num_unroll_steps(self) -> int:
        return self.settings.training.num_unroll_steps

    @property
    def consistency_weight(self) -> float:
        """Factor of EfficientZero's consistency loss (settings.training; 0 = off)."""
        return float(self.settings.training.consistency_weight)

    @property
    def consistency(self) -> bool:
        """Whether the consistency loss is on: the network gets its projection heads and the
        trainer asks the replay for `unroll_observations`."""
        return self.consistency_weight > 0

    @property
    def stochastic(self) -> bool:
        """Whether this is Stochastic MuZero (network.chance_codes > 0): afterstates, a chance
        encoder and their losses."""
        return self.settings.stochastic

    @property
    def unroll_observations(self) -> bool:
        """Whether batches carry `unroll_observations` (the consistency loss's targets, the
        chance encoder's inputs): asked of the replay only when one of them needs them."""
        return self.consistency or self.stochastic

    @property
    def summary_dir(self) -> str:
        """Where TensorBoard event files go."""
        if self.tensorboard_dir:
            return self.tensorboard_dir
        return str(Path(self.checkpoint_dir).resolve().parent / "tensorboard")

    @classmethod
    def for_game(cls, game: str, models_dir: str, checkpoint_dir: str,
                 settings: MuZeroSettings | None = None, **overrides: Any) -> "TrainerConfig":
        """A config for a registered game with its MuZeroSettings; `overrides` are fields of this
        class or of `SETTINGS_OVERRIDES` and `NETWORK_OVERRIDES` (None values are ignored)."""
        loaded = games.make(game)
        settings = settings or loaded.settings
        overrides = {name: value for name, value in overrides.items() if value is not None}
        changes = {name: overrides.pop(name) for name in (*SETTINGS_OVERRIDES, *NETWORK_OVERRIDES)
                   if name in overrides}
        if changes:
            # A bad value is refused by its section ("TrainingSettings.batch_size must be ..."),
            # which the command line names as its flag.
            settings = settings.replace(**changes)
        symmetries = loaded.symmetries() if settings.training.augment_symmetries else None
        return cls(spec=loaded.spec, settings=settings, models_dir=models_dir,
                   checkpoint_dir=checkpoint_dir, symmetries=symmetries, **overrides)
