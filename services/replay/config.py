"""The replay service's configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

import games
from games.base import GameSpec, MuZeroSettings, support_limit
from games.settings import ReplaySettings
from games.validation import require
from services.common.channels import MAX_MESSAGE_BYTES
from services.replay.records import position_bytes

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
MIB = 1 << 20
# Room in a message beyond its arrays: tensor headers, ids, scalar fields (per call, not per record).
MESSAGE_SLACK_BYTES = MIB
# The smallest message limit a server gets (gRPC's own default), whatever its capacity.
MIN_MESSAGE_BYTES = 4 * MIB
# The most a float64 sum of `capacity` weights priority ** alpha may reach (float64 overflows
# near 1.8e308; the margin keeps the cumulative sums and their ratios finite).
MAX_WEIGHT_SUM = 1e300
# The least priority limit (ReplayConfig.priority_limit): far above the value errors of games
# with values in [-1, 1] or a few hundred, far below where float32 or the weights' sums overflow.
DEFAULT_PRIORITY_LIMIT = 1e6
# How far above the largest possible value error a game's priority limit sits.
PRIORITY_MARGIN = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplayConfig(ReplaySettings):
    """What a replay server stores, how it samples, and where it listens.

    `ReplayConfig.for_game(name, data_dir, ...)` fills the sampling defaults from the game's
    `MuZeroSettings`; tests build one directly around any `GameSpec`. It extends the game's
    `ReplaySettings` (capacity, min_positions, samples_per_insert, block_inserts, priority_alpha,
    priority_beta, reanalysed_target_fraction, td_age_versions_per_step: declared, documented
    and validated there) with the server's own fields.

    Attributes:
      spec: the game whose records are stored (observation shape and dtype, actions, players).
      data_dir: directory of the SQLite database (`replay.sqlite`); created if missing. A data
        dir holds one game's records: starting on it with another game's spec fails.
      error_buffer: how many sampled positions the trainer may run ahead of that ratio (and,
        with block_inserts, how far the inserts may run ahead before an AddGames waits); with
        block_inserts a SampleBatch of more than 2 x error_buffer positions is refused
        (INVALID_ARGUMENT: it could leave both sides waiting for good).
      num_unroll_steps: K, the unroll steps of a SampleBatch that asks for none.
      td_steps: n of the n-step value targets of a SampleBatch that asks for none.
      discount: the discount of the value targets of a SampleBatch that gives none.
      value_prefix: reward targets as EfficientZero's value prefix (the sum of the rewards
        since the unroll's start, restarted every value_prefix_horizon steps) instead of single
        rewards.
      value_prefix_horizon: H >= 1, the steps after which the value prefix restarts (only
        with value_prefix; the trainer's LSTM resets at the same steps).
      seed: seed of the sampling random stream; None draws one from the OS.
      synchronous: SQLite's `synchronous` in WAL mode. "FULL" (default) syncs the WAL on every
        commit: an acknowledged add survives a crash of the process and of the machine.
        "NORMAL" survives a crash of the process (kill -9) but not a power loss.
      priorities_flush_s: priorities changed by UpdatePriorities (in memory at once) are
        written to `priorities.sqlite` this often and at shutdown, outside the add path: kill -9
        loses at most the updates since the last flush (a power loss may lose more: that file
        is not synced at every flush); records are never lost with them.
      host, port, metrics_port: where the gRPC server and the /metrics endpoint listen (port 0
        picks a free one).
      max_workers: threads serving gRPC calls, W. At most max(1, W // 2) SampleBatch calls wait
        on the rate limiter at once and, with block_inserts, at most W - 1 - that many AddGames
        calls (`waiting_samplers` and `waiting_inserters`), so one thread at least never
        waits; a further call that would wait gets RESOURCE_EXHAUSTED at once. block_inserts
        (with samples_per_insert > 0) needs W >= 3. The server's memory for requests in
        progress is at most about max_workers * (receive_limit + max_sample_bytes).
      priority_limit: the largest priority UpdatePriorities accepts (larger ones are
        INVALID_ARGUMENT); it also bounds the running maximum at which new positions enter, on
        load too, so no priority, weight or importance weight can overflow. Priorities are
        value errors |value target - predicted value|; `for_game` sets the limit to
        `priority_limit_for(game)`: 10 x the largest error the game's network can make (its
        support's decoded range plus its returns' range), at least DEFAULT_PRIORITY_LIMIT (1e6,
        also the default for a bare GameSpec). With `priority_alpha`, priority_limit ** priority_alpha * capacity must stay below
        1e300 (the sums of sampling weights are float64).
      max_sample_bytes: the most bytes of arrays one SampleBatch may build (gathered windows,
        the [B, K+1, n] value-target temporaries, the targets and the response's copies, as
        `records.sample_bytes` estimates them from B, K, n and the game's shapes before anything
        is allocated); a larger request gets INVALID_ARGUMENT naming this limit (retrying
        cannot help). It also bounds a SampleGames response (records are returned while they
        fit; at least one).
      id_window: how many of the newest records ever stored keep their id for AddGames'
        idempotence: a retried add is recognised as a duplicate while fewer than `id_window`
        records were stored after it, evicted or not. Ids of older evicted records are
        deleted (their tombstones), so the database stays bounded; see docs/replay.md.
      max_receive_bytes: the largest request message; 0 derives it (`receive_limit`).
      max_send_bytes: the largest response message; 0 derives it (`send_limit`).
    """

    spec: GameSpec
    data_dir: str
    # A server's own defaults differ from a game's: no capacity without a decision, and a
    # bare config (tests, benchmarks) samples from its first position.
    capacity: int = dataclasses.field()
    min_positions: int = 0
    error_buffer: float = 2560.0
    num_unroll_steps: int = 5
    td_steps: int = 10
    discount: float = 0.997
    value_prefix: bool = False
    value_prefix_horizon: int = 5
    seed: int | None = None
    synchronous: str = "FULL"
    priorities_flush_s: float = 30.0
    host: str = "127.0.0.1"
    port: int = 50001
    metrics_port: int = 9101
    max_workers: int = 8
    priority_limit: float = 1e6  # DEFAULT_PRIORITY_LIMIT
    max_sample_bytes: int = 64 * MIB
    id_window: int = 1_000_000
    max_receive_bytes: int = 0
    max_send_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()  # the section's fields: capacity, min_positions, priorities
        require(isinstance(self.spec, GameSpec), f"ReplayConfig.spec must be a GameSpec, got {self.spec!r}")
        require(bool(self.data_dir), f"ReplayConfig.data_dir must be non-empty, got {self.data_dir!r}")
        require(self.error_buffer >= 0, f"ReplayConfig.error_buffer must be >= 0, got {self.error_buffer}")
        require(self.num_unroll_steps >= 1,
                f"ReplayConfig.num_unroll_steps must be >= 1, got {self.num_unroll_steps}")
        require(self.td_steps >= 1, f"ReplayConfig.td_steps must be >= 1, got {self.td_steps}")
        require(self.value_prefix_horizon >= 1,
                f"ReplayConfig.value_prefix_horizon must be >= 1, got {self.value_prefix_horizon}")
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
        require(not self.inserts_may_block or self.max_workers >= 3,
                f"ReplayConfig.max_workers must be >= 3 with block_inserts (a waiting sampler, a "
                f"waiting inserter and a thread that never waits), got {self.max_workers}")
        require(1.0 <= self.priority_limit < math.inf,
                f"ReplayConfig.priority_limit must be finite and >= 1 (new positions enter at 1 "
                f"at first), got {self.priority_limit}")
        weight_sum = self.priority_alpha * math.log10(self.priority_limit) + math.log10(self.capacity)
        require(weight_sum <= math.log10(MAX_WEIGHT_SUM),
                f"ReplayConfig.priority_alpha = {self.priority_alpha:g} with priority_limit = "
                f"{self.priority_limit:g} and capacity = {self.capacity}: priority_limit ** "
                f"priority_alpha * capacity is about 1e{weight_sum:.0f}, over 1e300 (float64 sums "
                f"of the sampling weights would overflow); lower one of them")
        require(self.max_sample_bytes >= MIB,
                f"ReplayConfig.max_sample_bytes must be >= {MIB} (1 MiB), got {self.max_sample_bytes}")
        require(self.id_window >= 1, f"ReplayConfig.id_window must be >= 1, got {self.id_window}")
        for name in ("max_receive_bytes", "max_send_bytes"):
            value = getattr(self, name)
            require(value == 0 or MIN_MESSAGE_BYTES <= value <= MAX_MESSAGE_BYTES,
                    f"ReplayConfig.{name} must be 0 (derived) or in [{MIN_MESSAGE_BYTES}, "
                    f"{MAX_MESSAGE_BYTES}], got {value}")

    @property
    def inserts_may_block(self) -> bool:
        """Whether AddGames may wait for the rate limiter: block_inserts with
        samples_per_insert > 0."""
        return bool(self.block_inserts) and self.samples_per_insert > 0

    @property
    def waiting_samplers(self) -> int:
        """The most SampleBatch calls that wait on the rate limiter at once: max(1, W // 2)."""
        return max(1, self.max_workers // 2)

    @property
    def waiting_inserters(self) -> int:
        """The most AddGames calls that wait on the rate limiter at once (block_inserts):
        W - 1 - waiting_samplers (at least 1; W >= 3 is required for it), so that samplers and
        inserters together never take every thread."""
        return max(1, self.max_workers - 1 - self.waiting_samplers)

    @property
    def receive_limit(self) -> int:
        """Bytes of the largest request the server takes (`max_receive_bytes`, or derived): an
        AddGames holding `capacity` positions in the documented wire dtypes (observations as
        float32 or the game's dtype if wider, int32 actions and to-play, float32 rewards, values
        and policies, bool legal masks) plus MESSAGE_SLACK_BYTES for headers and ids, at least
        MIN_MESSAGE_BYTES and at most the clients' MAX_MESSAGE_BYTES. A larger add would evict
        its own records; UpdateTargets and UpdatePriorities of `capacity` positions fit too."""
        if self.max_receive_bytes:
            return self.max_receive_bytes
        wire = position_bytes(self.spec, max(4, np.dtype(self.spec.observation_dtype).itemsize))
        return _clamp_message(self.capacity * wire + MESSAGE_SLACK_BYTES)

    @property
    def send_limit(self) -> int:
        """Bytes of the largest response the server sends (`max_send_bytes`, or derived): a
        SampleBatch within `max_sample_bytes`, or a SampleGames of one record of `capacity`
        positions in the stored dtypes, whichever is larger, plus MESSAGE_SLACK_BYTES; at least
        MIN_MESSAGE_BYTES and at most MAX_MESSAGE_BYTES."""
        if self.max_send_bytes:
            return self.max_send_bytes
        record = self.capacity * position_bytes(self.spec)
        return _clamp_message(max(self.max_sample_bytes, record) + MESSAGE_SLACK_BYTES)

    @classmethod
    def for_game(cls, game: str | GameSpec, data_dir: str, settings: MuZeroSettings | None = None,
                 **overrides: Any) -> "ReplayConfig":
        """A config for a registered game (by name) or a `GameSpec`, with defaults from its
        `MuZeroSettings` (a spec without settings gets `default_settings(spec)`); `overrides`
        are fields of this class."""
        limit = DEFAULT_PRIORITY_LIMIT
        if isinstance(game, str):
            loaded = games.make(game)
            spec, settings = loaded.spec, settings or loaded.settings
            limit = priority_limit_for(type(loaded).value_range, settings.network.support_size)
        else:
            spec, settings = game, settings or default_settings(game)
        fields = dict(
            spec=spec, data_dir=data_dir, capacity=settings.replay.capacity,
            min_positions=settings.replay.min_positions,
            samples_per_insert=settings.replay.samples_per_insert,
            block_inserts=settings.replay.block_inserts,
            error_buffer=float(10 * settings.training.batch_size),
            priority_alpha=settings.replay.priority_alpha, priority_beta=settings.replay.priority_beta,
            reanalysed_target_fraction=settings.replay.reanalysed_target_fraction,
            td_age_versions_per_step=settings.replay.td_age_versions_per_step,
            num_unroll_steps=settings.training.num_unroll_steps, td_steps=settings.training.td_steps,
            discount=settings.discount, value_prefix=settings.training.value_prefix,
            value_prefix_horizon=settings.training.value_prefix_horizon, priority_limit=limit)
        fields.update(overrides)
        return cls(**fields)


def priority_limit_for(value_range: tuple[float, float], support_size: int) -> float:
    """The priority limit of a game whose returns lie in `value_range` and whose network decodes
    values from a support of `support_size`: a priority |z - v| is at most max |z| plus the
    support's h^-1(S); PRIORITY_MARGIN times that, and at least DEFAULT_PRIORITY_LIMIT."""
    error = max(abs(value_range[0]), abs(value_range[1])) + support_limit(support_size)
    return max(DEFAULT_PRIORITY_LIMIT, PRIORITY_MARGIN * error)


def _clamp_message(nbytes: int) -> int:
    return max(MIN_MESSAGE_BYTES, min(MAX_MESSAGE_BYTES, nbytes))


def default_settings(spec: GameSpec) -> MuZeroSettings:
    """MuZeroSettings for a game outside the registry: the library defaults, its discount."""
    return MuZeroSettings.of(architecture="fc", hidden_size=64, discount=spec.discount)


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
