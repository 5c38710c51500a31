"""The evaluator's loop: the newest model version against a ladder of opponents, every match
recorded durably, the Elo ratings refit over every match so far after each round.

A round pins one version (the newest the network serves when the round starts) and plays a
match of `games_per_match` greedy games (services.agent.evaluate.evaluate: half with the model
moving first, half second) against each ladder opponent it has no recorded match against yet,
and against each kept anchor older than it (an earlier version, loaded in process). So a round
cut by a stop or a kill -9 is completed by the restarted evaluator, and nothing is played
twice. Then it waits for a version newer than the one it rated.

One-player games (cartpole, 2048) have no ladder: a round is one match of M games against
nobody ("none"), recorded with its mean return (and 2048's largest tiles); no ratings.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from services.agent.evaluate import EvaluationResult, EvaluationStopped, evaluate
from services.agent.opponents import OPPONENTS
from services.agent.search.config import searcher_changes
from services.common.failures import PermanentFailure, RetryPolicy
from services.common.logs import EventLogger
from services.evaluator.anchors import Anchors, anchor_name
from services.evaluator.config import EvaluatorConfig
from services.evaluator.metrics import EvaluatorMetrics, private_metrics
from services.evaluator.ratings import MatchResult, Ratings, fit_ratings, wilson_interval
from services.evaluator.store import ResultsStore

SOLO = "none"  # the opponent of a one-player game's match
# Failures of a match that waiting fixes (a peer restarting): the match is played again.
WAIT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
LATEST_RESULTS = 20  # the latest match records in summary.json


def _now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _counts(returns: np.ndarray) -> dict[str, int]:
    return {"wins": int(np.sum(returns > 0)), "draws": int(np.sum(returns == 0)),
            "losses": int(np.sum(returns < 0))}


def match_record(result: EvaluationResult, opponent: str, simulations: int, seconds: float,
                 two_player: bool, opening_moves: int = 0) -> dict[str, Any]:
    """The store's record of one match (services/evaluator/store.py)."""
    record: dict[str, Any] = {"version": int(result.version), "opponent": opponent, "games": len(result.returns),
                              "simulations": simulations, "mean_length": round(float(np.mean(result.lengths)), 2),
                              "seconds": round(seconds, 3), "time": _now()}
    if opening_moves:
        record["opening_moves"] = opening_moves
    if two_player:
        record.update(_counts(result.returns), first=_counts(result.returns[0::2]),
                      second=_counts(result.returns[1::2]))
    else:
        summary = result.summary()
        record["mean_return"] = round(result.mean_return, 4)
        for key in ("max_tile_at_least", "max_tile_largest"):
            if key in summary:
                record[key] = summary[key]
    return record


def rating_anchor(players: set[str], ladder: tuple[str, ...]) -> str:
    """The player rated 0: "random" when it has played, else the first ladder opponent that has,
    else the alphabetically first player."""
    for name in ("random", *ladder):
        if name in players:
            return name
    return sorted(players)[0]


def score_rate(record: Mapping[str, Any]) -> float:
    """Wins plus half the draws, per game."""
    return (record["wins"] + 0.5 * record["draws"]) / record["games"]


