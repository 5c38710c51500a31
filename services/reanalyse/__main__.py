"""MuFleet's reanalyse worker: stored positions searched again with the newest model, their new
root values and search policies sent back to the replay (MuZero Reanalyse).

    python -m services.reanalyse --game cartpole --replay 127.0.0.1:50001 \\
        --network 127.0.0.1:50002 --batch-size 256

SIGTERM or SIGINT: finish the batch's UpdateTargets calls, log `stopped` and exit 0. A peer
that is down or restarting is waited for; an answer that waiting cannot fix ends the process
with one `permanent_failure` log line and exit 1. A bad command line exits 2 with a message
naming the flag.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import games
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.shutdown import stop_event_on_signals
from services.reanalyse.config import ReanalyseConfig

DERIVED = {"seed": "a fresh one, so several reanalysers search differently"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.reanalyse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=games.names())
    parser.add_argument("--replay", required=True, help="replay server host:port")
    parser.add_argument("--network", required=True, help="network server (or TF Serving) host:port")
    add_config_flags(parser, ReanalyseConfig, exclude=("game", "replay", "network"), derived=DERIVED)
    return parser


def reanalyse_config(argv: list[str] | None) -> ReanalyseConfig:
    """The config of the command line `argv`; argparse's error (exit 2) naming the flag otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbits(31)
    fields = config_values(parser, args, ReanalyseConfig)
    return config_or_exit(parser, lambda: ReanalyseConfig(game=args.game, replay=args.replay,
                                                          network=args.network, **fields))


def start(argv: list[str], registry=None, log=None):
    """The reanalyse worker of the command line `argv`, started in this process (the in-process
    launcher's entry)."""
    from prometheus_client import REGISTRY

    from services.reanalyse.service import serve
    return serve(reanalyse_config(argv), log or get_logger("reanalyse"), registry=registry or REGISTRY)


def main(argv: list[str] | None = None) -> int:
    config = reanalyse_config(argv)
    log = get_logger("reanalyse")
    stop = stop_event_on_signals(log)  # before the clients and TensorFlow load
    log.info("starting", game=config.game, replay=config.replay, network=config.network)
    from services.reanalyse.service import serve
    worker = serve(config, log, stop)
    worker.wait()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
