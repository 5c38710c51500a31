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
missing or unexpected input, a wrong dtype, shape or rank, disagreeing batch sizes, an action
out of range or an unknown output_filter name; NOT_FOUND for an unknown model, version or
label; UNAVAILABLE when the batch queue is full or the server is stopping.

Health: "" and tensorflow.serving.ModelService are SERVING once the port is open;
tensorflow.serving.PredictionService is NOT_SERVING until every model has a loaded version.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from services.common.logs import EventLogger
from services.common.server import ServiceServer
from services.common.tensors import TensorError, from_tensor_proto
from services.network import metrics
from services.network.batching import BatchScheduler, QueueFull, ShuttingDown
from services.network.config import NetworkConfig
from services.network.servables import ModelManager, NotFound, ServableVersion, Signature
from services.network.wire import TF_DTYPES, fill_tensor_proto, tf_dtype_name

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
DEFAULT_SIGNATURE = "serving_default"  # what TensorFlow Serving uses for an empty signature_name
SIGNATURE_DEF_FIELD = "signature_def"
_STATE_CODES = {name: get_model_status_pb2.ModelVersionStatus.State.Value(name)
                for name in ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")}


class RequestError(Exception):
    """An RPC answered with `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class NetworkService:
    """The served models, their poller, and the batch scheduler (if batching is on)."""

    def __init__(self, config: NetworkConfig, log: EventLogger) -> None:
        self.config = config
        self.log = log
        self.managers = {entry.name: ModelManager(entry, log) for entry in config.models}
        self.scheduler = BatchScheduler(config.batching).start() if config.enable_batching else None
        self._health = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- versions -----------------------------------------------------------------------------

    def poll(self) -> None:
        """Scans every base path once (loads and evicts versions), then updates health."""
        for manager in self.managers.values():
            try:
                manager.poll()
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
            metrics.BATCH_SIZE.observe(rows)
            metrics.BATCH_REQUESTS.observe(1)
            started = time.perf_counter()
            outputs = signature.run(inputs)
            metrics.RUN_SECONDS.labels(signature.name).observe(time.perf_counter() - started)
            return outputs
        except (QueueFull, ShuttingDown) as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        except tf.errors.InvalidArgumentError as error:
            raise _invalid(_first_line(error.message)) from None
        except tf.errors.ResourceExhaustedError as error:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, _first_line(error.message)) from None


def _first_line(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    for line in lines:
        if "assertion failed" in line:
            return line.strip()
    return lines[0].strip() if lines else message


def decode_inputs(signature: Signature, request_inputs) -> tuple[dict[str, np.ndarray], int]:
    """Checks and decodes a request's inputs for `signature`; returns (arrays, batch rows)."""
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
    arrays: dict[str, np.ndarray] = {}
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
        try:
            array = from_tensor_proto(proto, f"inputs['{name}']")
        except TensorError as error:
            raise _invalid(str(error)) from None
        batch = shape[0]
        if batch < 1:
            raise _invalid(f"inputs['{name}']: the batch dimension must be >= 1, got {batch}")
        if rows is None:
            rows, first = batch, name
        elif batch != rows:
            raise _invalid(f"inputs: batch sizes disagree: '{first}' has {rows} rows, "
                           f"'{name}' has {batch}")
        arrays[name] = array
    if signature.action_range is not None:
        action = arrays["action"]
        low, high = int(action.min()), int(action.max())
        if low < 0 or high >= signature.action_range:
            bad = low if low < 0 else high
            raise _invalid(f"inputs['action']: values must be in [0, {signature.action_range}), "
                           f"got {bad}")
    assert rows is not None
    return arrays, rows


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: NetworkService) -> None:
        self.service = service

    def Predict(self, request, context):
        started = time.perf_counter()
        label = "unknown"
        try:
            servable = self.service.servable(request.model_spec)
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(name)
            if signature is None:
                raise _invalid(f"model_spec.signature_name: signature '{name}' not found in model "
                               f"'{servable.model_name}' version {servable.version} "
                               f"(it has: {', '.join(sorted(servable.signatures))})")
            label = name
            inputs, rows = decode_inputs(signature, request.inputs)
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
        except RequestError as error:
            metrics.REQUESTS.labels(label).inc()
            metrics.REQUEST_ERRORS.labels(error.code.name).inc()
            context.abort(error.code, error.message)
        except Exception as error:  # noqa: BLE001 - answer INTERNAL, keep serving
            metrics.REQUESTS.labels(label).inc()
            metrics.REQUEST_ERRORS.labels("INTERNAL").inc()
            self.service.log.error("predict_failed", error=f"{type(error).__name__}: {error}")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        metrics.REQUESTS.labels(label).inc()
        metrics.REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)
        return response

    def GetModelMetadata(self, request, context):
        metrics.RPCS.labels("GetModelMetadata").inc()
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise _invalid(f"metadata_field: must list at least one field "
                               f"(supported: {SIGNATURE_DEF_FIELD})")
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise _invalid(f"metadata_field: unsupported field '{field}' "
                                   f"(supported: {SIGNATURE_DEF_FIELD})")
            servable = self.service.servable(request.model_spec)
        except RequestError as error:
            metrics.REQUEST_ERRORS.labels(error.code.name).inc()
            context.abort(error.code, error.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
        return response

    def Classify(self, request, context):
        _unimplemented(context, "Classify")

    def Regress(self, request, context):
        _unimplemented(context, "Regress")

    def MultiInference(self, request, context):
        _unimplemented(context, "MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: NetworkService) -> None:
        self.service = service

    def GetModelStatus(self, request, context):
        metrics.RPCS.labels("GetModelStatus").inc()
        try:
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
        except RequestError as error:
            metrics.REQUEST_ERRORS.labels(error.code.name).inc()
            context.abort(error.code, error.message)
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
        _unimplemented(context, "HandleReloadConfigRequest")


def _unimplemented(context, method: str) -> None:
    metrics.RPCS.labels(method).inc()
    metrics.REQUEST_ERRORS.labels("UNIMPLEMENTED").inc()
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  f"{method} is not implemented by MuFleet's network server (use Predict)")


class NetworkServiceServer(ServiceServer):
    """A ServiceServer that first lets queued batches run when it stops, so every in-flight
    Predict is answered before the gRPC server's grace period starts."""

    def __init__(self, service: NetworkService, log: EventLogger, host: str, port: int) -> None:
        super().__init__(log, host=host, port=port, max_workers=service.config.max_concurrent_rpcs)
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
