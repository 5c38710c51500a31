"""The trainer's Prometheus metrics (`mufleet_trainer_*`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_S

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
        self.steps = Counter("mufleet_trainer_steps_total",
                             "Training steps of the run (a resumed trainer continues the count).",
                             registry=registry)
        self.steps_per_second = Gauge("mufleet_trainer_steps_per_second",
                                      "Training steps per second over the last log interval.",
                                      registry=registry)
        self.loss = Gauge("mufleet_trainer_loss", "Latest batch loss by kind (total includes weight "
                          "decay; value is before value_loss_weight).", ["kind"], registry=registry)
        for kind in LOSS_KINDS:  # every series exists from the start
            self.loss.labels(kind)
        self.learning_rate = Gauge("mufleet_trainer_learning_rate", "Current learning rate.",
                                   registry=registry)
        self.gradient_norm = Gauge("mufleet_trainer_gradient_norm",
                                   "Global gradient norm of the latest step, before clipping.",
                                   registry=registry)
        self.exported_version = Gauge("mufleet_trainer_exported_version",
                                      "Newest model version exported (-1 before the first).",
                                      registry=registry)
        self.exported_version.set(-1)
        self.exports = Counter("mufleet_trainer_exports_total", "Model versions exported.",
                               registry=registry)
        self.export_seconds = Histogram("mufleet_trainer_export_seconds", "Time to export one version.",
                                        buckets=LATENCY_BUCKETS_S, registry=registry)
        self.checkpoints = Counter("mufleet_trainer_checkpoints_total", "Checkpoints written.",
                                   registry=registry)
        self.batch_wait_seconds = Histogram(
            "mufleet_trainer_batch_wait_seconds",
            "Time the train loop waited for the next batch (0 when the prefetch queue had one).",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.step_seconds = Histogram("mufleet_trainer_step_seconds",
                                      "Time of one training step (forward, backward, update).",
                                      buckets=LATENCY_BUCKETS_S, registry=registry)
        self.prefetched_batches = Gauge("mufleet_trainer_prefetched_batches",
                                        "Decoded batches waiting in the prefetch queue.",
                                        registry=registry)
        self.replay_waits = Counter(
            "mufleet_trainer_replay_waits_total",
            "SampleBatch calls that returned no batch, by reason (rate_limited: the replay "
            "held the call past its deadline; unavailable: the replay is down or failing).",
            ["reason"], registry=registry)
        self.priority_updates = Counter("mufleet_trainer_priority_updates_total",
                                        "Positions whose new priorities reached the replay.",
                                        registry=registry)
        self.priority_updates_dropped = Counter(
            "mufleet_trainer_priority_updates_dropped_total",
            "Positions whose priority updates were dropped (queue full or the call failed).",
            registry=registry)


__all__ = ["TrainerMetrics", "LOSS_KINDS"]
