"""Runs the environment service: sessions of B vectorized games stepped together over gRPC.

    python -m services.environment --game cartpole --port 50000

The server hosts every registered game; --game is its default, the game an Open or GetSpec with
an empty `game` field gets (loaded at start-up). It logs one JSON line per event; the `ready`
event carries the bound ports (`grpc_port`, `metrics_port`). SIGTERM or SIGINT: health turns
NOT_SERVING, calls in flight finish, the process exits 0.
"""

from __future__ import annotations

import argparse

import games
from protos import environment_pb2_grpc
from services.common.logs import get_logger
from services.common.metrics import start_metrics_server
from services.common.server import ServiceServer
from services.environment.config import EnvironmentConfig
from services.environment.server import SERVICE_NAME, EnvironmentServicer
from services.environment.sessions import SessionError


def parse_args(argv: list[str] | None = None) -> EnvironmentConfig:
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
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers,
                        help="threads serving calls; calls on different sessions run in parallel "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return EnvironmentConfig(
            game=args.game, host=args.host, port=args.port, metrics_port=args.metrics_port,
            session_timeout_s=args.session_timeout_s,
            max_games_per_session=args.max_games_per_session, max_sessions=args.max_sessions,
            max_workers=args.max_workers)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    log = get_logger("environment")
    try:
        servicer = EnvironmentServicer(config, log)
    except SessionError as error:  # the default game does not load
        log.error("game_unavailable", game=config.game, message=error.message)
        raise SystemExit(2) from error
    server = ServiceServer(log, host=config.host, port=config.port, max_workers=config.max_workers)
    environment_pb2_grpc.add_EnvironmentServicer_to_server(servicer, server.grpc_server)
    grpc_port = server.start([SERVICE_NAME])
    metrics_port = start_metrics_server(config.metrics_port, host=config.host)
    servicer.start_reaper()
    log.info("ready", grpc_port=grpc_port, metrics_port=metrics_port, game=config.game,
             games=games.names(), session_timeout_s=config.session_timeout_s,
             max_games_per_session=config.max_games_per_session, max_sessions=config.max_sessions)
    try:
        server.wait_for_shutdown_signal()
    finally:
        servicer.stop()


if __name__ == "__main__":
    main()
