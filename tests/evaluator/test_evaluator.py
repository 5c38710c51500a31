"""The evaluator's loop over small fakes (the real game rules in process, a network answering
uniform policies): a round plays every ladder opponent and records it, the results survive a
restart (and a torn last line), the ratings are refit over every round, one-player games
record mean returns, failures are waited out and a stop ends a round between moves."""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest

from services.evaluator import metrics as evaluator_metrics
from services.evaluator.config import EvaluatorConfig, default_ladder, fitting_opponents
from services.evaluator.evaluator import SOLO
from services.evaluator.ratings import MatchResult, fit_ratings, wilson_interval
from services.evaluator.store import RESULTS_FILE, SUMMARY_FILE, ResultsStore, StateError
from tests.agent.agent_fakes import FakeEnvironment, FakeNetwork, LogSink
from tests.evaluator.evaluator_fakes import ScriptedNetwork, make_evaluator, scraped


def test_a_round_plays_every_ladder_opponent_and_records_each_side(tmp_path):
    sink = LogSink("evaluator")
    network = FakeNetwork(9, newest=2)
    evaluator = make_evaluator(tmp_path, network=network, sink=sink)
    assert evaluator.run_round(2)
    records = ResultsStore(tmp_path / "state").records  # read back from disk
    assert [(r["version"], r["opponent"], r["games"]) for r in records] == [(2, "random", 4), (2, "minimax", 4)]
    for r in records:
        assert r["wins"] + r["draws"] + r["losses"] == 4
        for key in ("wins", "draws", "losses"):
            assert r["first"][key] + r["second"][key] == r[key]
        assert sum(r["first"].values()) == sum(r["second"].values()) == 2
        assert r["simulations"] == 2 and r["seconds"] >= 0 and r["time"].endswith("Z")
    assert records[1]["wins"] == 0, "nobody beats the perfect tic-tac-toe player"
    assert set(network.pinned) == {2}, "every search of the round pins its version"
    assert [e["opponent"] for e in sink.events("match")] == ["random", "minimax"]
    assert sink.events("ratings")[0]["anchor"] == "random"
    samples = scraped(evaluator)
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=random}"] == 1
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=minimax}"] == 1
    assert samples[evaluator_metrics.GAMES_TOTAL] == 8
    assert samples[evaluator_metrics.RATED_VERSION] == 2
    assert samples[evaluator_metrics.MATCH_SECONDS + "_count{opponent=random}"] == 1
    rate = (records[0]["wins"] + 0.5 * records[0]["draws"]) / 4
    assert samples[evaluator_metrics.WIN_RATE + "{opponent=random}"] == pytest.approx(rate)
    low, high = wilson_interval(records[0]["wins"] + 0.5 * records[0]["draws"], 4)
    assert samples[evaluator_metrics.WIN_RATE_INTERVAL + "{bound=low,opponent=random}"] == pytest.approx(low)
    assert samples[evaluator_metrics.WIN_RATE_INTERVAL + "{bound=high,opponent=random}"] == pytest.approx(high)
    assert 0.0 <= low <= rate <= high <= 1.0 and high - low > 0.3  # 4 games: a wide interval
    assert samples[evaluator_metrics.ELO + "{player=random}"] == 0.0
    summary = json.loads((tmp_path / "state" / SUMMARY_FILE).read_text())
    assert summary["version"] == 2 and summary["anchor"] == "random" and summary["matches"] == 2
    assert {row["player"] for row in summary["ratings"]} == {"random", "minimax", "v2"}
    newest = summary["newest"]
    assert samples[evaluator_metrics.NEWEST_ELO] == pytest.approx(newest["elo"], abs=0.06)
    for result in newest["results"]:
        assert 0 <= result["win_rate_low"] <= result["win_rate"] <= result["win_rate_high"] <= 1


