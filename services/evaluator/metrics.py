"""The evaluator's Prometheus metrics (`mufleet_evaluator_*`), and their names as they appear
in the /metrics text (the constants the monitor and the benchmarks read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

MATCHES_TOTAL = "mufleet_evaluator_matches_total"
GAMES_TOTAL = "mufleet_evaluator_games_total"
ROUNDS_TOTAL = "mufleet_evaluator_rounds_total"
RATED_VERSION = "mufleet_evaluator_rated_version"
NEWEST_ELO = "mufleet_evaluator_newest_elo"
ELO = "mufleet_evaluator_elo"
ELO_STANDARD_ERROR = "mufleet_evaluator_elo_standard_error"
WIN_RATE = "mufleet_evaluator_win_rate"
WIN_RATE_INTERVAL = "mufleet_evaluator_win_rate_interval"
MEAN_RETURN = "mufleet_evaluator_mean_return"
MAX_TILE_FRACTION = "mufleet_evaluator_max_tile_fraction"
ANCHORS = "mufleet_evaluator_anchors"
MATCH_SECONDS = "mufleet_evaluator_match_seconds"
PEER_FAILURES_TOTAL = "mufleet_evaluator_peer_failures_total"

# A match is seconds (random opponent, few games) to many minutes (mcts1000, Othello).
MATCH_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class EvaluatorMetrics:
    """The metrics, in `registry` (default: the process's, what `python -m services.evaluator`
    serves; tests pass a fresh `CollectorRegistry()`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.registry = registry
        self.matches = Counter(MATCHES_TOTAL, "Matches played and recorded, by opponent ('none' in "
                               "one-player games; 'v<version>' for an earlier version kept as an anchor)",
                               ["opponent"], registry=registry)
        self.games = Counter(GAMES_TOTAL, "Evaluation games played in recorded matches", registry=registry)
        self.rounds = Counter(ROUNDS_TOTAL, "Rounds finished (one version against the whole ladder)",
                              registry=registry)
        self.rated_version = Gauge(RATED_VERSION, "The newest model version rated (its round finished)",
                                   registry=registry)
        self.newest_elo = Gauge(NEWEST_ELO, "Elo of the newest rated version (random = 0)", registry=registry)
        self.elo = Gauge(ELO, "Elo by player: opponents and model versions 'v<version>' (random = 0)",
                         ["player"], registry=registry)
        self.elo_error = Gauge(ELO_STANDARD_ERROR, "Standard error of each player's Elo", ["player"],
                               registry=registry)
        self.win_rate = Gauge(WIN_RATE, "Score per game of the newest rated version by opponent: wins "
                              "plus half the draws, over games", ["opponent"], registry=registry)
        self.win_rate_interval = Gauge(WIN_RATE_INTERVAL, "95% Wilson score interval of the newest rated "
                                       "version's score per game, by opponent and bound (low, high)",
                                       ["opponent", "bound"], registry=registry)
        self.mean_return = Gauge(MEAN_RETURN, "Mean return of the newest rated version's games "
                                 "(one-player games)", registry=registry)
        self.max_tile_fraction = Gauge(MAX_TILE_FRACTION, "Share of the newest rated version's 2048 games "
                                       "whose largest tile is at least `tile`", ["tile"], registry=registry)
        self.anchors = Gauge(ANCHORS, "Earlier versions kept as anchors", registry=registry)
        self.match_seconds = Histogram(MATCH_SECONDS, "Time of one match", ["opponent"],
                                       buckets=MATCH_BUCKETS_S, registry=registry)
        self.peer_failures = Counter(PEER_FAILURES_TOTAL, "Failed matches waited out, by peer and code",
                                     ["peer", "code"], registry=registry)


def private_metrics() -> EvaluatorMetrics:
    """Metrics in a registry of their own (served nowhere)."""
    return EvaluatorMetrics(CollectorRegistry())
