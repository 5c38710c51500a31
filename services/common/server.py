"""A gRPC server with health checking, graceful shutdown on SIGTERM/SIGINT, and requests
parsed in the handler (unparsable bytes are INVALID_ARGUMENT, not grpcio's INTERNAL)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Callable, Iterable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import MAX_MESSAGE_BYTES
from services.common.logs import EventLogger
from services.common.metrics import MetricsEndpoint
from services.common.shutdown import stop_event_on_signals


class ParseInHandler(grpc.ServerInterceptor):
    """Moves request parsing from grpcio into the handler.

    grpcio answers a request it cannot deserialize with INTERNAL "Exception deserializing
    request!", which reads as a server bug. This interceptor gives every unary-request method
    an identity deserializer and parses the bytes itself, so unparsable bytes get
    INVALID_ARGUMENT naming the method, and are logged as one `request_unparsable` event.
    """

    def __init__(self, log: EventLogger, on_rejected: Callable[[str], None] | None = None) -> None:
        self._log = log
        self._on_rejected = on_rejected

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer

        def parsed(raw: bytes, context: grpc.ServicerContext):
            try:
                return parse(raw)
            except (DecodeError, ValueError, TypeError) as error:
                if self._on_rejected:
                    self._on_rejected(method)
                self._log.warning("request_unparsable", method=method, bytes=len(raw),
                                  error=type(error).__name__)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: {len(raw)} bytes do not parse as {method}'s request message")

        if handler.response_streaming:
            behavior = handler.unary_stream

            def unary_stream(raw, context):
                yield from behavior(parsed(raw, context), context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, response_serializer=handler.response_serializer)
        behavior = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            lambda raw, context: behavior(parsed(raw, context), context),
            response_serializer=handler.response_serializer)


class ServiceServer:
    """Owns a `grpc.Server` plus its health servicer.

    Usage:
        server = ServiceServer(log, host="127.0.0.1", port=0)
        add_FooServicer_to_server(servicer, server.grpc_server)
        port = server.start(["mufleet.Foo"])
        server.wait_for_shutdown_signal()   # SIGTERM: NOT_SERVING, finish in-flight calls, exit
    """

    def __init__(self, log: EventLogger, host: str = "127.0.0.1", port: int = 0,
                 max_workers: int = 16, grace_s: float = 10.0,
                 max_receive_bytes: int = MAX_MESSAGE_BYTES,
                 max_send_bytes: int = MAX_MESSAGE_BYTES,
                 on_unparsable: Callable[[str], None] | None = None) -> None:
        """Args:
          max_workers: threads serving calls (each call in progress holds one).
          max_receive_bytes / max_send_bytes: the largest request / response message; a larger
            request is refused by grpcio with RESOURCE_EXHAUSTED before it reaches a handler.
            Size them to what the service needs.
          on_unparsable: called with the method's full name for each request whose bytes do
            not parse (answered INVALID_ARGUMENT), e.g. to count it in the service's error metric.
        """
        self.log = log
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[ParseInHandler(log, on_unparsable)],
            options=[("grpc.max_send_message_length", max_send_bytes),
                     ("grpc.max_receive_message_length", max_receive_bytes),
                     ("grpc.so_reuseport", 0)])
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self._services: list[str] = [""]
        self._stopped = threading.Event()
        self.port = 0
        # The service's /metrics endpoint when the server owns one (a service's `serve`
        # attaches it); closed after the gRPC server stops, so the last scrape sees the stop.
        self.metrics_endpoint: MetricsEndpoint | None = None

    @property
    def ports(self) -> dict[str, int]:
        """The bound ports by endpoint: {"grpc": ..., "metrics": ...} (metrics when served)."""
        ports = {"grpc": self.port}
        if self.metrics_endpoint is not None:
            ports["metrics"] = self.metrics_endpoint.port
        return ports

    @property
    def address(self) -> str:
        """`host:port` of the bound gRPC port, for clients."""
        return f"{self.host}:{self.port}"

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until the server was stopped (or `timeout_s` passed); True once stopped."""
        return self._stopped.wait(timeout_s)

    def start(self, services: Iterable[str]) -> int:
        """Binds, starts and marks `services` (full names) and the server SERVING; returns the port."""
        self.port = self.grpc_server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if self.port == 0:
            raise OSError(f"could not bind {self.host}:{self.requested_port}")
        self.grpc_server.start()
        self._services = ["", *services]
        for name in self._services:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first (so balancers and the launcher stop sending), then finish in-flight calls."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.grace_s if grace_s is None else grace_s).wait()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()

    def wait_for_shutdown_signal(self, received: threading.Event | None = None) -> None:
        """Blocks until SIGTERM or SIGINT, then stops gracefully and logs `stopped`. Call from
        the main thread.

        `received`: the event of `services.common.shutdown.stop_event_on_signals`, when
        `__main__` installed the handlers before its slow start-up (so that a signal then is not
        lost); None installs them now.
        """
        if received is None:
            received = stop_event_on_signals(self.log)
        while not received.wait(0.5) and not self._stopped.is_set():
            pass
        self.stop()
        self.log.info("stopped")
