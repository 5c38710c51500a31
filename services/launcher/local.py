"""The local launcher: a program's nodes as child processes on loopback, one after another,
each once the ones before it are ready.

`plan(program, run_dir, ports)` renders the program into `ServiceSpec`s (settings, folders and
ports filled in); `LocalFleet(specs, ...)` starts them and fills in each address handle with
the address the named service actually bound, so the same program runs with fixed ports and
with free ports (port 0).
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from games.validation import require
from services.common.channels import wait_until_serving
from services.common.logs import EventLogger
from services.common.metrics import flat_metrics
from services.common.processes import ServiceProcess
from services.launcher.program import GRPC, HTTP, WORKER, Address, Arg, Dir, Handle, InstanceName, Node, \
    Program, Setting, expand_each, resolve


@dataclasses.dataclass(frozen=True)
class PortPlan:
    """How the local launcher numbers the ports of the first instance of every node (the other
    instances of a scalable node always pick free ones).

    Attributes:
      fixed: True: fixed ports, the nodes' own (`Ports.main`, `Ports.metrics`: the README's), or
        those of `base`; False: every service picks a free port (port 0).
      base: 0, or P: the ports are P + the nodes' offsets (`Ports.main_offset`, ...).
    """

    fixed: bool = True
    base: int = 0

    def __post_init__(self) -> None:
        require(self.base >= 0, f"PortPlan.base must be >= 0, got {self.base}")
        require(self.fixed or not self.base, f"PortPlan.base must be 0 with free ports, got {self.base}")

    def port(self, port: int | None, offset: int | None) -> int:
        """The port to bind for a node's port `port` (0 = a free one)."""
        if not self.fixed or port is None:
            return 0
        if not self.base:
            return port
        require(offset is not None, f"a port base needs an offset for the port {port}")
        return self.base + offset  # type: ignore[operator]


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """One process of the local fleet: an instance of a node of the program.

    Attributes:
      name: unique in the fleet ("agent-0"); the key of its addresses (`LocalFleet.grpc_addresses`).
      module: Python module run as `python -m module`.
      args: the command line; `Address` handles (and `Join`s of them) are filled in with the
        addresses the named services actually bound, when this one starts.
      kind: "grpc" (serves gRPC: the launcher waits for its health check), "http" (serves
        HTTP on --port, e.g. the monitor) or "worker" (no server; only its metrics endpoint).
      health_service: the gRPC service whose health means "ready for traffic" ("" = the server).
      fixed_ports: (what, port) of every fixed port it binds ("gRPC", 50001), checked before
        the fleet starts; empty when it picks free ones.
      node: the name of the node it is an instance of.
    """

    name: str
    module: str
    args: tuple[Arg, ...]
    kind: str = GRPC
    health_service: str = ""
    fixed_ports: tuple[tuple[str, int], ...] = ()
    node: str = ""


def instance_names(node: Node) -> list[str]:
    """The local names of `node`'s instances: `agent-0`, `agent-1`, ... for a scalable node (so
    that one of them is always `-0`, whatever the count), else the node's name; none for a node
    whose profile is off (`Node.profile`)."""
    if node.profile is not None:
        return []
    return [f"{node.name}-{i}" for i in range(node.replicas)] if node.scalable else [node.name]


def plan(program: Program, run_dir: Path, ports: PortPlan = PortPlan(),
         extra_args: Sequence[tuple[str, Sequence[str]]] = ()) -> list[ServiceSpec]:
    """The processes that run `program` on this machine, in start order: every instance of
    every node that has a module (container-only nodes do not run locally).

    Settings take their values, a `Dir` is `<run_dir>/<volume>/<subpath>`, the first instance
    of a node gets the ports of `ports` (later ones pick free ports), and `extra_args` (per
    instance name) are appended to the command lines. Addresses stay handles until `start`.
    """
    run = Path(run_dir)
    extra = {name: tuple(args) for name, args in extra_args}
    nodes = {node.name: node for node in program.nodes}

    def lookup(handle: Handle) -> str | None:
        if isinstance(handle, Setting):
            return handle.value
        if isinstance(handle, Dir):
            return str(run / handle.volume / handle.subpath) if handle.subpath else str(run / handle.volume)
        if isinstance(handle, InstanceName):
            return handle.instance or handle.node
        return None  # an Address: known once its node has started

    specs = []
    for node in program.nodes:
        if node.module is None:
            continue
        args = [resolve(a, lookup) for a in expand_each(node.args, lambda n: instance_names(nodes[n]))]
        for index, name in enumerate(instance_names(node)):
            # Fixed ports are for one instance of each node: the others pick free ones.
            main = ports.port(node.ports.main, node.ports.main_offset) if index == 0 else 0
            metrics = ports.port(node.ports.metrics, node.ports.metrics_offset) if index == 0 else 0
            port_args = {GRPC: ["--port", str(main), "--metrics-port", str(metrics)],
                         HTTP: ["--port", str(main)],  # the dashboard serves its own /metrics there
                         WORKER: ["--metrics-port", str(metrics)]}[node.kind]
            fixed = [(what, port) for what, port in (("HTTP" if node.kind == HTTP else "gRPC", main),
                                                     ("metrics", metrics)) if port]
            specs.append(ServiceSpec(name, node.module, (*args, *port_args, *extra.get(name, ())), node.kind,
                                     node.health.service, tuple(fixed), node.name))
    return specs


