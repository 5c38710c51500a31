"""The agent's client of the network: NumPy in, NumPy out, over TensorFlow Serving's API.

    with NetworkClient("127.0.0.1:50002") as network:
        version = network.wait_until_available()
        root = network.initial_inference(observations)                  # float32 [B, *obs]
        step = network.recurrent_inference(root.hidden_state, actions,  # int32 [B]
                                           version=root.version)        # pin for the whole search
        step.value, step.reward, step.policy_logits, step.hidden_state, step.version
        pending = network.predict_future("recurrent_inference",               # no waiting: several
                                         {"hidden_state": h, "action": a}, version)  # may be in flight
        step = pending.result()

Only the standard `tensorflow.serving` API is used (Predict, GetModelStatus, GetModelMetadata
with tensor_content bytes), so the client works against MuFleet's server and the real
tensorflow_model_server alike. Every call has a deadline; Predict and the status/metadata
calls are idempotent and retried on UNAVAILABLE with backoff by the channel's service config
(`services.common.channels.make_channel`). Other failures raise `grpc.RpcError`, except in
`wait_until_available`, which waits out the transient ones of services.common.failures and
raises PermanentFailure for the rest.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Mapping, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from services.common.channels import DEFAULT_DEADLINE_S, make_channel
from services.common.failures import PermanentFailure, RetryPolicy, wait_unless_stopped
from services.common.tf_tensors import from_tensor_proto
from services.network.wire import fill_tensor_proto

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
INITIAL_INFERENCE = "initial_inference"
RECURRENT_INFERENCE = "recurrent_inference"
IDEMPOTENT = {PREDICTION_SERVICE: ["Predict", "GetModelMetadata"], MODEL_SERVICE: ["GetModelStatus"]}
# Which GetModelStatus failures `wait_until_available` waits out: the shared transient codes.
_WAIT_POLICY = RetryPolicy()


@dataclasses.dataclass(frozen=True)
class Inference:
    """One inference step for B positions (read-only arrays decoded from the response).

    hidden_state: float32 [B, *hidden_shape]; value, reward: float32 [B] (reward is 0 after
    initial_inference); policy_logits: float32 [B, A]; version: the model version that answered;
    value_prefix_state: float32 [B, 2L] from a value-prefix model (models/export.py), else None;
    value_prefix_horizon: int32 [B], its H (initial_inference only), else None;
    num_chance_codes: int32 [B], a stochastic model's C (initial_inference only; policy_logits
    are then [B, A + C]), else None.
    """

    hidden_state: np.ndarray
    value: np.ndarray
    reward: np.ndarray
    policy_logits: np.ndarray
    version: int
    value_prefix_state: np.ndarray | None = None
    value_prefix_horizon: np.ndarray | None = None
    num_chance_codes: np.ndarray | None = None


class NetworkClient:
    """Talks to one network server (ours or TensorFlow Serving) about one model.

    Args:
      address: "host:port" of the gRPC port.
      model_name: the served model (default "muzero").
      timeout_s: default deadline of every call.
      channel: an existing channel to use instead of opening one (not closed by `close`).
    """

    def __init__(self, address: str, model_name: str = "muzero",
                 timeout_s: float = DEFAULT_DEADLINE_S, channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._owns_channel = channel is None
        self.channel = channel or make_channel(address, idempotent=IDEMPOTENT)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    # -- inference ----------------------------------------------------------------------------

    def initial_inference(self, observation: np.ndarray, version: int | None = None,
                          timeout_s: float | None = None) -> Inference:
        """observation float32 [B, *observation_shape] -> Inference (reward 0)."""
        outputs, answered = self.predict(
            INITIAL_INFERENCE, {"observation": np.asarray(observation, np.float32)}, version, timeout_s=timeout_s)
        return _inference(outputs, answered)

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray, version: int | None = None,
                            timeout_s: float | None = None) -> Inference:
        """hidden_state float32 [B, *hidden_shape], action int [B] -> Inference."""
        outputs, answered = self.predict(
            RECURRENT_INFERENCE, {"hidden_state": np.asarray(hidden_state, np.float32),
                                  "action": np.asarray(action, np.int32)}, version, timeout_s=timeout_s)
        return _inference(outputs, answered)

    def predict(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                output_filter: Sequence[str] = (), timeout_s: float | None = None
                ) -> tuple[dict[str, np.ndarray], int]:
        """One Predict call: returns (outputs by name, the version that answered)."""
        request = self._request(signature, inputs, version, output_filter)
        return _decode(self._predict.Predict(request, timeout=self._timeout(timeout_s)))

    def infer(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
              timeout_s: float | None = None) -> Inference:
        """One blocking Predict call, answered as an `Inference` (the search's blocking path:
        cheaper than `predict_future(...).result()`, whose answer goes through the channel's
        polling thread)."""
        return _inference(*self.predict(signature, inputs, version, timeout_s=timeout_s))

    def predict_future(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                       timeout_s: float | None = None) -> "InferenceFuture":
        """Starts one Predict call without waiting (the agent pipelines groups of games with
        it); `.result()` blocks and returns the `Inference` or raises grpc.RpcError."""
        request = self._request(signature, inputs, version, ())
        return InferenceFuture(self._predict.Predict.future(request, timeout=self._timeout(timeout_s)))

    def _request(self, signature: str, inputs: Mapping[str, np.ndarray], version: int | None,
                 output_filter: Sequence[str]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        for name, array in inputs.items():
            fill_tensor_proto(request.inputs[name], array)
        request.output_filter.extend(output_filter)
        return request

    # -- versions and metadata ----------------------------------------------------------------

    def model_status(self, version: int | None = None, timeout_s: float | None = None) -> dict[int, str]:
        """version -> state name ("AVAILABLE", "LOADING", "END", ...); NOT_FOUND raises."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = int(version)
        response = self._models.GetModelStatus(request, timeout=self._timeout(timeout_s))
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: state_name(s.state) for s in response.model_version_status}

    def available_versions(self, timeout_s: float | None = None) -> list[int]:
        """The versions that can answer now, ascending ([] if none)."""
        try:
            statuses = self.model_status(timeout_s=timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return sorted(v for v, state in statuses.items() if state == "AVAILABLE")

    def latest_version(self, timeout_s: float | None = None) -> int | None:
        """The newest available version (what an unpinned request gets), or None."""
        versions = self.available_versions(timeout_s)
        return versions[-1] if versions else None

    def wait_until_available(self, version: int | None = None, timeout_s: float = 120.0,
                             poll_s: float = 0.05, stop: threading.Event | None = None) -> int | None:
        """Blocks until `version` (or any version) is available; returns the newest available.

        Works with TensorFlow Serving too (it has no gRPC health service): it asks
        GetModelStatus. Failures that waiting can fix (services.common.failures: the server is
        down or starting) are waited out; others raise PermanentFailure. TimeoutError naming
        the address and model after `timeout_s`; None if `stop` is set first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                versions = self.available_versions(timeout_s=max(0.1, min(remaining, 5.0)))
            except grpc.RpcError as error:
                if not _WAIT_POLICY.is_transient(error):
                    raise PermanentFailure.from_error(error, "network", "GetModelStatus",
                                                      self.address) from error
                versions = []
            if versions and (version is None or version in versions):
                return versions[-1]
            if remaining <= 0:
                which = f"version {version}" if version is not None else "a version"
                raise TimeoutError(f"{self.address}: model '{self.model_name}' has no {which} "
                                   f"available after {timeout_s:.0f}s")
            if not wait_unless_stopped(min(poll_s, max(remaining, 0.0)), stop):
                return None

    def signatures(self, version: int | None = None, timeout_s: float | None = None
                   ) -> dict[str, dict[str, dict[str, tuple[str, tuple[int, ...]]]]]:
        """signature -> {"inputs"/"outputs": {name: (dtype name, shape with -1 for the batch)}}."""
        from tensorflow.core.framework import types_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        if version is not None:
            request.model_spec.version.value = int(version)
        response = self._predict.GetModelMetadata(request, timeout=self._timeout(timeout_s))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)

        def describe(infos) -> dict[str, tuple[str, tuple[int, ...]]]:
            return {name: (types_pb2.DataType.Name(info.dtype),
                           tuple(d.size for d in info.tensor_shape.dim)) for name, info in infos.items()}

        return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
                for name, sig in signature_map.signature_def.items() if not name.startswith("__")}

    # -- lifetime -----------------------------------------------------------------------------

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> "NetworkClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InferenceFuture:
    """A Predict call in flight; `result()` waits for it and decodes it."""

    def __init__(self, future: grpc.Future) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Inference:
        """Blocks until the answer (at most `timeout` s more); raises grpc.RpcError as `predict`."""
        return _inference(*_decode(self._future.result(timeout=timeout)))

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        return self._future.cancel()


def _decode(response: predict_pb2.PredictResponse) -> tuple[dict[str, np.ndarray], int]:
    outputs = {name: from_tensor_proto(tensor, name) for name, tensor in response.outputs.items()}
    return outputs, response.model_spec.version.value


def _inference(outputs: dict[str, np.ndarray], version: int) -> Inference:
    return Inference(hidden_state=outputs["hidden_state"], value=outputs["value"],
                     reward=outputs["reward"], policy_logits=outputs["policy_logits"], version=version,
                     value_prefix_state=outputs.get("value_prefix_state"),
                     value_prefix_horizon=outputs.get("value_prefix_horizon"),
                     num_chance_codes=outputs.get("num_chance_codes"))
