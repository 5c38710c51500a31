"""ReplayClient: the replay service from Python, NumPy in and out.

    with ReplayClient("127.0.0.1:50001") as replay:
        replay.add_games([make_game_record("run1-agent0-game17", observations, actions, rewards,
                                           root_values, policies, to_play=to_play,
                                           legal_actions=legal, model_version=3)])
        batch = replay.sample_batch(256)                      # Batch of NumPy arrays
        replay.update_priorities(batch.record_keys, batch.positions, new_priorities)

Every call has a deadline (`timeout_s`, per client and per call). Every method of the service is
safe to repeat, so all are retried on UNAVAILABLE with backoff by the channel's service config:
AddGames is idempotent by record id (a retried add is stored once), SampleBatch only draws,
UpdatePriorities and UpdateTargets set values (repeating them sets the same values), SampleGames
and GetStats read. Failures raise `grpc.RpcError` with the server's status code and message;
a SampleBatch held back by the rate limiter past its deadline is DEADLINE_EXCEEDED.

A leaf: the client imports the service's wire types and codecs (`services.replay.wire`) and
nothing of its server, so it loads no SQLite and no TensorFlow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from protos import replay_pb2, replay_pb2_grpc
from services.common.channels import DEFAULT_DEADLINE_S, make_channel
from services.common.tensors import to_tensor
from services.replay.wire import (SAMPLE_GAMES_ORDERS, SERVICE_NAME, AddResult, Batch, GameArrays,
                                  StoredGame, TargetsUpdate, batch_from_proto, make_game_record,
                                  stored_game_from_proto)

IDEMPOTENT_METHODS = ("AddGames", "SampleBatch", "UpdatePriorities", "UpdateTargets",
                      "SampleGames", "GetStats")

__all__ = ["ReplayClient", "make_game_record", "batch_from_proto", "GameArrays", "Batch",
           "StoredGame", "AddResult", "TargetsUpdate", "SAMPLE_GAMES_ORDERS"]


class ReplayClient:
    """A connection to one replay server.

    Args:
      address: "host:port" of the server.
      timeout_s: deadline of every call unless the call passes its own.
    """

    def __init__(self, address: str, timeout_s: float = DEFAULT_DEADLINE_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = make_channel(address, idempotent={SERVICE_NAME: IDEMPOTENT_METHODS})
        self._stub = replay_pb2_grpc.ReplayStub(self._channel)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def add_games(self, records: Sequence[replay_pb2.GameRecord],
                  timeout_s: float | None = None) -> AddResult:
        """Stores records (from `make_game_record`); returns what was added, duplicates, keys."""
        response = self._stub.AddGames(replay_pb2.AddGamesRequest(games=list(records)),
                                       timeout=self._timeout(timeout_s))
        return AddResult(added=response.added, duplicates=response.duplicates,
                         keys=list(response.keys), evicted=response.evicted,
                         positions_added=response.positions_added)

    def sample_batch(self, batch_size: int, num_unroll_steps: int = 0, td_steps: int = 0,
                     discount: float = 0.0, include_unroll_observations: bool = False,
                     timeout_s: float | None = None) -> Batch:
        """B positions and their targets (0 for K, n or discount: the server's defaults)."""
        response = self._stub.SampleBatch(
            replay_pb2.SampleBatchRequest(
                batch_size=batch_size, num_unroll_steps=num_unroll_steps, td_steps=td_steps,
                discount=discount, include_unroll_observations=include_unroll_observations),
            timeout=self._timeout(timeout_s))
        return batch_from_proto(response)

    def update_priorities(self, record_keys: np.ndarray, positions: np.ndarray,
                          priorities: np.ndarray, timeout_s: float | None = None) -> tuple[int, int]:
        """Sets priorities of sampled positions; returns (updated, skipped as evicted)."""
        response = self._stub.UpdatePriorities(
            replay_pb2.UpdatePrioritiesRequest(
                record_keys=to_tensor(np.asarray(record_keys, np.int64)),
                positions=to_tensor(np.asarray(positions, np.int32)),
                priorities=to_tensor(np.asarray(priorities, np.float32))),
            timeout=self._timeout(timeout_s))
        return response.updated, response.skipped

    def update_targets(self, game_id: str, positions: np.ndarray, root_values: np.ndarray,
                       policies: np.ndarray, model_version: int,
                       timeout_s: float | None = None) -> TargetsUpdate:
        """Sets the reanalysed root values and policies at `positions` of a stored record
        (reanalyse); returns (updated, skipped): positions where a reanalysis with a newer
        model_version is stored are skipped (an equal one is overwritten: retries are harmless)."""
        response = self._stub.UpdateTargets(
            replay_pb2.UpdateTargetsRequest(
                game_id=game_id, positions=to_tensor(np.asarray(positions, np.int32)),
                root_values=to_tensor(np.asarray(root_values, np.float32)),
                policies=to_tensor(np.asarray(policies, np.float32)), model_version=model_version),
            timeout=self._timeout(timeout_s))
        return TargetsUpdate(response.updated, response.skipped)

    def sample_games(self, num_games: int, order: str = "uniform",
                     timeout_s: float | None = None) -> list[StoredGame]:
        """Up to `num_games` whole records with their current targets (observations in the
        game's stored dtype, e.g. uint8 boards) and per-position targets versions, in `order`:
        "uniform" (a uniform draw without replacement), "newest_first", "oldest_targets_first"
        (smallest targets_model_version first, ties oldest first: a reanalyse worker's order)
        or "prioritized" (without replacement, by the sum of each record's priorities).
        ValueError naming `order` for any other value."""
        if not isinstance(order, str) or order not in SAMPLE_GAMES_ORDERS:
            raise ValueError(f"order: {order!r} is not one of {', '.join(map(repr, SAMPLE_GAMES_ORDERS))}")
        response = self._stub.SampleGames(
            replay_pb2.SampleGamesRequest(num_games=num_games,
                                          order=SAMPLE_GAMES_ORDERS.index(order)),
            timeout=self._timeout(timeout_s))
        return [stored_game_from_proto(g) for g in response.games]

    def get_stats(self, timeout_s: float | None = None) -> replay_pb2.ReplayStats:
        return self._stub.GetStats(replay_pb2.GetStatsRequest(), timeout=self._timeout(timeout_s))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ReplayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
