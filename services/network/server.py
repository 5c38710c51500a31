"""TensorFlow Serving's PredictionService and ModelService over MuFleet's SavedModel versions.

`NetworkService` owns the served models (one `ModelManager` each), the poller thread that
loads new versions, and the batch scheduler; `PredictionServicer` and `ModelServicer` answer
the standard `tensorflow.serving` RPCs:

  Predict           model_spec {name, optional version or version_label, signature_name},
                    inputs by name (TensorProto, tensor_content or typed values), optional
                    output_filter; the response's model_spec names the version that answered.
  GetModelMetadata  metadata_field ["signature_def"] -> SignatureDefMap packed in an Any.
  GetModelStatus    one ModelVersionStatus per known version (AVAILABLE, LOADING, END).
  Classify, Regress, MultiInference, HandleReloadConfigRequest: UNIMPLEMENTED.

Errors (and nothing changes on the server): INVALID_ARGUMENT for a bad signature name, a
missing or unexpected input, a wrong dtype, shape or rank, a batch dimension below 1,
disagreeing batch sizes, an action out of range, an unknown output_filter name or request bytes
that do not parse; NOT_FOUND for an unknown model, version or label; RESOURCE_EXHAUSTED for a
request over `max_request_rows` rows or `max_request_bytes` bytes (checked on the shape, before
anything is allocated) or a response over `max_response_bytes`; UNAVAILABLE when the batch
queue is full or the server is stopping. Inputs with NaN or inf are answered, as TensorFlow
Serving answers them, and counted in `mufleet_network_nonfinite_inputs_total`.

Health: "" and tensorflow.serving.ModelService are SERVING once the port is open;
tensorflow.serving.PredictionService is NOT_SERVING until every model has a loaded version.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY, CollectorRegistry
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from services.common.errors import ServiceError, serve_rpc
from services.common.logs import EventLogger, get_logger
from services.common.server import ServiceServer
from services.common.tensors import TensorError, TensorTooLarge
from services.common.tf_tensors import from_tensor_proto
from services.network.batching import BatchScheduler, QueueFull, ShuttingDown
from services.network.config import NetworkConfig
from services.network.metrics import NetworkMetrics
from services.network.servables import ModelManager, NotFound, ServableVersion, Signature
from services.network.wire import TF_DTYPES, fill_tensor_proto, tf_dtype_name

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

T = TypeVar("T")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
DEFAULT_SIGNATURE = "serving_default"  # what TensorFlow Serving uses for an empty signature_name
SIGNATURE_DEF_FIELD = "signature_def"
_STATE_CODES = {name: get_model_status_pb2.ModelVersionStatus.State.Value(name)
                for name in ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")}


class RequestError(ServiceError):
    """An RPC answered with the status `code` and `message` (a `ServiceError`, as `serve_rpc`
    answers every MuFleet server's errors)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code.name, message)


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _too_large(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for (from NetworkConfig).

    Attributes:
      max_rows: the most rows (batch dimension) per request.
      max_input_bytes: the most bytes one input may decode to.
      max_response_bytes: the largest serialized response.
    """

    max_rows: int
    max_input_bytes: int
    max_response_bytes: int

    @classmethod
    def of(cls, config: NetworkConfig) -> "RequestLimits":
        return cls(max_rows=config.max_request_rows, max_input_bytes=config.max_request_bytes,
                   max_response_bytes=config.max_response_bytes)


class NetworkService:
    """The served models, their poller, and the batch scheduler (if batching is on).

    `metrics` defaults to a `NetworkMetrics` in the process's registry (pass one with a fresh
    `CollectorRegistry()` to run two services in one process)."""

    def __init__(self, config: NetworkConfig, log: EventLogger, metrics: NetworkMetrics | None = None) -> None:
        self.config = config
        self.log = log
        self.metrics = metrics = metrics if metrics is not None else NetworkMetrics()
        self.managers = {entry.name: ModelManager(entry, log, metrics=metrics) for entry in config.models}
        self.scheduler = (BatchScheduler(config.batching, metrics).start() if config.enable_batching
                          else None)
        self.limits = RequestLimits.of(config)
        self._health = None
        self._nonfinite_logged: set[tuple[str, str, str]] = set()
        self._nonfinite_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- versions -----------------------------------------------------------------------------

    def poll(self, stop: threading.Event | None = None) -> None:
        """Scans every base path once (loads and evicts versions), then updates health.

        Loads no further version once `stop` (e.g. set by SIGTERM during start-up) or the
        service's own stop is set."""

        def should_stop() -> bool:
            return self._stop.is_set() or (stop is not None and stop.is_set())

        for manager in self.managers.values():
            try:
                manager.poll(should_stop)
            except Exception as error:  # noqa: BLE001 - the poller must survive anything
                self.log.error("poll_failed", model=manager.name, error=f"{type(error).__name__}: {error}")
        self._update_health()

    def start_polling(self) -> None:
        """Polls every file_system_poll_wait_seconds on a thread (never if that is 0)."""
        wait_s = self.config.file_system_poll_wait_seconds
        if wait_s <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(wait_s):
                self.poll()

        self._poller = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._poller.start()

    def attach_health(self, health) -> None:
        self._health = health
        self._update_health()

    def _update_health(self) -> None:
        if self._health is None:
            return
        serving = all(m.available for m in self.managers.values())
        self._health.set(PREDICTION_SERVICE, health_pb2.HealthCheckResponse.SERVING if serving
                         else health_pb2.HealthCheckResponse.NOT_SERVING)

    def loaded_versions(self) -> dict[str, list[int]]:
        return {name: manager.versions() for name, manager in self.managers.items()}

    def drain(self) -> None:
        """Runs queued batches at once (called when the server starts to stop)."""
        if self.scheduler is not None:
            self.scheduler.drain()

    def stop(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._poller is not None:
            self._poller.join(10)

    # -- requests -----------------------------------------------------------------------------

    def manager(self, name: str) -> ModelManager:
        if not name:
            raise _invalid(f"model_spec.name: must name a model (serving: {', '.join(self.managers)})")
        manager = self.managers.get(name)
        if manager is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model_spec.name: unknown model '{name}' (serving: {', '.join(self.managers)})")
        return manager

    def servable(self, model_spec: model_pb2.ModelSpec) -> ServableVersion:
        manager = self.manager(model_spec.name)
        version = model_spec.version.value if model_spec.HasField("version") else None
        try:
            return manager.get(version, model_spec.version_label)
        except NotFound as error:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(error)) from None

    def execute(self, servable: ServableVersion, signature: Signature,
                inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """Runs one request: merged with others when batching is on, else alone."""
        try:
            if self.scheduler is not None and self.scheduler.fits(rows):
                key = (servable.model_name, servable.version, signature.name)
                return self.scheduler.run(key, signature.run, inputs, rows, label=signature.name)
            metrics = self.metrics
            metrics.batch_size.observe(rows)
            metrics.batch_requests.observe(1)
            started = time.perf_counter()
            outputs = signature.run(inputs)
            metrics.run_seconds.labels(signature.name).observe(time.perf_counter() - started)
            return outputs
        except (QueueFull, ShuttingDown) as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        except tf.errors.InvalidArgumentError as error:
            raise _invalid(_first_line(error.message)) from None
        except tf.errors.ResourceExhaustedError as error:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, _first_line(error.message)) from None

    def count_nonfinite(self, model: str, signature: str, inputs: dict[str, np.ndarray]) -> None:
        """Counts inputs holding NaN or inf (answered all the same, as TensorFlow Serving does;
        see docs/network.md) and logs the first one of each model, signature and input."""
        for name, array in inputs.items():
            # ~0.4 ms for a 1024-row Connect Four hidden state (11 MB), next to ~200 ms of model.
            if array.dtype.kind != "f" or np.isfinite(array).all():
                continue
            self.metrics.nonfinite_inputs.labels(signature, name).inc()
            key = (model, signature, name)
            with self._nonfinite_lock:
                first = key not in self._nonfinite_logged
                self._nonfinite_logged.add(key)
            if first:
                self.log.warning("nonfinite_input", model=model, signature=signature, input=name,
                                 nan=int(np.isnan(array).sum()), inf=int(np.isinf(array).sum()))


def _first_line(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    for line in lines:
        if "assertion failed" in line:
            return line.strip()
    return lines[0].strip() if lines else message


def decode_inputs(signature: Signature, request_inputs,
                  limits: RequestLimits) -> tuple[dict[str, np.ndarray], int]:
    """Checks and decodes a request's inputs for `signature`; returns (arrays, batch rows).

    Every check that needs only the request's metadata (names, dtypes, shapes, the batch
    dimension against `limits.max_rows`, agreeing batch sizes) runs before any input is
    decoded, so a shape of 10**12 rows is refused without allocating anything."""
    expected = signature.inputs
    names = set(request_inputs.keys())
    takes = ", ".join(signature.input_names)
    for name in sorted(names - expected.keys()):
        raise _invalid(f"inputs: unexpected input '{name}' for signature '{signature.name}' "
                       f"(it takes: {takes})")
    for name in signature.input_names:
        if name not in names:
            raise _invalid(f"inputs: missing input '{name}' for signature '{signature.name}' "
                           f"(it takes: {takes})")
    rows: int | None = None
    first = ""
    for name in signature.input_names:
        info = expected[name]
        proto = request_inputs[name]
        if proto.dtype != TF_DTYPES[info.dtype]:
            raise _invalid(f"inputs['{name}']: expected dtype {info.dtype.name}, "
                           f"got {tf_dtype_name(proto.dtype)}")
        shape = tuple(d.size for d in proto.tensor_shape.dim)
        if len(shape) != len(info.shape) or any(
                want is not None and want != got for want, got in zip(info.shape, shape)):
            got = ", ".join(map(str, shape))
            raise _invalid(f"inputs['{name}']: expected shape {info.describe()}, got [{got}]")
        batch = shape[0]
        if batch < 1:
            raise _invalid(f"inputs['{name}']: the batch dimension must be >= 1, got {batch}")
        if batch > limits.max_rows:
            raise _too_large(f"inputs['{name}']: {batch} rows is over the limit of "
                             f"{limits.max_rows} rows per request (max_request_rows)")
        if rows is None:
            rows, first = batch, name
        elif batch != rows:
            raise _invalid(f"inputs: batch sizes disagree: '{first}' has {rows} rows, "
                           f"'{name}' has {batch}")
    arrays: dict[str, np.ndarray] = {}
    for name in signature.input_names:
        try:
            arrays[name] = from_tensor_proto(request_inputs[name], f"inputs['{name}']",
                                             max_bytes=limits.max_input_bytes)
        except TensorTooLarge as error:
            raise _too_large(f"{error} (max_request_bytes)") from None
        except TensorError as error:
            raise _invalid(str(error)) from None
    if signature.action_range is not None:
        action = arrays[signature.index_input]
        low, high = int(action.min()), int(action.max())
        if low < 0 or high >= signature.action_range:
            bad = low if low < 0 else high
            raise _invalid(f"inputs['{signature.index_input}']: values must be in "
                           f"[0, {signature.action_range}), got {bad}")
    assert rows is not None
    return arrays, rows


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: NetworkService) -> None:
        self.service = service

    def Predict(self, request, context):
        metrics = self.service.metrics
        started = time.perf_counter()
        label = ["unknown"]  # the signature, once the request names one that exists

        def body() -> predict_pb2.PredictResponse:
            servable = self.service.servable(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(name)
            if signature is None:
                raise _invalid(f"model_spec.signature_name: signature '{name}' not found in model "
                               f"'{servable.model_name}' version {servable.version} "
                               f"(it has: {', '.join(sorted(servable.signatures))})")
            label[0] = name
            inputs, rows = decode_inputs(signature, request.inputs, self.service.limits)
            self.service.count_nonfinite(servable.model_name, name, inputs)
            wanted = signature.output_names
            if request.output_filter:
                for output in request.output_filter:
                    if output not in signature.outputs:
                        raise _invalid(f"output_filter: unknown output '{output}' of signature "
                                       f"'{name}' (it has: {', '.join(signature.output_names)})")
                wanted = tuple(dict.fromkeys(request.output_filter))
            outputs = self.service.execute(servable, signature, inputs, rows)
            response = predict_pb2.PredictResponse()
            spec = response.model_spec
            spec.name = servable.model_name
            spec.version.value = servable.version
            spec.signature_name = name
            for output in wanted:
                fill_tensor_proto(response.outputs[output], outputs[output])
            size = response.ByteSize()
            if size > self.service.limits.max_response_bytes:
                # Said here, naming the limit, rather than by gRPC after the handler returns.
                raise _too_large(f"response: {size} bytes for {rows} rows is over the limit of "
                                 f"{self.service.limits.max_response_bytes} bytes "
                                 f"(max_response_bytes); send fewer rows or use output_filter")
            return response

        try:
            response = _serve(self.service, "Predict", context, body)
        finally:
            metrics.requests.labels(label[0]).inc()
        metrics.predict_seconds.labels(label[0]).observe(time.perf_counter() - started)
        return response

    def GetModelMetadata(self, request, context):
        self.service.metrics.rpcs.labels("GetModelMetadata").inc()
        return _serve(self.service, "GetModelMetadata", context, lambda: self._metadata(request))

    def _metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise _invalid(f"metadata_field: must list at least one field "
                           f"(supported: {SIGNATURE_DEF_FIELD})")
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise _invalid(f"metadata_field: unsupported field '{field}' "
                               f"(supported: {SIGNATURE_DEF_FIELD})")
        servable = self.service.servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
        return response

    def Classify(self, request, context):
        _unimplemented(self.service, context, "Classify")

    def Regress(self, request, context):
        _unimplemented(self.service, context, "Regress")

    def MultiInference(self, request, context):
        _unimplemented(self.service, context, "MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: NetworkService) -> None:
        self.service = service

    def GetModelStatus(self, request, context):
        self.service.metrics.rpcs.labels("GetModelStatus").inc()
        return _serve(self.service, "GetModelStatus", context, lambda: self._status(request))

    def _status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        manager = self.service.manager(request.model_spec.name)
        statuses = manager.statuses()
        spec = request.model_spec
        if spec.version_label:
            if spec.version_label not in manager.labels:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"model_spec.version_label: model '{manager.name}' has no "
                                   f"label '{spec.version_label}'")
            wanted: Iterable[int] = [manager.labels[spec.version_label]]
        elif spec.HasField("version"):
            wanted = [spec.version.value]
        else:
            wanted = sorted(statuses, reverse=True)
        wanted = [v for v in wanted if v in statuses]
        if not wanted:
            which = (f"version {spec.version.value} of model '{manager.name}'"
                     if spec.HasField("version") else f"any versions of model '{manager.name}'")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model_spec: could not find {which}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in wanted:
            status = statuses[version]
            entry = response.model_version_status.add()
            entry.version = version
            entry.state = _STATE_CODES[status.state]
            if status.error:
                entry.status.error_code = 2  # tensorflow.error.UNKNOWN
                entry.status.error_message = status.error
        return response

    def HandleReloadConfigRequest(self, request, context):
        _unimplemented(self.service, context, "HandleReloadConfigRequest")


def _serve(service: NetworkService, method: str, context: grpc.ServicerContext,
           body: Callable[[], T]) -> T:
    """`serve_rpc` with the network's metrics: a RequestError aborts the call with its code and
    message, a bug answers INTERNAL and the server keeps serving; each error counts in
    mufleet_network_request_errors_total{method, code} and logs one `request_rejected` line."""
    return serve_rpc(method, context, body, service.log, service.metrics.request_seconds,
                     service.metrics.request_errors)


def _unimplemented(service: NetworkService, context, method: str) -> None:
    service.metrics.rpcs.labels(method).inc()

    def body() -> None:
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           f"{method} is not implemented by MuFleet's network server (use Predict)")

    _serve(service, method, context, body)


class NetworkServiceServer(ServiceServer):
    """A ServiceServer (health, SIGTERM, request parsing in the handler) with the network
    config's worker count and message limits, that first lets queued batches run when it stops,
    so every in-flight Predict is answered before the gRPC server's grace period starts."""

    def __init__(self, service: NetworkService, log: EventLogger, host: str, port: int) -> None:
        config = service.config
        super().__init__(log, host=host, port=port, max_workers=config.max_concurrent_rpcs,
                         max_receive_bytes=config.max_request_bytes,
                         max_send_bytes=config.max_response_bytes,
                         on_unparsable=lambda method: service.metrics.request_errors.labels(
                             method.rsplit("/", 1)[-1], "INVALID_ARGUMENT").inc())
        self.service = service
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(service), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), self.grpc_server)

    def start(self, services: Iterable[str] = (MODEL_SERVICE,)) -> int:
        port = super().start(services)
        self.service.attach_health(self.health)
        return port

    def stop(self, grace_s: float | None = None) -> None:
        self.service.drain()
        super().stop(grace_s)


