"""Every kind of bad input to the network server, as one table: the request, the code it must
get, words the message must contain; after each, the server still serves and its models'
versions are as before. Requests that are unusual but valid (NaN and inf inputs, a response
trimmed by output_filter) are answered.

The server runs in this process, built as `python -m services.network` builds it (its flags
parsed by the same parser, then `serve`), over real exported SavedModels, with and without
batching, and with small message limits so that the size cases need little memory.
"""

from __future__ import annotations

from typing import Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from games.cartpole import CartPole
from models.export import load_version
from services.common.channels import make_channel
from services.common.logs import get_logger
from services.network import metrics as network_metrics
from services.network.__main__ import build_config, build_parser
from services.network.metrics import NetworkMetrics
from services.network.server import serve
from services.network.wire import fill_tensor_proto
from tests.models.tolerances import assert_decoded_close
from tests.network.conftest import BOARD_SETTINGS
from tests.network.network_helpers import publish_served_models

pytestmark = pytest.mark.integration

MAX_ROWS = 1024
LIMIT_BYTES = 1 << 20  # request and response limit of the server under test
HIDDEN = CartPole.settings.network.hidden_size
BOARD_HIDDEN = (6, 7, BOARD_SETTINGS.network.hidden_size)  # 1344 bytes a row: 1000 rows are over 1 MiB
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def base(tmp_path_factory, saved_models):
    root = tmp_path_factory.mktemp("bad-input")
    publish_served_models(saved_models, root)
    return root


@pytest.fixture(scope="module", params=["unbatched", "batched"])
def running(request, base):
    """The server, built from flags as __main__ builds it; scans the base paths once only, so
    nothing but a request could change its versions."""
    args = ["--model_config_file", str(base / "models.config"), "--file_system_poll_wait_seconds", "0",
            "--max_request_rows", str(MAX_ROWS), "--max_request_bytes", str(LIMIT_BYTES),
            "--max_response_bytes", str(LIMIT_BYTES), "--port", "0", "--rest_api_port", "0"]
    if request.param == "batched":
        args.append("--enable_batching")
    parser = build_parser()
    parsed = parser.parse_args(args)
    config = build_config(parsed, parser)
    server = serve(config, get_logger("network"), metrics=NetworkMetrics(CollectorRegistry()))
    assert server is not None
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(running):
    """A channel without retries: every error comes back as the server sent it."""
    with make_channel(running.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def reference(saved_models):
    return {("muzero", 2): load_version(saved_models / "cartpole", 2),
            ("board", 1): load_version(saved_models / "board", 1)}


# --- requests ------------------------------------------------------------------------------------

def observations(batch: int, shape=(4,), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


def request(signature: str = "initial_inference", model: str = "muzero", **inputs) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    for name, array in inputs.items():
        fill_tensor_proto(message.inputs[name], array)
    return message


def typed(message: predict_pb2.PredictRequest, name: str, dtype: int, shape, values=(), content=b""):
    """Sets input `name` from typed values (float_val / int_val) or raw content, with any shape."""
    tensor = message.inputs[name]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    if dtype == types_pb2.DT_FLOAT:
        tensor.float_val.extend(values)
    elif dtype == types_pb2.DT_INT32:
        tensor.int_val.extend(values)
    elif dtype == types_pb2.DT_STRING:
        tensor.string_val.extend(values)
    if content:
        tensor.tensor_content = content
    return message


def with_spec(message, version=None, label=None):
    if version is not None:
        message.model_spec.version.value = version
    if label is not None:
        message.model_spec.version_label = label
    return message


def filtered(message, names):
    message.output_filter.extend(names)
    return message


def metadata(model="muzero", fields=("signature_def",)):
    message = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    message.model_spec.name = model
    return message


def status(model="muzero", version=None, label=None):
    message = get_model_status_pb2.GetModelStatusRequest()
    message.model_spec.name = model
    return with_spec(message, version, label)


HIDDEN_2 = np.zeros((2, HIDDEN), np.float32)
FLOAT, INT32 = types_pb2.DT_FLOAT, types_pb2.DT_INT32
Call = Callable[[grpc.Channel], object]


def predict(make: Callable[[], predict_pb2.PredictRequest]) -> Call:
    return lambda channel: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(make(), timeout=60)


def get_metadata(make) -> Call:
    return lambda channel: prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        make(), timeout=60)


def get_status(make) -> Call:
    return lambda channel: model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(make(), timeout=60)


def raw_predict(payload: bytes) -> Call:
    """Bytes sent as a Predict request without serializing anything."""
    def call(channel: grpc.Channel):
        method = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                     response_deserializer=predict_pb2.PredictResponse.FromString)
        return method(payload, timeout=60)
    return call


