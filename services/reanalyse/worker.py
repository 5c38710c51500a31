"""The reanalyse loop: stored positions in, fresh targets out.

Each round takes P positions (`batch_size`) from a queue of stored games, searches them with
the agent's own batched search (`PipelinedSearch`: one network request per search step for all
P positions, positions of several games side by side) and sends each game's new root values and
search policies back with UpdateTargets, stamped with the model version that searched them.
The queue is refilled with SampleGames whenever it holds fewer than P positions, so every
search is full; a game is queued once at a time (the replay may return a game again before its
update is sent). Only when the replay has nothing new to give is a smaller batch searched, padded
to P with copies of its first position whose results are dropped (the trees have a fixed size).

Every position of a record is reanalysed, its look-ahead context too: those positions'
root values are the value bootstraps of the record's last targets.

The replay orders reanalyses by version per position (an older one never overwrites a newer
one), so a retried UpdateTargets and several reanalysers at once are both safe.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import grpc
import numpy as np

import games
from services.agent.pipeline import MoveResult, PipelinedSearch
from services.agent.search import SearchConfig
from services.agent.search.config import searcher_changes
from services.common.failures import RetryPolicy, retry_call
from services.common.logs import EventLogger
from services.reanalyse.config import ReanalyseConfig
from services.reanalyse.metrics import ReanalyseMetrics, private_metrics

# NOT_FOUND from the network's Predict: no version loaded yet, or the pinned one was unloaded.
NETWORK_WAIT_CODES = frozenset({grpc.StatusCode.NOT_FOUND})


@dataclasses.dataclass
class _QueuedGame:
    """A stored game whose positions [next, T) wait for their search."""

    game_id: str
    observations: np.ndarray  # float32 [T, *obs]
    legal_actions: np.ndarray  # bool [T, A]
    targets_version: int  # the version behind its targets when it was sampled
    next: int = 0

    @property
    def left(self) -> int:
        return len(self.legal_actions) - self.next


@dataclasses.dataclass(frozen=True)
class Segment:
    """Positions [start, stop) of one queued game, searched as rows [row, row + stop - start)
    of a batch."""

    game: _QueuedGame
    start: int
    stop: int
    row: int


@dataclasses.dataclass(frozen=True)
class BatchOutcome:
    """What one batch did: positions searched (without padding), games the replay updated,
    positions it skipped by reason, the model version, and the mean age of the replaced
    targets in versions."""

    positions: int
    games_updated: int
    skipped: dict[str, int]
    version: int
    mean_target_age: float


class Reanalyser:
    """Reanalyses until `stop` is set (or `config.max_batches` batches), surviving peer restarts.

    Args:
      config: what to reanalyse and how.
      log: where events go.
      replay: a `ReplayClient` (or anything with its `sample_games` and `update_targets`).
      network: any `services.agent.inference.Model` (a `NetworkClient`, a `LocalNetwork`, a
        fake).
      metrics: where it counts (default: a registry of its own).
      policy: which failures are waited out, and the backoff (default: 0.2 s doubling to 5 s).
      stop: the event that ends the run.
    """

    def __init__(self, config: ReanalyseConfig, log: EventLogger, replay, network,
                 metrics: ReanalyseMetrics | None = None, policy: RetryPolicy | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.log = log
        self.replay = replay
        self.network = network
        self.metrics = metrics if metrics is not None else private_metrics()
        self.policy = policy or RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0)
        self.stop = stop if stop is not None else threading.Event()
        game = games.make(config.game)
        self.spec = game.spec
        settings = game.settings.replace(num_simulations=config.search_simulations, **searcher_changes(config))
        self.search = PipelinedSearch(network, SearchConfig.from_settings(settings), config.batch_size,
                                      self.spec.num_actions, groups=config.groups,
                                      two_player=self.spec.num_players == 2,
                                      timeout_s=config.request_timeout_s, metrics=self.metrics)
        self.rng = np.random.default_rng(config.seed)
        self.queue: collections.deque[_QueuedGame] = collections.deque()
        self.batches = 0
        self.positions = 0
        self._empty_logged = False

    # -- the queue ------------------------------------------------------------------------------

    @property
    def queued_positions(self) -> int:
        return sum(g.left for g in self.queue)

    def _retrying(self, peer: str, error: grpc.RpcError, delay_s: float) -> None:
        self.metrics.peer_failures.labels(peer, error.code().name).inc()
        self.log.warning("peer_unavailable", peer=peer, code=error.code().name,
                         details=error.details(), retry_in_s=round(delay_s, 2))

    def _refill(self, stop: threading.Event) -> int:
        """Asks the replay for games until P positions are queued or it has nothing new;
        returns the positions added."""
        added = 0
        while self.queued_positions < self.config.batch_size and not stop.is_set():
            stored = retry_call(lambda: self.replay.sample_games(self.config.games_per_request,
                                                                 order=self.config.order),
                                policy=self.policy, stop=stop, peer="replay", method="SampleGames",
                                address=self.config.replay,
                                on_retry=lambda error, delay: self._retrying("replay", error, delay))
            if not stored:
                break
            queued = {g.game_id for g in self.queue}
            new = [s for s in stored if s.game.id not in queued]
            for s in new:
                self.queue.append(_QueuedGame(
                    s.game.id, s.game.observations.astype(np.float32, copy=False),
                    s.game.legal_actions, int(s.targets_model_version)))
                added += len(s.game.legal_actions)
            if not new:
                break  # everything the replay gave is queued already: search what is here
        return added

    def take_batch(self) -> tuple[np.ndarray, np.ndarray, list[Segment], int]:
        """The next batch from the queue: observations float32 [P, *obs], legal bool [P, A]
        (padded to P with copies of row 0), its segments, and the rows that are real."""
        P = self.config.batch_size
        segments: list[Segment] = []
        rows = 0
        while self.queue and rows < P:
            game = self.queue[0]
            take = min(game.left, P - rows)
            segments.append(Segment(game, game.next, game.next + take, rows))
            game.next += take
            rows += take
            if game.left == 0:
                self.queue.popleft()
        observations = np.concatenate([s.game.observations[s.start:s.stop] for s in segments])
        legal = np.concatenate([s.game.legal_actions[s.start:s.stop] for s in segments])
        if rows < P:  # the replay had no more: pad with the first position, dropped afterwards
            observations = np.concatenate([observations, np.repeat(observations[:1], P - rows, axis=0)])
            legal = np.concatenate([legal, np.repeat(legal[:1], P - rows, axis=0)])
        return observations, legal, segments, rows

    # -- one batch ------------------------------------------------------------------------------

    def _search(self, observations: np.ndarray, legal: np.ndarray, stop: threading.Event) -> MoveResult | None:
        backoff = self.policy.backoff(stop)
        while not stop.is_set():
            try:
                return self.search.search(observations, legal, self.rng, training=self.config.exploration)
            except grpc.RpcError as error:
                delay = backoff.failed(error, "network", "Predict", self.config.network,
                                       also=NETWORK_WAIT_CODES)
                self._retrying("network", error, delay)
                if not backoff.pause(delay):
                    return None
        return None

    def _update(self, segment: Segment, result: MoveResult, stop: threading.Event) -> tuple[int, dict[str, int]]:
        """Sends one segment's new targets (one UpdateTargets per model version among its rows);
        returns (UpdateTargets calls applied, positions skipped by reason)."""
        rows = np.arange(segment.row, segment.row + segment.stop - segment.start)
        positions = np.arange(segment.start, segment.stop, dtype=np.int32)
        versions = result.versions[rows]
        applied, skipped = 0, {"evicted": 0, "newer": 0}
        for version in np.unique(versions):
            chosen = versions == version
            answer = retry_call(
                lambda: self._update_targets(segment.game.game_id, positions[chosen],
                                             result.root_values[rows[chosen]], result.policies[rows[chosen]],
                                             int(version)),
                policy=self.policy, stop=stop, peer="replay", method="UpdateTargets",
                address=self.config.replay,
                on_retry=lambda error, delay: self._retrying("replay", error, delay))
            if answer is None:  # stopped
                break
            updated, newer = answer
            if updated < 0:
                skipped["evicted"] += int(chosen.sum())
                continue
            applied += 1
            skipped["newer"] += newer
            age = max(int(version) - segment.game.targets_version, 0)
            self.metrics.target_age.observe(age)
        return applied, skipped

    def _update_targets(self, game_id: str, positions: np.ndarray, values: np.ndarray,
                        policies: np.ndarray, version: int) -> tuple[int, int]:
        """(updated, skipped as newer); (-1, 0) when the game is no longer stored."""
        try:
            return self.replay.update_targets(game_id, positions, values, policies, version)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return -1, 0  # evicted since it was sampled: nothing to update
            raise

    def run_batch(self, stop: threading.Event | None = None) -> BatchOutcome | None:
        """Fills the queue, searches one batch and sends its targets; None when stopped, or when
        the replay holds no game yet (after waiting a backoff step)."""
        stop = stop if stop is not None else self.stop
        started = time.perf_counter()
        self._refill(stop)
        if not self.queue:
            if not self._empty_logged:
                self.log.info("replay_empty", message="no stored games yet: waiting")
                self._empty_logged = True
            stop.wait(self.policy.max_backoff_s)  # the replay has nothing: ask again later
            return None
        self._empty_logged = False
        observations, legal, segments, rows = self.take_batch()
        result = self._search(observations, legal, stop)
        if result is None:
            return None
        games_updated, skipped = 0, {"evicted": 0, "newer": 0}
        ages, weights = [], []
        for segment in segments:
            applied, segment_skipped = self._update(segment, result, stop)
            games_updated += applied
            for reason, count in segment_skipped.items():
                skipped[reason] += count
            ages.append(int(result.versions[segment.row]) - segment.game.targets_version)
            weights.append(segment.stop - segment.start)
        version = int(result.versions[:rows].max())
        mean_age = float(np.average(np.maximum(ages, 0), weights=weights))
        m = self.metrics
        m.positions.inc(rows)
        m.games_updated.inc(games_updated)
        for reason, count in skipped.items():
            if count:
                m.positions_skipped.labels(reason).inc(count)
        m.mean_target_age.set(mean_age)
        m.model_version.set(version)
        m.batch_seconds.observe(time.perf_counter() - started)
        self.batches += 1
        self.positions += rows
        return BatchOutcome(rows, games_updated, skipped, version, mean_age)

    def run(self, stop: threading.Event | None = None) -> None:
        """Reanalyses until `stop` (default: the constructor's event) is set or max_batches are
        done. Raises PermanentFailure when a peer answers something waiting cannot fix."""
        stop = stop if stop is not None else self.stop
        while not stop.is_set():
            if self.config.max_batches and self.batches >= self.config.max_batches:
                break
            started = time.perf_counter()
            outcome = self.run_batch(stop)
            if outcome is None:
                continue
            if self.batches == 1 or self.batches % 100 == 0:
                self.log.info("reanalysed", batches=self.batches, positions=self.positions,
                              version=outcome.version, mean_target_age=round(outcome.mean_target_age, 2),
                              skipped=outcome.skipped)
            if self.config.max_positions_per_s:
                left = outcome.positions / self.config.max_positions_per_s - (time.perf_counter() - started)
                if left > 0:
                    stop.wait(left)  # the configured rate cap: CPU left to self-play and training
