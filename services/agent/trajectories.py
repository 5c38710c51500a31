"""Per-game trajectories of B games in preallocated arrays, cut into GameRecords.

Each of the B game slots records, per move: observation, action, reward, player to move, root
value, search policy and legal mask. A slot emits a record when its game ends, or, for a long
game, a chunk once it holds `chunk_length + lookahead` moves: the first `chunk_length` are
sampleable, the last `lookahead` (K + n) are context so the chunk's targets are complete, and
those `lookahead` moves stay in the slot to start the next chunk (where they are sampleable).
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np

from games.base import GameSpec
from protos import replay_pb2
from services.replay.wire import make_game_record


@dataclasses.dataclass
class FinishedGame:
    """What the agent reports about a game that ended: its return and length, and its last
    move with the observation before it (what `Game.episode_statistics` reads)."""

    episode_id: str
    total_reward: np.ndarray  # float32 [num_players]: each player's summed rewards
    length: int
    last_observation: np.ndarray  # float32 [*observation_shape]: the position of the last move
    last_action: int


class TrajectoryRecorder:
    """Records moves of B games; `record_move` returns the GameRecords ready to send.

    Args:
      spec: the game's spec.
      batch_size: B game slots.
      chunk_length: sampleable moves per chunk of a long game.
      lookahead: moves of context after a chunk (num_unroll_steps + td_steps).
      agent_id: unique per agent process run, part of every record id (ids never repeat).
    """

    def __init__(self, spec: GameSpec, batch_size: int, chunk_length: int, lookahead: int,
                 agent_id: str | None = None) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.chunk_length = chunk_length
        self.lookahead = lookahead
        self.agent_id = agent_id or uuid.uuid4().hex[:12]
        length = min(chunk_length + lookahead, spec.max_moves)
        self.capacity = length
        B, A = batch_size, spec.num_actions
        self.observations = np.zeros((B, length, *spec.observation_shape), np.float32)
        self.actions = np.zeros((B, length), np.int32)
        self.rewards = np.zeros((B, length), np.float32)
        self.to_play = np.zeros((B, length), np.int32)
        self.root_values = np.zeros((B, length), np.float32)
        self.policies = np.zeros((B, length, A), np.float32)
        self.legal = np.zeros((B, length, A), bool)
        self.versions = np.zeros((B, length), np.int64)
        self.cursor = np.zeros(B, np.int64)       # moves held in each slot
        self.first_move = np.zeros(B, np.int64)   # episode move index of the slot's first move
        self.chunk_index = np.zeros(B, np.int64)
        self.returns = np.zeros((B, 2), np.float32)
        self._episode_counter = 0
        self.episode_ids = [self._new_episode() for _ in range(B)]
        self._rows = np.arange(B)

    def _new_episode(self) -> str:
        self._episode_counter += 1
        return f"{self.agent_id}-{self._episode_counter}"

    def record_move(self, observation: np.ndarray, legal: np.ndarray, to_play: np.ndarray,
                    actions: np.ndarray, root_values: np.ndarray, policies: np.ndarray,
                    version: np.ndarray | int, rewards: np.ndarray, terminated: np.ndarray,
                    truncated: np.ndarray, restart: np.ndarray | None = None,
                    ) -> tuple[list[replay_pb2.GameRecord], list[FinishedGame]]:
        """Appends one move of every game; returns (records to send, games that ended).

        All arrays lead with [B]: the position before the move (observation, legal, to_play),
        the search's output (actions, root_values, policies), and what the environment
        answered (rewards, terminated, truncated). Slots whose game ended start a new game.
        `restart` (bool [B], default none) marks games whose record starts over after this
        move: the moves the slot holds, this one included, are dropped unsent (a game that ends
        at this move sends no record, though it still counts as finished), and its next record
        starts at the next move (`first_move`) under the same episode id. Moves of the game
        already sent stay sent.
        """
        rows, cursor = self._rows, self.cursor
        self.observations[rows, cursor] = observation
        self.legal[rows, cursor] = legal
        self.to_play[rows, cursor] = to_play
        self.actions[rows, cursor] = actions
        self.root_values[rows, cursor] = root_values
        self.policies[rows, cursor] = policies
        self.versions[rows, cursor] = version
        self.rewards[rows, cursor] = rewards
        self.returns[rows, to_play] += rewards
        self.cursor += 1
        ended = terminated | truncated
        restart = np.zeros_like(ended) if restart is None else np.asarray(restart, bool)
        full = ~ended & ~restart & (self.cursor >= self.capacity)
        records, finished = [], []
        for b in np.flatnonzero(ended | full | restart):  # only slots that emit or drop this move
            if restart[b] and not ended[b]:
                self.first_move[b] += self.cursor[b]
                self.cursor[b] = 0
            elif ended[b]:
                if not restart[b]:
                    records.append(self._record(b, self.cursor[b], num_sampleable=0,
                                                terminated=bool(terminated[b])))
                last = self.cursor[b] - 1
                finished.append(FinishedGame(self.episode_ids[b], self.returns[b].copy(),
                                             int(self.first_move[b] + self.cursor[b]),
                                             self.observations[b, last].copy(), int(self.actions[b, last])))
                self.episode_ids[b] = self._new_episode()
                self.cursor[b] = self.first_move[b] = self.chunk_index[b] = 0
                self.returns[b] = 0
            else:
                records.append(self._record(b, self.cursor[b], num_sampleable=self.chunk_length,
                                            terminated=False))
                self._keep_lookahead(b)
        return records, finished

    def _record(self, b: int, length: int, num_sampleable: int, terminated: bool) -> replay_pb2.GameRecord:
        episode = self.episode_ids[b]
        record = make_game_record(
            id=f"{episode}-{self.chunk_index[b]}",
            observations=self.observations[b, :length].astype(self.spec.observation_dtype),
            actions=self.actions[b, :length], rewards=self.rewards[b, :length],
            root_values=self.root_values[b, :length], policies=self.policies[b, :length],
            to_play=self.to_play[b, :length], legal_actions=self.legal[b, :length],
            model_version=int(self.versions[b, :length].max()), episode_id=episode,
            first_move=int(self.first_move[b]), num_sampleable=num_sampleable,
            terminated=terminated)
        self.chunk_index[b] += 1
        return record

    def _keep_lookahead(self, b: int) -> None:
        keep, start = self.lookahead, self.chunk_length
        for array in (self.observations, self.actions, self.rewards, self.to_play,
                      self.root_values, self.policies, self.legal, self.versions):
            array[b, :keep] = array[b, start:start + keep]
        self.first_move[b] += start
        self.cursor[b] = keep

    def discard_all(self) -> int:
        """Drops every unfinished game (after the environment lost its session); returns how many."""
        dropped = int(np.count_nonzero(self.cursor))
        for b in range(self.batch_size):
            self.episode_ids[b] = self._new_episode()
        self.cursor[:] = 0
        self.first_move[:] = 0
        self.chunk_index[:] = 0
        self.returns[:] = 0
        return dropped
