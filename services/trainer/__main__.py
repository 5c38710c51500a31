"""Runs the trainer: MuZero training on replay batches, exported model versions, checkpoints.

    python -m services.trainer --game cartpole --replay 127.0.0.1:50001 \\
        --models runs/cartpole/models/muzero --checkpoint-dir runs/cartpole/checkpoints --resume

It trains on the GPU when TensorFlow sees one (log event `device`). Before training it exports
the current step as a model version (version 0 on a fresh start), so a network server has a model
at once, then logs `ready` (`metrics_port`; `grpc_port` is null: the trainer serves no gRPC) and
pulls batches from the replay, waiting (with a log line per attempt) while the replay has too few
positions or is down. Version v = the network after v steps; one every --export-interval steps.
SIGTERM or SIGINT: finish the step in flight, write a checkpoint, exit 0 (a SIGTERM that comes
while TensorFlow is still loading ends the process at once, also with exit 0). --steps N: at
step N write a checkpoint and export version N, exit 0. --resume continues the newest checkpoint
(step, weights, optimizer state) or starts fresh if there is none; without it, a --checkpoint-dir
that holds a checkpoint is refused (exit 2, event `checkpoint_unusable`, whose message says to
pass --resume or which directories to remove). A replay that is down or restarting is waited
for; an answer that waiting cannot fix ends the process with one `permanent_failure` log line
saying what to fix, a checkpoint, and exit 1. A bad flag exits 2 with a message naming it.
Hyperparameters not given as flags come from the game's MuZero settings (games/<game>.py).
"""

from __future__ import annotations

import argparse
import sys

import games
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.shutdown import stop_event_on_signals
from services.trainer.config import TrainerConfig