def test_the_loop_rates_each_new_version_and_refits_over_all_rounds(tmp_path):
    sink = LogSink("evaluator")
    network = ScriptedNetwork(9, [2, 2, 5])  # version 2, again 2 (nothing new: wait), then 5
    evaluator = make_evaluator(tmp_path, network=network, sink=sink, max_rounds=2)
    evaluator.run(threading.Event())
    assert evaluator.rounds == 2
    assert [e["newest"] for e in sink.events("waiting_for_version")] == [2]
    records = evaluator.store.records
    assert [(r["version"], r["opponent"]) for r in records] == [(2, "random"), (2, "minimax"), (5, "random"),
                                                                (5, "minimax")]
    want = fit_ratings([MatchResult(f"v{r['version']}", r["opponent"], r["wins"], r["draws"], r["losses"])
                        for r in records])
    assert evaluator.ratings.ratings == pytest.approx(want.ratings)
    samples = scraped(evaluator)
    assert samples[evaluator_metrics.RATED_VERSION] == 5
    assert samples[evaluator_metrics.NEWEST_ELO] == pytest.approx(want.ratings["v5"])
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=random}"] == 2
    # Elo gauges: the opponents and the newest version, not every version ever rated
    assert evaluator_metrics.ELO + "{player=v5}" in samples and evaluator_metrics.ELO + "{player=v2}" not in samples
    summary = json.loads((tmp_path / "state" / SUMMARY_FILE).read_text())
    assert {row["player"] for row in summary["ratings"]} == {"random", "minimax", "v2", "v5"}
    assert len(summary["latest_results"]) == 4 and summary["newest"]["version"] == 5


def test_the_results_survive_a_restart_and_a_torn_last_line(tmp_path):
    first = make_evaluator(tmp_path)
    assert first.run_round(2)
    path = tmp_path / "state" / RESULTS_FILE
    whole = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'{"version": 3, "opponent": "ran')  # a write cut by kill -9
    sink = LogSink("evaluator")
    again = make_evaluator(tmp_path, network=ScriptedNetwork(9, [2, 3]), sink=sink, max_rounds=1)
    assert [(r["version"], r["opponent"]) for r in again.store.records] == [(2, "random"), (2, "minimax")]
    assert again.store.torn > 0 and path.read_bytes() == whole, "the torn line is cut off the file"
    assert not again.due(2) and again.due(3)
    again.run(threading.Event())
    [started] = sink.events("started")
    assert (started["resumed_matches"], started["rated"]) == (2, 2) and started["torn_bytes_dropped"] > 0
    assert again.rounds == 1, "version 2 was rated before the restart: only 3 is played"
    assert [(r["version"], r["opponent"]) for r in ResultsStore(tmp_path / "state").records] == \
        [(2, "random"), (2, "minimax"), (3, "random"), (3, "minimax")]
    # A line torn after its newline was written (a complete last line is never torn) and
    # garbage in the middle of the history is refused.
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + [b"not json\n"] + lines[1:]))
    with pytest.raises(StateError, match=f"{RESULTS_FILE}:2"):
        ResultsStore(tmp_path / "state")


def test_a_round_cut_by_a_stop_is_completed_after_a_restart_without_replaying(tmp_path):
    stopping = make_evaluator(tmp_path)
    assert stopping.play_match(2, "random") is not None  # then the process was stopped
    stop = threading.Event()
    stop.set()
    assert stopping.play_match(2, "minimax", stop) is None, "a stop ends the match between moves"
    assert len(stopping.store.records) == 1
    again = make_evaluator(tmp_path, network=FakeNetwork(9, newest=2))
    assert again.due(2) and again.missing(2) == ["minimax"]
    assert again.run_round(2)
    assert [r["opponent"] for r in again.store.records] == ["random", "minimax"]


def test_rate_every_skips_versions_too_close_to_the_last_rated_one(tmp_path):
    evaluator = make_evaluator(tmp_path, ladder="random", rate_every=300)
    assert evaluator.due(100), "nothing rated yet: the first version is due"
    assert evaluator.run_round(100)
    assert [evaluator.due(v) for v in (100, 200, 399, 400, 900)] == [False, False, False, True, True]
    every = make_evaluator(tmp_path / "every", ladder="random")
    assert every.run_round(100) and every.due(101) and not every.due(100)


def test_a_peer_failure_is_waited_out_and_the_match_played_again(tmp_path):
    environment = FakeEnvironment("tictactoe")
    environment.step_failures = [(grpc.StatusCode.UNAVAILABLE, False)]
    sink = LogSink("evaluator")
    evaluator = make_evaluator(tmp_path, environment=environment, sink=sink, ladder="random")
    record = evaluator.play_match(2, "random")
    assert record["games"] == 4 and len(evaluator.store.records) == 1
    assert sink.events("peer_unavailable")[0]["peer"] == "environment"
    assert scraped(evaluator)[evaluator_metrics.PEER_FAILURES_TOTAL + "{code=UNAVAILABLE,peer=environment}"] == 1


