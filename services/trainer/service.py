"""The trainer as a library: `serve(config)` trains in this process; `python -m
services.trainer` only parses flags and calls it."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry

from services.common.logs import EventLogger, get_logger
from services.common.metrics import serve_metrics
from services.common.service import Worker
from services.trainer.config import TrainerConfig


def serve(config: TrainerConfig, log: EventLogger | None = None, stop: threading.Event | None = None,
          registry: CollectorRegistry = REGISTRY, replay=None) -> Worker:
    """Starts training in this process: /metrics on `config.host`:`config.metrics_port` (0: a
    free one) serving `registry`, and on a thread: TensorFlow and the network, the checkpoint
    (restored with `config.resume`), version 0's export, then training on the replay's batches
    until `stop` is set or `config.steps` is reached. Logs `starting`, `ready` and `stopped`.

    `replay`: the replay client to sample from and send priorities to (a `ReplayClient` or
    anything with its `sample_batch` and `update_priorities`; default: one for
    `config.replay_address`, closed at the end; a given one is left open).

    The worker's exit code: 0 after a clean stop (a checkpoint written), 1 after a permanent
    replay failure or a non-finite loss, 2 for a checkpoint directory it must not use.
    """
    log = log or get_logger("trainer")
    stop = stop if stop is not None else threading.Event()
    metrics_endpoint = serve_metrics(config.metrics_port, config.host, registry)

    def run(stop: threading.Event, ready: threading.Event) -> int:
        return _train(config, log, stop, ready, registry, metrics_endpoint.port, replay)

    return Worker("trainer", run, log, metrics_endpoint, stop).start()


def _train(config: TrainerConfig, log: EventLogger, stop: threading.Event, ready: threading.Event,
           registry: CollectorRegistry, metrics_port: int, replay) -> int:
    log.info("starting", game=config.spec.name, checkpoint_dir=config.checkpoint_dir,
             models=config.models_dir, resume=config.resume)

    from services.trainer.metrics import TrainerMetrics
    import grpc

    from services.common.failures import status_code, status_details
    from services.trainer.prefetch import Prefetcher, PrioritySender, ReplayFailed, split_batch
    from services.trainer.trainer import CheckpointExists, CheckpointMismatch, Trainer, prepare

    metrics = TrainerMetrics(registry)
    trainer = Trainer(config, log, metrics)
    if stop.is_set():  # stopped while TensorFlow loaded: nothing was written, nothing to save
        log.info("stopped", step=trainer.current_step, exit_code=0, trained=False)
        return 0
    try:
        step = trainer.start()
    except (CheckpointExists, CheckpointMismatch) as error:
        log.error("checkpoint_unusable", checkpoint_dir=config.checkpoint_dir, message=str(error))
        return 2

    owns_client = replay is None
    if owns_client:
        from services.replay.client import ReplayClient
        replay = ReplayClient(config.replay_address, timeout_s=config.sample_timeout_s)
    batch_size, K = config.settings.training.batch_size, config.num_unroll_steps
    unroll = config.unroll_observations  # asked for only when a loss needs them
    prepare_batch = prepare(config)
    merge = [config.sample_merge]  # set to 1 if the replay refuses the merged call
    # Without the consistency loss the call is exactly as before (the flag is not even passed).
    unroll_request = {"include_unroll_observations": True} if unroll else {}

    def sample(timeout_s: float):
        if merge[0] > 1:
            try:
                return replay.sample_batch(batch_size * merge[0], num_unroll_steps=K,
                                           timeout_s=timeout_s, **unroll_request)
            except grpc.RpcError as error:
                if status_code(error) != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.warning("sample_merge_refused", sample_merge=merge[0], message=status_details(error),
                            action="asking for one batch per SampleBatch call from now on")
                merge[0] = 1
        return replay.sample_batch(batch_size, num_unroll_steps=K, timeout_s=timeout_s, **unroll_request)

    prefetcher = Prefetcher(
        sample,
        # Decoded, split and turned into device tensors on the prefetch thread, not the
        # training one.
        lambda batch: [trainer.stage(part) for part in split_batch(prepare_batch(batch), batch_size)],
        log, metrics, capacity=config.prefetch_batches,
        sample_timeout_s=config.sample_timeout_s, stop=stop, address=config.replay_address)
    sender = PrioritySender(replay.update_priorities, log, metrics, capacity=config.priority_queue,
                            merge=config.priority_merge)
    log.info("ready", grpc_port=None, metrics_port=metrics_port, step=step,
             version=trainer.latest_version, replay=config.replay_address,
             models=config.models_dir, checkpoint_dir=config.checkpoint_dir,
             tensorboard_dir=config.summary_dir, device=trainer.device,
             batch_size=batch_size, num_unroll_steps=K, steps=config.steps,
             symmetries=len(config.symmetries) if config.symmetries else 0)
    ready.set()
    code = 0
    prefetcher.start()
    try:
        trainer.train(prefetcher, sender, stop)
    except ReplayFailed as failure:
        log.error("permanent_failure", **failure.log_fields())
        trainer.save_checkpoint()
        code = 1
    except FloatingPointError:
        code = 1  # logged as non_finite_loss; the newest checkpoint is the last good state
    finally:
        prefetcher.close()
        flushed = sender.close(timeout_s=5.0)
        if owns_client:
            replay.close()
        trainer.close()
    log.info("stopped", step=trainer.current_step, exit_code=code, priorities_flushed=flushed,
             priority_updates_sent=sender.sent, priority_updates_dropped=sender.dropped)
    return code
