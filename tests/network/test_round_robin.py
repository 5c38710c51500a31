"""Every MuFleet channel balances its calls round-robin over the addresses its target resolves to
(services/common/channels.py's service config): one NetworkClient on a target naming two
network servers sends Predict calls to both. In Kubernetes the target is `dns:///network:50002`
and a headless Service answers with one address per pod (docs/kubernetes.md); here the target
names two servers on loopback directly. With one address nothing changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.common.channels import LOAD_BALANCING_POLICY, service_config
from services.network.client import NetworkClient

pytestmark = pytest.mark.integration

CALLS = 12


def test_the_service_config_asks_for_round_robin_and_keeps_the_retries():
    assert json.loads(service_config()) == {"loadBalancingConfig": [{"round_robin": {}}]}
    config = json.loads(service_config({"tensorflow.serving.PredictionService": ["Predict"]}))
    assert config["loadBalancingConfig"] == [{LOAD_BALANCING_POLICY: {}}]
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": "tensorflow.serving.PredictionService", "method": "Predict"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory, saved_models):
    """Two MuFleet network servers in this process on 127.0.0.1 (free ports), serving the same
    exported cartpole model, each with its own metrics registry."""
    from services.network.__main__ import start

    servers = []
    try:
        for _ in range(2):
            servers.append(start(["--model_name", "muzero", "--model_base_path", str(saved_models / "cartpole"),
                                  "--host", "127.0.0.1", "--port", "0", "--rest_api_port", "0",
                                  "--file_system_poll_wait_seconds", "1"], registry=CollectorRegistry()))
        yield servers
    finally:
        for server in servers:
            server.stop(0)


def predict_requests(server) -> float:
    """Predict requests the server counted (its `mufleet_network_requests_total`, all signatures)."""
    return sum(sample.value for family in server.service.metrics.registry.collect()
               for sample in family.samples
               if sample.name == "mufleet_network_requests_total")


def test_one_client_on_two_addresses_reaches_both_servers(two_servers):
    before = [predict_requests(s) for s in two_servers]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.grpc_port}" for s in two_servers)
    observation = np.zeros((3, 4), np.float32)
    with NetworkClient(target, timeout_s=30) as client:
        for _ in range(CALLS):
            answer = client.initial_inference(observation)
            assert answer.value.shape == (3,)
    got = [predict_requests(s) - b for s, b in zip(two_servers, before)]
    assert sum(got) == CALLS
    # round_robin alternates over READY subchannels; the first calls may all go to whichever
    # connected first, so both are asked for a share, not for exactly half.
    assert all(n >= 1 for n in got), f"requests per server {got}: the channel did not balance"


def test_one_address_still_takes_every_call(two_servers):
    first, second = two_servers
    before = predict_requests(first), predict_requests(second)
    with NetworkClient(f"127.0.0.1:{first.grpc_port}", timeout_s=30) as client:
        for _ in range(4):
            client.initial_inference(np.zeros((1, 4), np.float32))
    assert predict_requests(first) - before[0] == 4
    assert predict_requests(second) == before[1]
