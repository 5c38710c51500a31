"""The replay service's wire types and codecs: what its client and its server both speak.

Messages are protos/replay.proto's; here they become NumPy arrays and frozen dataclasses and
back, as raw bytes (`services.common.tensors`), with no validation: records coming from a client
are checked by the server (`services.replay.records.decode_record`), records and batches coming
from the server are trusted. This module imports nothing of the server (no SQLite, no buffer,
no servicer), so the agent, the trainer and the monitor load only what they talk.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np

from protos import replay_pb2
from services.common.tensors import from_tensor, to_tensor

# The gRPC service's full name ("mufleet.Replay"), for the channel's retry config and health.
SERVICE_NAME = replay_pb2.DESCRIPTOR.services_by_name["Replay"].full_name

# SampleGames' orders as the client names them; index i is `SampleGamesRequest.Order` value i.
SAMPLE_GAMES_ORDERS = ("uniform", "newest_first", "oldest_targets_first", "prioritized")
assert [replay_pb2.SampleGamesRequest.Order.Value(o.upper()) for o in SAMPLE_GAMES_ORDERS] == \
    list(range(len(SAMPLE_GAMES_ORDERS)))

# The array fields of a `GameRecord`, in the message's order.
ARRAY_FIELDS = ("observations", "actions", "rewards", "to_play", "root_values", "policies",
                "legal_actions")


@dataclasses.dataclass(frozen=True)
class GameArrays:
    """One record as NumPy arrays (see protos/replay.proto's `GameRecord`). T = length, A = actions.

    Attributes:
      observations: [T, *observation_shape] in the game's observation dtype.
      actions: int32 [T]. rewards: float32 [T]. to_play: int32 [T].
      root_values: float32 [T]. policies: float32 [T, A]. legal_actions: bool [T, A].
      num_sampleable: explicit, in [1, T] once stored (0 in a message means T).
    """

    id: str
    episode_id: str
    first_move: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    to_play: np.ndarray
    root_values: np.ndarray
    policies: np.ndarray
    legal_actions: np.ndarray
    model_version: int
    num_sampleable: int
    terminated: bool

    @property
    def length(self) -> int:
        return len(self.actions)

    def player0_return(self) -> float:
        """Sum of the sampleable positions' rewards from the view of player 0."""
        n = self.num_sampleable
        signs = np.where(self.to_play[:n] == 0, 1.0, -1.0)
        return float(np.sum(signs * self.rewards[:n], dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What one AddGames stored; see protos/replay.proto's `AddGamesResponse`."""

    added: int
    duplicates: int
    keys: list[int]  # per record of the request; the existing key for a duplicate
    evicted: int
    positions_added: int  # sampleable positions of the records added


class TargetsUpdate(typing.NamedTuple):
    """What one UpdateTargets did; see protos/replay.proto's `UpdateTargetsResponse`. A tuple,
    so `updated, skipped = client.update_targets(...)` reads like `update_priorities`."""

    updated: int  # positions whose reanalysed targets were set
    skipped: int  # positions where a newer reanalysis is stored (left as they were)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Sampled positions and their targets; see protos/replay.proto's `SampleBatchResponse`."""

    observation: np.ndarray  # float32 [B, *obs]
    actions: np.ndarray  # int32 [B, K]
    target_value: np.ndarray  # float32 [B, K+1]
    target_reward: np.ndarray  # float32 [B, K+1]
    target_policy: np.ndarray  # float32 [B, K+1, A]
    mask: np.ndarray  # float32 [B, K+1]
    policy_mask: np.ndarray  # float32 [B, K+1]
    importance_weight: np.ndarray  # float32 [B]
    record_keys: np.ndarray  # int64 [B]
    positions: np.ndarray  # int32 [B]
    model_version: np.ndarray  # int64 [B]
    unroll_observations: np.ndarray | None  # float32 [B, K+1, *obs] when asked
    value_prefix: bool
    num_unroll_steps: int
    td_steps: int
    discount: float
    reanalysed: np.ndarray | None = None  # bool [B]: targets from a reanalysis
    value_td_steps: np.ndarray | None = None  # int32 [B, K+1]: n of each value target
    value_prefix_horizon: int = 0  # H of the prefixes in target_reward (0 without value prefix)


@dataclasses.dataclass(frozen=True)
class StoredGame:
    """A stored record, its key and the model version its root values and policies came from."""

    key: int
    game: GameArrays
    targets_model_version: int  # the record's minimum targets version (see the proto)
    targets_versions: np.ndarray | None = None  # int64 [T]: per position, -1 = not reanalysed


@dataclasses.dataclass(frozen=True)
class Stats:
    """See protos/replay.proto's `ReplayStats`."""

    game: str
    games: int
    positions: int
    stored_positions: int
    capacity: int
    games_per_model_version: dict[int, int]
    recent_games: int
    recent_mean_return: float
    recent_max_return: float
    recent_mean_length: float
    games_added_total: int
    inserts_total: int
    samples_total: int
    sample_batches_total: int
    duplicates_total: int
    evicted_games_total: int
    rate_limited_total: int
    min_positions: int
    samples_per_insert: float
    error_buffer: float
    max_priority: float
    priority_alpha: float
    priority_beta: float
    reanalysed_positions: int = 0
    reanalysed_mean_age: float = 0.0
    newest_model_version: int = 0
    block_inserts: bool = False
    inserts_waiting: int = 0
    insert_rate_limited_total: int = 0


# --- records -----------------------------------------------------------------------------------

def make_game_record(id: str, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                     root_values: np.ndarray, policies: np.ndarray,
                     to_play: np.ndarray | None = None, legal_actions: np.ndarray | None = None,
                     model_version: int = 0, episode_id: str = "", first_move: int = 0,
                     num_sampleable: int = 0, terminated: bool = True) -> replay_pb2.GameRecord:
    """A `GameRecord` from NumPy arrays (T positions); see protos/replay.proto.

    Arrays are sent in the documented dtypes (int32 actions/to_play, float32 rewards, values and
    policies, bool legal_actions); observations are sent as given (e.g. float32 from the game).
    `to_play` defaults to zeros (one-player), `legal_actions` to all actions legal.
    """
    actions = np.asarray(actions)
    T = len(actions)
    policies = np.asarray(policies, np.float32)
    to_play = np.zeros(T, np.int32) if to_play is None else np.asarray(to_play)
    if legal_actions is None:
        legal_actions = np.ones((T, policies.shape[-1] if policies.ndim == 2 else 1), bool)
    return replay_pb2.GameRecord(
        id=id, episode_id=episode_id, first_move=first_move,
        observations=to_tensor(np.asarray(observations)),
        actions=to_tensor(_int32(actions)), rewards=to_tensor(np.asarray(rewards, np.float32)),
        to_play=to_tensor(_int32(to_play)),
        root_values=to_tensor(np.asarray(root_values, np.float32)), policies=to_tensor(policies),
        legal_actions=to_tensor(np.asarray(legal_actions)), model_version=model_version,
        num_sampleable=num_sampleable, terminated=terminated)


def _int32(array: np.ndarray) -> np.ndarray:
    # Other dtypes go as they are, so that the server names the field's wrong dtype.
    return array.astype(np.int32, copy=False) if array.dtype.kind in "iu" else array


def record_to_proto(game: GameArrays) -> replay_pb2.GameRecord:
    """The message of a stored record (num_sampleable explicit)."""
    return make_game_record(
        game.id, game.observations, game.actions, game.rewards, game.root_values, game.policies,
        to_play=game.to_play, legal_actions=game.legal_actions, model_version=game.model_version,
        episode_id=game.episode_id, first_move=game.first_move,
        num_sampleable=game.num_sampleable, terminated=game.terminated)


def record_from_proto(record: replay_pb2.GameRecord) -> GameArrays:
    """The arrays of a message as they are on the wire (no validation: for records that come
    from the server, e.g. SampleGames). Observations keep their wire dtype."""
    arrays = {name: from_tensor(getattr(record, name), name) for name in ARRAY_FIELDS}
    return GameArrays(id=record.id, episode_id=record.episode_id, first_move=record.first_move,
                      model_version=record.model_version,
                      num_sampleable=record.num_sampleable or len(arrays["actions"]),
                      terminated=record.terminated, **arrays)


# --- batches and stats -------------------------------------------------------------------------

def batch_to_proto(batch: Batch) -> replay_pb2.SampleBatchResponse:
    """The SampleBatch response of `batch` (arrays as raw bytes, in their dtypes)."""
    response = replay_pb2.SampleBatchResponse(
        observation=to_tensor(batch.observation), actions=to_tensor(batch.actions),
        target_value=to_tensor(batch.target_value), target_reward=to_tensor(batch.target_reward),
        target_policy=to_tensor(batch.target_policy), mask=to_tensor(batch.mask),
        policy_mask=to_tensor(batch.policy_mask),
        importance_weight=to_tensor(batch.importance_weight),
        record_keys=to_tensor(batch.record_keys), positions=to_tensor(batch.positions),
        model_version=to_tensor(batch.model_version), value_prefix=batch.value_prefix,
        num_unroll_steps=batch.num_unroll_steps, td_steps=batch.td_steps, discount=batch.discount,
        value_prefix_horizon=batch.value_prefix_horizon)
    if batch.unroll_observations is not None:
        response.unroll_observations.CopyFrom(to_tensor(batch.unroll_observations))
    if batch.reanalysed is not None:
        response.reanalysed.CopyFrom(to_tensor(batch.reanalysed))
    if batch.value_td_steps is not None:
        response.value_td_steps.CopyFrom(to_tensor(batch.value_td_steps))
    return response


def batch_from_proto(response: replay_pb2.SampleBatchResponse) -> Batch:
    """The NumPy arrays of a SampleBatch response (read-only views of the message's bytes)."""
    arrays = {name: from_tensor(getattr(response, name), name) for name in (
        "observation", "actions", "target_value", "target_reward", "target_policy", "mask",
        "policy_mask", "importance_weight", "record_keys", "positions", "model_version")}
    optional = {name: from_tensor(getattr(response, name), name) if response.HasField(name) else None
                for name in ("unroll_observations", "reanalysed", "value_td_steps")}
    return Batch(**arrays, **optional, value_prefix=response.value_prefix,
                 num_unroll_steps=response.num_unroll_steps, td_steps=response.td_steps,
                 discount=response.discount, value_prefix_horizon=response.value_prefix_horizon)


def stored_game_to_proto(stored: StoredGame) -> replay_pb2.StoredGame:
    message = replay_pb2.StoredGame(key=stored.key, record=record_to_proto(stored.game),
                                    targets_model_version=stored.targets_model_version)
    if stored.targets_versions is not None:
        message.targets_versions.CopyFrom(to_tensor(np.asarray(stored.targets_versions, np.int64)))
    return message


def stored_game_from_proto(message: replay_pb2.StoredGame) -> StoredGame:
    versions = (from_tensor(message.targets_versions, "targets_versions")
                if message.HasField("targets_versions") else None)
    return StoredGame(message.key, record_from_proto(message.record), message.targets_model_version,
                      versions)


def stats_to_proto(stats: Stats) -> replay_pb2.ReplayStats:
    """The GetStats response of `stats` (same field names)."""
    return replay_pb2.ReplayStats(**{
        field: getattr(stats, field) for field in stats.__dataclass_fields__})