def board_recurrent(rows: int, hidden: str) -> predict_pb2.PredictRequest:
    """A recurrent_inference request of `rows` rows for the board model, its hidden state sent
    as one broadcast value or as raw bytes."""
    message = request("recurrent_inference", model="board", action=np.zeros(rows, np.int32))
    shape = (rows, *BOARD_HIDDEN)
    if hidden == "broadcast":
        return typed(message, "hidden_state", FLOAT, shape, values=[0.5])
    return typed(message, "hidden_state", FLOAT, shape, content=np.zeros(shape, np.float32).tobytes())


# case -> (call, code, words the message contains, whether mufleet_network_request_errors_total counts it)
CASES: dict[str, tuple[Call, grpc.StatusCode, str, bool]] = {
    # model, version, label, signature
    "unknown model": (predict(lambda: request(model="nope", observation=observations(2))), NOT_FOUND,
                      "model_spec.name: unknown model 'nope'", True),
    "no model name": (predict(lambda: request(model="", observation=observations(2))), INVALID,
                      "model_spec.name: must name a model", True),
    "unknown version": (predict(lambda: with_spec(request(observation=observations(2)), version=99)), NOT_FOUND,
                        "model_spec.version: version 99 of model 'muzero' is not loaded (loaded: 1, 2)", True),
    "unknown label": (predict(lambda: with_spec(request(observation=observations(2)), label="canary")), NOT_FOUND,
                      "model_spec.version_label: model 'muzero' has no label 'canary' (labels: stable)", True),
    "unknown signature": (predict(lambda: request("nope", observation=observations(2))), INVALID,
                          "model_spec.signature_name: signature 'nope' not found", True),
    "no signature": (predict(lambda: request("", observation=observations(2))), INVALID,
                     "signature 'serving_default' not found", True),
    # inputs: names, dtypes, shapes
    "missing input": (predict(lambda: request("recurrent_inference", hidden_state=HIDDEN_2)), INVALID,
                      "inputs: missing input 'action' for signature 'recurrent_inference'", True),
    "extra input": (predict(lambda: request(observation=observations(2), extra=np.zeros(2, np.float32))), INVALID,
                    "inputs: unexpected input 'extra'", True),
    "wrong dtype": (predict(lambda: request(observation=observations(2).astype(np.float64))), INVALID,
                    "inputs['observation']: expected dtype float32, got float64", True),
    "wrong action dtype": (predict(lambda: request("recurrent_inference", hidden_state=HIDDEN_2,
                                                   action=np.zeros(2, np.int64))), INVALID,
                           "inputs['action']: expected dtype int32, got int64", True),
    "unsupported dtype": (predict(lambda: typed(request(), "observation", types_pb2.DT_STRING, [1], [b"x"])),
                          INVALID, "inputs['observation']: expected dtype float32, got DT_STRING", True),
    "wrong shape": (predict(lambda: request(observation=np.zeros((2, 5), np.float32))), INVALID,
                    "inputs['observation']: expected shape float32 [-1, 4], got [2, 5]", True),
    "wrong rank": (predict(lambda: request(observation=np.zeros((8,), np.float32))), INVALID,
                   "inputs['observation']: expected shape float32 [-1, 4], got [8]", True),
    "wrong hidden shape": (predict(lambda: request("recurrent_inference", hidden_state=np.zeros((2, 3), np.float32),
                                                   action=np.zeros(2, np.int32))), INVALID,
                           "inputs['hidden_state']: expected shape float32 [-1, 64], got [2, 3]", True),
    "negative inner dimension": (predict(lambda: typed(request(), "observation", FLOAT, [2, -4], [1.0])), INVALID,
                                 "inputs['observation']: expected shape float32 [-1, 4], got [2, -4]", True),
    "huge inner dimension": (predict(lambda: typed(request(), "observation", FLOAT, [1, 2**62], [1.0])), INVALID,
                             f"got [1, {2**62}]", True),
    # the batch dimension
    "empty batch": (predict(lambda: request(observation=np.zeros((0, 4), np.float32))), INVALID,
                    "inputs['observation']: the batch dimension must be >= 1, got 0", True),
    "negative batch": (predict(lambda: typed(request(), "observation", FLOAT, [-1, 4], [1.0])), INVALID,
                       "inputs['observation']: the batch dimension must be >= 1, got -1", True),
    "batch sizes disagree": (predict(lambda: request("recurrent_inference", hidden_state=HIDDEN_2,
                                                     action=np.zeros(3, np.int32))), INVALID,
                             "inputs: batch sizes disagree: 'action' has 3 rows, 'hidden_state' has 2", True),
    "rows over the limit": (predict(lambda: request(observation=observations(MAX_ROWS + 1))), TOO_LARGE,
                            f"inputs['observation']: {MAX_ROWS + 1} rows is over the limit of {MAX_ROWS} rows "
                            f"per request (max_request_rows)", True),
    "one value over 10**12 rows": (predict(lambda: typed(request(), "observation", FLOAT, [10**12, 4], [1.0])),
                                   TOO_LARGE, f"{10**12} rows is over the limit of {MAX_ROWS} rows", True),
    "one value over 10**8 rows": (predict(lambda: typed(request(), "observation", FLOAT, [10**8, 4], [1.0])),
                                  TOO_LARGE, f"{10**8} rows is over the limit of {MAX_ROWS} rows", True),
    "2**62 rows without content": (predict(lambda: typed(request(), "observation", FLOAT, [2**62, 4])),
                                   TOO_LARGE, f"{2**62} rows is over the limit of {MAX_ROWS} rows", True),
    # contents
    "bytes disagree with shape": (predict(lambda: typed(request(), "observation", FLOAT, [2, 4], content=b"\0" * 12)),
                                  INVALID, "inputs['observation']: 12 bytes for shape [2, 4] of float32 (expected 32)",
                                  True),
    "typed values disagree with shape": (predict(lambda: typed(request(), "observation", FLOAT, [2, 4], [1.0, 2.0, 3.0])),
                                         INVALID, "inputs['observation']: 3 values for shape [2, 4]", True),
    "one value over the byte limit": (predict(lambda: board_recurrent(1000, "broadcast")), TOO_LARGE,
                                      f"inputs['hidden_state']: shape [1000, 6, 7, 8] of float32 is 1344000 bytes, "
                                      f"over the limit of {LIMIT_BYTES} bytes (max_request_bytes)", True),
    "message over the byte limit": (predict(lambda: board_recurrent(1000, "content")), TOO_LARGE,
                                    f"vs. {LIMIT_BYTES}", False),  # refused by gRPC before the handler
    "unparsable bytes": (raw_predict(b"\xff\xff\xff\xff"), INVALID,
                         "request: 4 bytes do not parse as /tensorflow.serving.PredictionService/Predict", False),
    "action too large": (predict(lambda: request("recurrent_inference", hidden_state=HIDDEN_2,
                                                 action=np.array([0, 2], np.int32))), INVALID,
                         "inputs['action']: values must be in [0, 2), got 2", True),
    "negative action": (predict(lambda: request("recurrent_inference", hidden_state=HIDDEN_2,
                                                action=np.array([-1, 0], np.int32))), INVALID,
                        "inputs['action']: values must be in [0, 2), got -1", True),
    "broadcast action out of range": (predict(lambda: typed(request("recurrent_inference", hidden_state=HIDDEN_2),
                                                            "action", INT32, [2], [7])), INVALID,
                                      "inputs['action']: values must be in [0, 2), got 7", True),
    # outputs
    "unknown output": (predict(lambda: filtered(request(observation=observations(2)), ["value", "nope"])), INVALID,
                       "output_filter: unknown output 'nope'", True),
    "response over the byte limit": (predict(lambda: request(model="board", observation=observations(800, (6, 7, 2)))),
                                     TOO_LARGE, f"over the limit of {LIMIT_BYTES} bytes (max_response_bytes)", True),
    # GetModelMetadata, GetModelStatus
    "metadata without fields": (get_metadata(lambda: metadata(fields=())), INVALID,
                                "metadata_field: must list at least one field", True),
    "metadata of an unsupported field": (get_metadata(lambda: metadata(fields=("signature_def", "nope"))), INVALID,
                                         "metadata_field: unsupported field 'nope'", True),
    "metadata of an unknown model": (get_metadata(lambda: metadata(model="nope")), NOT_FOUND,
                                     "model_spec.name: unknown model 'nope'", True),
    "status without a model name": (get_status(lambda: status(model="")), INVALID, "model_spec.name", True),
    "status of an unknown model": (get_status(lambda: status(model="nope")), NOT_FOUND, "unknown model 'nope'", True),
    "status of an unknown version": (get_status(lambda: status(version=99)), NOT_FOUND,
                                     "model_spec: could not find version 99 of model 'muzero'", True),
    "status of an unknown label": (get_status(lambda: status(label="canary")), NOT_FOUND,
                                   "model_spec.version_label: model 'muzero' has no label 'canary'", True),
}


