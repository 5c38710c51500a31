"""The network server without batching: TensorFlow Serving's API over real exported SavedModels,
metadata and status, the HTTP port, and version management (new versions under load,
half-copied directories, pinned and evicted versions). Bad input: test_network_bad_input.py.

One server process serves the whole module; the version tests run in file order and each
publishes higher version numbers than the ones before.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from games.cartpole import CartPole
from models.export import load_version
from services.common.channels import make_channel
from services.network import metrics as network_metrics
from services.network.client import NetworkClient
from services.network.wire import fill_tensor_proto
from tests.models.tolerances import assert_decoded_close
from tests.network.conftest import BOARD_SETTINGS
from tests.network.network_helpers import metric, publish, publish_served_models, scrape, wait_for

pytestmark = pytest.mark.integration

A = 2  # cartpole's actions
HIDDEN = 64  # cartpole's hidden state
S = CartPole.settings.network.support_size


@pytest.fixture(scope="module")
def base(tmp_path_factory, saved_models):
    root = tmp_path_factory.mktemp("served")
    publish_served_models(saved_models, root)
    return root


@pytest.fixture(scope="module")
def server(network_server, base):
    return network_server(["--model_config_file", str(base / "models.config"),
                           "--monitoring_config_file", "models/monitoring.config",
                           "--file_system_poll_wait_seconds", "0.05"])


@pytest.fixture(scope="module")
def client(server):
    with NetworkClient(server.grpc_address, timeout_s=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server):
    """A channel without retries: every error comes back as the server sent it."""
    with make_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def reference(saved_models):
    """The same SavedModels, loaded in the test process."""
    return {("cartpole", 1): load_version(saved_models / "cartpole", 1),
            ("cartpole", 2): load_version(saved_models / "cartpole", 2),
            ("board", 1): load_version(saved_models / "board", 1)}


def observations(batch, shape=(4,), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)).astype(np.float32)


def assert_outputs_equal(got: dict, want: dict, support_size: int = S):
    """The server's outputs against the SavedModel's called here: value and reward as expected
    support values (tests/models/tolerances.py), the rest as they are."""
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        if name in ("value", "reward"):
            assert_decoded_close(got[name], want[name], support_size, name=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def assert_values_equal(got, want, support_size: int = S):
    assert_decoded_close(got, want, support_size)


def request(signature="initial_inference", model="muzero", **inputs) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    for name, array in inputs.items():
        fill_tensor_proto(message.inputs[name], array)
    return message


def test_ready_event_and_health(server, channel):
    assert server.ready["loaded"] == {"muzero": [1, 2], "board": [1]}
    # The documented default limits (docs/network.md, "Limits"), which the server applies.
    assert (server.ready["max_request_rows"], server.ready["max_request_bytes"], server.ready["max_response_bytes"],
            server.ready["max_concurrent_rpcs"]) == (2048, 64 << 20, 64 << 20, 64)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.mark.parametrize("batch", [1, 5])
def test_outputs_equal_a_direct_call_of_the_saved_model(client, reference, batch):
    obs = observations(batch, seed=batch)
    root = client.initial_inference(obs)
    assert root.version == 2  # unpinned: the newest
    want = reference[("cartpole", 2)].initial_inference(obs)
    assert_outputs_equal(dict(hidden_state=root.hidden_state, value=root.value, reward=root.reward,
                              policy_logits=root.policy_logits), want)
    action = np.arange(batch, dtype=np.int32) % A
    step = client.recurrent_inference(root.hidden_state, action, version=1)
    assert step.version == 1
    want = reference[("cartpole", 1)].recurrent_inference(root.hidden_state, action)
    assert_outputs_equal(dict(hidden_state=step.hidden_state, value=step.value, reward=step.reward,
                              policy_logits=step.policy_logits), want)
    assert np.abs(step.value).max() > 0 and np.abs(step.reward).max() > 0


def test_futures_run_concurrently_and_answer_like_calls(client, reference):
    obs = [observations(4, seed=20 + i) for i in range(3)]
    pending = [client.predict_future("initial_inference", {"observation": o}, version=1) for o in obs]
    for o, future in zip(obs, pending):
        root = future.result()
        assert root.version == 1 and future.done()
        assert_values_equal(root.value, reference[("cartpole", 1)].initial_inference(o)["value"])
    with pytest.raises(grpc.RpcError) as error:
        client.predict_future("initial_inference", {"observation": obs[0]}, version=99).result()
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_second_model_with_a_resnet(server, reference):
    with NetworkClient(server.grpc_address, model_name="board", timeout_s=30) as board:
        obs = observations(3, (6, 7, 2), seed=4)
        outputs, version = board.predict("initial_inference", {"observation": obs})
        assert version == 1
        assert_outputs_equal(outputs, reference[("board", 1)].initial_inference(obs), BOARD_SETTINGS.network.support_size)
        action = np.array([0, 6, 3], np.int32)
        outputs, _ = board.predict("recurrent_inference", {"hidden_state": outputs["hidden_state"], "action": action})
        assert_outputs_equal(outputs, reference[("board", 1)].recurrent_inference(
            reference[("board", 1)].initial_inference(obs)["hidden_state"], action), BOARD_SETTINGS.network.support_size)


def test_output_filter_and_version_label(stub, reference):
    obs = observations(2)
    message = request(observation=obs)
    message.model_spec.version_label = "stable"
    message.output_filter.extend(["value", "policy_logits"])
    response = stub.Predict(message, timeout=30)
    assert sorted(response.outputs) == ["policy_logits", "value"]
    assert response.model_spec.version.value == 1 and response.model_spec.name == "muzero"
    assert response.model_spec.signature_name == "initial_inference"
    assert response.outputs["value"].tensor_content  # raw bytes on the wire
    want = reference[("cartpole", 1)].initial_inference(obs)
    assert_values_equal(np.frombuffer(response.outputs["value"].tensor_content, np.float32), want["value"])


def test_typed_value_fields_are_accepted(stub, reference):
    """Clients that send float_val / int_val (e.g. tf.make_tensor_proto of a list) work too."""
    message = request("initial_inference")
    tensor = message.inputs["observation"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_shape.dim.add().size = 4
    tensor.float_val.extend([0.1, -0.2, 0.3, 0.0])
    response = stub.Predict(message, timeout=30)
    want = reference[("cartpole", 2)].initial_inference(np.array([[0.1, -0.2, 0.3, 0.0]], np.float32))
    assert_values_equal(np.frombuffer(response.outputs["value"].tensor_content, np.float32), want["value"])


def test_metadata(client, stub):
    signatures = client.signatures()
    assert signatures == {
        "initial_inference": {
            "inputs": {"observation": ("DT_FLOAT", (-1, 4))},
            "outputs": {"hidden_state": ("DT_FLOAT", (-1, HIDDEN)), "value": ("DT_FLOAT", (-1,)),
                        "reward": ("DT_FLOAT", (-1,)), "policy_logits": ("DT_FLOAT", (-1, A))}},
        "recurrent_inference": {
            "inputs": {"hidden_state": ("DT_FLOAT", (-1, HIDDEN)), "action": ("DT_INT32", (-1,))},
            "outputs": {"hidden_state": ("DT_FLOAT", (-1, HIDDEN)), "value": ("DT_FLOAT", (-1,)),
                        "reward": ("DT_FLOAT", (-1,)), "policy_logits": ("DT_FLOAT", (-1, A))}}}
    message = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    message.model_spec.name = "muzero"
    message.model_spec.version.value = 1
    response = stub.GetModelMetadata(message, timeout=30)
    assert response.model_spec.version.value == 1
    assert response.metadata["signature_def"].type_url.endswith("tensorflow.serving.SignatureDefMap")
    for field, code, text in ((["signature_def", "nope"], grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"),
                              ([], grpc.StatusCode.INVALID_ARGUMENT, "metadata_field")):
        bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=field)
        bad.model_spec.name = "muzero"
        with pytest.raises(grpc.RpcError) as error:
            stub.GetModelMetadata(bad, timeout=30)
        assert error.value.code() == code and text in error.value.details()
    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    bad.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelMetadata(bad, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in error.value.details()


def test_model_status(client, channel):
    assert client.model_status() == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert client.model_status(version=1) == {1: "AVAILABLE"}
    assert client.latest_version() == 2 and client.wait_until_available(version=1) == 2
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    for name, version, text in (("muzero", 99, "version 99"), ("nope", None, "'nope'")):
        message = get_model_status_pb2.GetModelStatusRequest()
        message.model_spec.name = name
        if version is not None:
            message.model_spec.version.value = version
        with pytest.raises(grpc.RpcError) as error:
            models.GetModelStatus(message, timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and text in error.value.details()


def _set_version(message, version):
    message.model_spec.version.value = version
    return message


def test_other_apis_are_unimplemented(stub, channel):
    with pytest.raises(grpc.RpcError) as error:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED and "Classify" in error.value.details()
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _get(server, path):
    url = f"http://127.0.0.1:{server.ready['metrics_port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_http_status_metadata_and_metrics(server):
    code, body = _get(server, "/v1/models/muzero")
    assert code == 200
    assert json.loads(body) == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in ("2", "1")]}
    code, body = _get(server, "/v1/models/muzero/versions/1")
    assert code == 200 and [s["version"] for s in json.loads(body)["model_version_status"]] == ["1"]
    code, body = _get(server, "/v1/models/muzero/labels/stable")
    assert code == 200 and [s["version"] for s in json.loads(body)["model_version_status"]] == ["1"]
    code, body = _get(server, "/v1/models/muzero/metadata")
    assert code == 200
    metadata = json.loads(body)
    assert metadata["model_spec"]["version"] == "2"
    assert sorted(metadata["metadata"]["signature_def"]["signatureDef"]) == ["initial_inference", "recurrent_inference"]
    assert _get(server, "/v1/models/nope")[0] == 404
    assert _get(server, "/v1/models/muzero/versions/77")[0] == 404
    for path in ("/metrics", "/monitoring/prometheus/metrics"):
        code, body = _get(server, path)
        assert code == 200 and f'{network_metrics.REQUESTS_TOTAL}{{signature="initial_inference"}}' in body
    samples = scrape(server)
    assert samples[(network_metrics.LOADED_VERSIONS, (("model", "muzero"),))] == 2
    assert samples[(network_metrics.LATEST_VERSION, (("model", "muzero"),))] == 2
    assert samples[(network_metrics.BATCH_SIZE + "_count", ())] > 0


# --- versions (in file order) -------------------------------------------------------------------

def test_half_copied_version_directories_are_never_served(server, base, saved_models, client, reference):
    source = saved_models / "cartpole" / "1"
    muzero = base / "muzero"
    (muzero / "5").mkdir()  # variables only, no saved_model.pb
    shutil.copytree(source / "variables", muzero / "5" / "variables")
    (muzero / "6").mkdir()  # saved_model.pb, but the variables are still being copied
    shutil.copy(source / "saved_model.pb", muzero / "6")
    (muzero / "7").mkdir()  # a truncated saved_model.pb
    (muzero / "7" / "saved_model.pb").write_bytes((source / "saved_model.pb").read_bytes()[:2000])
    shutil.copytree(source / "variables", muzero / "7" / "variables")
    staged = base / "staged-8"  # truncated variables data (staged: a complete copy must never show)
    shutil.copytree(source, staged)
    data = next((staged / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    os.rename(staged, muzero / "8")

    def all_failed():
        statuses = client.model_status()
        return all(statuses.get(v) == "END" for v in (5, 6, 7, 8))

    wait_for(all_failed, "the half-copied versions to fail to load")
    message = get_model_status_pb2.GetModelStatusRequest()
    message.model_spec.name = "muzero"
    message.model_spec.version.value = 6
    status = model_service_pb2_grpc.ModelServiceStub(client.channel).GetModelStatus(message, timeout=30)
    assert status.model_version_status[0].status.error_message  # the load error, for operators
    assert client.available_versions() == [1, 2]
    assert client.initial_inference(observations(2)).version == 2
    assert server.poll() is None  # the server survived

    shutil.copytree(source / "variables", muzero / "6" / "variables")  # the copy completes
    wait_for(lambda: client.latest_version() == 6, "version 6 to load once complete")
    obs = observations(3, seed=6)
    root = client.initial_inference(obs)
    assert root.version == 6
    assert_values_equal(root.value, reference[("cartpole", 1)].initial_inference(obs)["value"])
    assert client.available_versions() == [2, 6]  # newest 2 loadable: 8, 7, 5 are broken
    for version in (5, 7, 8):
        shutil.rmtree(muzero / str(version))


def test_new_version_while_clients_run(client, base, saved_models, reference):
    """Agents keep playing while a new version arrives: no failed request, versions never go
    backwards, and a search pinned to a version is answered by that version throughout."""
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: dict[int, list[int]] = {i: [] for i in range(4)}
    pinned_ok: list[bool] = []

    def agent(index: int) -> None:
        rng = np.random.default_rng(index)
        try:
            while not stop.is_set() or len(seen[index]) < 3:
                root = client.initial_inference(rng.uniform(-1, 1, (16, 4)).astype(np.float32))
                seen[index].append(root.version)
                hidden = root.hidden_state
                for _ in range(2 if index % 2 else 0):  # half the agents run pinned searches
                    step = client.recurrent_inference(hidden, rng.integers(0, A, 16), version=root.version)
                    pinned_ok.append(step.version == root.version)
                    hidden = step.hidden_state
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(s) >= 3 for s in seen.values()) or errors, "the agents to start")
        publish(saved_models / "cartpole" / "2", base / "muzero", 10)
        wait_for(lambda: all(10 in s for s in seen.values()) or errors, "every agent to get version 10")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    for versions in seen.values():
        assert versions == sorted(versions), versions  # never backwards
        assert versions[0] == 6 and versions[-1] == 10
    assert pinned_ok and all(pinned_ok)
    obs = observations(2, seed=10)
    assert_values_equal(client.initial_inference(obs).value, reference[("cartpole", 2)].initial_inference(obs)["value"])


def test_pinned_versions_in_and_out_of_the_window(client, stub):
    assert client.available_versions() == [6, 10]
    assert client.initial_inference(observations(2), version=6).version == 6
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(_set_version(request(observation=observations(2)), 2), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version 2 of model 'muzero' is not loaded (loaded: 6, 10)" in error.value.details()
    assert client.model_status()[2] == "END"  # evicted


def test_newest_version_stays_when_its_directory_vanishes(server, client, base):
    polls = metric(server, network_metrics.VERSION_POLLS_TOTAL, model="muzero")
    os.rename(base / "muzero" / "10", base / "muzero" / ".deleting-10")
    wait_for(lambda: metric(server, network_metrics.VERSION_POLLS_TOTAL, model="muzero") >= polls + 3,
             "three more polls")
    assert client.latest_version() == 10
    assert client.initial_inference(observations(1)).version == 10
