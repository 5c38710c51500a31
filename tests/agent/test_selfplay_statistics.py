"""SelfPlay exports its finished games' `Game.episode_statistics`: the mean of the last 100 per
statistic and, for 2048's max_tile, a histogram; games that declare none create no series."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from services.agent import metrics as agent_metrics
from services.agent.config import AgentConfig
from services.agent.metrics import AgentMetrics
from services.agent.selfplay import SelfPlay
from services.common.failures import RetryPolicy
from services.common.metrics import parse_metrics
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, FakeReplay, LogSink

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


class Recording(FakeEnvironment):
    """Remembers every finished game's observation before its last move, and that move."""

    def __init__(self, game: str) -> None:
        super().__init__(game)
        self.last: list[tuple[np.ndarray, int]] = []

    def step(self, session_id, actions, auto_reset=False, **kwargs):
        before = self.session.time_step().observation
        step = super().step(session_id, actions, auto_reset, **kwargs)
        for g in np.flatnonzero(step.terminated | step.truncated):
            self.last.append((before[g], int(actions[g])))
        return step


def play(game: str, max_moves: int, B: int = 3) -> tuple[Recording, dict, LogSink]:
    sink, environment = LogSink(), Recording(game)
    metrics = AgentMetrics(CollectorRegistry())
    config = AgentConfig(game=game, environment=environment.address, network=FakeNetwork.address,
                         replay="127.0.0.1:3", games_per_batch=B, simulations=2, groups=1, seed=0,
                         max_moves=max_moves)
    selfplay = SelfPlay(config, sink.log, environment=environment,
                        network=FakeNetwork(environment.game.spec.num_actions), replay=FakeReplay(),
                        policy=FAST, metrics=metrics)
    selfplay.run()
    selfplay.close(timeout_s=1.0)
    return environment, parse_metrics(generate_latest(metrics.registry).decode()), sink


def test_2048_exports_the_recent_mean_and_a_histogram_of_the_largest_tile():
    environment, scraped, sink = play("2048", max_moves=600)
    assert len(environment.last) >= 2, "the fake network's games should end within 600 moves"
    want = environment.game.episode_statistics(np.stack([o for o, _ in environment.last]),
                                                np.array([a for _, a in environment.last]))["max_tile"]
    recent = scraped[agent_metrics.RECENT_MEAN_EPISODE_STATISTIC]
    assert recent == [({"statistic": "max_tile"}, float(np.mean(want[-100:])))]
    histogram = agent_metrics.EPISODE_MAX_TILE
    assert scraped[histogram + "_count"] == [({}, float(len(want)))]
    assert scraped[histogram + "_sum"] == [({}, float(want.sum()))]
    buckets = {float(labels["le"]): value for labels, value in scraped[histogram + "_bucket"]}
    for tile in (4, 8, 16, 32, 64, 128, 256, 512):
        assert buckets[tile] == np.count_nonzero(want <= tile), tile
    finished = sink.events("games_finished")[-1]
    assert finished["recent_mean_max_tile"] == round(float(np.mean(want[-100:])), 3)


def test_games_without_statistics_create_no_statistic_series():
    environment, scraped, sink = play("cartpole", max_moves=60, B=2)
    assert environment.last, "cartpole's games end within 60 moves of a uniform policy"
    assert agent_metrics.RECENT_MEAN_EPISODE_STATISTIC not in scraped
    assert scraped[agent_metrics.EPISODE_MAX_TILE + "_count"] == [({}, 0.0)]
    assert not any(key.startswith("recent_mean_max") for key in sink.events("games_finished")[-1])
