"""The replay's Prometheus metrics (`mufleet_replay_*`), and their names as they appear in the
/metrics text (the constants the monitor, the launcher and the benchmarks read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

GAMES = "mufleet_replay_games"
POSITIONS = "mufleet_replay_positions"
STORED_POSITIONS = "mufleet_replay_stored_positions"
GAMES_ADDED_TOTAL = "mufleet_replay_games_added_total"
POSITIONS_ADDED_TOTAL = "mufleet_replay_positions_added_total"
DUPLICATES_TOTAL = "mufleet_replay_duplicates_total"
SAMPLES_TOTAL = "mufleet_replay_samples_total"
SAMPLE_BATCHES_TOTAL = "mufleet_replay_sample_batches_total"
EVICTED_GAMES_TOTAL = "mufleet_replay_evicted_games_total"
RATE_LIMITED_TOTAL = "mufleet_replay_rate_limited_total"
SAMPLE_RETRIES_TOTAL = "mufleet_replay_sample_retries_total"
PRIORITY_UPDATES_TOTAL = "mufleet_replay_priority_updates_total"
TARGET_UPDATES_TOTAL = "mufleet_replay_target_updates_total"
PRIORITY_FLUSH_SECONDS = "mufleet_replay_priority_flush_seconds"
PRIORITY_FLUSHED_RECORDS_TOTAL = "mufleet_replay_priority_flushed_records_total"
REQUEST_SECONDS = "mufleet_replay_request_seconds"
ERRORS_TOTAL = "mufleet_replay_errors_total"


class ReplayMetrics:
    """The service's Prometheus metrics, in `registry` (default: the process's; a fresh one per
    servicer in unit tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.games = Gauge(GAMES, "Records stored.", registry=registry)
        self.positions = Gauge(POSITIONS, "Sampleable positions stored.", registry=registry)
        self.stored_positions = Gauge(
            STORED_POSITIONS,
            "Positions stored, look-ahead context included (what --capacity bounds).", registry=registry)
        self.games_added = Counter(GAMES_ADDED_TOTAL, "Records stored by AddGames.", registry=registry)
        self.positions_added = Counter(POSITIONS_ADDED_TOTAL, "Sampleable positions stored by AddGames.",
                                       registry=registry)
        self.duplicates = Counter(DUPLICATES_TOTAL,
                                  "Records not stored again because their id was already stored.",
                                  registry=registry)
        self.samples = Counter(SAMPLES_TOTAL, "Positions sampled.", registry=registry)
        self.sample_batches = Counter(SAMPLE_BATCHES_TOTAL, "SampleBatch calls served.", registry=registry)
        self.evicted_games = Counter(EVICTED_GAMES_TOTAL, "Records evicted to stay within --capacity.",
                                     registry=registry)
        self.rate_limited = Counter(RATE_LIMITED_TOTAL,
                                    "SampleBatch calls that had to wait for the rate limiter.",
                                    registry=registry)
        self.sample_retries = Counter(SAMPLE_RETRIES_TOTAL,
                                      "Samples drawn again under the lock because an add or "
                                      "UpdateTargets rewrote a drawn record during the gather.",
                                      registry=registry)
        self.priority_updates = Counter(PRIORITY_UPDATES_TOTAL, "Positions whose priority UpdatePriorities set.",
                                        registry=registry)
        self.target_updates = Counter(TARGET_UPDATES_TOTAL, "Positions whose targets UpdateTargets replaced.",
                                      registry=registry)
        self.priority_flush_seconds = Histogram(
            PRIORITY_FLUSH_SECONDS, "Time of one priority flush (every run of the flusher, empty "
            "ones too; adds and samples go on meanwhile).", buckets=LATENCY_BUCKETS_S, registry=registry)
        self.priority_flushed_records = Counter(
            PRIORITY_FLUSHED_RECORDS_TOTAL, "Records whose priorities a flush wrote to disk.",
            registry=registry)
        self.request_seconds = Histogram(
            REQUEST_SECONDS, "Time to serve one call, by method (errors and "
            "rate-limiter waits included).", ["method"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.errors = Counter(ERRORS_TOTAL, "Calls that failed, by method and gRPC status code.",
                              ["method", "code"], registry=registry)

    def observe_flush(self, seconds: float, records: int) -> None:
        """One priority flush that succeeded: its wall time and the records it wrote (the
        buffer's `on_flush`)."""
        self.priority_flush_seconds.observe(seconds)
        self.priority_flushed_records.inc(records)
