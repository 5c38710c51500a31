"""The evaluator against real servers in this process: an environment server and a network
server serving an exported tiny tic-tac-toe model. One round against the random player is
recorded, its metrics are scraped, summary.json says the same, and a stop ends it cleanly."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

import games
from models.export import export_version
from models.networks import MuZeroNetwork
from services.common.metrics import flat_metrics
from services.environment.config import EnvironmentConfig
from services.environment.server import serve as serve_environment
from services.evaluator import metrics as evaluator_metrics
from services.evaluator.config import EvaluatorConfig
from services.evaluator.service import serve as serve_evaluator
from services.evaluator.store import SUMMARY_FILE, ResultsStore
from services.launcher.local import wait_for
from services.network.config import ModelEntry, NetworkConfig
from services.network.metrics import NetworkMetrics
from services.network.server import serve as serve_network
from tests.agent.agent_fakes import LogSink

pytestmark = pytest.mark.integration

GAME = "tictactoe"
VERSION = 5


def test_one_round_against_real_servers_is_recorded_scraped_and_summarised(tmp_path):
    game = games.make(GAME)
    models = tmp_path / "models" / "muzero"
    export_version(MuZeroNetwork(game.spec, game.settings.replace(hidden_size=4, fc_layers=(8,)), seed=0),
                   models, VERSION)
    environment = serve_environment(EnvironmentConfig(port=0, metrics_port=0), LogSink("environment").log,
                                    CollectorRegistry())
    network = serve_network(NetworkConfig(models=(ModelEntry(name="muzero", base_path=str(models)),), port=0,
                                          rest_api_port=0), LogSink("network").log,
                            metrics=NetworkMetrics(CollectorRegistry()))
    sink = LogSink("evaluator")
    try:
        config = EvaluatorConfig(game=GAME, network=network.address, environment=environment.address,
                                 state_dir=str(tmp_path / "evaluator"), ladder="random", games_per_match=4,
                                 simulations=2, poll_s=0.05, metrics_port=0)
        worker = serve_evaluator(config, sink.log, registry=CollectorRegistry())
        try:
            assert worker.wait_ready(60), sink.stream.getvalue()
            assert wait_for(lambda: bool(sink.events("waiting_for_version")) or not worker.running,
                            timeout_s=120, poll_s=0.05), sink.stream.getvalue()
            assert worker.evaluator.rounds == 1, sink.stream.getvalue()
            url = f"http://127.0.0.1:{worker.ports['metrics']}/metrics"
            samples = flat_metrics(urllib.request.urlopen(url, timeout=10).read().decode())
        finally:
            worker.stop(60)
        assert worker.exit_code == 0, sink.stream.getvalue()
    finally:
        network.stop()
        environment.stop()

    [record] = ResultsStore(tmp_path / "evaluator").records
    assert (record["version"], record["opponent"], record["games"]) == (VERSION, "random", 4)
    assert record["wins"] + record["draws"] + record["losses"] == 4
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=random}"] == 1
    assert samples[evaluator_metrics.GAMES_TOTAL] == 4
    assert samples[evaluator_metrics.RATED_VERSION] == VERSION
    assert samples[evaluator_metrics.ELO + "{player=random}"] == 0.0
    summary = json.loads((tmp_path / "evaluator" / SUMMARY_FILE).read_text())
    assert summary["version"] == VERSION and summary["anchor"] == "random"
    newest = summary["newest"]
    assert samples[evaluator_metrics.NEWEST_ELO] == pytest.approx(newest["elo"], abs=0.06)
    assert samples[evaluator_metrics.ELO + f"{{player=v{VERSION}}}"] == pytest.approx(newest["elo"], abs=0.06)
    [result] = newest["results"]
    assert samples[evaluator_metrics.WIN_RATE + "{opponent=random}"] == pytest.approx(result["win_rate"])
    events = [e["event"] for e in sink.events()]
    for event in ("ready", "started", "round", "match", "ratings", "waiting_for_version", "stopped"):
        assert event in events, events
    assert events[-1] == "stopped"
