"""Learning that works: runs the local fleet for a wall-clock budget and evaluates greedy play.

    python -m benchmarks.learn --game cartpole --seeds 0 1 2 --budget-min 20
    make bench-learn GAME=tictactoe SEEDS="0 1 2"

One-player games: every `--eval-interval-s` the newest model version plays greedily (no noise,
temperature 0) in a separate environment session of this process: cartpole 100 episodes
(target: mean return >= 475); 2048 100 games (target: mean score >= 31,000 with the 2048 tile
in at least half; each evaluation records the share of games reaching 256 ... 4096 and the mean
game length). Two-player games are evaluated by the fleet's evaluator node
(services/evaluator, docs/evaluator.md), which rates each new version as soon as it finished
the previous one: tictactoe plays a ladder of random and an exact minimax player, 200 games a
match, 100 as X and 100 as O (target: no losses against minimax); this process reads its
results file and summary (<run-dir>/evaluator) and reports every rated version's games against
minimax with its Elo (`evaluator_evaluations`). A seed's run stops at its target or at the budget. Each run writes
docs/learning/<game>-seed<k>.json (settings, every evaluation, time to target) and a PNG
curve; docs/learning/<game>.json summarizes the seeds. With --keep-going a run evaluates until
the budget is spent, to show whether the target holds once reached; it writes
<game>-seed<k>-full.json and .png, which the summary leaves out. Every evaluation, and the
report at the run's end, records where the machine's time went: each service's CPU seconds
since it started (`cpu_s`, from its process_cpu_seconds_total).

With `--preset NAME` (services/launcher/presets.py) the fleet runs that regime and the reports
are docs/learning/<game>-<preset>-seed<k>.json, summarized in <game>-<preset>.json. With
`--env-steps-budget N` a run also stops once the environment has played N steps (every
evaluation records the steps played so far), and the target counts as reached only at an
evaluation within those N steps: the sample-efficiency measure. With `--eval-simulations N`
the model's searches in the evaluations (the evaluator's, or this process's) run N simulations
a move instead of the game's `num_simulations`, which self-play keeps: how strong the same
network is under a larger search budget at play time (the report records `eval_simulations`).
With `--keep-versions` the trainer prunes none of its exported versions, so that a tic-tac-toe
run's every version can be audited exactly afterwards (`python -m benchmarks.audit --models
<run-root>/<stem>-seed<k>/models/muzero`), not only sampled by the evaluator's 200 games.

    python -m benchmarks.learn --game cartpole --preset sample-efficient --env-steps-budget 50000 \
        --budget-min 30 --eval-interval-s 30 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402

import games  # noqa: E402
from services.agent.evaluate import evaluate  # noqa: E402
from services.agent.opponents import random_opponent, tictactoe_minimax  # noqa: E402
from services.common.logs import get_logger  # noqa: E402
from services.common.metrics import sum_samples  # noqa: E402
from services.agent import metrics as agent_metrics  # noqa: E402
from services.evaluator.store import RESULTS_FILE, SUMMARY_FILE  # noqa: E402
from services.environment.client import EnvironmentClient  # noqa: E402
from services.launcher.presets import PRESETS  # noqa: E402
from services.launcher.local import LocalFleet  # noqa: E402
from services.launcher.topology import FleetConfig, build_topology  # noqa: E402
from services.replay import metrics as replay_metrics  # noqa: E402
from services.trainer import metrics as trainer_metrics  # noqa: E402
from models.export import list_versions, load_version  # noqa: E402
from services.agent.local_network import LocalNetwork  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "learning"
# prometheus_client's process collector, in every service's registry: the process's user + system CPU.
CPU_SECONDS = "process_cpu_seconds_total"


@dataclasses.dataclass(frozen=True)
class Target:
    """What "learned" means for a game: evaluation games, opponent, and the pass test.

    Two-player games name their opponent (`opponent_name`, in services.agent.opponents) and
    the evaluator's ladder (`ladder`, which holds it): the fleet's evaluator plays it with
    `games` games a match, and the evaluations are its matches against that opponent."""

    games: int
    opponent: object
    description: str
    opponent_name: str = ""
    ladder: tuple[str, ...] = ()
    rate_every: int = 0

    def reached(self, summary: dict) -> bool:
        raise NotImplementedError

    @property
    def by_evaluator(self) -> bool:
        """Evaluated by the fleet's evaluator node (two-player games), not in this process."""
        return bool(self.opponent_name)


class ReturnTarget(Target):
    def reached(self, summary: dict) -> bool:
        return summary["mean_return"] >= 475.0