class Evaluator:
    """Rates the newest version again and again until `stop` is set (or `config.max_rounds`).

    Args:
      config: what to play and where to keep the results.
      log: where events go.
      environment: an `EnvironmentClient` (or anything with its open, step, close).
      network: a `NetworkClient` (or anything with its predict_future and wait_until_available).
      metrics: where it counts (default: a registry of its own).
      opponents: name -> opponent callable (default: services.agent.opponents.OPPONENTS).
      policy: the backoff of a match played again after a peer failure.
      stop: the event that ends the run.
    """

    def __init__(self, config: EvaluatorConfig, log: EventLogger, environment, network,
                 metrics: EvaluatorMetrics | None = None, opponents: Mapping[str, Callable] | None = None,
                 policy: RetryPolicy | None = None, stop: threading.Event | None = None) -> None:
        self.config = config
        self.log = log
        self.environment = environment
        self.network = network
        self.metrics = metrics if metrics is not None else private_metrics()
        self.opponents = dict(opponents if opponents is not None else OPPONENTS)
        self.policy = policy or RetryPolicy(initial_backoff_s=0.5, max_backoff_s=10.0)
        self.stop = stop if stop is not None else threading.Event()
        self.store = ResultsStore(config.state_dir)
        self.anchors = (Anchors(config.state_dir, config.models, config.anchor_every, config.max_anchors)
                        if config.keeps_anchors else None)
        self.rounds = 0
        self.matches = 0
        self.ratings: Ratings | None = None
        self._abandoned = -1  # a version whose round stopped because the network no longer serves it
        # (version, LocalNetwork): the rated version loaded in process from `config.models` at
        # the start of its round, played when the network server unloads it mid-round (a slow
        # match, e.g. Othello against mcts1000, outlasts the few versions the server keeps).
        self._pinned: tuple[int, Any] | None = None
        # The version whose copy in process plays the rest of its round: once the server has
        # unloaded it, it does not come back, and asking again would wait out a timeout.
        self._in_process: int | None = None
        self._elo_players: set[str] = set()

    # -- what is due ------------------------------------------------------------------------------

    @property
    def last_version(self) -> int | None:
        """The newest version with a recorded match, or None."""
        return max((r["version"] for r in self.store.records), default=None)

    def ladder_for(self, version: int) -> list[str]:
        """The opponents of `version`'s round: the ladder (or "none"), then the kept anchors
        older than it."""
        names = list(self.config.opponents) if self.config.two_player else [SOLO]
        if self.anchors is not None:
            names += [anchor_name(v) for v in self.anchors.versions if v < version]
        return names

    def missing(self, version: int) -> list[str]:
        """The opponents of `version`'s round it has no recorded match against."""
        played = self.store.played(version)
        return [name for name in self.ladder_for(version) if name not in played]

    def due(self, version: int) -> bool:
        """Whether `version` has a round to play: at least `config.rate_every` versions newer
        than every recorded one (any newer one when it is 0), or the newest with matches missing
        (a round cut by a stop)."""
        last = self.last_version
        if version <= self._abandoned:
            return False
        return (last is None or version >= last + max(self.config.rate_every, 1)
                or (version == last and bool(self.missing(version))))

    # -- one match, one round ---------------------------------------------------------------------

    def _opponent(self, name: str) -> Callable:
        if name in self.opponents:
            return self.opponents[name]
        if self.anchors is None or not name.startswith("v"):
            raise KeyError(f"no opponent {name!r}")
        return self.anchors.opponent(int(name[1:]), self.config.game, self.config.search_simulations,
                                     self.config.games_per_match, searcher_changes(self.config))

    def _seed(self, version: int, opponent: str) -> int:
        words = [self.config.seed, version, *opponent.encode()]
        return int(np.random.SeedSequence(words).generate_state(1)[0])

    def play_match(self, version: int, opponent: str, stop: threading.Event | None = None) -> dict | None:
        """Plays and records one match of `version` against `opponent`; None when stopped or when
        the network no longer serves the version. Peer failures that waiting fixes are waited out
        and the match played again; others raise PermanentFailure."""
        stop = stop if stop is not None else self.stop
        config = self.config
        play = self._opponent(opponent) if config.two_player else None
        # Two greedy model versions would play one game again and again: random openings.
        opening = config.anchor_opening_moves if opponent not in self.opponents else 0
        backoff = self.policy.backoff(stop)
        local = self._pinned[1] if self._pinned and self._pinned[0] == version else None
        network = local if local is not None and self._in_process == version else self.network
        while True:
            started = time.perf_counter()
            try:
                kwargs = {"opponent": play} if play is not None else {}
                result = evaluate(config.game, self.environment, network, config.games_per_match,
                                  config.search_simulations, version=version, seed=self._seed(version, opponent),
                                  stop=stop, opening_moves=opening, search_changes=searcher_changes(config),
                                  **kwargs)
                break
            except EvaluationStopped:
                return None
            except TimeoutError as error:  # evaluate() waited for the pinned version in vain
                unserved = str(error)
            except PermanentFailure as failure:
                if failure.peer != "network" or failure.code != "NOT_FOUND":
                    if failure.code not in WAIT_CODES:
                        raise
                    delay = backoff.next_delay()
                    self.metrics.peer_failures.labels(failure.peer, failure.code).inc()
                    self.log.warning("peer_unavailable", peer=failure.peer, method=failure.method,
                                     code=failure.code, details=failure.details, retry_in_s=round(delay, 2))
                    if stop.wait(delay):
                        return None
                    continue
                unserved = failure.details  # unloaded mid-match
            # The server no longer serves the version (and will not again): its copy in process
            # plays this match and the rest of the round, if it was loaded.
            if local is None or network is local:
                self._give_up(version, opponent, unserved)
                return None
            self.log.info("version_played_in_process", version=version, opponent=opponent, details=unserved,
                          message="the network no longer serves the version: this match and the rest of "
                                  "the round are played with the copy loaded at the round's start")
            self._in_process = version
            network = local
        seconds = time.perf_counter() - started
        record = match_record(result, opponent, config.search_simulations, seconds, config.two_player, opening)
        self.store.append(record)
        self.matches += 1
        m = self.metrics
        m.matches.labels(opponent).inc()
        m.games.inc(record["games"])
        m.match_seconds.labels(opponent).observe(seconds)
        self.log.info("match", **{k: v for k, v in record.items() if k != "time"})
        return record

    def _pin(self, version: int) -> None:
        """Loads `version` in process from the trainer's model directory (`config.models`), if it
        is still there, as the round's fallback when the network server unloads it."""
        if not self.config.models or (self._pinned and self._pinned[0] == version):
            return
        from models.export import load_version
        from services.agent.local_network import LocalNetwork

        self._pinned = None  # the previous round's copy is let go
        try:
            self._pinned = (version, LocalNetwork(load_version(self.config.models, version)))
        except (FileNotFoundError, OSError, ValueError) as error:  # pruned already: served only
            self.log.warning("version_not_pinned", version=version, details=str(error))

    def _give_up(self, version: int, opponent: str, details: str) -> None:
        self._abandoned = max(self._abandoned, version)
        self.log.warning("version_unavailable", version=version, opponent=opponent, details=details,
                         message="the network no longer serves the pinned version: the round ends, "
                                 "the next rates the newest")

    def run_round(self, version: int, stop: threading.Event | None = None) -> bool:
        """Plays `version`'s missing matches, keeps it as an anchor when due, refits the ratings
        and writes metrics and summary; True when the round finished."""
        stop = stop if stop is not None else self.stop
        missing = self.missing(version)
        self.log.info("round", version=version, opponents=missing)
        self._pin(version)
        for opponent in missing:
            if stop.is_set() or self.play_match(version, opponent, stop) is None:
                return False
        self._keep_anchor(version)
        self.rounds += 1
        self.metrics.rounds.inc()
        self.refit(version)
        return True

    def _keep_anchor(self, version: int) -> None:
        if self.anchors is None or version in self.anchors.versions or not self.anchors.due(version):
            return
        try:
            removed = self.anchors.add(version)
        except FileNotFoundError as error:
            self.log.warning("anchor_missing", version=version, details=str(error))
            return
        self.log.info("anchor_kept", version=version, anchors=self.anchors.versions, removed=removed)

    # -- ratings, metrics, summary ----------------------------------------------------------------

    def refit(self, version: int | None = None) -> dict[str, Any]:
        """Refits the ratings over every recorded match, sets the metrics of `version` (default:
        the newest recorded) and writes summary.json; returns the summary."""
        records = self.store.records
        version = version if version is not None else self.last_version
        m = self.metrics
        if version is not None:
            m.rated_version.set(version)
        if self.anchors is not None:
            m.anchors.set(len(self.anchors.versions))
        newest = [r for r in records if r["version"] == version]
        summary: dict[str, Any] = {"game": self.config.game, "updated": _now(), "version": version,
                                   "matches": len(records), "games": sum(r["games"] for r in records),
                                   "anchors": list(self.anchors.versions) if self.anchors else []}
        if self.config.two_player:
            summary.update(self._refit_ratings(records, version, newest))
        else:
            summary.update(self._solo_summary(records, newest))
        summary["latest_results"] = records[-LATEST_RESULTS:]
        self.store.write_summary(summary)
        return summary

    def _refit_ratings(self, records: list[dict], version: int | None, newest: list[dict]) -> dict[str, Any]:
        m = self.metrics
        matches = [MatchResult(anchor_name(r["version"]), r["opponent"], r["wins"], r["draws"], r["losses"])
                   for r in records if r["games"] > 0]
        if not matches:
            return {"ratings": [], "anchor": None, "newest": None}
        players = {p for match in matches for p in (match.a, match.b)}
        anchor = rating_anchor(players, self.config.opponents)
        ratings = fit_ratings(matches, anchor=anchor)
        self.ratings = ratings
        # Elo gauges: the opponents, the kept anchors and the newest version (not every version
        # ever rated: a label per version would grow without end); summary.json has them all.
        shown = {p for p in players if not p.startswith("v")}
        if self.anchors is not None:
            shown |= {anchor_name(v) for v in self.anchors.versions}
        if version is not None:
            shown.add(anchor_name(version))
        shown &= players
        for player in self._elo_players - shown:
            m.elo.remove(player)
            m.elo_error.remove(player)
        for player in shown:
            m.elo.labels(player).set(ratings.ratings[player])
            m.elo_error.labels(player).set(ratings.standard_errors[player])
        self._elo_players = shown
        table = [{"player": p, "elo": round(ratings.ratings[p], 1),
                  "standard_error": round(ratings.standard_errors[p], 1), "games": ratings.games[p]}
                 for p in sorted(players, key=lambda p: -ratings.ratings[p])]
        newest_summary = None
        if version is not None and anchor_name(version) in players:
            elo = ratings.ratings[anchor_name(version)]
            m.newest_elo.set(elo)
            results = []
            for r in newest:
                rate = score_rate(r)
                low, high = wilson_interval(r["wins"] + 0.5 * r["draws"], r["games"])
                m.win_rate.labels(r["opponent"]).set(rate)
                m.win_rate_interval.labels(r["opponent"], "low").set(low)
                m.win_rate_interval.labels(r["opponent"], "high").set(high)
                results.append({"opponent": r["opponent"], "games": r["games"], "wins": r["wins"],
                                "draws": r["draws"], "losses": r["losses"], "win_rate": round(rate, 4),
                                "win_rate_low": round(low, 4), "win_rate_high": round(high, 4)})
            newest_summary = {"version": version, "elo": round(elo, 1),
                              "standard_error": round(ratings.standard_errors[anchor_name(version)], 1),
                              "results": results}
        self.log.info("ratings", anchor=anchor, version=version, players=len(players),
                      ratings={p: round(ratings.ratings[p], 1) for p in sorted(shown)})
        return {"ratings": table, "anchor": anchor, "newest": newest_summary}

    def _solo_summary(self, records: list[dict], newest: list[dict]) -> dict[str, Any]:
        m = self.metrics
        if not newest:
            return {"returns": [], "newest": None}
        last = newest[-1]
        m.mean_return.set(last["mean_return"])
        for tile, count in last.get("max_tile_at_least", {}).items():
            m.max_tile_fraction.labels(tile).set(count / last["games"])
        returns = [{k: r[k] for k in ("version", "games", "mean_return", "max_tile_at_least", "max_tile_largest")
                    if k in r} for r in records]
        return {"returns": returns, "newest": returns[-1] if returns else None}

    # -- the loop ---------------------------------------------------------------------------------

    def _newest(self, stop: threading.Event) -> int | None:
        """The newest version the network serves (waiting for a first one); None when stopped."""
        logged = False
        while not stop.is_set():
            try:  # a short first wait, so that waiting for a first version is logged at once
                timeout_s = max(self.config.poll_s, 30.0) if logged else 1.0
                return self.network.wait_until_available(None, timeout_s=timeout_s, stop=stop)
            except TimeoutError:
                if not logged:
                    self.log.info("waiting_for_version", rated=self.last_version, newest=None,
                                  message="the network serves no version yet")
                    logged = True
        return None

    def run(self, stop: threading.Event | None = None) -> None:
        """Rates versions until `stop` (default: the constructor's event) is set or max_rounds
        rounds are done. Raises PermanentFailure when a peer answers what waiting cannot fix."""
        stop = stop if stop is not None else self.stop
        self.log.info("started", game=self.config.game, ladder=list(self.config.opponents) if self.config.two_player
                      else [], games_per_match=self.config.games_per_match,
                      simulations=self.config.search_simulations, resumed_matches=len(self.store.records),
                      torn_bytes_dropped=self.store.torn, rated=self.last_version,
                      anchors=list(self.anchors.versions) if self.anchors else [])
        if self.store.records:
            self.refit()  # a resumed history's ratings, at once
        waiting = None
        while not stop.is_set():
            if self.config.max_rounds and self.rounds >= self.config.max_rounds:
                break
            newest = self._newest(stop)
            if newest is None:
                break
            if not self.due(newest):
                if waiting != newest:
                    self.log.info("waiting_for_version", rated=self.last_version, newest=newest)
                    waiting = newest
                stop.wait(self.config.poll_s)
                continue
            waiting = None
            self.run_round(newest, stop)