def planned_ports(specs: Sequence[ServiceSpec]) -> list[tuple[str, int]]:
    """(what, port) for every fixed port of `specs`, in start order ("replay gRPC", 50001)."""
    return [(f"{spec.name} {what}", port) for spec in specs for what, port in spec.fixed_ports]


class LocalFleet:
    """Starts `specs` in order; `stop()` stops them in reverse order (SIGTERM, then SIGKILL).

    Each child's log goes to `<log_dir>/<name>.log`.
    """

    def __init__(self, specs: list[ServiceSpec], log_dir: Path, log: EventLogger,
                 ready_timeout_s: float = 300.0) -> None:
        self.specs = specs
        self.log_dir = Path(log_dir)
        self.log = log
        self.ready_timeout_s = ready_timeout_s
        self.processes: dict[str, ServiceProcess] = {}
        self.grpc_addresses: dict[str, str] = {}
        self.metrics_addresses: dict[str, str] = {}
        self.http_addresses: dict[str, str] = {}

    def command(self, spec: ServiceSpec) -> list[str]:
        """The arguments of `spec` with the addresses of the services started so far."""
        return [self._resolve(arg) for arg in spec.args]

    def _resolve(self, arg: Arg) -> str:
        def address(handle: Handle) -> str | None:
            if not isinstance(handle, Address):
                return None
            name = handle.instance or handle.node
            addresses = {"grpc": self.grpc_addresses, "http": self.http_addresses,
                         "metrics": self.metrics_addresses}[handle.endpoint]
            if name not in addresses:
                raise ValueError(f"an argument names the {handle.endpoint} address of {name}, which has "
                                 f"no such address among the services started before it")
            return addresses[name]

        resolved = resolve(arg, address)
        if not isinstance(resolved, str):
            raise ValueError(f"argument {arg!r} has handles the local launcher cannot resolve")
        return resolved

    def start(self, on_started: Callable[[ServiceSpec], None] | None = None) -> None:
        """Starts every service, waiting for each to be ready (and SERVING, for gRPC ones)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            args = self.command(spec)
            process = ServiceProcess(spec.module, args, log_path=self.log_dir / f"{spec.name}.log")
            self.processes[spec.name] = process
            self.log.info("starting", name=spec.name, command=" ".join(["python", "-m", spec.module, *args]))
            process.start()
            ready = process.wait_ready(self.ready_timeout_s)
            if ready.get("metrics_port"):
                self.metrics_addresses[spec.name] = f"127.0.0.1:{ready['metrics_port']}"
            if spec.kind == HTTP:
                self.http_addresses[spec.name] = f"127.0.0.1:{ready['http_port']}"
                self.metrics_addresses[spec.name] = self.http_addresses[spec.name]
            if spec.kind == GRPC:
                self.grpc_addresses[spec.name] = f"127.0.0.1:{ready['grpc_port']}"
                wait_until_serving(self.grpc_addresses[spec.name], spec.health_service,
                                   timeout_s=self.ready_timeout_s)
            self.log.info("started", name=spec.name, pid=process.pid,
                          grpc=self.grpc_addresses.get(spec.name), http=self.http_addresses.get(spec.name),
                          metrics=self.metrics_addresses.get(spec.name))
            if on_started:
                on_started(spec)

    def exited(self) -> dict[str, int]:
        """Services that have exited, with their exit codes."""
        return {name: code for name, p in self.processes.items() if (code := p.poll()) is not None}

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            code = self.processes[name].stop()
            self.log.info("stopped_service", name=name, exit_code=code)

    def scrape(self, name: str, timeout_s: float = 2.0) -> dict[str, float]:
        """The metrics of service `name` as {sample name{labels}: value} (empty if unreachable)."""
        address = self.metrics_addresses.get(name)
        if not address:
            return {}
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError:
            return {}
        return flat_metrics(text)


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> bool:
    """Polls `predicate` until true or `timeout_s` passes; returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
