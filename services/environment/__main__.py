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
from protos import environment_pb2_grpc
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.metrics import start_metrics_server
from services.common.server import ServiceServer
from services.environment.config import EnvironmentConfig
from services.environment.limits import MessageLimits, message_limits
from services.environment.server import EnvironmentServicer
from services.environment.wire import SERVICE_NAME
from services.environment.sessions import SessionError


def make_parser() -> argparse.ArgumentParser:
    defaults = EnvironmentConfig()
    parser = argparse.ArgumentParser(
        prog="python -m services.environment", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default=defaults.game, choices=games.names(),
                        help="default game: what an Open or GetSpec without a game gets; every "
                             "registered game can still be opened (default: %(default)s)")
    parser.add_argument("--host", default=defaults.host,
                        help="address the gRPC server binds (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port,
                        help="gRPC port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                        help="port of the Prometheus /metrics endpoint, on --host; 0 picks a free "
                             "one (default: %(default)s)")
    parser.add_argument("--session-timeout-s", type=float, default=defaults.session_timeout_s,
                        help="close a session after this many seconds without a call naming it "
                             "(default: %(default)s)")
    parser.add_argument("--max-games-per-session", type=int, default=defaults.max_games_per_session,
                        help="largest num_games one Open may ask for (default: %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions,
                        help="most sessions open at once; more Opens get RESOURCE_EXHAUSTED "
                             "(default: %(default)s)")
    parser.add_argument("--max-total-games", type=int, default=defaults.max_total_games,
                        help="most games all open sessions may hold together (bounds the "
                             "server's memory: up to about 1.1 KB per game of 2048); more Opens "
                             "get RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers,
                        help="threads serving calls; calls on different sessions run in parallel "
                             "(default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None,
               parser: argparse.ArgumentParser | None = None) -> EnvironmentConfig:
    """The config the flags describe; argparse's error (exit 2) naming the flag otherwise."""
    parser = parser or make_parser()
    args = parser.parse_args(argv)
    return config_or_exit(parser, lambda: EnvironmentConfig(
        game=args.game, host=args.host, port=args.port, metrics_port=args.metrics_port,
        session_timeout_s=args.session_timeout_s,
        max_games_per_session=args.max_games_per_session, max_sessions=args.max_sessions,
        max_total_games=args.max_total_games, max_workers=args.max_workers))


def parse_command_line(argv: list[str] | None = None) -> tuple[EnvironmentConfig, MessageLimits]:
    """The config and the message limits it implies; a config whose messages cannot fit in
    gRPC's limit is a command-line error too (exit 2, naming --max-games-per-session)."""
    parser = make_parser()
    config = parse_args(argv, parser)
    return config, config_or_exit(parser, lambda: message_limits(config))


def main(argv: list[str] | None = None) -> None:
    config, limits = parse_command_line(argv)
    log = get_logger("environment")
    try:
        servicer = EnvironmentServicer(config, log)
    except SessionError as error:  # the default game does not load
        log.error("game_unavailable", game=config.game, message=error.message)
        raise SystemExit(2) from error
    server = ServiceServer(log, host=config.host, port=config.port, max_workers=config.max_workers,
                           max_receive_bytes=limits.max_receive_bytes,
                           max_send_bytes=limits.max_send_bytes)
    environment_pb2_grpc.add_EnvironmentServicer_to_server(servicer, server.grpc_server)
    grpc_port = server.start([SERVICE_NAME])
    metrics_port = start_metrics_server(config.metrics_port, host=config.host)
    servicer.start_reaper()
    log.info("ready", grpc_port=grpc_port, metrics_port=metrics_port, game=config.game,
             games=games.names(), session_timeout_s=config.session_timeout_s,
             max_games_per_session=config.max_games_per_session, max_sessions=config.max_sessions,
             max_total_games=config.max_total_games, max_receive_bytes=limits.max_receive_bytes,
             max_send_bytes=limits.max_send_bytes)
    try:
        server.wait_for_shutdown_signal()
    finally:
        servicer.stop()


if __name__ == "__main__":
    main()
