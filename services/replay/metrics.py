"""The replay's Prometheus metrics (`mufleet_replay_*`), and their names as they appear in the
/metrics text (the constants the monitor, the launcher and the benchmarks read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

# An insert held back waits for the trainer: from milliseconds to a whole call deadline (30 s).
INSERT_WAIT_BUCKETS_S = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

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
INSERTS_WAITING = "mufleet_replay_inserts_waiting"
INSERT_RATE_LIMITED_TOTAL = "mufleet_replay_insert_rate_limited_total"
INSERT_WAIT_SECONDS = "mufleet_replay_insert_wait_seconds"
SAMPLE_RETRIES_TOTAL = "mufleet_replay_sample_retries_total"
PRIORITY_UPDATES_TOTAL = "mufleet_replay_priority_updates_total"
TARGET_UPDATES_TOTAL = "mufleet_replay_target_updates_total"
TARGET_UPDATES_SKIPPED_TOTAL = "mufleet_replay_target_updates_skipped_total"
REANALYSED_POSITIONS = "mufleet_replay_reanalysed_positions"
SAMPLED_REANALYSED_POSITIONS_TOTAL = "mufleet_replay_sampled_reanalysed_positions_total"
REANALYSED_TARGET_FRACTION = "mufleet_replay_reanalysed_target_fraction"
VALUE_TARGET_TD_STEPS = "mufleet_replay_value_target_td_steps"
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
        self.sampled_reanalysed = Counter(
            SAMPLED_REANALYSED_POSITIONS_TOTAL,
            "Sampled positions whose targets came from a reanalysis.", registry=registry)
        self.reanalysed_target_fraction = Gauge(
            REANALYSED_TARGET_FRACTION,
            "Fraction of the last SampleBatch's positions whose targets came from a reanalysis.",
            registry=registry)
        self.value_target_td_steps = Gauge(
            VALUE_TARGET_TD_STEPS,
            "Mean n of the last SampleBatch's n-step value targets (inside their records; "
            "below td_steps when the off-policy correction shortens them).", registry=registry)
        self.reanalysed_positions = Gauge(
            REANALYSED_POSITIONS, "Stored positions whose targets have been reanalysed.",
            registry=registry)
        self.sample_batches = Counter(SAMPLE_BATCHES_TOTAL, "SampleBatch calls served.", registry=registry)
        self.evicted_games = Counter(EVICTED_GAMES_TOTAL, "Records evicted to stay within --capacity.",
                                     registry=registry)
        self.rate_limited = Counter(RATE_LIMITED_TOTAL,
                                    "SampleBatch calls that had to wait for the rate limiter.",
                                    registry=registry)
        self.inserts_waiting = Gauge(
            INSERTS_WAITING, "AddGames calls waiting for the rate limiter now (--block-inserts: "
            "self-play is ahead of training).", registry=registry)
        self.insert_rate_limited = Counter(
            INSERT_RATE_LIMITED_TOTAL,
            "AddGames calls that the rate limiter held back (--block-inserts).", registry=registry)
        self.insert_wait_seconds = Histogram(
            INSERT_WAIT_SECONDS, "Time an AddGames held back by the rate limiter waited (until it "
            "went, or failed at its deadline).", buckets=INSERT_WAIT_BUCKETS_S, registry=registry)
        self.sample_retries = Counter(SAMPLE_RETRIES_TOTAL,
                                      "Samples drawn again under the lock because an add or "
                                      "UpdateTargets rewrote a drawn record during the gather.",
                                      registry=registry)
        self.priority_updates = Counter(PRIORITY_UPDATES_TOTAL, "Positions whose priority UpdatePriorities set.",
                                        registry=registry)
        self.target_updates = Counter(TARGET_UPDATES_TOTAL, "Positions whose targets UpdateTargets replaced.",
                                      registry=registry)
        self.target_updates_skipped = Counter(
            TARGET_UPDATES_SKIPPED_TOTAL,
            "UpdateTargets positions skipped because a newer reanalysis is stored there.",
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

    def observe_insert_wait(self, seconds: float) -> None:
        """One AddGames that the rate limiter held back, once it went or failed (the buffer's
        `on_insert_wait`)."""
        self.insert_rate_limited.inc()
        self.insert_wait_seconds.observe(seconds)

    def observe_flush(self, seconds: float, records: int) -> None:
        """One priority flush that succeeded: its wall time and the records it wrote (the
        buffer's `on_flush`)."""
        self.priority_flush_seconds.observe(seconds)
        self.priority_flushed_records.inc(records)
