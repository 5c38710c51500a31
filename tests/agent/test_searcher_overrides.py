"""Search fields a searcher takes as a flag (SEARCHER_OVERRIDES: rescale_values): the agent's
self-play, the reanalyser, the evaluator's matches and its anchors all search with the value
set in their config, and with the game's when it is None. Self-play's exploration
(SELF_PLAY_OVERRIDES) is the agent's alone."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

import games
from services.agent import evaluate as evaluate_module
from services.agent.config import AgentConfig
from services.agent.metrics import AgentMetrics
from services.agent.pipeline import PipelinedSearch
from services.agent.search.config import SEARCHER_OVERRIDES, SELF_PLAY_OVERRIDES, searcher_changes
from services.agent.selfplay import SelfPlay
from services.reanalyse.config import ReanalyseConfig
from services.reanalyse.metrics import ReanalyseMetrics
from services.reanalyse.worker import Reanalyser
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, FakeReplay, LogSink
from tests.evaluator.evaluator_fakes import make_evaluator

GAME = "connect4"  # its search rescales by default
DEFAULT = games.make(GAME).settings.search.rescale_values


def test_only_the_fields_a_config_sets_are_changes():
    class Config:
        rescale_values = None

    assert DEFAULT is True and SEARCHER_OVERRIDES == ("rescale_values",)
    assert searcher_changes(Config()) == {}
    Config.rescale_values = False
    assert searcher_changes(Config()) == {"rescale_values": False}


@pytest.mark.parametrize("rescale_values, expected", [(None, DEFAULT), (False, False), (True, True)])
def test_self_play_and_reanalysis_search_with_the_configs_value(rescale_values, expected):
    num_actions = games.make(GAME).spec.num_actions
    environment = FakeEnvironment(GAME)
    config = AgentConfig(game=GAME, environment=environment.address, network=FakeNetwork.address,
                         replay="127.0.0.1:3", games_per_batch=4, simulations=4, seed=0,
                         rescale_values=rescale_values)
    selfplay = SelfPlay(config, LogSink().log, environment=environment, network=FakeNetwork(num_actions),
                        replay=FakeReplay(), metrics=AgentMetrics(CollectorRegistry()))
    try:
        assert selfplay.search.config.rescale_values is expected
    finally:
        selfplay.close(timeout_s=1.0)
    reanalyse = ReanalyseConfig(game=GAME, replay="127.0.0.1:1", network="127.0.0.1:2", batch_size=4,
                                simulations=4, metrics_port=0, rescale_values=rescale_values)
    worker = Reanalyser(reanalyse, LogSink("reanalyse").log, None, FakeNetwork(num_actions),
                        metrics=ReanalyseMetrics(CollectorRegistry()))
    assert worker.search.config.rescale_values is expected


def test_self_plays_exploration_comes_from_the_agents_config_and_reaches_no_other_searcher():
    assert SELF_PLAY_OVERRIDES == ("random_opening_moves", "random_branch_probability", "random_branch_plies",
                                   "gumbel_scale")
    search = games.make(GAME).settings.search
    assert (search.gumbel_scale, search.random_opening_moves) == (1.0, 0)  # what the configs change
    num_actions = games.make(GAME).spec.num_actions
    for changes, expected in (({}, (1.0, 0)), ({"gumbel_scale": 2.5, "random_opening_moves": 2}, (2.5, 2))):
        environment = FakeEnvironment(GAME)
        config = AgentConfig(game=GAME, environment=environment.address, network=FakeNetwork.address,
                             replay="127.0.0.1:3", games_per_batch=4, simulations=4, seed=0, **changes)
        selfplay = SelfPlay(config, LogSink().log, environment=environment, network=FakeNetwork(num_actions),
                            replay=FakeReplay(), metrics=AgentMetrics(CollectorRegistry()))
        try:
            assert (selfplay.search.config.gumbel_scale, selfplay.settings.search.random_opening_moves) == expected
            assert selfplay.search.config.rescale_values is DEFAULT
        finally:
            selfplay.close(timeout_s=1.0)
    for name in SELF_PLAY_OVERRIDES:  # the reanalyser and the evaluator have no such field
        assert not hasattr(ReanalyseConfig(game=GAME, replay="127.0.0.1:1", network="127.0.0.1:2"), name)
    with pytest.raises(ValueError, match="AgentConfig.gumbel_scale must be >= 0, got -1"):
        AgentConfig(game=GAME, environment="a:1", network="b:2", replay="c:3", games_per_batch=4,
                    simulations=4, gumbel_scale=-1.0)


@pytest.mark.parametrize("rescale_values, expected", [(None, DEFAULT), (False, False)])
def test_the_evaluators_matches_search_with_the_configs_value(tmp_path, monkeypatch, rescale_values, expected):
    built: list[bool] = []

    class Recording(PipelinedSearch):
        """The real search, remembering the setting it was built with."""

        def __init__(self, network, config, *args, **kwargs):
            built.append(config.rescale_values)
            super().__init__(network, config, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "PipelinedSearch", Recording)
    num_actions = games.make(GAME).spec.num_actions
    evaluator = make_evaluator(tmp_path, game=GAME, network=FakeNetwork(num_actions), ladder="random",
                               rescale_values=rescale_values, max_rounds=1)
    evaluator.run(threading.Event())
    assert [r["opponent"] for r in evaluator.store.records] == ["random"]
    assert built == [expected]
