"""Runs the replay service: durable game records, MuZero targets, prioritized sampling.

    python -m services.replay --game cartpole --data-dir runs/cartpole/replay --port 50001

Records are kept in SQLite (WAL) under --data-dir; an acknowledged AddGames survives kill -9,
and a restart on the same --data-dir serves every stored record again. Sampling defaults
(capacity, min positions, samples per insert, priority exponents, K, n) come from the game's
MuZero settings unless a flag sets them. It logs one JSON line per event; the `ready` event
carries the bound ports (`grpc_port`, `metrics_port`). SIGTERM or SIGINT: health turns
NOT_SERVING, samplers waiting on the rate limiter get UNAVAILABLE, calls in flight finish,
pending priorities are written and the database is closed; the process exits 0.
"""

from __future__ import annotations

import argparse

import games
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.replay.config import SYNCHRONOUS_MODES, ReplayConfig, spec_from_json

# Fields whose default comes from the game's MuZeroSettings (`ReplayConfig.for_game`).
FROM_GAME = {
    "capacity": "the game's replay.capacity",
    "min_positions": "the game's replay.min_positions",
    "samples_per_insert": "the game's replay.samples_per_insert",
    "block_inserts": "the game's replay.block_inserts (False)",
    "error_buffer": "10 x the game's training.batch_size",
    "priority_alpha": "the game's replay.priority_alpha",
    "priority_beta": "the game's replay.priority_beta",
    "reanalysed_target_fraction": "the game's replay.reanalysed_target_fraction",
    "td_age_versions_per_step": "the game's replay.td_age_versions_per_step",
    "num_unroll_steps": "the game's training.num_unroll_steps",
    "td_steps": "the game's training.td_steps",
    "discount": "the game's discount",
    "value_prefix": "the game's training.value_prefix",
    "value_prefix_horizon": "the game's training.value_prefix_horizon",
    "priority_limit": "10 x the largest value error of the game, at least 1e6",
}


def make_parser() -> argparse.ArgumentParser:
    """--game / --game-spec name the game; every other flag is a documented field of
    `ReplayConfig`."""
    parser = argparse.ArgumentParser(
        prog="python -m services.replay", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", choices=games.names(), default=None,
                        help="the game whose records are stored (required unless --game-spec)")
    parser.add_argument("--game-spec", default=None, metavar="JSON",
                        help="a game outside the registry, as the JSON of a GameSpec: "
                             '{"name": ..., "observation_shape": [...], "observation_dtype": ..., '
                             '"num_actions": ..., "num_players": ..., "discount": ..., "max_moves": ...}; '
                             "its settings are MuZeroSettings' defaults (for tests and benchmarks)")
    add_config_flags(parser, ReplayConfig, exclude=("spec",), derived=FROM_GAME,
                     choices={"synchronous": SYNCHRONOUS_MODES})
    return parser


def parse_args(argv: list[str] | None = None) -> ReplayConfig:
    """The config the flags describe; argparse's error (exit 2) naming the flag otherwise."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if (args.game is None) == (args.game_spec is None):
        parser.error("give exactly one of --game and --game-spec")

    def build() -> ReplayConfig:
        game = args.game if args.game is not None else spec_from_json(args.game_spec)
        fields = config_values(parser, args)
        return ReplayConfig.for_game(game, fields.pop("data_dir"), **fields)

    return config_or_exit(parser, build)


def start(argv: list[str], registry=None, log=None):
    """The service of the command line `argv`, started in this process (the in-process
    launcher's entry): `serve(parse_args(argv))` with its metrics in `registry`."""
    from prometheus_client import REGISTRY

    from services.replay.server import serve
    return serve(parse_args(argv), log or get_logger("replay"), registry=registry or REGISTRY)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    log = get_logger("replay")
    from services.replay.server import serve
    try:
        server = serve(config, log)
    except (ValueError, RuntimeError) as error:  # a data dir of another game, a damaged database
        log.error("data_dir_unusable", data_dir=config.data_dir, message=str(error))
        raise SystemExit(2) from error
    server.wait_for_shutdown_signal()  # stops the server, then closes the buffer


if __name__ == "__main__":
    main()