@dataclasses.dataclass
class RunningNetwork:
    """A started network service (`serve`): the gRPC server, the HTTP port (which serves
    /metrics) and the served models.

    Attributes:
      service: the models and the batch scheduler.
      server: the gRPC server.
      rest: the HTTP server.
      grpc_port, rest_port: the bound ports.
    """

    service: NetworkService
    server: NetworkServiceServer
    rest: "ThreadingHTTPServer"
    grpc_port: int
    rest_port: int
    _stopped: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"{self.server.host}:{self.grpc_port}"

    @property
    def ports(self) -> dict[str, int]:
        """{"grpc": ..., "http": ..., "metrics": ...}: the HTTP port serves /metrics."""
        return {"grpc": self.grpc_port, "http": self.rest_port, "metrics": self.rest_port}

    def client(self, model_name: str | None = None, timeout_s: float | None = None) -> "NetworkClient":
        """A client of this server for `model_name` (default: the first served model); the
        caller closes it."""
        from services.network.client import NetworkClient
        name = model_name or self.service.config.models[0].name
        return NetworkClient(self.address, model_name=name) if timeout_s is None else \
            NetworkClient(self.address, model_name=name, timeout_s=timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until the server was stopped (or `timeout_s` passed); True once stopped."""
        return self.server.wait(timeout_s)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, queued batches run, in-flight calls finish; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop(grace_s)  # a no-op after wait_for_shutdown_signal stopped it
        self.service.stop()
        self.rest.shutdown()
        self.rest.server_close()

    def wait_for_shutdown_signal(self, received: threading.Event | None = None) -> None:
        """Blocks until SIGTERM or SIGINT (`received`: the event of `stop_event_on_signals`),
        then stops gracefully and logs `stopped`."""
        self.server.wait_for_shutdown_signal(received)
        self.stop()


def serve(config: NetworkConfig, log: EventLogger | None = None,
          stop: threading.Event | None = None, metrics: NetworkMetrics | None = None,
          registry: CollectorRegistry = REGISTRY) -> RunningNetwork | None:
    """Starts the network service in this process as `python -m services.network` does: loads
    what is on disk (before the port opens), opens the gRPC port `config.port` and the HTTP port
    `config.rest_api_port` on `config.host` (0 picks free ones), then polls for new versions.
    Logs `ready` with the bound ports. Returns None, having opened nothing, if `stop` is set
    during start-up. `metrics` defaults to a `NetworkMetrics` in `registry` (pass a fresh
    `CollectorRegistry` to run several services in one process); the HTTP port serves its
    registry."""
    from services.network.http import start_rest_server  # http imports this module

    log = log or get_logger("network")
    service = NetworkService(config, log, metrics or NetworkMetrics(registry))
    service.poll(stop)  # load what is already there before the port opens
    if stop is not None and stop.is_set():
        service.stop()
        return None
    server = NetworkServiceServer(service, log, host=config.host, port=config.port)
    try:
        grpc_port = server.start()
        rest = start_rest_server(service, config.host, config.rest_api_port, config.prometheus_path)
    except BaseException:
        server.stop(0)
        service.stop()
        raise
    service.start_polling()
    log.info("ready", grpc_port=grpc_port, metrics_port=rest.server_port,
             rest_api_port=rest.server_port, models={m.name: m.base_path for m in config.models},
             loaded=service.loaded_versions(), batching=config.enable_batching,
             max_request_rows=config.max_request_rows, max_request_bytes=config.max_request_bytes,
             max_response_bytes=config.max_response_bytes,
             max_concurrent_rpcs=config.max_concurrent_rpcs)
    return RunningNetwork(service=service, server=server, rest=rest, grpc_port=grpc_port,
                          rest_port=rest.server_port)
