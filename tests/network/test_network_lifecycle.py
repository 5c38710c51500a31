"""The network server's command line and lifecycle: --help, bad flags and config files, an
empty base path until the trainer's first export, and a graceful SIGTERM that answers the
requests still waiting in a batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

from games.cartpole import CartPole
from models.export import load_version
from services.common.channels import is_serving, make_channel
from services.common.processes import REPO_ROOT, ServiceProcess
from services.network import metrics as network_metrics
from services.network.client import NetworkClient
from tests.models.tolerances import assert_decoded_close
from tests.network.network_helpers import metric, publish, wait_for


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.network", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_tensorflow_serving_flags():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--port", "--rest_api_port", "--metrics-port", "--model_config_file", "--model_name",
                 "--model_base_path", "--enable_batching", "--batching_parameters_file",
                 "--monitoring_config_file", "--file_system_poll_wait_seconds", "--host"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("config,args,message", [
    (None, [], "exactly one of --model_config_file or --model_base_path"),
    ("max_batch_size { value: 8 } no_such_field: 1", ["--enable_batching"], "not a valid BatchingParameters"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", ["--enable_batching"], "allowed_batch_sizes"),
    ("max_batch_size { value: 0 }", ["--enable_batching"], "max_batch_size must be >= 1"),
    ("pad_variable_length_inputs: true", ["--enable_batching"], "pad_variable_length_inputs"),
    ("max_batch_size { value: 8 }", [], "--batching_parameters_file needs --enable_batching"),
])
def test_bad_flags_and_config_files_exit_with_a_clear_message(tmp_path, config, args, message):
    if config is not None:
        (tmp_path / "batching.config").write_text(config)
        args = [*args, "--model_base_path", str(tmp_path), "--batching_parameters_file",
                str(tmp_path / "batching.config")]
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("flag,value,message", [
    ("--max_concurrent_rpcs", "0", "--max_concurrent_rpcs must be >= 1, got 0"),
    ("--max_request_rows", "0", "--max_request_rows must be >= 1, got 0"),
    ("--max_request_bytes", "100", "--max_request_bytes must be in [1024, 2**31), got 100"),
    ("--max_response_bytes", str(2**31), f"--max_response_bytes must be in [1024, 2**31), got {2**31}"),
    ("--file_system_poll_wait_seconds", "-1", "--file_system_poll_wait_seconds must be >= 0, got -1.0"),
])
def test_bad_config_values_are_argparse_errors_naming_the_flag(tmp_path, flag, value, message):
    result = run_cli("--model_base_path", str(tmp_path), flag, value)
    assert result.returncode == 2, result.stderr
    assert "usage: python -m services.network" in result.stderr
    assert message in result.stderr
    assert "NetworkConfig" not in result.stderr and "Traceback" not in result.stderr


def test_bad_model_config_file(tmp_path):
    (tmp_path / "models.config").write_text('model_config_list { config { name: "m" base_path: "/x" '
                                            'model_platform: "pytorch" } }')
    result = run_cli("--model_config_file", str(tmp_path / "models.config"))
    assert result.returncode == 2 and "model_platform must be 'tensorflow'" in result.stderr
    result = run_cli("--model_config_file", str(tmp_path / "missing.config"))
    assert result.returncode == 2 and "missing.config: cannot read" in result.stderr


def test_shipped_config_files_parse():
    from services.network import config

    (model,) = config.models_from_config_file(REPO_ROOT / "models" / "models.config")
    assert (model.name, model.base_path, model.version_policy, model.num_versions) == (
        "muzero", "/models/muzero", "latest", 3)
    batching = config.batching_from_file(REPO_ROOT / "models" / "batching.config")
    assert batching.max_batch_size >= 256 and batching.num_batch_threads >= 1
    assert config.prometheus_path_from_file(REPO_ROOT / "models" / "monitoring.config") == \
        "/monitoring/prometheus/metrics"


def test_serving_config_proto_does_not_clash_with_tensorflow_serving():
    from google.protobuf import descriptor_pool
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: F401
                                         model_service_pb2_grpc, prediction_service_pb2_grpc)
    from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

    from protos import serving_config_pb2

    pool = descriptor_pool.Default()
    assert pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters") is \
        serving_config_pb2.BatchingParameters.DESCRIPTOR
    assert pool.FindMessageTypeByName("tensorflow.serving.ModelServerConfig")  # both live together
    fields = {f.name: (f.number, f.message_type.full_name if f.message_type else f.type)
              for f in serving_config_pb2.BatchingParameters.DESCRIPTOR.fields}
    assert fields["max_batch_size"] == (1, "google.protobuf.Int64Value")
    assert fields["batch_timeout_micros"] == (2, "google.protobuf.Int64Value")
    assert fields["max_enqueued_batches"] == (3, "google.protobuf.Int64Value")
    assert fields["num_batch_threads"] == (4, "google.protobuf.Int64Value")
    assert fields["thread_pool_name"] == (5, "google.protobuf.StringValue")
    assert fields["allowed_batch_sizes"][0] == 6 and fields["pad_variable_length_inputs"][0] == 7


@pytest.mark.integration
def test_empty_base_path_first_version_then_graceful_sigterm(start_service, tmp_path, saved_models):
    base = tmp_path / "muzero"
    base.mkdir()
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 60000000 } max_enqueued_batches { value: 4 }")
    process = start_service("services.network", [
        "--model_base_path", str(base), "--file_system_poll_wait_seconds", "0.05", "--enable_batching",
        "--batching_parameters_file", str(tmp_path / "batching.config")])
    assert process.ready["loaded"] == {"muzero": []}
    address = process.grpc_address

    # Up, but no model yet: the server is healthy, prediction is not.
    with make_channel(address) as channel:
        assert is_serving(channel, "", timeout_s=30)
        assert not is_serving(channel, "tensorflow.serving.PredictionService", timeout_s=30)
        raw = NetworkClient(address, channel=channel, timeout_s=30)
        with pytest.raises(grpc.RpcError) as error:
            raw.initial_inference(np.zeros((1, 4), np.float32))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and "no loaded version yet" in error.value.details()
        assert raw.available_versions() == []

        publish(saved_models / "cartpole" / "2", base, 0)  # the trainer's first export
        wait_for(lambda: is_serving(channel, "tensorflow.serving.PredictionService", timeout_s=30),
                 "prediction to report SERVING")
    client = NetworkClient(address, timeout_s=120)
    assert client.wait_until_available(timeout_s=60) == 0

    # A request waits in an open batch (timeout: a minute) when SIGTERM arrives: it is answered.
    observation = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["root"] = client.initial_inference(observation)
        except BaseException as error:  # noqa: BLE001
            result["error"] = error

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: metric(process, network_metrics.QUEUED_ROWS) == 5 or "error" in result,
             "the request to wait in a batch")
    process.signal(signal.SIGTERM)
    thread.join(120)
    client.close()
    assert "error" not in result, result.get("error")
    want = load_version(saved_models / "cartpole", 2).initial_inference(observation)
    assert_decoded_close(result["root"].value, want["value"], CartPole.settings.network.support_size)
    assert result["root"].version == 0
    wait_for(lambda: process.poll() is not None, "the server to exit", timeout_s=60)
    assert process.poll() == 0
    events = [e["event"] for e in process.events]
    assert events[-2:] == ["stopping", "stopped"]


@pytest.mark.integration
def test_sigterm_during_start_up_exits_cleanly(tmp_path, saved_models):
    """The stop handling is installed before TensorFlow is imported and versions are loaded:
    SIGTERM as soon as the server has logged its first line exits 0 with `stopped`, whether it
    arrives while TensorFlow is imported, while a version loads, or (on a slow machine) later."""
    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    publish(saved_models / "cartpole" / "2", base, 2)
    process = ServiceProcess("services.network", ["--model_base_path", str(base), "--port", "0",
                                                  "--metrics-port", "0"], log_path=tmp_path / "network.log")
    process.start()
    try:
        wait_for(lambda: bool(process.events) or process.poll() is not None, "the first log line",
                 timeout_s=120)
        assert process.events and process.events[0]["event"] == "starting", process.tail()
        process.signal(signal.SIGTERM)
        code = process.wait(120)
    finally:
        process.stop()
    assert code == 0, process.tail()
    events = [e["event"] for e in process.events]
    assert events[-2:] == ["stopping", "stopped"], events


def test_serve_opens_nothing_when_stopped_during_start_up(tmp_path, saved_models):
    """What __main__ does when SIGTERM came during start-up: `serve` loads no version, opens no
    port and returns None."""
    from services.common.logs import get_logger
    from prometheus_client import CollectorRegistry

    from services.network.config import ModelEntry, NetworkConfig
    from services.network.metrics import NetworkMetrics
    from services.network.server import serve

    base = tmp_path / "muzero"
    publish(saved_models / "cartpole" / "1", base, 1)
    stop = threading.Event()
    stop.set()
    metrics = NetworkMetrics(CollectorRegistry())  # a fresh registry: both servers count in it
    loads = metrics.version_loads.labels("stopped-model", "ok")
    loads_before = loads._value.get()
    config = NetworkConfig(models=(ModelEntry(name="stopped-model", base_path=str(base)),),
                           file_system_poll_wait_seconds=0, port=0, rest_api_port=0)
    assert serve(config, get_logger("network"), stop=stop, metrics=metrics) is None
    assert loads._value.get() == loads_before  # nothing loaded
    running = serve(config, get_logger("network"), stop=threading.Event(),  # not stopped: serves
                    metrics=metrics)
    try:
        assert running is not None and running.service.loaded_versions() == {"stopped-model": [1]}
        assert loads._value.get() == loads_before + 1
    finally:
        running.stop()