class NoLossTarget(Target):
    def reached(self, summary: dict) -> bool:
        return summary["losses"] == 0


class WinRateTarget(Target):
    """Two-player games against a search opponent: at least 90% wins (draws do not count) over
    the match, half the games as each side."""

    def reached(self, summary: dict) -> bool:
        return summary["wins"] >= 0.9 * summary["games"]


class ScoreTarget(Target):
    """2048: LightZero's published Stochastic MuZero mean at 2M environment steps, with the
    2048 tile in at least half of the games."""

    def reached(self, summary: dict) -> bool:
        return summary["mean_return"] >= 31_000 and summary["max_tile_at_least"]["2048"] * 2 >= summary["games"]


TARGETS = {
    "cartpole": ReturnTarget(100, random_opponent, "mean greedy return >= 475 over 100 episodes"),
    # random is the evaluator's rating anchor (Elo 0); mcts100, of its default ladder, is left
    # out: 200 games a match of rollout search would slow every round on a 2-core machine.
    "tictactoe": NoLossTarget(200, tictactoe_minimax, "no losses in 200 games against minimax (100 as X, 100 as O)",
                              opponent_name="minimax", ladder=("random", "minimax")),
    # mcts1000 searches a few moves a second for 20 games at once on two cores: a version is
    # rated every 400 trainer steps (rate_every) so that the ladder takes a share of a core.
    "connect4": WinRateTarget(20, None, ">= 90% wins against MCTS with 1,000 random-rollout simulations "
                                        "(10 games as first player, 10 as second)",
                              opponent_name="mcts1000", ladder=("random", "mcts100", "mcts1000"), rate_every=400),
    "othello": WinRateTarget(20, None, ">= 90% wins against MCTS with 1,000 random-rollout simulations "
                                       "(10 games as black, 10 as white)",
                             opponent_name="mcts1000", ladder=("random", "mcts100", "mcts1000"), rate_every=400),
    "2048": ScoreTarget(100, random_opponent, "mean score >= 31,000 over 100 greedy games, the 2048 tile in >= 50"),
}


def evaluator_args(target: Target, seed: int, simulations: int = 0) -> tuple[str, ...]:
    """The evaluator node's flags for `target` (appended to the fleet's: docs/evaluator.md): its
    ladder, `target.games` games a match, the seed, and one anchor at most (an earlier version,
    one more match a round); with `simulations` > 0, the model's simulations a move."""
    if target.opponent_name not in target.ladder:
        raise ValueError(f"the ladder {target.ladder} must hold the target's opponent {target.opponent_name!r}")
    return ("--ladder", ",".join(target.ladder), "--games-per-match", str(target.games), "--seed", str(seed),
            "--max-anchors", "1", "--rate-every", str(target.rate_every),
            *(("--simulations", str(simulations)) if simulations else ()))


def read_evaluator_state(state_dir: Path) -> tuple[list[dict], dict | None]:
    """The evaluator's match records (results.jsonl) and summary.json (None while it has
    none), read while it writes them: a last line not yet complete is left for the next read
    (never cut off: the file is the evaluator's)."""
    records: list[dict] = []
    results = state_dir / RESULTS_FILE
    if results.exists():
        for line in results.read_text().split("\n")[:-1]:  # after the last newline: not complete yet
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break  # torn by a kill: the evaluator drops it when it restarts
    summary = None
    try:
        summary = json.loads((state_dir / SUMMARY_FILE).read_text())  # written atomically
    except (OSError, ValueError):
        pass
    return records, summary


def _at_version(progress: list[tuple[float, float, float, float]], version: int) -> tuple[int, int]:
    """(trainer step, env steps) when the trainer had exported `version`: the first sample of
    `progress` ((elapsed_s, exported version, trainer step, env steps), in time order) at or
    past it, else the latest."""
    for _, exported, step, env_steps in progress:
        if exported >= version:
            return int(step), int(env_steps)
    return (int(progress[-1][2]), int(progress[-1][3])) if progress else (0, 0)


