"""The environment service's wire types and codecs: what its client and its server both speak.

`TimeStep` (NumPy arrays of a session's B games) and `GameSpec` <-> protos/environment.proto's
messages, both ways, as raw bytes (`services.common.tensors`). This module imports nothing of
the server (no sessions, no servicer), so the agent loads only what it talks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from games.base import GameSpec
from protos import environment_pb2
from services.common.tensors import from_tensor, to_tensor

# The gRPC service's full name ("mufleet.Environment"), for the channel's retry config and health.
SERVICE_NAME = environment_pb2.DESCRIPTOR.services_by_name["Environment"].full_name


@dataclasses.dataclass(frozen=True)
class TimeStep:
    """The state of every game of a session; see protos/environment.proto's `TimeStep`.

    Arrays are never written after they are made, so a TimeStep may be read without a lock.
    """

    observation: np.ndarray  # float32 [B, *observation_shape]
    reward: np.ndarray  # float32 [B]
    terminated: np.ndarray  # bool [B]
    truncated: np.ndarray  # bool [B]
    legal_actions: np.ndarray  # bool [B, A]
    to_play: np.ndarray  # int32 [B]
    num_steps: int = 0  # Step calls applied since Open

    @property
    def batch_size(self) -> int:
        return len(self.reward)


def spec_to_proto(spec: GameSpec) -> environment_pb2.GameSpec:
    return environment_pb2.GameSpec(
        game=spec.name, observation_shape=spec.observation_shape,
        observation_dtype=spec.observation_dtype, num_actions=spec.num_actions,
        num_players=spec.num_players, discount=spec.discount, max_moves=spec.max_moves)


def spec_from_proto(proto: environment_pb2.GameSpec) -> GameSpec:
    """The game's `GameSpec`; equal to `games.make(name).spec` (the float32 discount on the
    wire is read back as the shortest decimal that round-trips, e.g. 0.997)."""
    return GameSpec(
        name=proto.game, observation_shape=tuple(proto.observation_shape),
        observation_dtype=proto.observation_dtype, num_actions=proto.num_actions,
        num_players=proto.num_players, discount=float(str(np.float32(proto.discount))),
        max_moves=proto.max_moves)


def time_step_to_proto(time_step: TimeStep) -> environment_pb2.TimeStep:
    return environment_pb2.TimeStep(
        observation=to_tensor(time_step.observation), reward=to_tensor(time_step.reward),
        terminated=to_tensor(time_step.terminated), truncated=to_tensor(time_step.truncated),
        legal_actions=to_tensor(time_step.legal_actions), to_play=to_tensor(time_step.to_play),
        num_steps=time_step.num_steps)


def time_step_from_proto(proto: environment_pb2.TimeStep) -> TimeStep:
    """Read-only NumPy arrays over the message's bytes (no copies)."""
    return TimeStep(
        observation=from_tensor(proto.observation, "observation"),
        reward=from_tensor(proto.reward, "reward"),
        terminated=from_tensor(proto.terminated, "terminated"),
        truncated=from_tensor(proto.truncated, "truncated"),
        legal_actions=from_tensor(proto.legal_actions, "legal_actions"),
        to_play=from_tensor(proto.to_play, "to_play"),
        num_steps=proto.num_steps)
