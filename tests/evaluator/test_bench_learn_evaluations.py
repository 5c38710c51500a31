"""benchmarks/learn.py's two-player evaluations come from the fleet's evaluator: its results
file and summary turned into the report's evaluations, and one seed's run over a fake fleet
whose evaluator writes a tiny results file (no services, no training)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from benchmarks import learn
from services.evaluator.config import EvaluatorConfig
from services.evaluator.store import ResultsStore

# The keys of an in-process evaluation of a two-player game (services.agent.evaluate's summary
# plus the benchmark's own), which the report's readers know.
OLD_KEYS = {"elapsed_s", "trainer_step", "env_steps", "game", "version", "games", "mean_return", "mean_length",
            "wins", "draws", "losses", "losses_as_first", "losses_as_second", "replay_games_added",
            "replay_positions_added"}


def match(version: int, opponent: str, wins: int, draws: int, losses: int, first_losses: int = 0) -> dict:
    games = wins + draws + losses
    return {"version": version, "opponent": opponent, "games": games, "wins": wins, "draws": draws,
            "losses": losses, "first": {"wins": 0, "draws": 0, "losses": first_losses},
            "second": {"wins": 0, "draws": 0, "losses": losses - first_losses},
            "simulations": 25, "mean_length": 8.5, "seconds": 3.0, "time": "2026-12-02T15:00:00.000Z"}


def summary(version: int, ratings: dict[str, float]) -> dict:
    return {"game": "tictactoe", "version": version,
            "ratings": [{"player": p, "elo": e, "standard_error": 40.0, "games": 400} for p, e in ratings.items()]}


def test_the_evaluators_ladder_holds_the_target_and_is_valid():
    target = learn.TARGETS["tictactoe"]
    assert target.by_evaluator and not learn.TARGETS["cartpole"].by_evaluator and not learn.TARGETS["2048"].by_evaluator
    args = learn.evaluator_args(target, seed=3)
    flags = dict(zip(args[::2], args[1::2]))
    assert "minimax" in flags["--ladder"].split(",") and flags["--games-per-match"] == "200"
    EvaluatorConfig(game="tictactoe", network="h:1", environment="h:2", state_dir="x", ladder=flags["--ladder"],
                    games_per_match=int(flags["--games-per-match"]), max_anchors=int(flags["--max-anchors"]))
    for game in ("connect4", "othello"):  # the ladders with mcts1000 are valid and rated sparsely
        target = learn.TARGETS[game]
        flags = dict(zip(*[iter(learn.evaluator_args(target, seed=0))] * 2))
        config = EvaluatorConfig(game=game, network="h:1", environment="h:2", state_dir="x",
                                 ladder=flags["--ladder"], games_per_match=int(flags["--games-per-match"]),
                                 rate_every=int(flags["--rate-every"]))
        assert "mcts1000" in config.opponents and config.rate_every == 400
        assert target.reached({"wins": 18, "games": 20}) and not target.reached({"wins": 17, "draws": 3, "games": 20})
    with pytest.raises(ValueError, match="minimax"):
        learn.evaluator_args(learn.NoLossTarget(200, None, "", opponent_name="minimax", ladder=("random",)), 0)


def test_eval_simulations_reach_the_evaluator_alone():
    target = learn.TARGETS["tictactoe"]
    assert "--simulations" not in learn.evaluator_args(target, seed=0)  # the game's, like self-play
    args = learn.evaluator_args(target, seed=0, simulations=64)
    assert args[args.index("--simulations") + 1] == "64"
    config = EvaluatorConfig(game="tictactoe", network="h:1", environment="h:2", state_dir="x",
                             simulations=int(args[args.index("--simulations") + 1]))
    assert config.search_simulations == 64


def test_keep_versions_turns_the_trainers_pruning_off():
    from services.trainer.__main__ import parse_args
    required = ["--game", "tictactoe", "--replay", "h:1", "--models", "m", "--checkpoint-dir", "c"]
    assert learn.trainer_args(3) == ("--seed", "3")
    assert parse_args(required + list(learn.trainer_args(3))).keep_versions == 5  # the default prunes
    config = parse_args(required + list(learn.trainer_args(3, keep_versions=True)))
    assert config.keep_versions == learn.KEEP_ALL_VERSIONS and config.seed == 3


def test_evaluator_records_become_report_evaluations():
    records = [match(100, "random", 150, 20, 30), match(100, "minimax", 0, 150, 50, first_losses=10),
               match(200, "random", 190, 10, 0), match(200, "minimax", 0, 200, 0),
               match(300, "minimax", 0, 190, 10)]  # 300's round is not finished: no refit yet
    state = summary(200, {"minimax": 900.0, "v200": 880.5, "v100": 310.0, "random": 0.0})
    # (elapsed_s, exported version, trainer step, env steps) as the benchmark sampled them
    progress = [(1.0, 0, 40, 500), (2.0, 100, 120, 1500), (3.0, 100, 190, 2500), (4.0, 200, 230, 3100)]
    out = learn.evaluator_evaluations(records, state, "tictactoe", "minimax", progress, 61.23,
                                      extra={"replay_games_added": 9, "replay_positions_added": 77})
    assert [e["version"] for e in out] == [100, 200]
    first, second = out
    assert set(first) == OLD_KEYS | {"elo", "elo_standard_error", "opponent", "ladder"}
    assert first["ladder"] == {"random": {"games": 200, "wins": 150, "draws": 20, "losses": 30},
                               "minimax": {"games": 200, "wins": 0, "draws": 150, "losses": 50}}
    assert (first["wins"], first["draws"], first["losses"], first["games"]) == (0, 150, 50, 200)
    assert (first["losses_as_first"], first["losses_as_second"]) == (10, 40)
    assert first["mean_return"] == -0.25 and first["mean_length"] == 8.5
    assert (first["trainer_step"], first["env_steps"]) == (120, 1500)  # when version 100 was exported
    assert (second["trainer_step"], second["env_steps"]) == (230, 3100)
    assert first["elapsed_s"] == 61.2 and first["replay_games_added"] == 9
    assert (first["elo"], second["elo"], second["elo_standard_error"]) == (310.0, 880.5, 40.0)
    assert learn.TARGETS["tictactoe"].reached(second) and not learn.TARGETS["tictactoe"].reached(first)
    # Versions already reported are not reported again; nothing before a summary.
    assert learn.evaluator_evaluations(records, state, "tictactoe", "minimax", progress, 70.0, done={100, 200}) == []
    assert learn.evaluator_evaluations(records, None, "tictactoe", "minimax", progress, 70.0) == []


def test_reading_the_state_leaves_an_incomplete_last_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(match(100, "minimax", 0, 200, 0))
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write('{"version": 200, "oppo')  # the evaluator is writing it
    records, state = learn.read_evaluator_state(tmp_path)
    assert [r["version"] for r in records] == [100] and state is None
    store.write_summary(summary(100, {"v100": 5.0, "random": 0.0}))
    assert learn.read_evaluator_state(tmp_path)[1]["version"] == 100
    assert (tmp_path / "results.jsonl").read_text().endswith('"oppo')  # not cut: the file is the evaluator's


class FakeFleet:
    """A LocalFleet stand-in: every trainer scrape is one more second of training; its evaluator
    writes a round's results into the state dir the fleet's program gives it."""

    ROUNDS = {3: (100, 7), 6: (200, 0)}  # trainer scrape -> (version rated, losses vs minimax)

    def __init__(self, specs, log_dir, log):
        self.specs = {s.name: s for s in specs}
        evaluator = list(self.specs["evaluator"].args)
        self.state_dir = evaluator[evaluator.index("--state-dir") + 1]
        self.flags = evaluator
        self.processes = {"agent-0": None, "replay": None}
        self.grpc_addresses = {"environment": "127.0.0.1:1"}
        self.ticks = 0

    def start(self):
        pass

    def stop(self):
        pass

    def exited(self):
        return {}

    def scrape(self, name):
        if name == "trainer":
            self.ticks += 1
            if self.ticks in self.ROUNDS:
                version, losses = self.ROUNDS[self.ticks]
                store = ResultsStore(self.state_dir)
                store.append(match(version, "random", 200, 0, 0))
                store.append(match(version, "minimax", 0, 200 - losses, losses))
                store.write_summary(summary(version, {"v100": 300.0, "v200": 870.0, "minimax": 900.0, "random": 0.0}))
            return {"mufleet_trainer_steps_total": 50.0 * self.ticks,
                    "mufleet_trainer_exported_version": 100.0 * (self.ticks // 2)}
        if name == "agent-0":
            return {"mufleet_agent_moves_total": 1000.0 * self.ticks, "process_cpu_seconds_total": 2.04 * self.ticks}
        return {"mufleet_replay_games_added_total": 10.0, "mufleet_replay_positions_added_total": 90.0,
                "process_cpu_seconds_total": 0.5}


class FakeEnvironment:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_two_player_run_reports_the_evaluators_results(tmp_path, monkeypatch):
    fleets = []
    monkeypatch.setattr(learn, "LocalFleet", lambda *a, **k: fleets.append(FakeFleet(*a, **k)) or fleets[-1])
    monkeypatch.setattr(learn, "EnvironmentClient", FakeEnvironment)
    monkeypatch.setattr(learn, "evaluate", lambda *a, **k: pytest.fail("two-player games are not evaluated here"))
    monkeypatch.setattr(learn.time, "sleep", lambda s: None)
    monkeypatch.setattr(learn, "DOCS", tmp_path / "docs")
    (tmp_path / "runs").mkdir()  # main() makes the run root
    report = learn.run_seed("tictactoe", 3, budget_s=600, eval_interval_s=60, run_root=tmp_path / "runs",
                            console=Console(file=io.StringIO()), agents=1, env_steps_budget=50_000,
                            eval_simulations=64, keep_versions=True)
    fleet = fleets[0]
    trainer = list(fleet.specs["trainer"].args)
    assert trainer[trainer.index("--keep-versions") + 1] == str(learn.KEEP_ALL_VERSIONS) and report["kept_versions"]
    assert "--keep-versions" not in fleet.flags
    assert fleet.flags[fleet.flags.index("--simulations") + 1] == "64" and report["eval_simulations"] == 64
    assert fleet.state_dir == str(tmp_path / "runs" / "tictactoe-seed3" / "evaluator")
    assert fleet.flags[fleet.flags.index("--ladder") + 1] == "random,minimax"
    assert [e["version"] for e in report["evaluations"]] == [100, 200]  # stopped at the target
    assert [e["losses"] for e in report["evaluations"]] == [7, 0]
    assert report["reached"] and report["evaluated_by"] == "evaluator"
    reached = report["evaluations"][-1]
    assert report["time_to_target_s"] == reached["elapsed_s"]
    # exported at the 4th look, when the agents had played 3,000 moves (they are scraped just before)
    assert report["env_steps_to_target"] == reached["env_steps"] == 3000
    assert reached["elo"] == 870.0
    # where the machine's time went, by service: read when the evaluation was, and at the end
    assert reached["replay_positions_added"] == 90
    assert reached["cpu_s"] == {"agent-0": round(2.04 * 6, 1), "replay": 0.5}
    assert report["cpu_s"] == reached["cpu_s"] and report["elapsed_s"] >= 0
    assert learn.cpu_shares({"replay": 30.0, "trainer": 90.0}, 60.0) == {"trainer": 1.5, "replay": 0.5}
    written = json.loads((tmp_path / "docs" / "tictactoe-seed3.json").read_text())
    assert written["evaluations"] == report["evaluations"]
    assert (tmp_path / "docs" / "tictactoe-seed3.png").exists()
    summary_file = learn.write_summary("tictactoe")
    assert summary_file["seeds_reaching_target"] == 1 and summary_file["seeds"][3]["last"]["version"] == 200