def evaluator_evaluations(records: list[dict], summary: dict | None, game: str, opponent: str,
                          progress: list[tuple[float, float, float, float]], elapsed_s: float,
                          done: set[int] = frozenset(), extra: dict | None = None) -> list[dict]:
    """The report's evaluations of the versions the evaluator has rated since: for every version
    not in `done` whose round finished (at most summary.json's `version`: its ratings are refit)
    and that has a match against `opponent`, in version order, the keys of an in-process
    evaluation (services.agent.evaluate's summary, elapsed_s, trainer_step, env_steps) plus its
    Elo in the summary's fit (`elo`, `elo_standard_error`; None if not rated) and the version's
    counts against every opponent of its round (`ladder`: name -> games, wins, draws, losses). `trainer_step` and
    `env_steps` are those when the trainer had exported the version (`progress`), `elapsed_s`
    when its result was read: the stop rule's moment."""
    if not summary or summary.get("version") is None:
        return []
    rated = int(summary["version"])
    ratings = {r["player"]: r for r in summary.get("ratings") or ()}
    matches = {}
    for record in records:  # the last match of a version against the opponent (one a round)
        if record.get("opponent") == opponent and record["version"] <= rated and record["version"] not in done:
            matches[record["version"]] = record
    ladder: dict[int, dict[str, dict]] = {}  # version -> opponent -> its last match's counts
    for record in records:
        if record["version"] in matches:
            ladder.setdefault(record["version"], {})[record["opponent"]] = {
                key: record[key] for key in ("games", "wins", "draws", "losses")}
    out = []
    for version in sorted(matches):
        r = matches[version]
        step, env_steps = _at_version(progress, version)
        rating = ratings.get(f"v{version}", {})
        out.append({"elapsed_s": round(elapsed_s, 1), "trainer_step": step, "env_steps": env_steps,
                    "game": game, "version": version, "games": r["games"],
                    "mean_return": round((r["wins"] - r["losses"]) / r["games"], 4), "mean_length": r["mean_length"],
                    "wins": r["wins"], "draws": r["draws"], "losses": r["losses"],
                    "losses_as_first": r["first"]["losses"], "losses_as_second": r["second"]["losses"],
                    "elo": rating.get("elo"), "elo_standard_error": rating.get("standard_error"),
                    "opponent": opponent, "ladder": ladder[version], **(extra or {})})
    return out


# The trainer's --keep-versions under bench-learn --keep-versions: more versions than any run
# here exports (tic-tac-toe exports about 4 a minute).
KEEP_ALL_VERSIONS = 1_000_000


def trainer_args(seed: int, keep_versions: bool = False) -> tuple[str, ...]:
    """The trainer's extra flags: its seed, and with `keep_versions` no pruning of the model
    directory, so that every exported version is there to audit after the run."""
    return ("--seed", str(seed), *(("--keep-versions", str(KEEP_ALL_VERSIONS)) if keep_versions else ()))


def report_name(game: str, preset: str, label: str = "") -> str:
    """The reports' stem: "<game>", "<game>-<preset>", then "-<label>" if given."""
    return "-".join(part for part in (game, preset, label) if part)


