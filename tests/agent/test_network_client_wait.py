"""NetworkClient.wait_until_available under the shared failure policy (a fake channel)."""

from __future__ import annotations

import threading

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2

from services.common.failures import PermanentFailure
from services.network.client import NetworkClient
from tests.agent.agent_fakes import FakeRpcError


class FakeChannel:
    """Answers GetModelStatus from `outcomes` (an exception to raise, or a list of available
    versions), repeating the last one."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **_):
        def call(request, timeout=None, **__):
            self.calls += 1
            outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
            if isinstance(outcome, BaseException):
                raise outcome
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in outcome:
                status = response.model_version_status.add()
                status.version = version
                status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response

        return call


def client(channel: FakeChannel) -> NetworkClient:
    return NetworkClient("127.0.0.1:1", channel=channel)


def test_transient_failures_are_waited_out():
    channel = FakeChannel(FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.CANCELLED),
                          FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED), [0, 3])
    assert client(channel).wait_until_available(timeout_s=60, poll_s=0.0) == 3
    assert channel.calls == 4


def test_a_permanent_failure_names_the_network_and_is_not_waited_out():
    channel = FakeChannel(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "unknown service"))
    with pytest.raises(PermanentFailure) as raised:
        client(channel).wait_until_available(timeout_s=60, poll_s=0.0)
    assert (raised.value.peer, raised.value.method, raised.value.code, raised.value.address) == (
        "network", "GetModelStatus", "UNIMPLEMENTED", "127.0.0.1:1")
    assert channel.calls == 1


def test_a_stop_ends_the_wait():
    stop = threading.Event()
    stop.set()
    channel = FakeChannel(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    assert client(channel).wait_until_available(timeout_s=3600, poll_s=60, stop=stop) is None
