"""Evaluation: greedy play of M games with one model version, the newest or a given one.

One-player games report the mean return. Two-player games are played against an opponent of
`services.agent.opponents.OPPONENTS` (a uniformly random player by default), the agent taking
the first player's side in half of the games and the second's in the other half, and report
wins, draws and losses from the agent's view.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator, Mapping

import grpc
import numpy as np

import games
from services.agent.metrics import AgentMetrics
from services.agent.opponents import random_opponent
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.agent.search.config import SEARCHER_OVERRIDES
from services.common.failures import PermanentFailure
from services.environment.client import EnvironmentClient
from services.network.client import NetworkClient


# The tiles whose share a 2048 evaluation reports (games whose largest tile is at least each).
TILE_THRESHOLDS = (256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Per game: returns float32 [M] from the agent's view (one-player: the game's return;
    two-player: +1 win, 0 draw, -1 loss) and lengths int [M]. In two-player games the agent
    moves first in the even games and second in the odd ones. `statistics`: the game's own
    per-game numbers (`Game.episode_statistics`, e.g. 2048's "max_tile" int [M]). `search`: the
    settings a searcher may change (SEARCHER_OVERRIDES, e.g. rescale_values) as the agent's
    search had them, so a result says how it was searched."""

    game: str
    version: int
    returns: np.ndarray
    lengths: np.ndarray
    statistics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    search: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "game": self.game, "version": self.version, "games": len(self.returns),
            "mean_return": round(self.mean_return, 4), "mean_length": round(float(np.mean(self.lengths)), 2)}
        if games.make(self.game).spec.num_players == 2:
            out.update(wins=int(np.sum(self.returns > 0)), draws=int(np.sum(self.returns == 0)),
                       losses=int(np.sum(self.returns < 0)),
                       losses_as_first=int(np.sum(self.returns[0::2] < 0)),
                       losses_as_second=int(np.sum(self.returns[1::2] < 0)))
        tiles = self.statistics.get("max_tile")
        if tiles is not None:  # 2048: games whose largest tile is at least each threshold
            out["max_tile_at_least"] = {str(t): int(np.sum(tiles >= t)) for t in TILE_THRESHOLDS}
            out["max_tile_largest"] = int(np.max(tiles))
        out.update(self.search)
        return out


class EvaluationStopped(Exception):
    """The stop event was set before the evaluation finished (no result)."""


def evaluate(game_name: str, environment: EnvironmentClient, network: NetworkClient, num_games: int,
             simulations: int, version: int | None = None, seed: int = 0,
             opponent=random_opponent, groups: int = 1,
             stop: threading.Event | None = None,
             metrics: AgentMetrics | None = None, opening_moves: int = 0,
             search_changes: Mapping[str, Any] | None = None) -> EvaluationResult:
    """Plays `num_games` games greedily (no noise, temperature 0) and returns their results.

    The games are played at once in one environment session; each slot counts its first game.
    Every search of the evaluation pins one model version: `version`, or the newest available
    at the start (a version the trainer exports meanwhile is not mixed in); the result reports
    it. `stop` (set by SIGTERM) ends the evaluation between moves with EvaluationStopped.

    Raises PermanentFailure naming the peer and call when the environment or the network
    fails (evaluation does not wait out failures: run it again), and TimeoutError when no
    version becomes available. The search counts in `metrics` (default: a registry of its own).

    `opening_moves`: the first moves of every game (both sides' in two-player games) are
    uniformly random legal moves (from `seed`), so that two deterministic players (greedy
    searches of two model versions) play different games instead of one game `num_games / 2`
    times. They count in the game's length; the result is the players' from there on.

    `search_changes`: settings fields of the game's search to change (e.g. rescale_values), as a
    searcher's flags do (`services.agent.search.config.SEARCHER_OVERRIDES`).
    """
    if opening_moves < 0:
        raise ValueError(f"opening_moves must be >= 0, got {opening_moves}")
    game = games.make(game_name)
    spec = game.spec
    settings = game.settings.replace(num_simulations=simulations, **(search_changes or {}))
    two_player = spec.num_players == 2
    stop = stop if stop is not None else threading.Event()
    search = PipelinedSearch(network, SearchConfig.from_settings(settings), num_games, spec.num_actions,
                             groups=groups, two_player=two_player, metrics=metrics)
    network_address = getattr(network, "address", "")
    environment_address = getattr(environment, "address", "")
    with _failures("network", "GetModelStatus", network_address):
        newest = network.wait_until_available(version, stop=stop)
    if newest is None:
        raise EvaluationStopped()
    pinned = int(version if version is not None else newest)
    rng = np.random.default_rng(seed)
    with _failures("environment", "Open", environment_address):
        opened = environment.open(game_name, num_games, seed=seed)
    session, step = opened.session_id, opened.time_step
    agent_side = np.arange(num_games) % 2 if two_player else np.zeros(num_games, np.int64)
    done = np.zeros(num_games, bool)
    returns = np.zeros(num_games, np.float32)
    lengths = np.zeros(num_games, np.int64)
    # Each game's last observation before its final move, and that move (episode_statistics).
    last_observation = np.zeros((num_games, *spec.observation_shape), np.float32)
    last_action = np.zeros(num_games, np.int32)
    try:
        while not done.all():
            if stop.is_set():
                raise EvaluationStopped()
            with _failures("network", "Predict", network_address, _PREDICT_HINTS):
                result = search.search(step.observation, step.legal_actions, rng, training=False,
                                       temperature=0.0, version=pinned)
            actions = np.array(result.greedy_actions, np.int32)
            opening = (lengths < opening_moves) & ~done
            if two_player:
                # The opponent is asked only for its own moves in unfinished games: a searching
                # opponent (rollout MCTS, alpha-beta) spends its time where it counts. Finished
                # slots (auto-reset games nobody counts) play the agent's legal greedy move.
                theirs = np.flatnonzero((step.to_play != agent_side) & ~done & ~opening)
                if theirs.size:
                    actions[theirs] = opponent(step.observation[theirs], step.legal_actions[theirs], rng)
            if opening.any():
                random_moves = random_opponent(step.observation[opening], step.legal_actions[opening], rng)
                actions[opening] = random_moves
            mover, before = step.to_play, step.observation
            with _failures("environment", "Step", environment_address):
                step = environment.step(session, actions, auto_reset=True)
            live = ~done
            sign = np.where(mover == agent_side, 1.0, -1.0) if two_player else 1.0
            returns[live] += (sign * step.reward)[live]
            lengths[live] += 1
            ended = live & (step.terminated | step.truncated)
            last_observation[ended], last_action[ended] = before[ended], actions[ended]
            done |= ended
    finally:
        try:
            environment.close(session, timeout_s=5.0)
        except grpc.RpcError:
            pass  # the session expires on its own
    if two_player:
        returns = np.sign(returns)
    return EvaluationResult(game_name, pinned, returns, lengths, game.episode_statistics(last_observation, last_action),
                            search={name: getattr(search.config, name) for name in SEARCHER_OVERRIDES})


_PREDICT_HINTS = {
    grpc.StatusCode.NOT_FOUND: "the network no longer serves the pinned version (it keeps the "
                               "newest few loaded): evaluate again, or pass a --version it serves",
}


@contextlib.contextmanager
def _failures(peer: str, method: str, address: str,
              hints: dict[grpc.StatusCode, str] | None = None) -> Iterator[None]:
    """gRPC failures of the calls inside as PermanentFailure naming `peer` and `method`."""
    try:
        yield
    except grpc.RpcError as error:
        raise PermanentFailure.from_error(error, peer, method, address, hints) from error
