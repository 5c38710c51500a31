"""The network server's configuration, and readers for TensorFlow Serving's textproto files.

Only protobuf is imported here (no TensorFlow), so flags and config files are checked before
the slow imports.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar

from google.protobuf import message as protobuf_message
from google.protobuf import text_format

from games.validation import require

DEFAULT_NUM_VERSIONS = 3

# Request size limits. The largest legitimate request is a `recurrent_inference` on a board
# game's hidden state: Othello's is 8 x 8 x 64 float32 = 16 KiB a row (Connect Four's
# 6 x 7 x 64 = 10.5 KiB), so 1024 rows (models/batching.config's max_batch_size, four agents'
# default 256 games) are 16 MiB, and its response (hidden state, value, reward, 65 policy
# logits) is 16.3 KiB a row. Defaults: twice those rows, and twice those bytes again for a
# larger hidden state (128 channels).
DEFAULT_MAX_REQUEST_ROWS = 2048
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A request waiting for its batch holds a gRPC worker: 64 leave room for a few dozen agents
# with a request or two in flight each (`--groups`), plus status calls.
DEFAULT_MAX_CONCURRENT_RPCS = 64

M = TypeVar("M", bound=protobuf_message.Message)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model (a `config` of TensorFlow Serving's ModelConfigList).

    Attributes:
      name: the name requests use in `model_spec.name`.
      base_path: the directory whose integer-named subdirectories are the versions.
      version_policy: "latest" (the newest `num_versions`), "all", or "specific"
        (`specific_versions`), as TensorFlow Serving's model_version_policy.
      num_versions: for "latest": how many of the newest versions stay loaded.
      specific_versions: for "specific": the versions to serve.
      version_labels: label -> version, for `model_spec.version_label`.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = DEFAULT_NUM_VERSIONS
    specific_versions: tuple[int, ...] = ()
    version_labels: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        require(bool(self.name), f"ModelEntry.name must be non-empty, got {self.name!r}")
        require(bool(self.base_path), f"ModelEntry.base_path of model {self.name!r} must be non-empty")
        require(self.version_policy in ("latest", "all", "specific"),
                f"ModelEntry.version_policy must be 'latest', 'all' or 'specific', got {self.version_policy!r}")
        require(self.num_versions >= 1,
                f"ModelEntry.num_versions of model {self.name!r} must be >= 1, got {self.num_versions}")
        require(self.version_policy != "specific" or len(self.specific_versions) > 0,
                f"ModelEntry.specific_versions of model {self.name!r} must list versions for policy 'specific'")


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Cross-request batching (TensorFlow Serving's BatchingParameters).

    Attributes:
      max_batch_size: most rows in one merged run; a larger request runs alone.
      batch_timeout_micros: how long an open batch waits for more requests (0: run as soon
        as a batch thread is free).
      max_enqueued_batches: batches that may wait per (model, version, signature) queue,
        the open one included; a request that needs one more gets UNAVAILABLE.
      num_batch_threads: threads that run merged batches.
      thread_pool_name: name prefix of those threads.
      allowed_batch_sizes: if set, merged runs are padded up to the next of these sizes
        (increasing; the last must equal max_batch_size).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = max(1, os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require(self.max_batch_size >= 1,
                f"BatchingConfig.max_batch_size must be >= 1, got {self.max_batch_size}")
        require(self.batch_timeout_micros >= 0,
                f"BatchingConfig.batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        require(self.max_enqueued_batches >= 1,
                f"BatchingConfig.max_enqueued_batches must be >= 1, got {self.max_enqueued_batches}")
        require(self.num_batch_threads >= 1,
                f"BatchingConfig.num_batch_threads must be >= 1, got {self.num_batch_threads}")
        sizes = self.allowed_batch_sizes
        require(not sizes or (all(a < b for a, b in zip(sizes, sizes[1:])) and sizes[0] >= 1
                              and sizes[-1] == self.max_batch_size),
                f"BatchingConfig.allowed_batch_sizes must increase and end with max_batch_size "
                f"{self.max_batch_size}, got {list(sizes)}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Everything the network server needs.

    Attributes:
      models: the served models (at least one, distinct names).
      enable_batching: merge concurrent requests (see BatchingConfig).
      batching: batching parameters (used only with enable_batching).
      file_system_poll_wait_seconds: seconds between scans of the base paths for new versions;
        0 scans once at startup only.
      prometheus_path: an extra HTTP path for the Prometheus metrics (from monitoring.config);
        /metrics is always served.
      max_concurrent_rpcs: gRPC worker threads (requests waiting for a batch hold one, so
        keep at least the number of requests all clients have in flight at once).
      max_request_rows: the most rows (batch dimension) one Predict request may carry; more is
        RESOURCE_EXHAUSTED before anything is decoded.
      max_request_bytes: the largest request message gRPC accepts (bytes, serialized), and
        the most bytes one input may decode to (one typed value broadcast over a large shape
        included); more is RESOURCE_EXHAUSTED.
      max_response_bytes: the largest response message (bytes, serialized); a larger one is
        RESOURCE_EXHAUSTED.
      host: address the gRPC and HTTP ports bind.
      port: gRPC port; 0 picks a free one.
      rest_api_port: HTTP port: /metrics, the monitoring path, GET /v1/models/<name>; 0 picks a
        free one.
      tensorflow_intra_op_parallelism: threads inside one TensorFlow op; 0 = TensorFlow's default.
      tensorflow_inter_op_parallelism: TensorFlow ops run at once; 0 = TensorFlow's default.
        Both are process-wide: they apply when the server is the first TensorFlow user of its
        process (`python -m services.network`).
    """

    models: tuple[ModelEntry, ...]
    enable_batching: bool = False
    batching: BatchingConfig = BatchingConfig()
    file_system_poll_wait_seconds: float = 1.0
    prometheus_path: str | None = None
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS
    max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_response_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    host: str = "127.0.0.1"
    port: int = 50002
    rest_api_port: int = 9102
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0

    def __post_init__(self) -> None:
        require(bool(self.host), f"NetworkConfig.host must be non-empty, got {self.host!r}")
        for name in ("port", "rest_api_port"):
            value = getattr(self, name)
            require(0 <= value <= 65535, f"NetworkConfig.{name} must be in [0, 65535], got {value}")
        for name in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
            value = getattr(self, name)
            require(value >= 0, f"NetworkConfig.{name} must be >= 0, got {value}")
        require(len(self.models) >= 1, "NetworkConfig.models must name at least one model")
        names = [m.name for m in self.models]
        require(len(set(names)) == len(names), f"NetworkConfig.models has duplicate names: {names}")
        require(self.file_system_poll_wait_seconds >= 0,
                f"NetworkConfig.file_system_poll_wait_seconds must be >= 0, got {self.file_system_poll_wait_seconds}")
        require(self.prometheus_path is None or self.prometheus_path.startswith("/"),
                f"NetworkConfig.prometheus_path must start with '/', got {self.prometheus_path!r}")
        require(self.max_concurrent_rpcs >= 1,
                f"NetworkConfig.max_concurrent_rpcs must be >= 1, got {self.max_concurrent_rpcs}")
        require(self.max_request_rows >= 1,
                f"NetworkConfig.max_request_rows must be >= 1, got {self.max_request_rows}")
        # gRPC keeps message limits in a C int.
        for name in ("max_request_bytes", "max_response_bytes"):
            value = getattr(self, name)
            require(1024 <= value < 2**31,
                    f"NetworkConfig.{name} must be in [1024, 2**31), got {value}")


