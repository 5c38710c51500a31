"""ServiceServer against a real in-process gRPC server: unparsable request bytes are
INVALID_ARGUMENT (parsed in the handler), and good requests still work through the interceptor."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.logs import get_logger
from services.common.server import ServiceServer

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
# Field 1 (service, a string) as a varint-typed field with a truncated varint: does not parse.
UNPARSABLE = b"\x0a\xff\xff\xff"


@pytest.fixture
def server():
    server = ServiceServer(get_logger("test"), port=0, max_workers=2, grace_s=0)
    port = server.start(["mufleet.Test"])
    yield port
    server.stop(0)


def _raw(channel: grpc.Channel, method: str, streaming: bool = False):
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(method, request_serializer=lambda b: b,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)


def test_unparsable_unary_request_is_invalid_argument(server):
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _raw(channel, CHECK)(UNPARSABLE, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "do not parse" in caught.value.details() and "Health/Check" in caught.value.details()
        # the server goes on serving well-formed requests
        ok = _raw(channel, CHECK)(health_pb2.HealthCheckRequest(service="mufleet.Test")
                                  .SerializeToString(), timeout=5)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING


def test_unparsable_streaming_request_is_invalid_argument(server):
    with grpc.insecure_channel(f"127.0.0.1:{server}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(_raw(channel, WATCH, streaming=True)(UNPARSABLE, timeout=5)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = _raw(channel, WATCH, streaming=True)(
            health_pb2.HealthCheckRequest(service="").SerializeToString(), timeout=5)
        assert next(iter(stream)).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()


def test_request_over_the_receive_limit_is_refused():
    server = ServiceServer(get_logger("test"), port=0, max_workers=1, grace_s=0,
                           max_receive_bytes=1024)
    port = server.start([])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                _raw(channel, CHECK)(health_pb2.HealthCheckRequest(service="x" * 4096)
                                     .SerializeToString(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(0)
