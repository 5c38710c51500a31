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
import dataclasses

import games
from services.common.flags import config_or_exit
from services.common.logs import get_logger
from services.common.metrics import start_metrics_server
from services.replay.config import SYNCHRONOUS_MODES, ReplayConfig, spec_from_json
from services.replay.server import serve

DEFAULTS = {field.name: field.default for field in dataclasses.fields(ReplayConfig)}


def parse_args(argv: list[str] | None = None) -> ReplayConfig:
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
    parser.add_argument("--data-dir", required=True,
                        help="directory of the SQLite database (created if missing); one game per dir")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the gRPC server and /metrics bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=50001,
                        help="gRPC port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=9101,
                        help="port of the Prometheus /metrics endpoint; 0 picks a free one "
                             "(default: %(default)s)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="stored positions kept, oldest records evicted first "
                             "(default: the game's replay_capacity)")
    parser.add_argument("--min-positions", type=int, default=None,
                        help="no sampling below this many sampleable positions "
                             "(default: the game's min_replay_positions)")
    parser.add_argument("--samples-per-insert", type=float, default=None,
                        help="target ratio of sampled to inserted positions, 0 = no limit "
                             "(default: the game's samples_per_insert)")
    parser.add_argument("--error-buffer", type=float, default=None,
                        help="sampled positions the trainer may run ahead of --samples-per-insert "
                             "(default: 10 x the game's batch_size)")
    parser.add_argument("--priority-alpha", type=float, default=None,
                        help="sampling probability ~ priority^alpha; 0 = uniform "
                             "(default: the game's priority_alpha)")
    parser.add_argument("--priority-beta", type=float, default=None,
                        help="importance-weight exponent in [0, 1] (default: the game's priority_beta)")
    parser.add_argument("--num-unroll-steps", type=int, default=None,
                        help="default K of SampleBatch (default: the game's num_unroll_steps)")
    parser.add_argument("--td-steps", type=int, default=None,
                        help="default n of the n-step value targets (default: the game's td_steps)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampling random stream (default: from the OS)")
    parser.add_argument("--synchronous", choices=SYNCHRONOUS_MODES, default="FULL",
                        help="SQLite synchronous mode: FULL survives power loss, NORMAL only a "
                             "process crash (default: %(default)s)")
    parser.add_argument("--priorities-flush-s", type=float, default=30.0,
                        help="write changed priorities to disk this often (default: %(default)s)")
    parser.add_argument("--max-workers", type=int, default=DEFAULTS["max_workers"],
                        help="threads serving calls; at most half wait on the rate limiter "
                             "(default: %(default)s)")
    parser.add_argument("--priority-limit", type=float, default=None,
                        help="the largest priority UpdatePriorities accepts; also bounds the "
                             "priority new positions enter at (default: 10 x the largest value "
                             "error of the game, at least 1e6)")
    parser.add_argument("--max-sample-bytes", type=int, default=DEFAULTS["max_sample_bytes"],
                        help="the most bytes of arrays one SampleBatch (or SampleGames reply) may "
                             "build; larger SampleBatch requests get INVALID_ARGUMENT "
                             "(default: %(default)s)")
    parser.add_argument("--id-window", type=int, default=DEFAULTS["id_window"],
                        help="AddGames recognises a retried record while fewer than this many "
                             "records were stored after it, evicted or not (default: %(default)s)")
    parser.add_argument("--max-receive-bytes", type=int, default=0,
                        help="largest request message; 0 derives it from --capacity and the game "
                             "(an AddGames that fills the capacity) (default: %(default)s)")
    parser.add_argument("--max-send-bytes", type=int, default=0,
                        help="largest response message; 0 derives it from --max-sample-bytes and "
                             "--capacity (default: %(default)s)")
    args = parser.parse_args(argv)
    if (args.game is None) == (args.game_spec is None):
        parser.error("give exactly one of --game and --game-spec")
    overrides = {name: value for name, value in (
        ("capacity", args.capacity), ("min_positions", args.min_positions),
        ("samples_per_insert", args.samples_per_insert), ("error_buffer", args.error_buffer),
        ("priority_alpha", args.priority_alpha), ("priority_beta", args.priority_beta),
        ("num_unroll_steps", args.num_unroll_steps), ("td_steps", args.td_steps),
        ("priority_limit", args.priority_limit)) if value is not None}

    def build() -> ReplayConfig:
        game = args.game if args.game is not None else spec_from_json(args.game_spec)
        return ReplayConfig.for_game(
            game, args.data_dir, host=args.host, port=args.port, metrics_port=args.metrics_port,
            seed=args.seed, synchronous=args.synchronous,
            priorities_flush_s=args.priorities_flush_s, max_workers=args.max_workers,
            max_sample_bytes=args.max_sample_bytes,
            id_window=args.id_window, max_receive_bytes=args.max_receive_bytes,
            max_send_bytes=args.max_send_bytes, **overrides)

    return config_or_exit(parser, build)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    log = get_logger("replay")
    try:
        server = serve(config, log)
    except (ValueError, RuntimeError) as error:  # a data dir of another game, a damaged database
        log.error("data_dir_unusable", data_dir=config.data_dir, message=str(error))
        raise SystemExit(2) from error
    buffer = server.buffer
    try:
        metrics_port = start_metrics_server(config.metrics_port, host=config.host)
    except BaseException:
        server.stop(0)
        raise
    log.info("ready", grpc_port=server.port, metrics_port=metrics_port, game=config.spec.name,
             data_dir=config.data_dir, games=buffer.num_games, positions=buffer.num_positions,
             capacity=config.capacity, min_positions=config.min_positions,
             samples_per_insert=config.samples_per_insert, error_buffer=config.error_buffer,
             priority_alpha=config.priority_alpha, priority_beta=config.priority_beta,
             num_unroll_steps=config.num_unroll_steps, td_steps=config.td_steps,
             synchronous=config.synchronous, max_workers=config.max_workers,
             max_receive_bytes=config.receive_limit, max_send_bytes=config.send_limit,
             max_sample_bytes=config.max_sample_bytes, priority_limit=config.priority_limit,
             id_window=config.id_window)
    server.wait_for_shutdown_signal()  # stops the server, then closes the buffer


if __name__ == "__main__":
    main()
