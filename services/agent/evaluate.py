"""Evaluation: greedy play of M games with the latest or a given model version.

One-player games report the mean return. Two-player games are played against an opponent
(a uniformly random player, or tic-tac-toe's exact minimax player), the agent taking the first player's side in half of the games
and the second's in the other half, and report wins, draws and losses from the agent's view.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import games
from services.agent.opponents import random_opponent
from services.agent.pipeline import PipelinedSearch
from services.agent.search import SearchConfig
from services.environment.client import EnvironmentClient
from services.network.client import NetworkClient


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Per game: returns float32 [M] from the agent's view (one-player: the game's return;
    two-player: +1 win, 0 draw, -1 loss) and lengths int [M]. In two-player games the agent
    moves first in the even games and second in the odd ones."""

    game: str
    version: int
    returns: np.ndarray
    lengths: np.ndarray

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
        return out


def evaluate(game_name: str, environment: EnvironmentClient, network: NetworkClient, num_games: int,
             simulations: int, version: int | None = None, seed: int = 0,
             opponent=random_opponent, groups: int = 1) -> EvaluationResult:
    """Plays `num_games` games greedily (no noise, temperature 0) and returns their results.

    The games are played at once in one environment session; each slot counts its first game.
    """
    game = games.make(game_name)
    spec = game.spec
    settings = game.settings.replace(num_simulations=simulations)
    two_player = spec.num_players == 2
    search = PipelinedSearch(network, SearchConfig.from_settings(settings), num_games, spec.num_actions,
                             groups=groups, two_player=two_player)
    if version is not None:
        network.wait_until_available(version)
    rng = np.random.default_rng(seed)
    opened = environment.open(game_name, num_games, seed=seed)
    session, step = opened.session_id, opened.time_step
    agent_side = np.arange(num_games) % 2 if two_player else np.zeros(num_games, np.int64)
    done = np.zeros(num_games, bool)
    returns = np.zeros(num_games, np.float32)
    lengths = np.zeros(num_games, np.int64)
    used_version = -1
    try:
        while not done.all():
            result = search.search(step.observation, step.legal_actions, rng, training=False,
                                   temperature=0.0, version=version)
            used_version = int(result.versions.max())
            actions = result.greedy_actions
            if two_player:
                actions = np.where(step.to_play == agent_side, actions,
                                   opponent(step.observation, step.legal_actions, rng)).astype(np.int32)
            mover = step.to_play
            step = environment.step(session, actions, auto_reset=True)
            live = ~done
            sign = np.where(mover == agent_side, 1.0, -1.0) if two_player else 1.0
            returns[live] += (sign * step.reward)[live]
            lengths[live] += 1
            done |= step.terminated | step.truncated
    finally:
        environment.close(session)
    if two_player:
        returns = np.sign(returns)
    return EvaluationResult(game_name, used_version, returns, lengths)

