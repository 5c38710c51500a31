"""The server's side of game records: validation, size bounds, and the replay's errors.

`decode_record` checks everything a stored record must satisfy and names the offending field
("games[3].policies: ..."), so a request is validated whole before anything is written. The
record types and codecs that clients use too (`GameArrays`, `make_game_record`,
`record_from_proto`, `record_to_proto`) are in `services.replay.wire`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from games.base import GameSpec
from protos import replay_pb2
from services.common.errors import ServiceError
from services.common.tensors import TensorError, from_tensor
from services.replay.wire import ARRAY_FIELDS, GameArrays


# Longest record id and episode id, in UTF-8 bytes: ids are names (run, agent, game, chunk),
# and a bound keeps every stored row and every SampleGames response sized by its arrays.
MAX_ID_BYTES = 1024
# Bytes of a record's message beyond its arrays and ids: seven tensor headers, scalar fields.
RECORD_HEADER_BYTES = 256
# What one SampleBatch allocates whatever its size (small arrays, Python objects, the message).
SAMPLE_CALL_BYTES = 64 * 1024


class ReplayError(ServiceError):
    """A request the replay service cannot serve (see ServiceError)."""


def invalid(message: str) -> ReplayError:
    return ReplayError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ReplayError:
    return ReplayError("NOT_FOUND", message)


def position_bytes(spec: GameSpec, observation_itemsize: int | None = None) -> int:
    """Bytes of one position's arrays in a record message: the observation (in the game's
    dtype, or `observation_itemsize` bytes per element as sent), int32 action and to-play,
    float32 reward and root value, float32 policy [A] and bool legal mask [A]."""
    itemsize = observation_itemsize or np.dtype(spec.observation_dtype).itemsize
    return math.prod(spec.observation_shape) * itemsize + 16 + 5 * spec.num_actions


def sample_bytes(spec: GameSpec, batch_size: int, num_unroll_steps: int, td_steps: int,
                 include_unroll_observations: bool) -> int:
    """An upper estimate of the bytes of the arrays one SampleBatch of B positions builds, from
    B, K, n and the game's shapes alone (so a request can be refused before any allocation).

    Per sample, with W = K + n + 1 window positions, O observation elements of s bytes and A
    actions: the gathered windows (int64 slots, float32 rewards and values, int8 to-play),
    policies [K+1, A] and observations; the value targets' [K+1, n] temporaries (float64
    coefficients, their sign flips and products, bool masks); the casts and masks of the
    targets; the reanalysed targets' gathers and masks and the off-policy horizons (counted
    whether or not a batch needs them); the response's arrays three times (tensor bytes, the
    message, its serialization);
    the unroll observations [K+1, O] gathered, masked, cast and sent, when asked. Everything
    is counted as if alive at once, plus SAMPLE_CALL_BYTES per call;
    `tests/replay/test_replay_limits.py` checks it against tracemalloc's peak.
    """
    B, K, n = batch_size, num_unroll_steps, td_steps
    O, A = math.prod(spec.observation_shape), spec.num_actions
    s = np.dtype(spec.observation_dtype).itemsize
    W = K + n + 1
    # reanalysed targets: int64 versions, bool mask, float32 values gathered and chosen [W];
    # policies gathered and chosen [K+1, A]; the off-policy horizons and ages [K+1]
    reanalysed = 17 * W + 8 * (K + 1) * A + 40 * (K + 1) + 2
    gather = 17 * W + 4 * (K + 1) * A + s * O + 8 * K + 96 + reanalysed
    value = 26 * (K + 1) * n + 96 * (K + 1)
    targets = 4 * (K + 1) * A + 9 * K + 4 * O + 40 * (K + 1) + 64
    response = 3 * (4 * O + 4 * K + 20 * (K + 1) + 4 * (K + 1) * A + 25)
    unroll = (2 * s + 4 + 3 * 4) * (K + 1) * O if include_unroll_observations else 0
    return SAMPLE_CALL_BYTES + B * (gather + value + targets + response + unroll)


def _tensor(record: replay_pb2.GameRecord, name: str, where: str) -> np.ndarray:
    if not record.HasField(name):
        raise invalid(f"{where}.{name}: missing")
    return decode_tensor(getattr(record, name), f"{where}.{name}")


def decode_tensor(tensor, field: str) -> np.ndarray:
    """`from_tensor`, with every malformed tensor (an unknown dtype, a byte count that
    disagrees with the shape, a shape whose element count overflows or that NumPy cannot
    make) as INVALID_ARGUMENT naming `field`."""
    try:
        return from_tensor(tensor, field)
    except TensorError as error:
        raise invalid(str(error)) from error


def as_floats(array: np.ndarray, field: str) -> np.ndarray:
    """float32 of a numeric array whose values are finite; INVALID_ARGUMENT otherwise."""
    if array.dtype.kind not in "iuf":
        raise invalid(f"{field}: dtype {array.dtype} is not numeric")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
        converted = array.astype(np.float32)
    if not np.all(np.isfinite(converted)):
        raise invalid(f"{field}: values must be finite (as float32)")
    return converted


def as_ints(array: np.ndarray, field: str, low: int, high: int) -> np.ndarray:
    """int32 of an integer array whose values lie in [low, high); INVALID_ARGUMENT otherwise."""
    if array.dtype.kind not in "iu":
        raise invalid(f"{field}: dtype {array.dtype} is not an integer dtype")
    if array.size and (array.min() < low or array.max() >= high):
        bad = array[(array < low) | (array >= high)][0]
        raise invalid(f"{field}: values must be in [{low}, {high}), got {bad}")
    return array.astype(np.int32)


def _shape(array: np.ndarray, expected: tuple[int, ...], field: str, described: str) -> None:
    if array.shape != expected:
        raise invalid(f"{field}: shape {list(array.shape)}, expected {described} = {list(expected)}")


def decode_record(record: replay_pb2.GameRecord, spec: GameSpec, where: str = "game",
                  capacity: int | None = None) -> GameArrays:
    """The validated arrays of `record` for a game of `spec`; ReplayError naming the field
    (prefixed with `where`, e.g. "games[2]") if anything is wrong."""
    if not record.id:
        raise invalid(f"{where}.id: must be non-empty")
    for name in ("id", "episode_id"):
        size = len(getattr(record, name).encode())
        if size > MAX_ID_BYTES:
            raise invalid(f"{where}.{name}: {size} bytes, at most {MAX_ID_BYTES}")
    if record.first_move < 0:
        raise invalid(f"{where}.first_move: must be >= 0, got {record.first_move}")
    if record.model_version < 0:
        raise invalid(f"{where}.model_version: must be >= 0, got {record.model_version}")
    A = spec.num_actions
    obs_shape = tuple(spec.observation_shape)
    raw = {name: _tensor(record, name, where) for name in ARRAY_FIELDS}

    observations = raw["observations"]
    if observations.ndim != 1 + len(obs_shape) or observations.shape[1:] != obs_shape:
        raise invalid(f"{where}.observations: shape {list(observations.shape)}, expected "
                      f"[T, {', '.join(map(str, obs_shape))}] for {spec.name}")
    T = observations.shape[0]
    if T < 1:
        raise invalid(f"{where}.observations: a record needs at least 1 position, got T = 0")
    if capacity is not None and T > capacity:
        raise invalid(f"{where}.observations: T = {T} positions exceed the server's capacity "
                      f"{capacity}; send long games as chunks")
    observations = _convert_observations(observations, np.dtype(spec.observation_dtype),
                                         f"{where}.observations")
    for name in ("actions", "rewards", "to_play", "root_values"):
        _shape(raw[name], (T,), f"{where}.{name}", "[T]")
    for name in ("policies", "legal_actions"):
        _shape(raw[name], (T, A), f"{where}.{name}", "[T, num_actions]")

    actions = as_ints(raw["actions"], f"{where}.actions", 0, A)
    to_play = as_ints(raw["to_play"], f"{where}.to_play", 0, spec.num_players)
    rewards = as_floats(raw["rewards"], f"{where}.rewards")
    root_values = as_floats(raw["root_values"], f"{where}.root_values")
    policies = as_floats(raw["policies"], f"{where}.policies")
    if np.any(policies < 0):
        raise invalid(f"{where}.policies: values must be >= 0")
    legal = raw["legal_actions"]
    if legal.dtype != np.bool_:
        if legal.dtype.kind not in "iu" or np.any((legal != 0) & (legal != 1)):
            raise invalid(f"{where}.legal_actions: must be bool (or integer 0/1), got {legal.dtype}")
        legal = legal.astype(bool)
    illegal = ~legal[np.arange(T), actions]
    if np.any(illegal):
        t = int(np.flatnonzero(illegal)[0])
        raise invalid(f"{where}.actions: action {actions[t]} at position {t} is not legal there "
                      f"(legal_actions[{t}] is false)")
    num_sampleable = record.num_sampleable
    if not 0 <= num_sampleable <= T:
        raise invalid(f"{where}.num_sampleable: must be in [0, T = {T}] (0 means T), got {num_sampleable}")
    return GameArrays(
        id=record.id, episode_id=record.episode_id or record.id, first_move=record.first_move,
        observations=observations, actions=actions, rewards=rewards, to_play=to_play,
        root_values=root_values, policies=policies, legal_actions=np.ascontiguousarray(legal),
        model_version=record.model_version, num_sampleable=num_sampleable or T,
        terminated=record.terminated)


def _convert_observations(array: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise invalid(f"{field}: dtype {array.dtype} is not numeric")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise invalid(f"{field}: values must be finite")
    if array.dtype == dtype:
        return array
    with np.errstate(invalid="ignore", over="ignore"):
        converted = array.astype(dtype)
        exact = np.array_equal(converted.astype(array.dtype), array)
    if not exact:
        raise invalid(f"{field}: {array.dtype} values do not convert exactly to the game's "
                      f"observation dtype {dtype}")
    return converted


def decode_many(records: Sequence[replay_pb2.GameRecord], spec: GameSpec,
                capacity: int | None = None) -> list[GameArrays]:
    """`decode_record` of every record of an AddGames request (`games[i]` in messages).

    The value checks run once over the request's arrays joined (`_decode_joined`): an agent's
    add of 32 records then costs a dozen NumPy calls instead of ten per record, GIL time the
    server's samplers share. Only a request that fails a check there (or whose records differ
    in dtypes) goes record by record, so that its error names the first bad field exactly as
    `decode_record` would."""
    if len(records) > 1:
        decoded = _decode_joined(records, spec, capacity)
        if decoded is not None:
            return decoded
    return [decode_record(r, spec, f"games[{i}]", capacity) for i, r in enumerate(records)]


def _decode_joined(records: Sequence[replay_pb2.GameRecord], spec: GameSpec,
                   capacity: int | None) -> list[GameArrays] | None:
    """The records' arrays, checked as `decode_record` checks them but over all positions of
    the request at once; None when anything is wrong or unusual (the caller then decodes
    record by record and raises the exact error). The returned arrays are views of the joined
    arrays, a record's positions contiguous."""
    A = spec.num_actions
    obs_shape = tuple(spec.observation_shape)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ARRAY_FIELDS}
    lengths = []
    for record in records:
        if (not record.id or len(record.id.encode()) > MAX_ID_BYTES
                or len(record.episode_id.encode()) > MAX_ID_BYTES
                or record.first_move < 0 or record.model_version < 0):
            return None
        try:
            raw = {name: from_tensor(getattr(record, name), name) for name in ARRAY_FIELDS
                   if record.HasField(name)}
        except TensorError:
            return None
        if len(raw) != len(ARRAY_FIELDS):
            return None
        observations = raw["observations"]
        T = observations.shape[0] if observations.ndim else 0
        if (observations.shape[1:] != obs_shape or observations.ndim != 1 + len(obs_shape) or T < 1
                or (capacity is not None and T > capacity) or not 0 <= record.num_sampleable <= T
                or any(raw[name].shape != (T,) for name in ("actions", "rewards", "to_play", "root_values"))
                or any(raw[name].shape != (T, A) for name in ("policies", "legal_actions"))):
            return None
        for name in ARRAY_FIELDS:
            column = columns[name]
            if column and column[0].dtype != raw[name].dtype:
                return None
            column.append(raw[name])
        lengths.append(T)
    joined = {name: np.concatenate(column) for name, column in columns.items()}
    try:
        observations = _convert_observations(joined["observations"], np.dtype(spec.observation_dtype),
                                             "observations")
        actions = as_ints(joined["actions"], "actions", 0, A)
        to_play = as_ints(joined["to_play"], "to_play", 0, spec.num_players)
        rewards = as_floats(joined["rewards"], "rewards")
        root_values = as_floats(joined["root_values"], "root_values")
        policies = as_floats(joined["policies"], "policies")
    except ReplayError:
        return None
    legal = joined["legal_actions"]
    if np.any(policies < 0) or legal.dtype != np.bool_:
        return None  # integer 0/1 masks are rare: the record-by-record path converts them
    if not np.all(legal[np.arange(len(actions)), actions]):
        return None
    bounds = np.cumsum(lengths)[:-1]
    parts = {name: np.split(array, bounds) for name, array in (
        ("observations", observations), ("actions", actions), ("rewards", rewards),
        ("to_play", to_play), ("root_values", root_values), ("policies", policies),
        ("legal_actions", legal))}
    return [GameArrays(
        id=record.id, episode_id=record.episode_id or record.id, first_move=record.first_move,
        observations=parts["observations"][i], actions=parts["actions"][i],
        rewards=parts["rewards"][i], to_play=parts["to_play"][i],
        root_values=parts["root_values"][i], policies=parts["policies"][i],
        legal_actions=parts["legal_actions"][i], model_version=record.model_version,
        num_sampleable=record.num_sampleable or T, terminated=record.terminated)
        for i, (record, T) in enumerate(zip(records, lengths))]
