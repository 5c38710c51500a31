"""Client channels: retries of idempotent calls and round-robin load balancing through gRPC's
service config, large messages, and a readiness check through the standard health service.

Load balancing: every channel asks for the `round_robin` policy. A target that names several
addresses (`ipv4:10.0.0.1:50002,10.0.0.2:50002`, or `dns:///network:50002` where DNS answers
with one address per pod, as a Kubernetes headless Service does) gets one subchannel per address
and spreads its calls over them, instead of `pick_first`'s one connection for the channel's
life (which pins a long-lived HTTP/2 channel to one pod). A target with one address behaves as
before: the one subchannel takes every call."""

from __future__ import annotations

import json
import time
from typing import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_DEADLINE_S = 10.0


LOAD_BALANCING_POLICY = "round_robin"


def service_config(idempotent: dict[str, Iterable[str]] | None = None) -> str:
    """The service config of every MuFleet channel (JSON): `round_robin` over the addresses the
    target resolves to, and retries of the `idempotent` methods (see `retry_service_config`)."""
    config: dict = {"loadBalancingConfig": [{LOAD_BALANCING_POLICY: {}}]}
    if idempotent:
        config.update(json.loads(retry_service_config(idempotent)))
    return json.dumps(config)


def retry_service_config(idempotent: dict[str, Iterable[str]], max_attempts: int = 5,
                         initial_backoff_s: float = 0.1, max_backoff_s: float = 2.0) -> str:
    """gRPC service config JSON that retries UNAVAILABLE with exponential backoff.

    Args:
      idempotent: full service name -> method names that are safe to retry
        (an empty list means every method of that service).
    """
    names = []
    for service, methods in idempotent.items():
        methods = list(methods)
        names += [{"service": service, "method": m} for m in methods] or [{"service": service}]
    return json.dumps({"methodConfig": [{
        "name": names,
        "retryPolicy": {
            "maxAttempts": max_attempts,
            "initialBackoff": f"{initial_backoff_s}s",
            "maxBackoff": f"{max_backoff_s}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]})


def make_channel(address: str, idempotent: dict[str, Iterable[str]] | None = None) -> grpc.Channel:
    """An insecure channel to `address` ("host:port", or any gRPC target: `dns:///name:port`,
    `ipv4:a:p,b:q`) that retries the `idempotent` methods and balances calls round-robin over
    every address the target resolves to."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    options.append(("grpc.service_config", service_config(idempotent)))
    return grpc.insecure_channel(address, options=options)


def is_serving(channel: grpc.Channel, service: str = "", timeout_s: float = 1.0) -> bool:
    """Whether the health service on `channel` reports `service` ("" = the server) SERVING."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_serving(address: str, service: str = "", timeout_s: float = 60.0) -> None:
    """Blocks until `address` reports `service` SERVING; TimeoutError naming the address otherwise."""
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service=service)
    with make_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address} did not report {service or 'the server'} SERVING "
                                   f"within {timeout_s:.0f}s")
            try:
                # wait_for_ready: a server that is not listening yet is waited for, not failed.
                response = stub.Check(request, timeout=min(remaining, 2.0), wait_for_ready=True)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)  # up but not serving yet (e.g. loading a model): ask again shortly
