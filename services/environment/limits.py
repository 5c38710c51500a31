"""The environment server's message limits, sized from what its largest legitimate calls take.

gRPC refuses a request larger than the server's `max_receive_bytes` with RESOURCE_EXHAUSTED
before any handler runs, and a response larger than `max_send_bytes` fails the call. Both are
derived here from `EnvironmentConfig.max_games_per_session` (B) and the specs of the games the
server hosts, so that every legitimate call fits and nothing much larger is read:

  * requests: the largest is a Step of B actions sent as int64 (any integer dtype is accepted):
    8 B bytes of content plus the message's fields (a Reset naming all B games takes at most
    5 B bytes of packed varints, an Open or a Close a few dozen);
  * responses: the largest is an Open of B games of the game whose time step is the largest:
    per game, float32 observations (4 bytes per observation value), legal actions (1 byte per
    action), reward and to_play (4 bytes each), terminated and truncated (1 byte each).

With the defaults (B = 65536; 2048's 4x4x16 observations are the largest) that is about
0.5 MB per request and 68 MB per response (docs/environment.md, "Message limits").
"""

from __future__ import annotations

import dataclasses

import games
from games.base import GameSpec
from protos import environment_pb2, tensor_pb2
from services.environment.config import EnvironmentConfig
from services.environment.wire import spec_to_proto

# gRPC's message length options are C ints: no message can be larger.
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
# Room for fields a legitimate request may carry beyond the ones counted (a session id longer
# than the 36 characters of the uuid4 this server issues): a few calls' worth, nothing more.
REQUEST_SLACK_BYTES = 1024
# A varint takes at most 10 bytes; every length prefix that grows with the content is counted
# at this size, so the sizes below are upper bounds (within a few dozen bytes of the exact size).
_MAX_VARINT_BYTES = 10
_SESSION_ID = "0" * 36  # the length of a uuid4 in text
_LARGEST_INT64 = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class MessageLimits:
    """Bytes of the largest message an environment server reads and writes.

    Attributes:
      max_receive_bytes: the largest legitimate request, plus REQUEST_SLACK_BYTES.
      max_send_bytes: the largest response (an OpenResponse of B games of `largest_game`).
      largest_game: the hosted game with the largest time step per game.
    """

    max_receive_bytes: int
    max_send_bytes: int
    largest_game: str


def _tensor_bound(shape: tuple[int, ...], dtype: int, content_bytes: int) -> tuple[tensor_pb2.Tensor, int]:
    """A Tensor with `shape` and `dtype` but no content, and what the content adds at most:
    its bytes, a tag and a length prefix, and the growth of the enclosing length prefix."""
    return (tensor_pb2.Tensor(dtype=dtype, shape=shape),
            content_bytes + 1 + 2 * _MAX_VARINT_BYTES)


def request_bytes(num_games: int) -> int:
    """An upper bound of the largest legitimate request for sessions of `num_games` games."""
    actions, extra = _tensor_bound((num_games,), tensor_pb2.INT64, 8 * num_games)
    step = environment_pb2.StepRequest(session_id=_SESSION_ID, actions=actions, auto_reset=True)
    step_bytes = step.ByteSize() + extra
    # Reset naming every game: packed varints of indices < num_games, a tag and a length prefix.
    index_bytes = _varint_bytes(max(num_games - 1, 0))
    reset_bytes = (environment_pb2.ResetRequest(session_id=_SESSION_ID).ByteSize()
                   + num_games * index_bytes + 1 + _MAX_VARINT_BYTES)
    open_bytes = environment_pb2.OpenRequest(game="x" * max(map(len, games.names())),
                                             num_games=-1, seed=-1).ByteSize()
    return max(step_bytes, reset_bytes, open_bytes)


def response_bytes(spec: GameSpec, num_games: int) -> int:
    """An upper bound of the largest response for a session of `num_games` games of `spec`:
    an OpenResponse (session id, spec and the first time step)."""
    B, A = num_games, spec.num_actions
    observation_values = B
    for d in spec.observation_shape:
        observation_values *= d
    tensors = {  # field: (shape, dtype, content bytes)
        "observation": ((B, *spec.observation_shape), tensor_pb2.FLOAT32, 4 * observation_values),
        "reward": ((B,), tensor_pb2.FLOAT32, 4 * B),
        "terminated": ((B,), tensor_pb2.BOOL, B),
        "truncated": ((B,), tensor_pb2.BOOL, B),
        "legal_actions": ((B, A), tensor_pb2.BOOL, B * A),
        "to_play": ((B,), tensor_pb2.INT32, 4 * B),
    }
    time_step = environment_pb2.TimeStep(num_steps=_LARGEST_INT64)
    extra = _MAX_VARINT_BYTES  # the time step's own length prefix grows with its tensors
    for field, (shape, dtype, content) in tensors.items():
        tensor, tensor_extra = _tensor_bound(shape, dtype, content)
        getattr(time_step, field).CopyFrom(tensor)
        extra += tensor_extra
    response = environment_pb2.OpenResponse(session_id=_SESSION_ID, spec=spec_to_proto(spec),
                                            time_step=time_step)
    return response.ByteSize() + extra


def message_limits(config: EnvironmentConfig, specs: list[GameSpec] | None = None) -> MessageLimits:
    """The limits of a server with `config` hosting `specs` (default: every registered game
    that loads). ValueError naming max_games_per_session when a legitimate message would be
    over gRPC's 2 GiB limit."""
    if specs is None:
        specs = loadable_specs()
    B = config.max_games_per_session
    sizes = {spec.name: response_bytes(spec, B) for spec in specs}
    largest = max(sizes, key=sizes.__getitem__)
    limits = MessageLimits(max_receive_bytes=request_bytes(B) + REQUEST_SLACK_BYTES,
                           max_send_bytes=sizes[largest], largest_game=largest)
    if limits.max_send_bytes > GRPC_MAX_MESSAGE_BYTES:
        raise ValueError(
            f"EnvironmentConfig.max_games_per_session={B} makes a time step of {largest} "
            f"{limits.max_send_bytes} bytes, over gRPC's limit of {GRPC_MAX_MESSAGE_BYTES} bytes "
            f"per message; at most {largest_fitting(specs)} games per session fit")
    return limits


def largest_fitting(specs: list[GameSpec]) -> int:
    """The largest num_games whose responses fit in one gRPC message, for every spec."""
    low, high = 1, GRPC_MAX_MESSAGE_BYTES
    while low < high:  # the sizes grow with num_games: bisect
        middle = (low + high + 1) // 2
        if max(response_bytes(spec, middle) for spec in specs) <= GRPC_MAX_MESSAGE_BYTES:
            low = middle
        else:
            high = middle - 1
    return low


def loadable_specs() -> list[GameSpec]:
    """The specs of the registered games whose modules load (a game that does not load is
    refused by Open with UNIMPLEMENTED, so no message of it is ever sent)."""
    specs = []
    for name in games.names():
        try:
            specs.append(games.make(name).spec)
        except Exception:  # noqa: BLE001 - reported by Open when asked for
            continue
    return specs


def _varint_bytes(value: int) -> int:
    """Bytes of `value` (>= 0) as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)
