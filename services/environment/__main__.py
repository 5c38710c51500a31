"""Runs the environment service: sessions of B vectorized games stepped together over gRPC.

    python -m services.environment --game cartpole --port 50000

The server hosts every registered game; --game is its default, the game an Open or GetSpec with
an empty `game` field gets (loaded at start-up). It logs one JSON line per event; the `ready`
event carries the bound ports (`grpc_port`, `metrics_port`) and the message limits, which follow
from --max-games-per-session and the games' sizes (services/environment/limits.py). SIGTERM or SIGINT: health turns
NOT_SERVING, calls in flight finish, the process exits 0.
"""

from __future__ import annotations

import argparse

import games
from services.common.config_flags import add_config_flags, config_values
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.environment.config import EnvironmentConfig
from services.environment.limits import MessageLimits, message_limits
from services.environment.sessions import SessionError


def make_parser() -> argparse.ArgumentParser:
    """Every flag is a documented field of `EnvironmentConfig`."""
    parser = argparse.ArgumentParser(
        prog="python -m services.environment", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, EnvironmentConfig, choices={"game": games.names()})
    return parser


def parse_args(argv: list[str] | None = None,
               parser: argparse.ArgumentParser | None = None) -> EnvironmentConfig:
    """The config the flags describe; argparse's error (exit 2) naming the flag otherwise."""
    parser = parser or make_parser()
    args = parser.parse_args(argv)
    return config_or_exit(parser, lambda: EnvironmentConfig(**config_values(parser, args)))


def parse_command_line(argv: list[str] | None = None) -> tuple[EnvironmentConfig, MessageLimits]:
    """The config and the message limits it implies; a config whose messages cannot fit in
    gRPC's limit is a command-line error too (exit 2, naming --max-games-per-session)."""
    parser = make_parser()
    config = parse_args(argv, parser)
    return config, config_or_exit(parser, lambda: message_limits(config))


def start(argv: list[str], registry=None, log=None):
    """The service of the command line `argv`, started in this process (the in-process
    launcher's entry): `serve(parse_args(argv))` with its metrics in `registry`."""
    from prometheus_client import REGISTRY

    from services.environment.server import serve
    return serve(parse_args(argv), log or get_logger("environment"), registry or REGISTRY)


def main(argv: list[str] | None = None) -> None:
    config, _limits = parse_command_line(argv)
    log = get_logger("environment")
    from services.environment.server import serve
    try:
        server = serve(config, log)
    except SessionError as error:  # the default game does not load
        log.error("game_unavailable", game=config.game, message=error.message)
        raise SystemExit(2) from error
    server.wait_for_shutdown_signal()


if __name__ == "__main__":
    main()