def error_count(running, code: grpc.StatusCode) -> float:
    """Errors of `code`, summed over the methods."""
    return sum(sample.value for family in running.service.metrics.registry.collect()
               for sample in family.samples
               if sample.name == network_metrics.REQUEST_ERRORS_TOTAL and sample.labels["code"] == code.name)


def served(channel: grpc.Channel) -> dict:
    """What each model serves, as GetModelStatus says, and the health of prediction."""
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    versions = {}
    for model in ("muzero", "board"):
        response = models.GetModelStatus(status(model), timeout=60)
        versions[model] = sorted((s.version, s.state) for s in response.model_version_status)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=60)
    return {"versions": versions, "serving": health.status == health_pb2.HealthCheckResponse.SERVING}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error_and_changes_nothing(running, channel, reference, case):
    call, code, words, counted = CASES[case]
    before = served(channel)
    assert before["serving"]
    loaded = running.service.loaded_versions()
    errors_before = error_count(running, code)
    with pytest.raises(grpc.RpcError) as error:
        call(channel)
    assert error.value.code() == code, error.value.details()
    assert words in error.value.details()
    if counted:
        assert error_count(running, code) == errors_before + 1
    assert served(channel) == before  # still SERVING, the same versions
    assert running.service.loaded_versions() == loaded
    obs = observations(3, seed=7)  # and still answering correctly
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request(observation=obs), timeout=60)
    assert response.model_spec.version.value == 2
    assert_decoded_close(np.frombuffer(response.outputs["value"].tensor_content, np.float32),
                         reference[("muzero", 2)].initial_inference(obs)["value"], CartPole.settings.network.support_size)