def parse_change(text: str) -> tuple[str, object]:
    """"field=value" -> (field, value) with the value as the bool, int or float it reads as."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--change takes FIELD=VALUE, got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    for kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            pass
    return name, raw


def run_seed(game: str, seed: int, budget_s: float, eval_interval_s: float, run_root: Path,
             console: Console, agents: int, keep_going: bool = False, preset: str = "",
             env_steps_budget: int = 0, changes: tuple[tuple[str, object], ...] = (), label: str = "",
             eval_simulations: int = 0, keep_versions: bool = False) -> dict:
    target = TARGETS[game]
    stem = report_name(game, preset, label)
    run_dir = run_root / f"{stem}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    by_evaluator = target.by_evaluator
    config = FleetConfig(game=game, run_dir=run_dir, num_agents=agents, fixed_ports=False, monitor=False,
                         preset=preset, preset_changes=changes, evaluator=by_evaluator,
                         extra_args=(("trainer", trainer_args(seed, keep_versions)),
                                     *((f"agent-{i}", ("--seed", str(seed * 100 + i))) for i in range(agents)),
                                     *((("evaluator", evaluator_args(target, seed, eval_simulations)),) if by_evaluator else ())))
    fleet = LocalFleet(build_topology(config), log_dir=run_dir / "logs",
                       log=get_logger("bench-learn", stream=open(run_root / f"{stem}-seed{seed}.log", "w")))
    evaluations = []
    reached_at = reached = None
    started = time.monotonic()
    simulations = eval_simulations or games.make(game).settings.search.num_simulations
    progress: list[tuple[float, float, float, float]] = []  # (elapsed_s, exported version, step, env steps)

    def record(summary: dict) -> bool:
        """Adds one evaluation; True when the run stops at it (its target reached)."""
        nonlocal reached_at, reached
        evaluations.append(summary)
        console.print(f"{stem} seed {seed}: {summary}")
        within = not env_steps_budget or summary["env_steps"] <= env_steps_budget
        if target.reached(summary) and within and reached_at is None:
            reached_at, reached = summary["elapsed_s"], summary
            return not keep_going
        return False

    try:
        fleet.start()
        with EnvironmentClient(fleet.grpc_addresses["environment"], timeout_s=120) as environment, \
                console.status(f"{game} seed {seed}") as status:
            next_eval = started + eval_interval_s
            steps_spent = False
            while time.monotonic() - started < budget_s:
                env_steps = _env_steps(fleet)
                steps_spent = steps_spent or (bool(env_steps_budget) and env_steps >= env_steps_budget)
                trainer = fleet.scrape("trainer")
                step = sum_samples(trainer, trainer_metrics.STEPS_TOTAL)
                progress.append((time.monotonic() - started, sum_samples(trainer, trainer_metrics.EXPORTED_VERSION),
                                 step, env_steps))
                status.update(f"{stem} seed {seed}: {time.monotonic() - started:.0f}s, step {step:.0f}, "
                              f"env steps {env_steps:,.0f}")
                if fleet.exited():
                    raise RuntimeError(f"a service stopped: {fleet.exited()}")
                if by_evaluator:
                    # The evaluator rates version after version on its own; every version it has
                    # rated since the last look becomes an evaluation. Once the env-step budget is
                    # spent, the run waits for one evaluation past it (what the budget bought).
                    new = evaluator_evaluations(*read_evaluator_state(run_dir / "evaluator"), game,
                                                target.opponent_name, progress, time.monotonic() - started,
                                                done={e["version"] for e in evaluations})
                    counts = _fleet_counts(fleet) if new else {}
                    if any(record({**summary, **counts}) for summary in new):
                        break
                    if steps_spent and any(e["env_steps"] >= env_steps_budget for e in evaluations):
                        break
                    time.sleep(1.0)
                    continue
                # The budget of environment steps spent: one last evaluation of what it bought.
                if time.monotonic() < next_eval and not steps_spent:
                    time.sleep(1.0)
                    continue
                # The newest exported version, loaded here: it stays the same for the whole
                # evaluation, however many versions the trainer exports meanwhile.
                model = _load_newest(run_dir / "models" / "muzero")
                result = evaluate(game, environment, LocalNetwork(model), target.games, simulations,
                                  seed=seed, opponent=target.opponent)
                summary = {"elapsed_s": round(time.monotonic() - started, 1), "trainer_step": int(step),
                           "env_steps": int(env_steps), **result.summary(), **_fleet_counts(fleet)}
                if record(summary) or steps_spent:
                    break
                next_eval = time.monotonic() + eval_interval_s
        # What the run cost up to its end, before the services stop.
        elapsed_s, cpu_s = round(time.monotonic() - started, 1), _fleet_counts(fleet)["cpu_s"]
    finally:
        fleet.stop()
    chosen = config.chosen_preset
    settings = dataclasses.asdict(chosen.game_settings(game))
    reached_steps = reached["env_steps"] if reached else None
    report = {"game": game, "seed": seed, "preset": preset, "label": label, "changes": dict(changes),
              "target": target.description, "budget_s": budget_s,
              "env_steps_budget": env_steps_budget, "reached": reached_at is not None,
              "time_to_target_s": reached_at, "env_steps_to_target": reached_steps, "agents": agents,
              "fleet": {"games_per_batch": config.agent_games_per_batch, "reanalysers": config.reanalysers,
                        "preset_flags": {k: list(v) for k, v in chosen.service_flags(game).items()}},
              "evaluated_by": "evaluator" if by_evaluator else "benchmark", "eval_simulations": simulations,
              **({"evaluator": {"ladder": list(target.ladder), "games_per_match": target.games,
                                "opponent": target.opponent_name}} if by_evaluator else {}),
              "elapsed_s": elapsed_s, "cpu_s": cpu_s,
              "kept_going": keep_going, "kept_versions": keep_versions, "after_target": _after_target(evaluations, target),
              "settings": settings, "evaluations": evaluations}
    DOCS.mkdir(parents=True, exist_ok=True)
    name = f"{stem}-seed{seed}" + ("-full" if keep_going else "")
    (DOCS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, DOCS / f"{name}.png")
    console.print(f"{stem} seed {seed}: CPU by service over {elapsed_s:.0f} s: " + ", ".join(
        f"{service} {share:.0%} of a core" for service, share in cpu_shares(cpu_s, elapsed_s).items()))
    return report


def cpu_shares(cpu_s: dict[str, float], elapsed_s: float) -> dict[str, float]:
    """service -> its CPU seconds over the run's wall-clock seconds (1.0 = one core busy the
    whole run), most first."""
    return {name: seconds / elapsed_s for name, seconds in sorted(cpu_s.items(), key=lambda item: -item[1])
            if elapsed_s > 0}


def _after_target(evaluations: list[dict], target: Target) -> dict[str, int]:
    """How many evaluations followed the first one at the target, and how many of them were at
    it too (with --keep-going: whether the learned play holds)."""
    first = next((i for i, e in enumerate(evaluations) if target.reached(e)), None)
    later = [] if first is None else evaluations[first + 1:]
    return {"evaluations": len(later), "at_target": sum(target.reached(e) for e in later)}


def _env_steps(fleet: LocalFleet) -> float:
    """Environment steps self-play has played so far: the agents' moves summed over their games
    (`mufleet_agent_moves_total`). Not the environment server's own count, which includes this
    benchmark's evaluation games."""
    return sum(sum_samples(fleet.scrape(name), agent_metrics.MOVES_TOTAL)
               for name in fleet.processes if name.startswith("agent-"))