def read_textproto(path: str | os.PathLike, message: M) -> M:
    """Parses a textproto file into `message`; ValueError naming the file otherwise."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid {message.DESCRIPTOR.name} textproto: {error}") from None


def models_from_config_file(path: str | os.PathLike) -> tuple[ModelEntry, ...]:
    """The models of a ModelServerConfig textproto (`--model_config_file`)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = read_textproto(path, model_server_config_pb2.ModelServerConfig())
    require(config.HasField("model_config_list"),
            f"{path}: needs a model_config_list (custom_model_config is not supported)")
    entries = []
    for model in config.model_config_list.config:
        require(model.model_platform in ("", "tensorflow"),
                f"{path}: model {model.name!r}: model_platform must be 'tensorflow', got {model.model_platform!r}")
        require(model.model_type == 0, f"{path}: model {model.name!r}: model_type is deprecated; "
                                       f"use model_platform")
        base_path = model.base_path
        if base_path:  # relative paths are relative to the working directory, as in TF Serving
            base_path = os.path.abspath(base_path)
        policy = model.model_version_policy
        which = policy.WhichOneof("policy_choice")
        kwargs: dict = {}
        if which == "latest":
            kwargs = dict(version_policy="latest", num_versions=policy.latest.num_versions or 1)
        elif which == "all":
            kwargs = dict(version_policy="all")
        elif which == "specific":
            kwargs = dict(version_policy="specific", specific_versions=tuple(policy.specific.versions))
        else:  # TensorFlow Serving's default policy is latest { num_versions: 1 }
            kwargs = dict(version_policy="latest", num_versions=1)
        entries.append(ModelEntry(name=model.name, base_path=base_path,
                                  version_labels=tuple(sorted(model.version_labels.items())), **kwargs))
    require(len(entries) >= 1, f"{path}: model_config_list has no config")
    return tuple(entries)


def batching_from_file(path: str | os.PathLike | None) -> BatchingConfig:
    """A BatchingConfig from a BatchingParameters textproto (defaults where a field is unset)."""
    if path is None:
        return BatchingConfig()
    from protos import serving_config_pb2

    params = read_textproto(path, serving_config_pb2.BatchingParameters())
    require(not params.pad_variable_length_inputs,
            f"{path}: pad_variable_length_inputs: true is not supported (inputs have fixed shapes)")
    defaults = BatchingConfig()
    kwargs = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "thread_pool_name"):
        if params.HasField(name):
            kwargs[name] = getattr(params, name).value
    if params.allowed_batch_sizes:
        kwargs["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
    try:
        return dataclasses.replace(defaults, **kwargs)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def prometheus_path_from_file(path: str | os.PathLike | None) -> str | None:
    """The Prometheus path of a MonitoringConfig textproto, or None if it is disabled."""
    if path is None:
        return None
    from protos import serving_config_pb2

    config = read_textproto(path, serving_config_pb2.MonitoringConfig())
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or "/monitoring/prometheus/metrics"
