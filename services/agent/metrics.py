"""The agent's Prometheus metrics (`mufleet_agent_*`), and their names as they appear in the
/metrics text (the constants the monitor and the launcher read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

SIMULATIONS_TOTAL = "mufleet_agent_simulations_total"
MOVES_TOTAL = "mufleet_agent_moves_total"
GAMES_FINISHED_TOTAL = "mufleet_agent_games_finished_total"
BRANCH_MOVES_TOTAL = "mufleet_agent_branch_moves_total"
EPISODE_RETURN = "mufleet_agent_episode_return"
EPISODE_LENGTH = "mufleet_agent_episode_length"
RECENT_MEAN_RETURN = "mufleet_agent_recent_mean_return"
RECENT_MEAN_LENGTH = "mufleet_agent_recent_mean_length"
NETWORK_REQUEST_SECONDS = "mufleet_agent_network_request_seconds"
MOVE_SECONDS = "mufleet_agent_move_seconds"
MODEL_VERSION = "mufleet_agent_model_version"
RECORDS_ACKED_TOTAL = "mufleet_agent_records_acked_total"
RECORDS_PENDING = "mufleet_agent_records_pending"
PEER_FAILURES_TOTAL = "mufleet_agent_peer_failures_total"
REPLAY_WAITS_TOTAL = "mufleet_agent_replay_waits_total"
RECENT_MEAN_EPISODE_STATISTIC = "mufleet_agent_recent_mean_episode_statistic"
EPISODE_MAX_TILE = "mufleet_agent_episode_max_tile"

RETURN_BUCKETS = (-1, -0.5, 0, 0.5, 1, 10, 50, 100, 200, 300, 400, 475, 500, 1000, 5000, 20000)
LENGTH_BUCKETS = (5, 9, 20, 42, 60, 100, 200, 300, 400, 500, 1000, 5000)
# 2048's largest tile of a game: every power of two it can be, 4 (a game's least) .. 2^17.
MAX_TILE_BUCKETS = tuple(float(2 ** e) for e in range(2, 18))


class AgentMetrics:
    """The metrics, in `registry` (default: the process's, what `python -m services.agent`
    serves; a fresh `CollectorRegistry()` per instance for agents, searches and evaluations
    built in tests or inside another process, such as the monitor's play page)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.registry = registry
        self.simulations = Counter(SIMULATIONS_TOTAL, "Search simulations run, summed over games",
                                   registry=registry)
        self.moves = Counter(MOVES_TOTAL, "Moves played, summed over games", registry=registry)
        self.games_finished = Counter(GAMES_FINISHED_TOTAL, "Games played to their end", registry=registry)
        self.branch_moves = Counter(
            BRANCH_MOVES_TOTAL, "Self-play moves played at random, after which the game's record "
            "starts over (random_branch_probability)", registry=registry)
        self.episode_return = Histogram(EPISODE_RETURN, "Return of each finished game (player 0's)",
                                        buckets=RETURN_BUCKETS, registry=registry)
        self.episode_length = Histogram(EPISODE_LENGTH, "Moves of each finished game",
                                        buckets=LENGTH_BUCKETS, registry=registry)
        self.recent_return = Gauge(RECENT_MEAN_RETURN, "Mean return of the last 100 finished games",
                                   registry=registry)
        self.recent_length = Gauge(RECENT_MEAN_LENGTH, "Mean length of the last 100 finished games",
                                   registry=registry)
        self.network_seconds = Histogram(NETWORK_REQUEST_SECONDS, "Latency of network requests",
                                         ["signature"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.move_seconds = Histogram(MOVE_SECONDS, "Time of one move of all B games (search + step)",
                                      buckets=LATENCY_BUCKETS_S, registry=registry)
        self.model_version = Gauge(MODEL_VERSION, "Model version used by the latest move", registry=registry)
        self.records_acked = Counter(RECORDS_ACKED_TOTAL, "Game records acknowledged by the replay server",
                                     registry=registry)
        self.records_pending = Gauge(RECORDS_PENDING, "Game records waiting for the replay's ack",
                                     registry=registry)
        self.peer_failures = Counter(PEER_FAILURES_TOTAL, "Failed calls to peers", ["peer", "code"],
                                     registry=registry)
        # Game.episode_statistics of finished games (only games that declare some, e.g. 2048's
        # max_tile): the mean of the last 100 per statistic, and a histogram for those listed in
        # `statistic_histograms` (statistic name -> histogram).
        self.recent_statistic = Gauge(
            RECENT_MEAN_EPISODE_STATISTIC, "Mean of a per-game statistic (Game.episode_statistics) "
            "over the last 100 finished games", ["statistic"], registry=registry)
        self.episode_max_tile = Histogram(EPISODE_MAX_TILE, "Largest tile of each finished game (2048)",
                                          buckets=MAX_TILE_BUCKETS, registry=registry)
        self.statistic_histograms = {"max_tile": self.episode_max_tile}
        self.replay_waits = Counter(
            REPLAY_WAITS_TOTAL, "AddGames calls the replay's rate limiter held back (--block-inserts: "
            "self-play ahead of training; normal operation, not a failure)", registry=registry)


def private_metrics() -> AgentMetrics:
    """Metrics in a registry of their own (served nowhere): the default of the agent's parts."""
    return AgentMetrics(CollectorRegistry())