def _fleet_counts(fleet: LocalFleet) -> dict[str, object]:
    """Games and positions the replay server has taken in so far, and where the machine's time
    went: `cpu_s`, service name -> CPU seconds its process has used since it started (its
    `process_cpu_seconds_total`; a service that does not answer is left out)."""
    scrapes = {name: fleet.scrape(name) for name in fleet.processes}
    replay = scrapes.get("replay", {})
    return {"replay_games_added": int(sum_samples(replay, replay_metrics.GAMES_ADDED_TOTAL)),
            "replay_positions_added": int(sum_samples(replay, replay_metrics.POSITIONS_ADDED_TOTAL)),
            "cpu_s": cpu_seconds(scrapes)}


def cpu_seconds(scrapes: dict[str, dict[str, float]]) -> dict[str, float]:
    """service name -> `process_cpu_seconds_total` of its scrape (flat samples), to 0.1 s;
    services whose scrape lacks it (unreachable) are left out."""
    return {name: round(samples[CPU_SECONDS], 1) for name, samples in scrapes.items() if CPU_SECONDS in samples}


def _load_newest(models: Path, attempts: int = 5):
    """Loads the newest version; retries if the trainer prunes it while it is being read."""
    for attempt in range(attempts):
        try:
            return load_version(models, list_versions(models)[-1])
        except Exception:  # noqa: BLE001 - a version pruned mid-read raises TensorFlow errors too
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def _plot(report: dict, path: Path) -> None:
    evaluations = report["evaluations"]
    by_steps = bool(report.get("env_steps_budget"))
    # x: environment steps where they are the budget, else wall-clock minutes
    minutes = [e["env_steps"] if by_steps else e["elapsed_s"] / 60 for e in evaluations]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if report["game"] == "cartpole":
        axis.plot(minutes, [e["mean_return"] for e in evaluations], marker="o", label="mean greedy return")
        axis.axhline(475, color="grey", linestyle="--", label="target 475")
        axis.set_ylabel("return (100 episodes)")
    elif report["game"] == "2048":
        axis.plot(minutes, [e["mean_return"] for e in evaluations], marker="o", label="mean score")
        axis.axhline(31_000, color="grey", linestyle="--", label="target 31,000")
        axis.set_ylabel("score (100 greedy games)")
        tiles = axis.twinx()
        for tile, style in (("512", ":"), ("1024", "-."), ("2048", "--")):
            tiles.plot(minutes, [e["max_tile_at_least"][tile] for e in evaluations], linestyle=style,
                       color="tab:green", label=f"games reaching {tile}")
        tiles.set_ylabel("games of 100")
        tiles.set_ylim(0, 100)
        tiles.legend(loc="center right", fontsize=8)
    elif evaluations and "ladder" in evaluations[0]:
        # The evaluator's reports: the score per game (wins + half the draws) against every
        # fixed opponent of the ladder, and the version's Elo on the right.
        opponents = [o for o in report.get("evaluator", {}).get("ladder", []) if o in evaluations[0]["ladder"]]
        for opponent in opponents:
            points = [(x, (r["wins"] + 0.5 * r["draws"]) / r["games"]) for x, e in zip(minutes, evaluations)
                      if (r := e["ladder"].get(opponent))]
            axis.plot(*zip(*points), marker="o", label=f"vs {opponent}")
        axis.axhline(0.9, color="grey", linestyle="--", label="90%")
        axis.set_ylim(-0.02, 1.02)
        axis.set_ylabel(f"score per game ({evaluations[0]['games']} games a match)")
        rated = [(x, e["elo"]) for x, e in zip(minutes, evaluations) if e.get("elo") is not None]
        if rated:
            elo = axis.twinx()
            elo.plot(*zip(*rated), color="tab:purple", linestyle="--", marker=".", label="Elo (random = 0)")
            elo.set_ylabel("Elo")
            elo.legend(loc="lower right", fontsize=8)
    else:
        for key in ("wins", "draws", "losses"):
            axis.plot(minutes, [e[key] for e in evaluations], marker="o", label=key)
        axis.set_ylabel("games of 200 vs minimax")
    if by_steps:
        axis.axvline(report["env_steps_budget"], color="red", linestyle=":", label="env-step budget")
    axis.set_xlabel("self-play environment steps" if by_steps else "wall-clock minutes")
    preset = f" ({report['preset']})" if report.get("preset") else ""
    axis.set_title(f"{report['game']}{preset} seed {report['seed']}\n" + "\n".join(textwrap.wrap(report["target"], 80)),
                   fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", choices=sorted(TARGETS), default="cartpole")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget-min", type=float, default=20.0)
    parser.add_argument("--eval-interval-s", type=float, default=60.0)
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "bench-learn")
    parser.add_argument("--keep-going", action="store_true",
                        help="go on evaluating until the budget is spent, after the target too "
                             "(shows whether it holds); the report is named <game>-seed<k>-full.json")
    parser.add_argument("--preset", default="", choices=sorted(PRESETS),
                        help="the fleet's regime (services/launcher/presets.py); reports <game>-<preset>-seed<k>")
    parser.add_argument("--env-steps-budget", type=int, default=0,
                        help="stop once self-play has played this many environment steps; the target "
                             "counts only when reached within them (0 = no such budget)")
    parser.add_argument("--change", type=parse_change, action="append", default=[], metavar="FIELD=VALUE",
                        help="a change to the preset (a settings field, or reanalysers / games_per_batch), "
                             "e.g. --change consistency_weight=0 for an ablation; repeatable")
    parser.add_argument("--label", default="", help="names the reports: <game>-<preset>-<label>-seed<k>")
    parser.add_argument("--eval-simulations", type=int, default=0, metavar="N",
                        help="simulations a move of the model in the evaluations (default: the game's "
                             "num_simulations, what self-play uses)")
    parser.add_argument("--keep-versions", action="store_true",
                        help="the trainer prunes no exported version: all stay in "
                             "<run-root>/<stem>-seed<k>/models/muzero for an audit afterwards "
                             "(python -m benchmarks.audit; a tic-tac-toe version is about 1 MB)")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rewrite docs/learning/<game>.json from the seed reports there")
    args = parser.parse_args(argv)
    if args.eval_simulations < 0:
        parser.error(f"--eval-simulations must be >= 0, got {args.eval_simulations}")
    console = Console()
    args.run_root.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in args.seeds:
            run_seed(args.game, seed, args.budget_min * 60, args.eval_interval_s, args.run_root, console,
                     args.agents, args.keep_going, args.preset, args.env_steps_budget, tuple(args.change),
                     args.label, args.eval_simulations, args.keep_versions)
    console.print(write_summary(args.game, args.preset, args.label))


def write_summary(game: str, preset: str = "", label: str = "") -> dict:
    """docs/learning/<stem>.json from every seed report of the game (preset, label) there."""
    stem = report_name(game, preset, label)
    reports = [json.loads(p.read_text()) for p in sorted(DOCS.glob(f"{stem}-seed*.json"))
               if not p.stem.endswith("-full")]  # --keep-going runs are reported on their own
    summary = {"game": game, "preset": preset, "label": label, "target": TARGETS[game].description,
               "seeds_reaching_target": sum(r["reached"] for r in reports), "seeds_run": len(reports),
               "seeds": {r["seed"]: {"reached": r["reached"], "time_to_target_s": r["time_to_target_s"],
                                     "budget_s": r["budget_s"],
                                     "env_steps_budget": r.get("env_steps_budget", 0),
                                     "env_steps_to_target": r.get("env_steps_to_target"),
                                     "last": r["evaluations"][-1] if r["evaluations"] else None}
                         for r in reports}}
    (DOCS / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
