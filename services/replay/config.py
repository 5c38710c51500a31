"""The replay service's configuration."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import games
from games.base import GameSpec, MuZeroSettings, require

SYNCHRONOUS_MODES = ("FULL", "NORMAL")


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """What a replay server stores, how it samples, and where it listens.

    `ReplayConfig.for_game(name, data_dir, ...)` fills the sampling defaults from the game's
    `MuZeroSettings`; tests build one directly around any `GameSpec`.

    Attributes:
      spec: the game whose records are stored (observation shape and dtype, actions, players).
      data_dir: directory of the SQLite database (`replay.sqlite`); created if missing. A data
        dir holds one game's records: starting on it with another game's spec fails.
      capacity: stored positions kept (look-ahead context included); when an add would exceed
        it, the oldest records are evicted, from memory and disk, in the add's transaction.
      min_positions: no sampling until this many sampleable positions are stored.
      samples_per_insert: target ratio of sampled to inserted (sampleable) positions; 0 turns the
        ratio limit off. With it on, a sample of B positions waits until
        samples + B <= samples_per_insert * (inserts - min_positions) + error_buffer.
      error_buffer: how many sampled positions the trainer may run ahead of that ratio.
      priority_alpha: sampling probability is priority ** alpha / sum; 0 is uniform.
      priority_beta: importance-weight exponent in [0, 1].
      num_unroll_steps, td_steps, discount, value_prefix: the target defaults (a SampleBatch
        may override K, n and the discount).
      seed: seed of the sampling random stream; None draws one from the OS.
      synchronous: SQLite's `synchronous` in WAL mode. "FULL" (default) syncs the WAL on every
        commit: an acknowledged add survives a crash of the process and of the machine.
        "NORMAL" survives a crash of the process (kill -9) but not a power loss.
      priorities_flush_s: priorities changed by UpdatePriorities are written to disk this often
        (and at shutdown); a crash loses at most this many seconds of priority updates.
      host, port, metrics_port: where the gRPC server and the /metrics endpoint listen (port 0
        picks a free one).
      max_workers: threads serving gRPC calls; at most half of them (at least one) wait on the
        rate limiter at once, further SampleBatch calls that would wait get RESOURCE_EXHAUSTED.
    """

    spec: GameSpec
    data_dir: str
    capacity: int
    min_positions: int = 0
    samples_per_insert: float = 0.0
    error_buffer: float = 2560.0
    priority_alpha: float = 1.0
    priority_beta: float = 1.0
    num_unroll_steps: int = 5
    td_steps: int = 10
    discount: float = 0.997
    value_prefix: bool = False
    seed: int | None = None
    synchronous: str = "FULL"
    priorities_flush_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 50001
    metrics_port: int = 9101
    max_workers: int = 16

    def __post_init__(self) -> None:
        require(isinstance(self.spec, GameSpec), f"ReplayConfig.spec must be a GameSpec, got {self.spec!r}")
        require(bool(self.data_dir), f"ReplayConfig.data_dir must be non-empty, got {self.data_dir!r}")
        require(self.capacity >= 1, f"ReplayConfig.capacity must be >= 1, got {self.capacity}")
        require(self.min_positions >= 0, f"ReplayConfig.min_positions must be >= 0, got {self.min_positions}")
        require(self.samples_per_insert >= 0,
                f"ReplayConfig.samples_per_insert must be >= 0, got {self.samples_per_insert}")
        require(self.error_buffer >= 0, f"ReplayConfig.error_buffer must be >= 0, got {self.error_buffer}")
        require(self.priority_alpha >= 0, f"ReplayConfig.priority_alpha must be >= 0, got {self.priority_alpha}")
        require(0 <= self.priority_beta <= 1,
                f"ReplayConfig.priority_beta must be in [0, 1], got {self.priority_beta}")
        require(self.num_unroll_steps >= 1,
                f"ReplayConfig.num_unroll_steps must be >= 1, got {self.num_unroll_steps}")
        require(self.td_steps >= 1, f"ReplayConfig.td_steps must be >= 1, got {self.td_steps}")
        require(0 < self.discount <= 1, f"ReplayConfig.discount must be in (0, 1], got {self.discount}")
        require(self.synchronous in SYNCHRONOUS_MODES,
                f"ReplayConfig.synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"got {self.synchronous!r}")
        require(self.priorities_flush_s > 0,
                f"ReplayConfig.priorities_flush_s must be > 0, got {self.priorities_flush_s}")
        require(bool(self.host), f"ReplayConfig.host must be non-empty, got {self.host!r}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            require(0 <= value <= 65535, f"ReplayConfig.{name} must be in [0, 65535], got {value}")
        require(self.max_workers >= 1, f"ReplayConfig.max_workers must be >= 1, got {self.max_workers}")

    @classmethod
    def for_game(cls, game: str | GameSpec, data_dir: str, settings: MuZeroSettings | None = None,
                 **overrides: Any) -> "ReplayConfig":
        """A config for a registered game (by name) or a `GameSpec`, with defaults from its
        `MuZeroSettings` (a spec without settings gets `default_settings(spec)`); `overrides`
        are fields of this class."""
        if isinstance(game, str):
            loaded = games.make(game)
            spec, settings = loaded.spec, settings or loaded.settings
        else:
            spec, settings = game, settings or default_settings(game)
        fields = dict(
            spec=spec, data_dir=data_dir, capacity=settings.replay_capacity,
            min_positions=settings.min_replay_positions,
            samples_per_insert=settings.samples_per_insert,
            error_buffer=float(10 * settings.batch_size),
            priority_alpha=settings.priority_alpha, priority_beta=settings.priority_beta,
            num_unroll_steps=settings.num_unroll_steps, td_steps=settings.td_steps,
            discount=settings.discount, value_prefix=settings.value_prefix)
        fields.update(overrides)
        return cls(**fields)


def default_settings(spec: GameSpec) -> MuZeroSettings:
    """MuZeroSettings for a game outside the registry: the library defaults, its discount."""
    return MuZeroSettings(network="fc", hidden_size=64, discount=spec.discount)


def spec_from_json(text: str) -> GameSpec:
    """A `GameSpec` from JSON such as
    {"name": "connect4", "observation_shape": [6, 7, 2], "observation_dtype": "uint8",
     "num_actions": 7, "num_players": 2, "discount": 1.0, "max_moves": 42}."""
    try:
        fields = json.loads(text)
    except ValueError as error:
        raise ValueError(f"game spec: not JSON: {error}") from error
    require(isinstance(fields, dict), f"game spec: expected a JSON object, got {text!r}")
    try:
        fields["observation_shape"] = tuple(int(d) for d in fields["observation_shape"])
        return GameSpec(**fields)
    except (KeyError, TypeError) as error:
        raise ValueError(f"game spec: {error}; expected the fields of GameSpec") from error


def spec_to_json(spec: GameSpec) -> str:
    fields = dataclasses.asdict(spec)
    fields["observation_shape"] = list(spec.observation_shape)
    return json.dumps(fields, sort_keys=True)
