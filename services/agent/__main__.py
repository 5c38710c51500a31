"""MuFleet's self-play agent: B games at once, one network request per search step for all.

    python -m services.agent --game cartpole --environment 127.0.0.1:50000 \\
        --network 127.0.0.1:50002 --replay 127.0.0.1:50001 --games-per-batch 256 --simulations 16

    python -m services.agent --game tictactoe --environment ... --network ... --evaluate 200
        (greedy play of 200 games; prints the mean return, or wins/draws/losses against a
        random player for two-player games)
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

import games
from services.agent.config import AgentConfig
from services.common.logs import get_logger
from services.common.metrics import start_metrics_server
from services.common.shutdown import stop_event_on_signals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--groups", type=int, default=2,
                        help="pipelined groups of games (tree work of one overlaps another's request)")
    parser.add_argument("--chunk-length", type=int, default=200,
                        help="sampleable moves per record of a long game")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a fresh one, so scaled replicas play different games)")
    parser.add_argument("--model-name", default="muzero")
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    parser.add_argument("--max-moves", type=int, default=0,
                        help="stop after this many moves of the batch (0 = until SIGTERM)")
    parser.add_argument("--evaluate", type=int, default=0, metavar="M",
                        help="evaluation mode: play M games greedily, print the result, exit")
    parser.add_argument("--opponent", choices=["random", "minimax"], default="random",
                        help="evaluation mode, two-player games: the opponent (minimax: tictactoe only)")
    parser.add_argument("--version", type=int, default=None,
                        help="evaluation mode: the model version to play (default: the newest)")
    parser.add_argument("--metrics-port", type=int, default=9103)
    parser.add_argument("--host", default="127.0.0.1", help="interface of the metrics endpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = get_logger("agent")
    settings = games.make(args.game).settings
    simulations = args.simulations or settings.num_simulations
    if args.seed is None:
        args.seed = secrets.randbits(31)
    if args.evaluate:
        return _evaluate(args, simulations, log)
    if not args.replay:
        raise SystemExit("--replay is required for self-play")
    config = AgentConfig(game=args.game, environment=args.environment, network=args.network,
                         replay=args.replay, games_per_batch=args.games_per_batch or settings.games_per_batch,
                         simulations=simulations, groups=args.groups, chunk_length=args.chunk_length,
                         seed=args.seed, model_name=args.model_name,
                         request_timeout_s=args.request_timeout_s, max_moves=args.max_moves)
    from services.agent.selfplay import SelfPlay

    metrics_port = start_metrics_server(args.metrics_port, args.host)
    selfplay = SelfPlay(config, log)
    stop = stop_event_on_signals(log)
    log.info("ready", grpc_port=None, metrics_port=metrics_port, games_per_batch=config.games_per_batch,
             simulations=config.simulations, groups=config.groups, seed=config.seed)
    try:
        selfplay.run(stop)
    finally:
        unsent = selfplay.close()
        log.info("stopped", moves=selfplay.moves, games_finished=selfplay.games_finished,
                 unsent_records=unsent)
    return 0 if unsent == 0 else 1


def _evaluate(args: argparse.Namespace, simulations: int, log) -> int:
    from services.agent.evaluate import evaluate
    from services.agent.opponents import OPPONENTS
    from services.environment.client import EnvironmentClient
    from services.network.client import NetworkClient

    with EnvironmentClient(args.environment, timeout_s=args.request_timeout_s) as environment, \
            NetworkClient(args.network, model_name=args.model_name, timeout_s=args.request_timeout_s) as network:
        network.wait_until_available(args.version)
        result = evaluate(args.game, environment, network, args.evaluate, simulations,
                          version=args.version, seed=args.seed, groups=1, opponent=OPPONENTS[args.opponent])
    summary = result.summary()
    log.info("evaluated", **summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
