"""Earlier versions as anchors: every anchor_every versions the rated version is copied out of
the trainer's model directory, later versions play it (loaded in process, searching greedily),
at most max_anchors are kept, and a restarted evaluator finds them again."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import games
from models.export import export_version, load_version
from models.networks import MuZeroNetwork
from services.agent.local_network import LocalNetwork
from services.evaluator import metrics as evaluator_metrics
from services.evaluator.anchors import ModelOpponent
from tests.agent.agent_fakes import LogSink
from tests.evaluator.evaluator_fakes import ScriptedNetwork, make_evaluator, scraped

GAME = "tictactoe"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The trainer's model directory with versions 0 and 2 of a tiny tic-tac-toe network."""
    game = games.make(GAME)
    settings = game.settings.replace(hidden_size=4, fc_layers=(8,))
    base = tmp_path_factory.mktemp("models") / "muzero"
    for version in (0, 2):
        export_version(MuZeroNetwork(game.spec, settings, seed=version), base, version)
    return base


def test_versions_are_kept_every_v_versions_and_later_versions_play_them(tmp_path, models):
    sink = LogSink("evaluator")
    # 0 is kept (the first), 1 is not (1 < 0 + 2) and plays v0, 2 is kept and plays v0, then v0
    # is dropped (max_anchors 1) and 3 plays v2 only.
    evaluator = make_evaluator(tmp_path, network=ScriptedNetwork(9, [0, 1, 2, 3]), sink=sink, ladder="random",
                               models=str(models), anchor_every=2, max_anchors=1, max_rounds=4)
    evaluator.run(threading.Event())
    played = [(r["version"], r["opponent"]) for r in evaluator.store.records]
    assert played == [(0, "random"), (1, "random"), (1, "v0"), (2, "random"), (2, "v0"), (3, "random"), (3, "v2")]
    assert [e["version"] for e in sink.events("anchor_kept")] == [0, 2]
    assert sink.events("anchor_kept")[1]["removed"] == [0]
    assert evaluator.anchors.versions == [2]
    assert sorted(p.name for p in (tmp_path / "state" / "anchors").iterdir()) == ["2"]
    for r in evaluator.store.records:
        assert r["wins"] + r["draws"] + r["losses"] == 4
        # model against model opens at random (both search deterministically); fixed opponents do not
        assert r.get("opening_moves", 0) == (2 if r["opponent"].startswith("v") else 0)
    samples = scraped(evaluator)
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=v0}"] == 2
    assert samples[evaluator_metrics.ANCHORS] == 1
    ratings = evaluator.ratings.ratings
    assert set(ratings) == {"random", "v0", "v1", "v2", "v3"}
    # a restart finds the kept anchor
    again = make_evaluator(tmp_path, network=ScriptedNetwork(9, [4]), ladder="random", models=str(models),
                           anchor_every=2, max_anchors=1)
    assert again.anchors.versions == [2] and again.missing(4) == ["random", "v2"]


def test_a_model_opponent_plays_its_models_greedy_search_move_for_any_number_of_games(models):
    game = games.make(GAME)
    network = LocalNetwork(load_version(models, 2))
    opponent = ModelOpponent(network, GAME, simulations=4, max_games=6)
    state = game.reset(6, seed=3)
    observation, legal = game.observation(state).astype(np.float32), game.legal_actions(state)
    full = opponent(observation, legal, np.random.default_rng(0))
    assert full.shape == (6,) and legal[np.arange(6), full].all()
    few = opponent(observation[:2], legal[:2], np.random.default_rng(0))
    assert few.shape == (2,) and legal[np.arange(2), few].all()
    with pytest.raises(ValueError, match="7 games"):
        opponent(np.repeat(observation[:1], 7, axis=0), np.repeat(legal[:1], 7, axis=0), np.random.default_rng(0))


def test_a_version_the_network_unloads_mid_round_is_played_from_its_copy_in_process(tmp_path, models):
    import grpc

    from tests.agent.agent_fakes import FakeNetwork
    from tests.grpc_fakes import FakeRpcError

    class Unloaded(FakeNetwork):
        """Serves nothing: every Predict finds its pinned version unloaded."""

        def predict_future(self, signature, inputs, version=None, timeout_s=None):
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, f"version {version} is not loaded")

    sink = LogSink("evaluator")
    evaluator = make_evaluator(tmp_path, network=Unloaded(9, newest=2), sink=sink, ladder="random",
                               models=str(models), max_anchors=1)
    assert evaluator.run_round(2)  # version 2 is on disk: loaded at the round's start
    [record] = evaluator.store.records
    assert (record["version"], record["opponent"], record["games"]) == (2, "random", 4)
    assert [e["version"] for e in sink.events("version_played_in_process")] == [2]
    # Version 1 was pruned from the trainer's directory: nothing to fall back on, the round ends.
    assert not evaluator.run_round(1)
    assert sink.events("version_not_pinned")[0]["version"] == 1
    assert sink.events("version_unavailable")[0]["version"] == 1
