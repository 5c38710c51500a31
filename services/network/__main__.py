"""MuFleet's network server: TensorFlow Serving's gRPC API over the trainer's SavedModels.

Flags use tensorflow_model_server's names, so the same command lines work with both:

    python -m services.network --model_name muzero --model_base_path runs/cartpole/models/muzero
    python -m services.network --model_config_file models/models.config \\
        --enable_batching --batching_parameters_file models/batching.config \\
        --monitoring_config_file models/monitoring.config

Differences from tensorflow_model_server: port 0 picks a free port (the bound ports are logged
in the `ready` event) instead of disabling the REST port; `--metrics-port` is an alias of
`--rest_api_port`; `--model_base_path` keeps the newest 3 versions loaded (TensorFlow Serving:
1; use a config file's model_version_policy to choose). See docs/network.md.
"""

from __future__ import annotations

import argparse
import sys

from services.network.config import (DEFAULT_MAX_CONCURRENT_RPCS, DEFAULT_MAX_MESSAGE_BYTES,
                                     DEFAULT_MAX_REQUEST_ROWS)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.network", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind the gRPC and HTTP ports (default: %(default)s)")
    parser.add_argument("--port", type=int, default=50002,
                        help="gRPC port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--rest_api_port", "--metrics-port", dest="rest_api_port", type=int, default=9102,
                        help="HTTP port: /metrics, the monitoring path, GET /v1/models/<name>; "
                             "0 picks a free one (default: %(default)s)")
    parser.add_argument("--model_config_file", default=None,
                        help="ModelServerConfig textproto (e.g. models/models.config)")
    parser.add_argument("--model_name", default="muzero",
                        help="model name with --model_base_path (default: %(default)s)")
    parser.add_argument("--model_base_path", default=None,
                        help="directory of integer-named SavedModel versions (instead of a config file)")
    parser.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_bool,
                        help="merge concurrent requests into batches (default: off)")
    parser.add_argument("--batching_parameters_file", default=None,
                        help="BatchingParameters textproto (e.g. models/batching.config)")
    parser.add_argument("--monitoring_config_file", default=None,
                        help="MonitoringConfig textproto (e.g. models/monitoring.config)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between scans for new versions; 0 scans once (default: %(default)s)")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads inside one TensorFlow op; 0 = TensorFlow's default")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="TensorFlow ops run at once; 0 = TensorFlow's default")
    parser.add_argument("--max_concurrent_rpcs", type=int, default=DEFAULT_MAX_CONCURRENT_RPCS,
                        help="gRPC worker threads; a request waiting for its batch holds one "
                             "(default: %(default)s)")
    parser.add_argument("--max_request_rows", type=int, default=DEFAULT_MAX_REQUEST_ROWS,
                        help="most rows (batch dimension) in one Predict request; more is "
                             "RESOURCE_EXHAUSTED (default: %(default)s)")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest request message, and the most one input may decode to; "
                             "more is RESOURCE_EXHAUSTED (default: %(default)s = 64 MiB)")
    parser.add_argument("--max_response_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest response message; more is RESOURCE_EXHAUSTED "
                             "(default: %(default)s = 64 MiB)")
    return parser


def build_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The NetworkConfig of the parsed flags; a bad flag or config file exits with status 2
    and a message naming the flag or the file and field."""
    import os

    from services.common.flags import config_or_exit
    from services.network import config as network_config

    if (args.model_config_file is None) == (args.model_base_path is None):
        parser.error("give exactly one of --model_config_file or --model_base_path")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file needs --enable_batching")

    def build() -> network_config.NetworkConfig:
        if args.model_config_file is not None:
            models = network_config.models_from_config_file(args.model_config_file)
        else:
            models = (network_config.ModelEntry(name=args.model_name,
                                                base_path=os.path.abspath(args.model_base_path)),)
        return network_config.NetworkConfig(
            models=models,
            enable_batching=args.enable_batching,
            batching=network_config.batching_from_file(args.batching_parameters_file),
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            prometheus_path=network_config.prometheus_path_from_file(args.monitoring_config_file),
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_request_rows=args.max_request_rows,
            max_request_bytes=args.max_request_bytes,
            max_response_bytes=args.max_response_bytes)

    return config_or_exit(parser, build)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = build_config(args, parser)

    from services.common.logs import get_logger
    from services.common.shutdown import stop_event_on_signals

    log = get_logger("network")
    # Before anything slow (importing TensorFlow, loading versions): a SIGTERM during start-up
    # then stops the server cleanly (exit 0, `stopped`) instead of killing it mid-load.
    stop = stop_event_on_signals(log)
    log.info("starting", models={m.name: m.base_path for m in config.models})

    import tensorflow as tf  # slow: only after the flags and config files are known to be good

    if args.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)

    from services.network.metrics import NetworkMetrics
    from services.network.server import serve

    running = None if stop.is_set() else serve(config, log, host=args.host, port=args.port,
                                                rest_api_port=args.rest_api_port, stop=stop,
                                                metrics=NetworkMetrics())  # the process's registry
    if running is None:  # stopped during start-up: no port was opened
        log.info("stopped")
        return 0
    log.info("ready", grpc_port=running.grpc_port, metrics_port=running.rest_port,
             rest_api_port=running.rest_port, models={m.name: m.base_path for m in config.models},
             loaded=running.service.loaded_versions(), batching=config.enable_batching,
             max_request_rows=config.max_request_rows, max_request_bytes=config.max_request_bytes,
             max_response_bytes=config.max_response_bytes,
             max_concurrent_rpcs=config.max_concurrent_rpcs)
    running.server.wait_for_shutdown_signal(stop)
    running.service.stop()
    running.rest.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
