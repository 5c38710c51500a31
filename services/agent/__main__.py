"""MuFleet's self-play agent: B games at once, one network request per search step for all.

    python -m services.agent --game cartpole --environment 127.0.0.1:50000 \\
        --network 127.0.0.1:50002 --replay 127.0.0.1:50001 --games-per-batch 256 --simulations 16

    python -m services.agent --game tictactoe --environment ... --network ... --evaluate 200
        (greedy play of 200 games with one model version, the newest at the start unless
        --version; prints the mean return, or wins/draws/losses against an opponent for
        two-player games)

SIGTERM or SIGINT: stop playing, send the pending records for up to --stop-grace-s seconds, log
`stopped` (with `unsent_records`) and exit 0, or 1 if some records stayed unsent. A peer that is
down or restarting is waited for; an answer that waiting cannot fix (e.g. the replay refusing a
record) ends the process with one `permanent_failure` log line saying what to fix, and exit 1.
A bad command line exits 2 with a message naming the flag.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

import games
from services.agent.config import AgentConfig, EvaluationConfig
from services.common.flags import config_or_exit
from services.common.logs import EventLogger, get_logger
from services.common.shutdown import stop_event_on_signals

DEFAULT_GROUPS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=games.names())
    parser.add_argument("--environment", required=True, help="environment server host:port")
    parser.add_argument("--network", required=True, help="network server (or TF Serving) host:port")
    parser.add_argument("--replay", default="", help="replay server host:port (self-play only)")
    parser.add_argument("--games-per-batch", type=int, default=0,
                        help="B, games played at once (default: the game's settings)")
    parser.add_argument("--simulations", type=int, default=0,
                        help="simulations per move (default: the game's settings)")
    parser.add_argument("--groups", type=int, default=None,
                        help="pipelined groups of games (tree work of one overlaps another's "
                             f"request); at most --games-per-batch (default: {DEFAULT_GROUPS}, "
                             "or --games-per-batch when that is smaller)")
    parser.add_argument("--chunk-length", type=int, default=200,
                        help="sampleable moves per record of a long game")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a fresh one, so scaled replicas play different games)")
    parser.add_argument("--model-name", default="muzero")
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-moves", type=int, default=0,
                        help="stop after this many moves of the batch (0 = until SIGTERM)")
    parser.add_argument("--max-pending-records", type=int, default=4096,
                        help="self-play pauses while this many records await the replay's "
                             "acknowledgement (default: %(default)s)")
    parser.add_argument("--stop-grace-s", type=float, default=10.0,
                        help="on SIGTERM, seconds to send pending records before exiting")
    parser.add_argument("--evaluate", type=int, default=0, metavar="M", dest="num_games",
                        help="evaluation mode: play M games greedily, print the result, exit")
    parser.add_argument("--opponent", choices=["random", "minimax"], default=None,
                        help="evaluation mode, two-player games: the opponent (default random; "
                             "minimax: tictactoe only)")
    parser.add_argument("--version", type=int, default=None,
                        help="evaluation mode: the model version to play (default: the newest "
                             "at the start, kept for the whole evaluation)")
    parser.add_argument("--metrics-port", type=int, default=9103)
    parser.add_argument("--host", default="127.0.0.1", help="interface of the metrics endpoint")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def agent_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AgentConfig:
    """The self-play config of `args`; argparse's error (exit 2) naming the flag otherwise."""
    for flag, value in (("--opponent", args.opponent), ("--version", args.version)):
        if value is not None:
            parser.error(f"{flag} applies to evaluation only (--evaluate M)")
    if not args.replay:
        parser.error("--replay is required for self-play (or pass --evaluate M)")
    settings = games.make(args.game).settings
    games_per_batch = args.games_per_batch or settings.games_per_batch
    # The default is clamped to B (one group per game at most); a --groups given is kept as
    # it is, so a value above --games-per-batch is refused naming both flags.
    groups = args.groups if args.groups is not None else min(DEFAULT_GROUPS, max(games_per_batch, 1))
    return config_or_exit(parser, lambda: AgentConfig(
        game=args.game, environment=args.environment, network=args.network, replay=args.replay,
        games_per_batch=games_per_batch, simulations=args.simulations or settings.num_simulations,
        groups=groups, chunk_length=args.chunk_length, seed=args.seed, model_name=args.model_name,
        request_timeout_s=args.request_timeout_s, max_moves=args.max_moves,
        max_pending_records=args.max_pending_records, stop_grace_s=args.stop_grace_s))


def evaluation_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EvaluationConfig:
    """The evaluation config of `args`; argparse's error (exit 2) naming the flag otherwise,
    before any peer is contacted."""
    settings = games.make(args.game).settings
    return config_or_exit(parser, lambda: EvaluationConfig(
        game=args.game, environment=args.environment, network=args.network,
        num_games=args.num_games, simulations=args.simulations or settings.num_simulations,
        opponent=args.opponent, version=args.version, seed=args.seed, model_name=args.model_name,
        request_timeout_s=args.request_timeout_s))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbits(31)
    evaluating = args.num_games != 0
    config = evaluation_config(parser, args) if evaluating else agent_config(parser, args)
    log = get_logger("agent")
    # First, before TensorFlow and the clients load (seconds): a SIGTERM from then on ends in
    # a clean exit.
    stop = stop_event_on_signals(log)
    log.info("starting", mode="evaluate" if evaluating else "selfplay", game=config.game)
    if evaluating:
        return _evaluate(config, stop, log)
    return _selfplay(config, args, stop, log)


def _selfplay(config: AgentConfig, args: argparse.Namespace, stop, log: EventLogger) -> int:
    from services.agent.metrics import AgentMetrics
    from services.agent.selfplay import SelfPlay
    from services.common.failures import PermanentFailure
    from services.common.metrics import start_metrics_server

    metrics_port = start_metrics_server(args.metrics_port, args.host)
    selfplay = SelfPlay(config, log, stop=stop, metrics=AgentMetrics())  # the served registry
    code = 0
    try:
        if not stop.is_set():
            log.info("ready", grpc_port=None, metrics_port=metrics_port,
                     games_per_batch=config.games_per_batch, simulations=config.simulations,
                     groups=config.groups, seed=config.seed)
            selfplay.run(stop)
    except PermanentFailure as failure:
        log.error("permanent_failure", **failure.log_fields())
        code = 1
    finally:
        unsent = selfplay.close()
        log.info("stopped", moves=selfplay.moves, games_finished=selfplay.games_finished,
                 unsent_records=unsent)
    return code if unsent == 0 else 1


def _evaluate(config: EvaluationConfig, stop, log: EventLogger) -> int:
    from services.agent.evaluate import EvaluationStopped, evaluate
    from services.agent.opponents import OPPONENTS
    from services.common.failures import PermanentFailure
    from services.environment.client import EnvironmentClient
    from services.network.client import NetworkClient

    try:
        with EnvironmentClient(config.environment, timeout_s=config.request_timeout_s) as environment, \
                NetworkClient(config.network, model_name=config.model_name,
                              timeout_s=config.request_timeout_s) as network:
            result = evaluate(config.game, environment, network, config.num_games, config.simulations,
                              version=config.version, seed=config.seed, groups=1,
                              opponent=OPPONENTS[config.opponent_name], stop=stop)
    except EvaluationStopped:
        log.info("stopped", evaluated=False)
        return 0
    except PermanentFailure as failure:
        log.error("permanent_failure", **failure.log_fields())
        return 1
    except TimeoutError as error:  # no model version came up in time
        log.error("network_not_ready", address=config.network, message=str(error))
        return 1
    summary = result.summary()
    log.info("evaluated", **summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