def test_a_version_the_network_no_longer_serves_ends_its_round(tmp_path):
    class Unloaded(FakeNetwork):
        def predict_future(self, signature, inputs, version=None, timeout_s=None):
            from tests.grpc_fakes import FakeRpcError
            raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "version 2 not loaded")

    sink = LogSink("evaluator")
    evaluator = make_evaluator(tmp_path, network=Unloaded(9, newest=2), sink=sink)
    assert not evaluator.run_round(2)
    assert sink.events("version_unavailable")[0]["version"] == 2
    assert not evaluator.due(2) and evaluator.store.records == []


@pytest.mark.parametrize("game", ["cartpole", "2048"])
def test_a_one_player_game_records_its_mean_return(tmp_path, game):
    evaluator = make_evaluator(tmp_path, game=game, network=FakeNetwork(2 if game == "cartpole" else 4, newest=7),
                               games_per_match=3)
    assert evaluator.ladder_for(7) == [SOLO]
    assert evaluator.run_round(7)
    [record] = ResultsStore(tmp_path / "state").records
    assert (record["version"], record["opponent"], record["games"]) == (7, SOLO, 3)
    assert "wins" not in record and np.isfinite(record["mean_return"])
    samples = scraped(evaluator)
    assert samples[evaluator_metrics.MEAN_RETURN] == pytest.approx(record["mean_return"])
    assert samples[evaluator_metrics.MATCHES_TOTAL + "{opponent=none}"] == 1
    summary = json.loads((tmp_path / "state" / SUMMARY_FILE).read_text())
    assert summary["newest"]["mean_return"] == record["mean_return"] and "ratings" not in summary
    if game == "2048":
        assert record["max_tile_largest"] >= 4 and set(record["max_tile_at_least"]) == \
            {"256", "512", "1024", "2048", "4096"}
        assert samples[evaluator_metrics.MAX_TILE_FRACTION + "{tile=256}"] == \
            record["max_tile_at_least"]["256"] / 3


def test_the_default_ladder_is_every_fitting_opponent_but_the_slow_ones():
    assert default_ladder("tictactoe") == ("random", "minimax", "mcts100")
    assert default_ladder("connect4") == ("random", "mcts100", "alphabeta")
    assert "mcts1000" in fitting_opponents("connect4")
    assert default_ladder("cartpole") == ()
    config = EvaluatorConfig(game="othello", network="h:1", environment="h:2", state_dir="s")
    assert config.opponents == ("random", "mcts100")
    assert EvaluatorConfig(game="othello", network="h:1", environment="h:2", state_dir="s",
                           ladder="mcts1000, random").opponents == ("mcts1000", "random")


def test_config_refuses_bad_values_naming_them():
    good = dict(game="tictactoe", network="127.0.0.1:1", environment="127.0.0.1:2", state_dir="s")
    for fields, message in (
            ({"ladder": "random,alphabeta"}, "'alphabeta' cannot play tictactoe; those that can: random, minimax"),
            ({"ladder": "nobody"}, "no opponent 'nobody'"),
            ({"ladder": "random,random"}, "twice"),
            ({"games_per_match": 5}, "games_per_match must be even .* got 5"),
            ({"games_per_match": 0}, "games_per_match must be >= 1, got 0"),
            ({"anchor_every": 0}, "anchor_every must be >= 1, got 0"),
            ({"rate_every": -1}, "rate_every must be >= 0, got -1"),
            ({"max_anchors": 0}, "max_anchors must be >= 1, got 0"),
            ({"simulations": -1}, "simulations must be >= 0, got -1"),
            ({"poll_s": 0.0}, "poll_s must be > 0"),
            ({"network": "nowhere"}, "network must be host:port, got 'nowhere'"),
            ({"state_dir": ""}, "state_dir"),
            ({"game": "cartpole", "ladder": "random"}, "ladder must be empty for the one-player game cartpole")):
        with pytest.raises(ValueError, match=message):
            EvaluatorConfig(**{**good, **fields})
    EvaluatorConfig(**{**good, "game": "cartpole"}, games_per_match=3)  # odd is fine with one player
    # --models is ignored where there is no ladder (the fleet passes it for every game)
    assert not EvaluatorConfig(**{**good, "game": "2048"}, models="m").keeps_anchors
    assert EvaluatorConfig(**good, models="m").keeps_anchors
