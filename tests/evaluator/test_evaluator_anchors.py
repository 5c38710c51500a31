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
    # It searches with the evaluator's search changes (the rated version's search), else the game's.
    assert opponent.search.config.rescale_values is game.settings.search.rescale_values is False
    changed = ModelOpponent(network, GAME, simulations=4, max_games=6, search_changes={"rescale_values": True})
    assert changed.search.config.rescale_values is True


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


def test_once_the_network_unloads_a_version_the_rest_of_its_round_plays_in_process(tmp_path, models):
    """The real server does not load a version again once it has unloaded it: a later match of
    the round waiting for it there would time out (the end of a Connect Four run's ratings, when
    the anchor match came after the mcts1000 match that had fallen back)."""
    import grpc

    from tests.agent.agent_fakes import FakeNetwork
    from tests.grpc_fakes import FakeRpcError

    class UnloadsAfterOneMatch(FakeNetwork):
        """Serves version 2 until the first match's last move, then has unloaded it: Predict
        finds it NOT_FOUND and waiting for it times out, as NetworkClient's wait does."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.unloaded = False
            self.waits = 0

        def wait_until_available(self, version=None, timeout_s: float = 120.0, stop=None) -> int:
            self.waits += 1
            if self.unloaded:
                raise TimeoutError(f"model 'muzero' has no version {version} available after {timeout_s}s")
            return self.newest

        def predict_future(self, signature, inputs, version=None, timeout_s=None):
            if self.unloaded:
                raise FakeRpcError(grpc.StatusCode.NOT_FOUND, f"version {version} is not loaded")
            return super().predict_future(signature, inputs, version, timeout_s)

    sink = LogSink("evaluator")
    network = UnloadsAfterOneMatch(9, newest=2)
    evaluator = make_evaluator(tmp_path, network=network, sink=sink, ladder="random,minimax,mcts100",
                               models=str(models))
    real_play = evaluator.play_match

    def play_then_unload(version, opponent, stop=None):
        record = real_play(version, opponent, stop)
        network.unloaded = True  # between the round's matches, as a slow match lets it happen
        return record

    evaluator.play_match = play_then_unload
    assert evaluator.run_round(2)
    assert [(r["version"], r["opponent"], r["games"]) for r in evaluator.store.records] == [
        (2, "random", 4), (2, "minimax", 4), (2, "mcts100", 4)]
    [fallback] = sink.events("version_played_in_process")
    assert (fallback["version"], fallback["opponent"]) == (2, "minimax")
    assert "no version 2 available" in fallback["details"]
    assert not sink.events("version_unavailable")
    assert network.waits == 2  # mcts100 went straight to the copy: no second timeout
    # The next round's version is asked of the server again.
    network.unloaded, network.newest = False, 3
    evaluator.play_match = real_play
    assert evaluator.play_match(3, "random") is not None
    assert network.waits == 3 and len(sink.events("version_played_in_process")) == 1
