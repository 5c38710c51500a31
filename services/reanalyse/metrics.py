"""The reanalyse worker's Prometheus metrics (`mufleet_reanalyse_*`), and their names as they
appear in the /metrics text (the constants the monitor reads)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

POSITIONS_TOTAL = "mufleet_reanalyse_positions_total"
SIMULATIONS_TOTAL = "mufleet_reanalyse_simulations_total"
GAMES_UPDATED_TOTAL = "mufleet_reanalyse_games_updated_total"
POSITIONS_SKIPPED_TOTAL = "mufleet_reanalyse_positions_skipped_total"
TARGET_AGE_VERSIONS = "mufleet_reanalyse_target_age_versions"
MEAN_TARGET_AGE_VERSIONS = "mufleet_reanalyse_mean_target_age_versions"
MODEL_VERSION = "mufleet_reanalyse_model_version"
BATCH_SECONDS = "mufleet_reanalyse_batch_seconds"
NETWORK_REQUEST_SECONDS = "mufleet_reanalyse_network_request_seconds"
PEER_FAILURES_TOTAL = "mufleet_reanalyse_peer_failures_total"

AGE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class ReanalyseMetrics:
    """The metrics, in `registry` (default: the process's, what `python -m services.reanalyse`
    serves; tests pass a fresh `CollectorRegistry()`).

    The search's own counters (network request latency, simulations, model version) have the
    agent's shape under reanalyse's names, so one `PipelinedSearch` serves both.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.registry = registry
        self.positions = Counter(POSITIONS_TOTAL, "Stored positions reanalysed and sent to the replay",
                                 registry=registry)
        self.simulations = Counter(SIMULATIONS_TOTAL, "Search simulations run, summed over positions",
                                   registry=registry)
        self.games_updated = Counter(GAMES_UPDATED_TOTAL, "UpdateTargets calls the replay applied",
                                     registry=registry)
        self.positions_skipped = Counter(
            POSITIONS_SKIPPED_TOTAL, "Reanalysed positions the replay did not take: 'evicted' (the game "
            "left the buffer meanwhile) or 'newer' (a newer reanalysis was stored)", ["reason"],
            registry=registry)
        self.target_age = Histogram(
            TARGET_AGE_VERSIONS, "Age of the targets each reanalysis replaced, in model versions "
            "(the new version minus the version behind the old targets)", buckets=AGE_BUCKETS,
            registry=registry)
        self.mean_target_age = Gauge(MEAN_TARGET_AGE_VERSIONS,
                                     "Mean age of the replaced targets in the latest batch, versions",
                                     registry=registry)
        self.model_version = Gauge(MODEL_VERSION, "Model version of the latest batch", registry=registry)
        self.batch_seconds = Histogram(BATCH_SECONDS, "Time of one batch: search and UpdateTargets",
                                       buckets=LATENCY_BUCKETS_S, registry=registry)
        self.network_seconds = Histogram(NETWORK_REQUEST_SECONDS, "Latency of network requests",
                                         ["signature"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.peer_failures = Counter(PEER_FAILURES_TOTAL, "Failed calls to peers", ["peer", "code"],
                                     registry=registry)


def private_metrics() -> ReanalyseMetrics:
    """Metrics in a registry of their own (served nowhere)."""
    return ReanalyseMetrics(CollectorRegistry())
