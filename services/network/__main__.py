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



def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Flags in tensorflow_model_server's spelling; those of `NetworkConfig`'s scalar fields are
    derived from its documented fields."""
    from services.common.config_flags import add_config_flags
    from services.network.config import NetworkConfig

    parser = argparse.ArgumentParser(
        prog="python -m services.network", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    add_config_flags(parser, NetworkConfig, exclude=("enable_batching", "prometheus_path"),
                     underscores=True, aliases={"rest_api_port": ("--metrics-port",)})
    return parser


def build_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The NetworkConfig of the parsed flags; a bad flag or config file exits with status 2
    and a message naming the flag or the file and field."""
    import os

    from services.common.config_flags import config_values
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
            prometheus_path=network_config.prometheus_path_from_file(args.monitoring_config_file),
            **config_values(parser, args))

    return config_or_exit(parser, build)


def start(argv: list[str], registry=None, log=None):
    """The service of the command line `argv`, started in this process (the in-process
    launcher's entry): `serve(config)` with its metrics in `registry`. The TensorFlow thread
    flags are left to the process (another TensorFlow user may have started first)."""
    from prometheus_client import REGISTRY

    from services.common.logs import get_logger
    from services.network.server import serve

    parser = build_parser()
    config = build_config(parser.parse_args(argv), parser)
    return serve(config, log or get_logger("network"), registry=registry or REGISTRY)


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

    if config.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(config.tensorflow_intra_op_parallelism)
    if config.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(config.tensorflow_inter_op_parallelism)

    from services.network.server import serve

    running = None if stop.is_set() else serve(config, log, stop=stop)  # the process's registry
    if running is None:  # stopped during start-up: no port was opened
        log.info("stopped")
        return 0
    running.wait_for_shutdown_signal(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
