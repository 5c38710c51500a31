"""The in-process launcher: a program's nodes as libraries in this process, one after another.

It renders the same `ServiceSpec`s as the local launcher (`local.plan`), and for each one calls
`start(argv, registry, log)` of the node's `__main__` module: the service's own flag parser
turns the command line into its config and its `serve(config)` starts it on threads of this
process, with a Prometheus registry of its own (so two services never share a metric). The
address handles are filled in from the ports the returned services bound, exactly as the local
launcher does from the `ready` events of its processes. `stop()` stops them in reverse order:
the agents flush their records before the replay closes.

Tests use it where signals are not the point: a whole fleet starts in seconds, in one process a
debugger can stop. Nodes without an in-process entry (the dashboard, container-only nodes) are
refused by name; build the program without them (`FleetConfig(monitor=False)`).
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry

from services.common.channels import wait_until_serving
from services.common.logs import EventLogger, get_logger
from services.common.service import RunningService, Worker
from services.launcher.local import LocalFleet, ServiceSpec
from services.launcher.program import GRPC, HTTP

# The modules whose `__main__` has `start(argv, registry, log) -> RunningService`.
IN_PROCESS_MODULES = ("services.environment", "services.replay", "services.network",
                      "services.trainer", "services.agent", "services.reanalyse",
                      "services.evaluator")


class InProcessFleet:
    """Starts `specs` in this process, in order; `stop()` stops them in reverse order.

    Args:
      specs: the fleet's instances (`local.plan(program, run_dir, PortPlan(fixed=False))` for
        free ports).
      log: the launcher's events (`starting`, `started`, `stopped_service`).
      ready_timeout_s: how long one service may take to be ready (a worker to log `ready`, a
        gRPC server to report SERVING).
    """

    def __init__(self, specs: Sequence[ServiceSpec], log: EventLogger | None = None,
                 ready_timeout_s: float = 300.0) -> None:
        unsupported = [spec.name for spec in specs if spec.module not in IN_PROCESS_MODULES]
        if unsupported:
            raise ValueError(f"no in-process entry for {', '.join(unsupported)}: the in-process "
                             f"launcher runs {', '.join(IN_PROCESS_MODULES)}")
        self.specs = list(specs)
        self.log = log or get_logger("launcher")
        self.ready_timeout_s = ready_timeout_s
        self.services: dict[str, RunningService] = {}
        self.registries: dict[str, CollectorRegistry] = {}
        # Address bookkeeping and handle resolution are the local launcher's.
        self._addresses = LocalFleet(self.specs, log_dir=".", log=self.log)

    @property
    def grpc_addresses(self) -> dict[str, str]:
        return self._addresses.grpc_addresses

    @property
    def metrics_addresses(self) -> dict[str, str]:
        return self._addresses.metrics_addresses

    def command(self, spec: ServiceSpec) -> list[str]:
        """The arguments of `spec` with the addresses of the services started so far."""
        return self._addresses.command(spec)

    def start(self, on_started: Callable[[ServiceSpec], None] | None = None) -> None:
        """Starts every service, each once it is ready; on a failure, stops those started."""
        try:
            for spec in self.specs:
                self._start(spec)
                if on_started:
                    on_started(spec)
        except BaseException:
            self.stop()
            raise

    def _start(self, spec: ServiceSpec) -> None:
        args = self.command(spec)
        self.log.info("starting", name=spec.name, module=spec.module, args=" ".join(args))
        entry = importlib.import_module(f"{spec.module}.__main__")
        registry = CollectorRegistry()
        service = entry.start(args, registry=registry, log=get_logger(spec.name))
        self.services[spec.name] = service
        self.registries[spec.name] = registry
        ports = service.ports
        if isinstance(service, Worker) and not service.wait_ready(self.ready_timeout_s):
            raise RuntimeError(f"{spec.name} did not become ready within {self.ready_timeout_s} s "
                               f"(exit code {service.exit_code})")
        if "metrics" in ports:
            self._addresses.metrics_addresses[spec.name] = f"127.0.0.1:{ports['metrics']}"
        if spec.kind == HTTP:
            self._addresses.http_addresses[spec.name] = f"127.0.0.1:{ports['http']}"
        if spec.kind == GRPC:
            address = f"127.0.0.1:{ports['grpc']}"
            self._addresses.grpc_addresses[spec.name] = address
            wait_until_serving(address, spec.health_service, timeout_s=self.ready_timeout_s)
        self.log.info("started", name=spec.name, grpc=self.grpc_addresses.get(spec.name),
                      metrics=self.metrics_addresses.get(spec.name))

    def exited(self) -> dict[str, int]:
        """Worker services whose loop has ended, with their exit codes."""
        return {name: service.exit_code for name, service in self.services.items()
                if isinstance(service, Worker) and not service.running}

    def stop(self, grace_s: float | None = None) -> dict[str, int | None]:
        """Stops every started service, newest first; returns the workers' exit codes."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.services)):
            service = self.services.pop(name)
            service.stop(grace_s)
            service.wait(grace_s)
            code = service.exit_code if isinstance(service, Worker) else None
            codes[name] = code
            self.log.info("stopped_service", name=name, exit_code=code)
        return codes

    def scrape(self, name: str) -> dict[str, float]:
        """The metrics of service `name` as {sample name{labels}: value}, from its registry."""
        from prometheus_client import generate_latest

        from services.common.metrics import flat_metrics
        registry = self.registries.get(name)
        return flat_metrics(generate_latest(registry).decode()) if registry is not None else {}

    def __enter__(self) -> "InProcessFleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
