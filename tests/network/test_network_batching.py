"""Cross-request batching in a real server process, made deterministic without timing: the batch
timeout is a minute, so a batch runs only when it is full (max_batch_size rows) and a full
queue is reached by construction, never by racing the clock."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from games.cartpole import CartPole
from models.export import load_version
from services.common.channels import make_channel
from services.network import metrics as network_metrics
from services.network.client import NetworkClient
from tests.models.tolerances import assert_decoded_close
from tests.network.network_helpers import metric, publish, wait_for

pytestmark = pytest.mark.integration

MAX_BATCH = 32
S = CartPole.settings.network.support_size


@pytest.fixture(scope="module")
def server(network_server, tmp_path_factory, saved_models):
    root = tmp_path_factory.mktemp("batched")
    publish(saved_models / "cartpole" / "1", root / "muzero", 1)
    batching = root / "batching.config"
    batching.write_text(f"""
max_batch_size {{ value: {MAX_BATCH} }}
batch_timeout_micros {{ value: 60000000 }}
max_enqueued_batches {{ value: 1 }}
num_batch_threads {{ value: 1 }}
thread_pool_name {{ value: "test_batch_threads" }}
pad_variable_length_inputs: false
""")
    return network_server(["--model_name", "muzero", "--model_base_path", str(root / "muzero"),
                           "--enable_batching", "--batching_parameters_file", str(batching)])


@pytest.fixture(scope="module")
def reference(saved_models):
    return load_version(saved_models / "cartpole", 1)


def rows(batch, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 4)).astype(np.float32)


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(server, reference):
    clients, per_client = 8, MAX_BATCH // 8
    runs_before = metric(server, network_metrics.BATCH_REQUESTS + "_count")
    merged_before = metric(server, network_metrics.BATCH_REQUESTS + "_sum")
    small_before = metric(server, network_metrics.BATCH_REQUESTS + "_bucket", le="4.0")
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            with NetworkClient(server.grpc_address, timeout_s=120) as client:
                root = client.initial_inference(rows(per_client, index))
                step = client.recurrent_inference(root.hidden_state, np.full(per_client, index % 2), version=root.version)
                results[index] = (root, step)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    for index, (root, step) in results.items():
        want = reference.initial_inference(rows(per_client, index))
        np.testing.assert_allclose(root.hidden_state, want["hidden_state"], rtol=1e-5, atol=1e-6)
        assert_decoded_close(root.value, want["value"], S)
        np.testing.assert_allclose(root.policy_logits, want["policy_logits"], rtol=1e-5, atol=1e-6)
        want = reference.recurrent_inference(want["hidden_state"], np.full(per_client, index % 2, np.int32))
        assert_decoded_close(step.value, want["value"], S)
        assert_decoded_close(step.reward, want["reward"], S, name="reward")
    # 32 rows per signature fill exactly one batch each: two runs of 8 merged requests.
    assert metric(server, network_metrics.BATCH_REQUESTS + "_count") == runs_before + 2
    assert metric(server, network_metrics.BATCH_REQUESTS + "_sum") == merged_before + 2 * clients
    assert metric(server, network_metrics.BATCH_REQUESTS + "_bucket", le="4.0") == small_before  # no small runs


def test_full_queue_answers_unavailable_at_once(server, reference):
    """max_enqueued_batches is 1: while one open batch waits, a request that does not fit in it
    would need a second batch, so it is rejected with UNAVAILABLE; one that fits completes it."""
    errors: list[BaseException] = []
    waiting: dict[str, object] = {}

    def first() -> None:
        try:
            with NetworkClient(server.grpc_address, timeout_s=120) as client:
                waiting["result"] = client.initial_inference(rows(MAX_BATCH - 1, 100))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for(lambda: metric(server, network_metrics.QUEUED_ROWS) == MAX_BATCH - 1 or errors,
                 "the first request to wait in the open batch")
        unavailable_before = metric(server, network_metrics.REQUEST_ERRORS_TOTAL, method="Predict", code="UNAVAILABLE")
        with make_channel(server.grpc_address) as channel:  # no retries: see the answer itself
            raw = NetworkClient(server.grpc_address, channel=channel, timeout_s=60)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as error:
                    raw.initial_inference(rows(2, 101))
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "queue" in error.value.details() and "full" in error.value.details()
            # A request larger than max_batch_size runs alone, past the queue.
            large = raw.initial_inference(rows(MAX_BATCH + 8, 102))
            assert_decoded_close(large.value, reference.initial_inference(rows(MAX_BATCH + 8, 102))["value"], S)
            # Nothing changed: the open batch still waits with its rows, and one row fills it.
            assert metric(server, network_metrics.QUEUED_ROWS) == MAX_BATCH - 1
            last = raw.initial_inference(rows(1, 103))
        assert_decoded_close(last.value, reference.initial_inference(rows(1, 103))["value"], S)
    finally:
        thread.join(180)
    assert not errors, errors
    want = reference.initial_inference(rows(MAX_BATCH - 1, 100))
    assert_decoded_close(waiting["result"].value, want["value"], S)
    assert metric(server, network_metrics.REQUEST_ERRORS_TOTAL, method="Predict", code="UNAVAILABLE") == unavailable_before + 3
    errors_by_code = {code: metric(server, network_metrics.REQUEST_ERRORS_TOTAL, method="Predict", code=code)
                      for code in ("INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL")}
    assert errors_by_code == {"INVALID_ARGUMENT": 0, "NOT_FOUND": 0, "INTERNAL": 0}


def test_bad_action_is_rejected_before_it_can_spoil_a_batch(server):
    with make_channel(server.grpc_address) as channel:
        raw = NetworkClient(server.grpc_address, channel=channel, timeout_s=60)
        with pytest.raises(grpc.RpcError) as error:
            raw.recurrent_inference(np.zeros((2, 64), np.float32), np.array([0, 5]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs['action']" in error.value.details()
    assert metric(server, network_metrics.QUEUED_ROWS) == 0
