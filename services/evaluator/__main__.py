"""MuFleet's evaluator: the newest model version against a ladder of opponents, again after
every new version, with Elo ratings over every match so far.

    python -m services.evaluator --game tictactoe --network 127.0.0.1:50002 \\
        --environment 127.0.0.1:50000 --state-dir runs/tictactoe/evaluator \\
        --ladder random,minimax,mcts100 --games-per-match 20 \\
        --models runs/tictactoe/models/muzero --anchor-every 1000

Writes <state-dir>/results.jsonl (every match, append-only) and <state-dir>/summary.json (the
ratings table after each round). SIGTERM or SIGINT: the match in progress stops between moves
(it is played again after a restart), `stopped` is logged and the exit status is 0. A peer that
is down or restarting is waited for; an answer that waiting cannot fix ends the process with
one `permanent_failure` log line and exit 1. A bad command line exits 2 with a message naming
the flag. Docs: docs/evaluator.md.
"""

from __future__ import annotations

import argparse
import sys

import games
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.shutdown import stop_event_on_signals
from services.evaluator.config import EvaluatorConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.evaluator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=games.names())
    parser.add_argument("--network", required=True, help="network server (or TF Serving) host:port")
    parser.add_argument("--environment", required=True, help="environment server host:port")
    parser.add_argument("--state-dir", dest="state_dir", required=True,
                        help="where results.jsonl, summary.json and anchors/ are kept")
    add_config_flags(parser, EvaluatorConfig, exclude=("game", "network", "environment", "state_dir"))
    return parser


def evaluator_config(argv: list[str] | None) -> EvaluatorConfig:
    """The config of the command line `argv`; argparse's error (exit 2) naming the flag otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = config_values(parser, args, EvaluatorConfig)
    return config_or_exit(parser, lambda: EvaluatorConfig(game=args.game, network=args.network,
                                                          environment=args.environment,
                                                          state_dir=args.state_dir, **fields))


def start(argv: list[str], registry=None, log=None):
    """The evaluator of the command line `argv`, started in this process (the in-process
    launcher's entry)."""
    from prometheus_client import REGISTRY

    from services.evaluator.service import serve
    return serve(evaluator_config(argv), log or get_logger("evaluator"), registry=registry or REGISTRY)


def main(argv: list[str] | None = None) -> int:
    config = evaluator_config(argv)
    log = get_logger("evaluator")
    stop = stop_event_on_signals(log)  # before the clients and TensorFlow load
    log.info("starting", game=config.game, network=config.network, environment=config.environment,
             state_dir=config.state_dir)
    from services.evaluator.service import serve
    from services.evaluator.store import StateError
    try:
        worker = serve(config, log, stop)
    except StateError as error:
        log.error("unusable_state", details=str(error))
        return 2
    worker.wait()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