def test_versions_under_test(channel):
    assert served(channel) == {"versions": {"muzero": [(1, 30), (2, 30)], "board": [(1, 30)]}, "serving": True}


def test_the_limits_let_the_largest_allowed_requests_through(channel, reference):
    """Just under each limit is answered: MAX_ROWS rows, and a response trimmed by output_filter
    where the whole one would be over the response limit."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    obs = observations(MAX_ROWS, seed=3)
    response = stub.Predict(request(observation=obs), timeout=60)
    assert_decoded_close(np.frombuffer(response.outputs["value"].tensor_content, np.float32),
                         reference[("muzero", 2)].initial_inference(obs)["value"], CartPole.settings.network.support_size)
    board_obs = observations(800, (6, 7, 2), seed=4)
    response = stub.Predict(filtered(request(model="board", observation=board_obs), ["value", "policy_logits"]),
                            timeout=60)
    assert sorted(response.outputs) == ["policy_logits", "value"]
    assert_decoded_close(np.frombuffer(response.outputs["value"].tensor_content, np.float32),
                         reference[("board", 1)].initial_inference(board_obs)["value"], BOARD_SETTINGS.network.support_size)
    broadcast = stub.Predict(board_recurrent(700, "broadcast"), timeout=60)  # 941 KB decoded, under 1 MiB
    assert broadcast.outputs["value"].tensor_shape.dim[0].size == 700


def nonfinite(running, signature: str, name: str) -> float:
    return running.service.metrics.registry.get_sample_value(network_metrics.NONFINITE_INPUTS_TOTAL,
                                     {"signature": signature, "input": name}) or 0.0


def test_nan_and_inf_inputs_are_answered_and_counted(running, channel, reference):
    """As TensorFlow Serving does (the network server must be a drop-in for it): NaN and inf
    are answered OK, each request with one counts once in mufleet_network_nonfinite_inputs_total,
    and the finite rows of the request get the same answer as without them."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    obs = observations(4, seed=5)
    obs[0, 0], obs[1, 2] = np.nan, np.inf
    counted_before = nonfinite(running, "initial_inference", "observation")
    response = stub.Predict(request(observation=obs), timeout=60)
    assert nonfinite(running, "initial_inference", "observation") == counted_before + 1
    value = np.frombuffer(response.outputs["value"].tensor_content, np.float32)
    assert value.shape == (4,)
    assert_decoded_close(value[2:], reference[("muzero", 2)].initial_inference(obs[2:])["value"],
                         CartPole.settings.network.support_size)
    hidden = np.zeros((2, HIDDEN), np.float32)
    hidden[1, 3] = -np.inf
    before = nonfinite(running, "recurrent_inference", "hidden_state")
    stub.Predict(request("recurrent_inference", hidden_state=hidden, action=np.zeros(2, np.int32)), timeout=60)
    assert nonfinite(running, "recurrent_inference", "hidden_state") == before + 1
    finite_before = nonfinite(running, "initial_inference", "observation")
    stub.Predict(request(observation=observations(2, seed=6)), timeout=60)
    assert nonfinite(running, "initial_inference", "observation") == finite_before  # finite input: not counted