def build_parser() -> argparse.ArgumentParser:
    # Each flag's dest is the TrainerConfig field it sets, so that a config error names the flag.
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", choices=games.names(), required=True, help="the game to train")
    parser.add_argument("--replay", required=True, metavar="HOST:PORT", dest="replay_address",
                        help="address of the replay server")
    parser.add_argument("--models", required=True, metavar="DIR", dest="models_dir",
                        help="the model's base path: versions are written as DIR/<step>/")
    parser.add_argument("--checkpoint-dir", required=True, metavar="DIR",
                        help="where checkpoints (weights, optimizer, step) are kept")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --checkpoint-dir (start fresh "
                             "if there is none); without it, an existing checkpoint is an error")
    parser.add_argument("--steps", type=int, default=0,
                        help="stop after this training step, 0 = train until stopped (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="positions per batch (default: the game's batch_size)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="initial learning rate (default: the game's learning_rate)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                        help="adam, or sgd with momentum 0.9 (default: the game's optimizer)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="L2 coefficient (default: the game's weight_decay)")
    parser.add_argument("--num-unroll-steps", type=int, default=None,
                        help="K, dynamics steps unrolled (default: the game's num_unroll_steps)")
    parser.add_argument("--export-interval", type=int, default=None,
                        help="steps between exported versions (default: the game's export_interval)")
    parser.add_argument("--checkpoint-interval", type=int, default=1000,
                        help="steps between checkpoints; one is also written at every export, at "
                             "the end and on SIGTERM (default: %(default)s)")
    parser.add_argument("--keep-versions", type=int, default=5,
                        help="exported versions kept, older ones are deleted (default: %(default)s)")
    parser.add_argument("--keep-checkpoints", type=int, default=3,
                        help="checkpoints kept (default: %(default)s)")
    parser.add_argument("--tensorboard-dir", default=None, metavar="DIR",
                        help="TensorBoard event files (default: <checkpoint-dir>/../tensorboard)")
    parser.add_argument("--log-interval", type=int, default=100,
                        help="steps between `train` log lines and summaries (default: %(default)s)")
    parser.add_argument("--value-loss-weight", type=float, default=0.25,
                        help="factor of the value loss (default: %(default)s)")
    parser.add_argument("--max-grad-norm", type=float, default=5.0,
                        help="clip gradients to this global norm, 0 = off (default: %(default)s)")
    parser.add_argument("--mask-past-end", action="store_true",
                        help="do not train value and reward past a record's end (default: train "
                             "them toward the replay's absorbing targets, 0, as MuZero does)")
    parser.add_argument("--prefetch", type=int, default=4, dest="prefetch_batches",
                        help="decoded batches kept ready (default: %(default)s)")
    parser.add_argument("--sample-timeout", type=float, default=10.0, metavar="SECONDS",
                        dest="sample_timeout_s",
                        help="deadline of one SampleBatch call; the replay's rate limiter holds a "
                             "call up to it (default: %(default)s)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the train step with XLA")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the initial weights (default: random)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address /metrics binds (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=9104,
                        help="port of the Prometheus /metrics endpoint; 0 picks a free one "
                             "(default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> TrainerConfig:
    """The config of the command line; argparse's error (exit 2) naming the flag otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return config_or_exit(parser, lambda: TrainerConfig.for_game(
        args.game, args.models_dir, args.checkpoint_dir, replay_address=args.replay_address,
        resume=args.resume, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer,
        weight_decay=args.weight_decay, num_unroll_steps=args.num_unroll_steps,
        export_interval=args.export_interval, checkpoint_interval=args.checkpoint_interval,
        keep_versions=args.keep_versions, keep_checkpoints=args.keep_checkpoints,
        tensorboard_dir=args.tensorboard_dir, log_interval=args.log_interval,
        value_loss_weight=args.value_loss_weight, max_grad_norm=args.max_grad_norm,
        train_past_end=not args.mask_past_end, prefetch_batches=args.prefetch_batches,
        sample_timeout_s=args.sample_timeout_s, jit_compile=args.jit_compile, seed=args.seed,
        host=args.host, metrics_port=args.metrics_port))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    log = get_logger("trainer")
    # Before TensorFlow loads (seconds), so an early SIGTERM still ends in a clean exit.
    stop = stop_event_on_signals(log)
    log.info("starting", game=config.spec.name, checkpoint_dir=config.checkpoint_dir,
             models=config.models_dir, resume=config.resume)

    from prometheus_client import REGISTRY

    from services.common.metrics import start_metrics_server
    from services.replay.client import ReplayClient
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.prefetch import Prefetcher, PrioritySender, ReplayFailed
    from services.trainer.trainer import CheckpointExists, CheckpointMismatch, Trainer, prepare

    metrics = TrainerMetrics(REGISTRY)
    trainer = Trainer(config, log, metrics)
    if stop.is_set():  # stopped while TensorFlow loaded: nothing was written, nothing to save
        log.info("stopped", step=trainer.current_step, exit_code=0, trained=False)
        return 0
    metrics_port = start_metrics_server(config.metrics_port, host=config.host)
    try:
        step = trainer.start()
    except (CheckpointExists, CheckpointMismatch) as error:
        log.error("checkpoint_unusable", checkpoint_dir=config.checkpoint_dir, message=str(error))
        return 2

    client = ReplayClient(config.replay_address, timeout_s=config.sample_timeout_s)
    batch_size, K = config.settings.batch_size, config.num_unroll_steps
    prefetcher = Prefetcher(
        lambda timeout_s: client.sample_batch(batch_size, num_unroll_steps=K, timeout_s=timeout_s),
        prepare(config), log, metrics, capacity=config.prefetch_batches,
        sample_timeout_s=config.sample_timeout_s, stop=stop, address=config.replay_address)
    sender = PrioritySender(client.update_priorities, log, metrics, capacity=config.priority_queue)
    log.info("ready", grpc_port=None, metrics_port=metrics_port, step=step,
             version=trainer.latest_version, replay=config.replay_address,
             models=config.models_dir, checkpoint_dir=config.checkpoint_dir,
             tensorboard_dir=config.summary_dir, device=trainer.device,
             batch_size=batch_size, num_unroll_steps=K, steps=config.steps,
             symmetries=len(config.symmetries) if config.symmetries else 0)
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
        client.close()
        trainer.close()
    log.info("stopped", step=trainer.current_step, exit_code=code, priorities_flushed=flushed,
             priority_updates_sent=sender.sent, priority_updates_dropped=sender.dropped)
    return code


if __name__ == "__main__":
    sys.exit(main())
