"""The self-play loop: B games in one environment session, searched together, sent to replay."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import numpy as np

import games
from services.agent import metrics
from services.agent.config import AgentConfig
from services.agent.pipeline import PipelinedSearch
from services.agent.replay_writer import ReplayWriter
from services.agent.search import SearchConfig
from services.agent.trajectories import TrajectoryRecorder
from services.common.logs import EventLogger
from services.environment.client import EnvironmentClient
from services.network.client import NetworkClient
from services.replay.client import ReplayClient

# Codes that mean "the peer is down or restarting": wait for it and go on.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED}


class SelfPlay:
    """Plays until `stop` is set (or `config.max_moves` moves), surviving peer restarts."""

    def __init__(self, config: AgentConfig, log: EventLogger) -> None:
        self.config = config
        self.log = log
        self.game = games.make(config.game)
        self.spec = self.game.spec
        self.settings = self.game.settings.replace(num_simulations=config.simulations)
        self.env = EnvironmentClient(config.environment, timeout_s=config.request_timeout_s)
        self.network = NetworkClient(config.network, model_name=config.model_name,
                                     timeout_s=config.request_timeout_s)
        self.replay = ReplayClient(config.replay, timeout_s=config.request_timeout_s)
        self.search = PipelinedSearch(self.network, SearchConfig.from_settings(self.settings),
                                      config.games_per_batch, self.spec.num_actions, config.groups,
                                      two_player=self.spec.num_players == 2,
                                      timeout_s=config.request_timeout_s)
        self.recorder = TrajectoryRecorder(
            self.spec, config.games_per_batch, config.chunk_length,
            lookahead=self.settings.num_unroll_steps + self.settings.td_steps)
        self.writer = ReplayWriter(
            self.replay.add_games, log, max_pending=config.max_pending_records,
            on_acked=metrics.RECORDS_SENT.inc,
            on_failure=lambda e: metrics.PEER_FAILURES.labels("replay", e.code().name).inc())
        self.rng = np.random.default_rng(config.seed)
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=100)
        self.recent_lengths: collections.deque[int] = collections.deque(maxlen=100)
        self.moves = 0
        self.games_finished = 0

    # -- peers ----------------------------------------------------------------------------------

    def _wait(self, peer: str, error: grpc.RpcError, attempt: int) -> None:
        metrics.PEER_FAILURES.labels(peer, error.code().name).inc()
        delay = min(0.2 * 2 ** attempt, 5.0)
        self.log.warning("peer_unavailable", peer=peer, code=error.code().name,
                         details=error.details(), retry_in_s=delay)
        time.sleep(delay)

    def _open_session(self, stop: threading.Event):
        attempt = 0
        while not stop.is_set():
            try:
                opened = self.env.open(self.config.game, self.config.games_per_batch,
                                       seed=int(self.rng.integers(2**31)))
                self.log.info("session_opened", session_id=opened.session_id,
                              games=self.config.games_per_batch)
                return opened.session_id, opened.time_step
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE:
                    raise
                self._wait("environment", error, attempt)
                attempt += 1
        return None, None

    def _step(self, session: str, actions: np.ndarray, steps_before: int, stop: threading.Event):
        """One environment step; after a failure, learns whether it was applied. Returns the new
        time step, or None when the session is gone (the environment restarted)."""
        attempt = 0
        while not stop.is_set():
            try:
                return self.env.step(session, actions, auto_reset=True)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if error.code() not in RETRYABLE:
                    raise
                self._wait("environment", error, attempt)
                attempt += 1
            try:  # Step is not retried blindly: it would play twice.
                observed = self.env.observe(session)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                continue
            if observed.num_steps > steps_before:
                return observed
        return None

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        session, time_step = self._open_session(stop)
        steps = 0
        search_attempt = 0
        while not stop.is_set() and session is not None:
            if self.config.max_moves and self.moves >= self.config.max_moves:
                break
            started = time.perf_counter()
            move_index = self.recorder.first_move + self.recorder.cursor
            try:
                result = self.search.search(time_step.observation, time_step.legal_actions, self.rng,
                                            training=True)
                search_attempt = 0
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE:
                    raise
                self._wait("network", error, search_attempt)
                search_attempt += 1
                continue  # nothing was played: search the same positions again
            explore = move_index < self.settings.temperature_moves
            actions = np.where(explore, result.actions, result.greedy_actions).astype(np.int32)
            next_step = self._step(session, actions, steps, stop)
            if next_step is None:
                if stop.is_set():
                    break
                dropped = self.recorder.discard_all()
                self.log.warning("session_lost", session_id=session, unfinished_games_dropped=dropped)
                session, time_step = self._open_session(stop)
                steps = 0
                continue
            steps = next_step.num_steps
            records, finished = self.recorder.record_move(
                time_step.observation, time_step.legal_actions, time_step.to_play, actions,
                result.root_values, result.policies, result.versions, next_step.reward,
                next_step.terminated, next_step.truncated)
            self.writer.put(records)
            self._account(finished, time.perf_counter() - started)
            time_step = next_step
        if session is not None:
            try:
                self.env.close(session)
            except grpc.RpcError:
                pass  # the session expires on its own

    def _account(self, finished, move_seconds: float) -> None:
        B = self.config.games_per_batch
        self.moves += 1
        metrics.MOVES.inc(B)
        metrics.MOVE_SECONDS.observe(move_seconds)
        metrics.RECORDS_PENDING.set(self.writer.pending)
        for game in finished:
            self.games_finished += 1
            episode_return = float(game.total_reward[0])
            self.recent_returns.append(episode_return)
            self.recent_lengths.append(game.length)
            metrics.GAMES_FINISHED.inc()
            metrics.EPISODE_RETURN.observe(episode_return)
            metrics.EPISODE_LENGTH.observe(game.length)
        if finished:
            metrics.RECENT_RETURN.set(float(np.mean(self.recent_returns)))
            metrics.RECENT_LENGTH.set(float(np.mean(self.recent_lengths)))
            self.log.info("games_finished", count=len(finished), total=self.games_finished,
                          recent_mean_return=round(float(np.mean(self.recent_returns)), 3),
                          recent_mean_length=round(float(np.mean(self.recent_lengths)), 1))

    def close(self, timeout_s: float = 30.0) -> int:
        """Flushes unacknowledged records (up to `timeout_s`); returns how many stayed unsent."""
        left = self.writer.close(timeout_s)
        self.network.close()
        self.replay.close()
        self.env.close_channel()
        return left
