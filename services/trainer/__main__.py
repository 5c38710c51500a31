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
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.shutdown import stop_event_on_signals
from games.settings import NetworkSettings, TrainingSettings
from services.trainer.config import NETWORK_OVERRIDES, SETTINGS_OVERRIDES, TrainerConfig


def build_parser() -> argparse.ArgumentParser:
    """The game, the peers, the directories and the game-settings overrides are declared here;
    every other flag is a documented field of `TrainerConfig`. Each flag's dest is the field it
    sets, so that a config error names the flag."""
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
    parser.add_argument("--mask-past-end", action="store_true",
                        help="do not train value and reward past a record's end (default: train "
                             "them toward the replay's absorbing targets, 0, as MuZero does)")
    add_config_flags(parser, TrainerConfig,
                     exclude=("models_dir", "checkpoint_dir", "replay_address", "train_past_end"),
                     names={"prefetch_batches": "--prefetch", "sample_timeout_s": "--sample-timeout"})
    # The game's training settings that a command line may override: flags of the section's
    # documented fields, defaulting to the game's values.
    add_config_flags(parser, TrainingSettings, include=SETTINGS_OVERRIDES,
                     derived={name: f"the game's training.{name}" for name in SETTINGS_OVERRIDES},
                     group="the game's training settings (default: games/<game>.py)")
    add_config_flags(parser, NetworkSettings, include=NETWORK_OVERRIDES,
                     derived={name: f"the game's network.{name}" for name in NETWORK_OVERRIDES},
                     group="the game's network settings (default: games/<game>.py)")
    return parser


def parse_args(argv: list[str] | None = None) -> TrainerConfig:
    """The config of the command line; argparse's error (exit 2) naming the flag otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return config_or_exit(parser, lambda: TrainerConfig.for_game(
        args.game, args.models_dir, args.checkpoint_dir, replay_address=args.replay_address,
        train_past_end=not args.mask_past_end, **config_values(parser, args)))


def start(argv: list[str], registry=None, log=None):
    """The service of the command line `argv`, started in this process (the in-process
    launcher's entry): `serve(parse_args(argv))` with its metrics in `registry`."""
    from prometheus_client import REGISTRY

    from services.trainer.service import serve
    return serve(parse_args(argv), log or get_logger("trainer"), registry=registry or REGISTRY)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    log = get_logger("trainer")
    # Before TensorFlow loads (seconds), so an early SIGTERM still ends in a clean exit.
    stop = stop_event_on_signals(log)
    from services.trainer.service import serve
    worker = serve(config, log, stop)
    worker.wait()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
