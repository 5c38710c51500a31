"""The self-play loop: B games in one environment session, searched together, sent to replay."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import numpy as np

import games
from services.agent.metrics import AgentMetrics, private_metrics
from services.agent.opponents import random_opponent
from services.agent.config import AgentConfig
from services.agent.pipeline import PipelinedSearch
from services.agent.replay_writer import ReplayWriter
from services.agent.search import SearchConfig
from services.agent.search.config import SEARCHER_OVERRIDES, SELF_PLAY_OVERRIDES, searcher_changes
from services.agent.trajectories import TrajectoryRecorder
from services.common.failures import Backoff, RetryPolicy, retry_call
from services.common.logs import EventLogger
from services.environment.client import EnvironmentClient
from services.environment.wire import TimeStep
from services.network.client import NetworkClient
from services.replay.client import ReplayClient

# Context-specific codes, on top of the shared transient ones (services.common.failures):
# NOT_FOUND from the network's Predict means no version is loaded yet, or the version a search
# pinned was just unloaded: search again (unpinned at the root). NOT_FOUND from the environment
# means the session is gone (the environment restarted or expired it): open a new one.
NETWORK_WAIT_CODES = frozenset({grpc.StatusCode.NOT_FOUND})
PREDICT_HINTS = {
    grpc.StatusCode.INVALID_ARGUMENT: "the network serves a model that does not fit this game: "
                                      "start the agent with the --game the model was trained for, "
                                      "or point --network at that game's model",
}
ENVIRONMENT_HINTS = {
    grpc.StatusCode.INVALID_ARGUMENT: "the environment refuses this session's request: start the "
                                      "agent and the environment for the same --game, with "
                                      "--games-per-batch within its --max-games-per-session",
}


class SelfPlay:
    """Plays until `stop` is set (or `config.max_moves` moves), surviving peer restarts.

    Args:
      config: how to play.
      log: where events go.
      environment, network, replay: clients of the peers (default: made from the config's
        addresses; tests pass fakes).
      policy: which failures are waited out, and the backoff (default: 0.2 s doubling to 5 s,
        until stopped).
      stop: the event that ends the run; the replay writer's back-pressure gives way to it, so
        a stop is never held up by a full queue of records.
      metrics: where the agent counts (default: a registry of its own; `python -m
        services.agent` passes an `AgentMetrics()` in the process's registry, which it serves).
    """

    def __init__(self, config: AgentConfig, log: EventLogger,
                 environment: EnvironmentClient | None = None, network: NetworkClient | None = None,
                 replay: ReplayClient | None = None, policy: RetryPolicy | None = None,
                 stop: threading.Event | None = None, metrics: AgentMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics = metrics if metrics is not None else private_metrics()
        self.log = log
        self.game = games.make(config.game)
        self.spec = self.game.spec
        self.settings = self.game.settings.replace(num_simulations=config.simulations)
        self.settings = self.settings.replace(
            **searcher_changes(config, SEARCHER_OVERRIDES + SELF_PLAY_OVERRIDES))
        self.policy = policy or RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0)
        self.stop = stop if stop is not None else threading.Event()
        self.env = environment or EnvironmentClient(config.environment, timeout_s=config.request_timeout_s)
        self.network = network or NetworkClient(config.network, model_name=config.model_name,
                                                timeout_s=config.request_timeout_s)
        self.replay = replay or ReplayClient(config.replay, timeout_s=config.request_timeout_s)
        self.search = PipelinedSearch(self.network, SearchConfig.from_settings(self.settings),
                                      config.games_per_batch, self.spec.num_actions, config.groups,
                                      two_player=self.spec.num_players == 2,
                                      timeout_s=config.request_timeout_s, metrics=metrics)
        self.recorder = TrajectoryRecorder(
            self.spec, config.games_per_batch, config.chunk_length,
            lookahead=self.settings.training.num_unroll_steps + self.settings.training.td_steps)
        self.writer = ReplayWriter(
            self.replay.add_games, log, max_pending=config.max_pending_records,
            on_acked=metrics.records_acked.inc,
            on_failure=lambda e: metrics.peer_failures.labels("replay", e.code().name).inc(),
            on_held_back=metrics.replay_waits.inc,
            stop=self.stop, policy=self.policy, call_timeout_s=config.request_timeout_s,
            address=config.replay)
        self.rng = np.random.default_rng(config.seed)
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=100)
        self.recent_lengths: collections.deque[int] = collections.deque(maxlen=100)
        # statistic name -> its values of the last 100 finished games (Game.episode_statistics)
        self.recent_statistics: dict[str, collections.deque[float]] = {}
        self.moves = 0
        self.games_finished = 0
        self._session: str | None = None  # the open session, closed when run() ends

    # -- peers ----------------------------------------------------------------------------------

    def _retrying(self, peer: str, error: grpc.RpcError, delay_s: float) -> None:
        self.metrics.peer_failures.labels(peer, error.code().name).inc()
        self.log.warning("peer_unavailable", peer=peer, code=error.code().name,
                         details=error.details(), retry_in_s=round(delay_s, 2))

    def _open_session(self, stop: threading.Event) -> tuple[str | None, TimeStep | None]:
        """A new session of B games; (None, None) if stopped first."""
        opened = retry_call(
            lambda: self.env.open(self.config.game, self.config.games_per_batch,
                                  seed=int(self.rng.integers(2**31))),
            policy=self.policy, stop=stop, peer="environment", method="Open",
            address=self.config.environment,
            hint=ENVIRONMENT_HINTS,
            on_retry=lambda error, delay: self._retrying("environment", error, delay))
        if opened is None:
            return None, None
        self.log.info("session_opened", session_id=opened.session_id, games=self.config.games_per_batch)
        return opened.session_id, opened.time_step

    def _step(self, session: str, actions: np.ndarray, steps_before: int,
              stop: threading.Event) -> TimeStep | None:
        """One environment step, played exactly once. Returns the new time step, or None when
        the session is gone (NOT_FOUND: the environment restarted) or `stop` was set.

        Every Step names the steps it expects the session to have played (`steps_before`), so
        the environment plays it at most once, however often it is sent and whenever a copy
        arrives. After a failed Step the session is observed (Observe changes nothing, so it is
        retried as often as needed) until it answers, and its `num_steps` says whether the
        Step was applied (then its time step is the Step's answer) or not (then it is sent
        again). FAILED_PRECONDITION on a resent Step means an earlier copy was played after
        all: observed the same way. Permanent failures of either call raise PermanentFailure.
        """
        backoff = self.policy.backoff(stop)
        while not stop.is_set():
            try:
                return self.env.step(session, actions, auto_reset=True, expected_num_steps=steps_before)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # else: played already
                    delay = backoff.failed(error, "environment", "Step", self.config.environment,
                                           hint=ENVIRONMENT_HINTS)
                    self._retrying("environment", error, delay)
                    # Wait before observing too: a Step cut by its deadline may still be running.
                    if not backoff.pause(delay):
                        return None
            observed = self._observe(session, backoff, stop)
            if observed is None:
                return None
            if observed.num_steps == steps_before + 1:
                return observed  # applied: its time step is what the Step would have returned
            if observed.num_steps != steps_before:
                return None  # not the session this loop has been playing: start a new one
            # Not applied: send it again (after the backoff already waited).
        return None

    def _observe(self, session: str, backoff: Backoff, stop: threading.Event) -> TimeStep | None:
        """The session's time step, asked until the environment answers; None if the session is
        gone (NOT_FOUND) or `stop` was set."""
        while not stop.is_set():
            try:
                return self.env.observe(session)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                delay = backoff.failed(error, "environment", "Observe", self.config.environment,
                                       hint=ENVIRONMENT_HINTS)
                self._retrying("environment", error, delay)
                if not backoff.pause(delay):
                    return None
        return None

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Plays until `stop` (default: the constructor's event) is set or max_moves are played.

        Raises PermanentFailure when a peer answers something that waiting cannot fix.
        """
        stop = stop if stop is not None else self.stop
        session, time_step = self._open_session(stop)
        try:
            self._play(session, time_step, stop)
        finally:
            if self._session is not None:
                try:  # short: a stopping agent must not wait a whole request timeout here
                    self.env.close(self._session, timeout_s=min(2.0, self.config.request_timeout_s))
                except grpc.RpcError:
                    pass  # the session expires on its own

    def _branching(self, move_index: np.ndarray) -> np.ndarray:
        """bool [B]: the games whose move at `move_index` (int [B], plies into each game) is
        played at random and their record started over after it (random_branch_*)."""
        search = self.settings.search
        if search.random_branch_probability == 0:
            return np.zeros(len(move_index), bool)
        return (move_index < search.random_branch_plies) & (
            self.rng.random(len(move_index)) < search.random_branch_probability)

    def _play(self, session: str | None, time_step: TimeStep | None, stop: threading.Event) -> None:
        self._session = session
        steps = 0
        search_backoff = self.policy.backoff(stop)
        while not stop.is_set() and session is not None:
            if self.config.max_moves and self.moves >= self.config.max_moves:
                break
            started = time.perf_counter()
            move_index = self.recorder.first_move + self.recorder.cursor
            try:
                result = self.search.search(time_step.observation, time_step.legal_actions, self.rng,
                                            training=True)
                search_backoff.reset()
            except grpc.RpcError as error:
                delay = search_backoff.failed(error, "network", "Predict", self.config.network,
                                              also=NETWORK_WAIT_CODES,
                                              hint=PREDICT_HINTS)
                self._retrying("network", error, delay)
                search_backoff.pause(delay)
                continue  # nothing was played: search the same positions again
            explore = move_index < self.settings.search.temperature_moves
            actions = np.where(explore, result.actions, result.greedy_actions).astype(np.int32)
            opening = move_index < self.settings.search.random_opening_moves  # bool [B]
            branching = self._branching(move_index)  # bool [B]
            if opening.any() or branching.any():
                actions = np.where(opening | branching,
                                   random_opponent(time_step.observation, time_step.legal_actions, self.rng),
                                   actions).astype(np.int32)
            next_step = self._step(session, actions, steps, stop)
            if next_step is None:
                if stop.is_set():
                    break
                dropped = self.recorder.discard_all()
                self.log.warning("session_lost", session_id=session, unfinished_games_dropped=dropped)
                self._session = None
                session, time_step = self._open_session(stop)
                self._session = session
                steps = 0
                continue
            steps = next_step.num_steps
            records, finished = self.recorder.record_move(
                time_step.observation, time_step.legal_actions, time_step.to_play, actions,
                result.root_values, result.policies, result.versions, next_step.reward,
                next_step.terminated, next_step.truncated, restart=branching)
            self.metrics.branch_moves.inc(int(np.count_nonzero(branching)))
            self.writer.put(records, stop=stop)
            self._account(finished, time.perf_counter() - started)
            time_step = next_step

    def _account(self, finished, move_seconds: float) -> None:
        B = self.config.games_per_batch
        self.moves += 1
        metrics = self.metrics
        metrics.moves.inc(B)
        metrics.move_seconds.observe(move_seconds)
        metrics.records_pending.set(self.writer.pending)
        for game in finished:
            self.games_finished += 1
            episode_return = float(game.total_reward[0])
            self.recent_returns.append(episode_return)
            self.recent_lengths.append(game.length)
            metrics.games_finished.inc()
            metrics.episode_return.observe(episode_return)
            metrics.episode_length.observe(game.length)
        if finished:
            metrics.recent_return.set(float(np.mean(self.recent_returns)))
            metrics.recent_length.set(float(np.mean(self.recent_lengths)))
            statistics = self._account_statistics(finished)
            self.log.info("games_finished", count=len(finished), total=self.games_finished,
                          recent_mean_return=round(float(np.mean(self.recent_returns)), 3),
                          recent_mean_length=round(float(np.mean(self.recent_lengths)), 1),
                          **{f"recent_mean_{name}": round(value, 3) for name, value in statistics.items()})

    def _account_statistics(self, finished) -> dict[str, float]:
        """Exports the game's `episode_statistics` of the `finished` games (the observation
        before each one's last move and that move): per statistic, the mean of the last 100
        games (`mufleet_agent_recent_mean_episode_statistic{statistic}`) and, for those with a
        histogram (2048's max_tile), every game's value. Returns the recent means; {} for games
        that declare no statistics (and no series appear for them)."""
        statistics = self.game.episode_statistics(np.stack([g.last_observation for g in finished]),
                                                  np.array([g.last_action for g in finished], np.int64))
        means = {}
        for name, values in statistics.items():
            values = np.asarray(values, np.float64).reshape(-1)
            recent = self.recent_statistics.setdefault(name, collections.deque(maxlen=100))
            recent.extend(values.tolist())
            means[name] = float(np.mean(recent))
            self.metrics.recent_statistic.labels(name).set(means[name])
            histogram = self.metrics.statistic_histograms.get(name)
            if histogram is not None:
                for value in values:
                    histogram.observe(float(value))
        return means

    def close(self, timeout_s: float | None = None) -> int:
        """Flushes unacknowledged records (for up to `timeout_s`, default the config's
        stop_grace_s); returns how many stayed unsent."""
        left = self.writer.close(self.config.stop_grace_s if timeout_s is None else timeout_s)
        self.network.close()
        self.replay.close()
        self.env.close_channel()
        return left
