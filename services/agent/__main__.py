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
import secrets
import sys

import games
from services.agent.config import AgentConfig, EvaluationConfig
from services.agent.opponents import OPPONENT_GAMES, OPPONENTS
from services.agent.search.config import SELF_PLAY_OVERRIDES
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.shutdown import stop_event_on_signals

# Self-play fields whose default is computed from the game or at start-up.
DERIVED = {
    "games_per_batch": "the game's settings",
    "simulations": "the game's settings",
    "random_opening_moves": "the game's search.random_opening_moves",
    "random_branch_probability": "the game's search.random_branch_probability",
    "random_branch_plies": "the game's search.random_branch_plies",
    "rescale_values": "the game's search.rescale_values",
    "gumbel_scale": "the game's search.gumbel_scale",
    "seed": "a fresh one, so scaled replicas play different games",
}


def build_parser() -> argparse.ArgumentParser:
    """The peers and evaluation mode are declared here; every other flag is a documented field
    of `AgentConfig`."""
    parser = argparse.ArgumentParser(prog="python -m services.agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=games.names())
    parser.add_argument("--environment", required=True, help="environment server host:port")
    parser.add_argument("--network", required=True, help="network server (or TF Serving) host:port")
    parser.add_argument("--replay", default="", help="replay server host:port (self-play only)")
    add_config_flags(parser, AgentConfig, exclude=("game", "environment", "network", "replay"),
                     derived=DERIVED)
    evaluation = parser.add_argument_group("evaluation mode")
    evaluation.add_argument("--evaluate", type=int, default=0, metavar="M", dest="num_games",
                            help="play M games greedily, print the result, exit")
    evaluation.add_argument("--opponent", choices=list(OPPONENTS), default=None,
                            help="two-player games: the opponent (default random; "
                                 + "; ".join(f"{name}: {', '.join(only)} only"
                                             for name, only in OPPONENT_GAMES.items() if only) + ")")
    evaluation.add_argument("--version", type=int, default=None,
                            help="the model version to play (default: the newest at the start, "
                                 "kept for the whole evaluation)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def parse_command_line(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the parsed flags, with a fresh seed drawn when none was given (so scaled
    replicas play different games)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = secrets.randbits(31)
    return parser, args


def agent_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AgentConfig:
    """The self-play config of `args`; argparse's error (exit 2) naming the flag otherwise."""
    for flag, value in (("--opponent", args.opponent), ("--version", args.version)):
        if value is not None:
            parser.error(f"{flag} applies to evaluation only (--evaluate M)")
    if not args.replay:
        parser.error("--replay is required for self-play (or pass --evaluate M)")
    settings = games.make(args.game).settings
    fields = config_values(parser, args, AgentConfig)
    fields["games_per_batch"] = args.games_per_batch or settings.fleet.games_per_batch
    fields["simulations"] = args.simulations or settings.search.num_simulations
    return config_or_exit(parser, lambda: AgentConfig(
        game=args.game, environment=args.environment, network=args.network, replay=args.replay,
        **fields))


def evaluation_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EvaluationConfig:
    """The evaluation config of `args`; argparse's error (exit 2) naming the flag otherwise,
    before any peer is contacted."""
    for name in SELF_PLAY_OVERRIDES:  # evaluation plays greedily: self-play's exploration has no say
        if getattr(args, name) is not None:
            parser.error(f"--{name.replace('_', '-')} applies to self-play only, not to --evaluate")
    settings = games.make(args.game).settings
    return config_or_exit(parser, lambda: EvaluationConfig(
        game=args.game, environment=args.environment, network=args.network,
        num_games=args.num_games, simulations=args.simulations or settings.search.num_simulations,
        opponent=args.opponent, version=args.version, seed=args.seed, model_name=args.model_name,
        request_timeout_s=args.request_timeout_s, rescale_values=args.rescale_values))


def start(argv: list[str], registry=None, log=None):
    """The self-play service of the command line `argv`, started in this process (the
    in-process launcher's entry): `serve(config)` with its metrics in `registry`."""
    from prometheus_client import REGISTRY

    from services.agent.service import serve
    parser, args = parse_command_line(argv)
    return serve(agent_config(parser, args), log or get_logger("agent"), registry=registry or REGISTRY)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_command_line(argv)
    evaluating = args.num_games != 0
    config = evaluation_config(parser, args) if evaluating else agent_config(parser, args)
    log = get_logger("agent")
    # First, before TensorFlow and the clients load (seconds): a SIGTERM from then on ends in
    # a clean exit.
    stop = stop_event_on_signals(log)
    log.info("starting", mode="evaluate" if evaluating else "selfplay", game=config.game)
    if evaluating:
        from services.agent.service import evaluate_once
        return evaluate_once(config, stop, log)
    from services.agent.service import serve
    worker = serve(config, log, stop)
    worker.wait()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
