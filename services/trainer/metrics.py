"""The trainer's Prometheus metrics (`mufleet_trainer_*`), and their names as they appear in the
/metrics text (the constants the monitor, the launcher and the benchmarks read)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

STEPS_TOTAL = "mufleet_trainer_steps_total"
STEPS_PER_SECOND = "mufleet_trainer_steps_per_second"
LOSS = "mufleet_trainer_loss"
LEARNING_RATE = "mufleet_trainer_learning_rate"
GRADIENT_NORM = "mufleet_trainer_gradient_norm"
EXPORTED_VERSION = "mufleet_trainer_exported_version"
EXPORTS_TOTAL = "mufleet_trainer_exports_total"
EXPORT_SECONDS = "mufleet_trainer_export_seconds"
CHECKPOINTS_TOTAL = "mufleet_trainer_checkpoints_total"
BATCH_WAIT_SECONDS = "mufleet_trainer_batch_wait_seconds"
STEP_SECONDS = "mufleet_trainer_step_seconds"
SNAPSHOT_WAIT_SECONDS = "mufleet_trainer_snapshot_wait_seconds"
PREFETCHED_BATCHES = "mufleet_trainer_prefetched_batches"
REPLAY_WAITS_TOTAL = "mufleet_trainer_replay_waits_total"
PRIORITY_UPDATES_TOTAL = "mufleet_trainer_priority_updates_total"
PRIORITY_UPDATES_DROPPED_TOTAL = "mufleet_trainer_priority_updates_dropped_total"

LOSS_KINDS = ("total", "value", "reward", "policy")


class TrainerMetrics:
    """The metrics, in `registry` (the process's default registry for the service; a fresh one,
    the default, for trainers built in tests).

    `steps_total` counts training steps since the run began: a resumed trainer starts it at the
    restored step, so it always equals the global step (the launcher's status line reads it).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        self.steps = Counter(STEPS_TOTAL,
                             "Training steps of the run (a resumed trainer continues the count).",
                             registry=registry)
        self.steps_per_second = Gauge(STEPS_PER_SECOND,
                                      "Training steps per second over the last log interval.",
                                      registry=registry)
        self.loss = Gauge(LOSS, "Latest batch loss by kind (total includes weight "
                          "decay; value is before value_loss_weight).", ["kind"], registry=registry)
        for kind in LOSS_KINDS:  # every series exists from the start
            self.loss.labels(kind)
        self.learning_rate = Gauge(LEARNING_RATE, "Current learning rate.",
                                   registry=registry)
        self.gradient_norm = Gauge(GRADIENT_NORM,
                                   "Global gradient norm of the latest step, before clipping.",
                                   registry=registry)
        self.exported_version = Gauge(EXPORTED_VERSION,
                                      "Newest model version exported (-1 before the first).",
                                      registry=registry)
        self.exported_version.set(-1)
        self.exports = Counter(EXPORTS_TOTAL, "Model versions exported.",
                               registry=registry)
        self.export_seconds = Histogram(EXPORT_SECONDS, "Time to export one version.",
                                        buckets=LATENCY_BUCKETS_S, registry=registry)
        self.checkpoints = Counter(CHECKPOINTS_TOTAL, "Checkpoints written.",
                                   registry=registry)
        self.batch_wait_seconds = Histogram(
            BATCH_WAIT_SECONDS,
            "Time the train loop waited for the next batch (0 when the prefetch queue had one).",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.step_seconds = Histogram(STEP_SECONDS,
                                      "Host time of one training step: its dispatch (forward, backward, "
                                      "update; all of it on a CPU) and the read of its outputs.",
                                      buckets=LATENCY_BUCKETS_S, registry=registry)
        self.snapshot_wait_seconds = Histogram(
            SNAPSHOT_WAIT_SECONDS,
            "Time the train loop waited, at a checkpoint or export step, for the previous "
            "background checkpoint/export to finish before taking the next snapshot (0 when it "
            "had).", buckets=LATENCY_BUCKETS_S, registry=registry)
        self.prefetched_batches = Gauge(PREFETCHED_BATCHES,
                                        "Decoded batches waiting in the prefetch queue.",
                                        registry=registry)
        self.replay_waits = Counter(
            REPLAY_WAITS_TOTAL,
            "SampleBatch calls that returned no batch, by reason (rate_limited: the replay "
            "held the call past its deadline; unavailable: the replay is down or failing).",
            ["reason"], registry=registry)
        self.priority_updates = Counter(PRIORITY_UPDATES_TOTAL,
                                        "Positions whose new priorities reached the replay.",
                                        registry=registry)
        self.priority_updates_dropped = Counter(
            PRIORITY_UPDATES_DROPPED_TOTAL,
            "Positions whose priority updates were dropped (queue full or the call failed).",
            registry=registry)


__all__ = ["TrainerMetrics", "LOSS_KINDS"]
