"""A gRPC server with health checking and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.channels import MAX_MESSAGE_BYTES
from services.common.logs import EventLogger
from services.common.shutdown import stop_event_on_signals


class ServiceServer:
    """Owns a `grpc.Server` plus its health servicer.

    Usage:
        server = ServiceServer(log, host="127.0.0.1", port=0)
        add_FooServicer_to_server(servicer, server.grpc_server)
        port = server.start(["mufleet.Foo"])
        server.wait_for_shutdown_signal()   # SIGTERM: NOT_SERVING, finish in-flight calls, exit
    """

    def __init__(self, log: EventLogger, host: str = "127.0.0.1", port: int = 0,
                 max_workers: int = 16, grace_s: float = 10.0) -> None:
        self.log = log
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self._services: list[str] = [""]
        self._stopped = threading.Event()
        self.port = 0

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

    def wait_for_shutdown_signal(self) -> None:
        """Blocks until SIGTERM or SIGINT, then stops gracefully. Call from the main thread."""
        received = stop_event_on_signals(self.log)
        while not received.wait(0.5) and not self._stopped.is_set():
            pass
        self.stop()
        self.log.info("stopped")
