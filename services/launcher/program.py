"""The fleet as a program: nodes added to a `Program`, referring to one another through handles.

In the spirit of launchpad's `Program`: the program says WHAT runs (every node's command line,
ports, health, dependencies, replicas, storage) and nothing about HOW; launchers render it.

    program = Program("mufleet")
    models = program.volume("models", mount="/models")
    game = program.setting("GAME", "cartpole")
    replay = program.add_node(Node("replay", "services.replay", args=("--game", game), ...))
    program.add_node(Node("agent", "services.agent", kind=WORKER,
                          args=("--game", game, "--replay", replay.grpc_address), ...))

A node never names another's address as text. `replay.grpc_address` is an `Address` handle,
and it becomes `127.0.0.1:50001` (or whatever free port replay bound) only when the local
launcher starts the agent, and `replay:50001` only when the compose renderer writes the file.
Other handles work the same way: a `Dir` on a volume (a folder of the run directory locally, a
named volume in a container), a `Setting` (a value chosen at deployment: the local launcher's
flag, compose's `${GAME:-cartpole}`), an `InstanceName`, text made of parts (`Join`) and
arguments repeated for every instance of a replicated node (`Each`).

Launchers (each apart from the program, as in launchpad):

* `services.launcher.local`: every node's instances as child processes on loopback, in the
  order the nodes were added (a node can only refer to nodes added before it, so that order
  starts every node after the ones it needs).
* `services.launcher.compose`: `docker-compose.yml` and its GPU override, generated.
* `services.launcher.inprocess`: every node as a library in this process (tests): it calls
  `start(argv)` of `Node.module`'s `__main__`, which parses `Node.args` with the module's own
  flag parser and calls its `serve(config)`, and resolves handles from the ports the returned
  services bound, exactly as the local launcher does from the `ready` events of its processes.

Attributes that only one launcher reads say so: `Node.container` and `Node.container_args`
(compose), `Health.start_period_s` and `Node.publish` (compose), `Ports`' base offsets (local).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator, Sequence, Union

from games.validation import require

# Node kinds: what a node serves, which decides its ports and how its readiness is checked.
GRPC = "grpc"      # gRPC on its main port (standard health checking) plus a metrics endpoint
HTTP = "http"      # HTTP on its main port, which also serves its /metrics (the dashboard)
WORKER = "worker"  # no server: only a metrics endpoint
KINDS = (GRPC, HTTP, WORKER)

# What a node waits for from the peers it addresses before it starts (compose's conditions).
HEALTHY = "healthy"
STARTED = "started"
CONDITIONS = (HEALTHY, STARTED)

# Endpoints an `Address` can name.
ENDPOINTS = ("grpc", "http", "metrics")

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")  # a DNS label: compose service names, k8s names
_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Address:
    """Handle: the `host:port` where an endpoint of another node is reached.

    Attributes:
      node: the node's name.
      endpoint: "grpc", "http" or "metrics" (for HTTP nodes, the metrics are on the HTTP port).
      instance: the instance of a replicated node this refers to; "" = the node's only instance.
        Set by `expand_each` inside an `Each`, never by hand.
    """

    node: str
    endpoint: str
    instance: str = ""

    def __post_init__(self) -> None:
        require(self.endpoint in ENDPOINTS,
                f"Address.endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")


@dataclasses.dataclass(frozen=True)
class InstanceName:
    """Handle: the name of an instance of a node ("agent-0" locally, the service "agent" in
    compose, where one name answers for every replica).

    Attributes:
      node: the node's name.
      instance: as in `Address`.
    """

    node: str
    instance: str = ""


@dataclasses.dataclass(frozen=True)
class Setting:
    """Handle: a value chosen where the fleet is deployed. The local launcher passes `value`
    (from its own flags); compose writes `${variable:-value}`, so `GAME=tictactoe docker-compose
    up` changes it.

    Attributes:
      variable: the environment variable of the deployment (upper case).
      value: the value of this program (the deployment's default).
    """

    variable: str
    value: str

    def __post_init__(self) -> None:
        require(bool(_VARIABLE.match(self.variable)),
                f"Setting.variable must be an upper-case variable name, got {self.variable!r}")


@dataclasses.dataclass(frozen=True)
class Dir:
    """Handle: a folder on one of the program's volumes (`Program.volume`). Locally it is
    `<run dir>/<volume>/<subpath>`; in a container the volume is mounted at its mount point.

    Attributes:
      volume: the volume's name.
      subpath: the folder inside the volume ("" = its root).
    """

    volume: str
    subpath: str = ""

    def __truediv__(self, part: str) -> "Dir":
        return Dir(self.volume, f"{self.subpath}/{part}" if self.subpath else part)


@dataclasses.dataclass(frozen=True)
class Join:
    """One argument made of text and handles, concatenated once they are resolved
    (`join(name, "=", address)` -> "replay=127.0.0.1:9101").

    Attributes:
      parts: text and handles, in order.
    """

    parts: tuple["Arg", ...]


@dataclasses.dataclass(frozen=True)
class Each:
    """Arguments repeated once for every instance of a node, in which that node's handles name
    the instance. Locally a node with 3 replicas gives 3 copies (agent-0, agent-1, agent-2); in
    compose one copy names the service, which resolves to every replica.

    Attributes:
      node: the node whose instances are enumerated.
      args: the arguments of one instance.
      if_off: the arguments of one instance of a node whose profile is off (`Node.profile`):
        compose and Kubernetes still define it, and a user may start it later (`--profile`, a
        scaled Deployment), so it is named as an optional peer; the local launcher runs no such
        node and gives nothing. Default: nothing either.
    """

    node: str
    args: tuple["Arg", ...]
    if_off: tuple["Arg", ...] = ()


Handle = Union[Address, InstanceName, Setting, Dir]
Arg = Union[str, Address, InstanceName, Setting, Dir, Join, Each]


def join(*parts: "Arg") -> Join:
    """One argument from text and handles: `join(node.instance_name, "=", node.metrics_address)`."""
    return Join(tuple(parts))


@dataclasses.dataclass(frozen=True)
class Ports:
    """The ports of a node, as its launchers number them.

    Attributes:
      main: the gRPC (GRPC nodes) or HTTP (HTTP nodes) port; None for workers. It is the port in
        a container and the local fleet's fixed default (the README's ports).
      metrics: the metrics HTTP port; None for HTTP nodes (their metrics are on `main`).
      main_offset: with a local port base P (`--port-base P`) the main port is P + this.
      metrics_offset: likewise for the metrics port.
    """

    main: int | None = None
    metrics: int | None = None
    main_offset: int | None = None
    metrics_offset: int | None = None

    def __post_init__(self) -> None:
        for field in ("main", "metrics"):
            port = getattr(self, field)
            require(port is None or 1 <= port <= 65535, f"Ports.{field} must be in [1, 65535], got {port}")
            offset = getattr(self, f"{field}_offset")
            require(offset is None or offset >= 0, f"Ports.{field}_offset must be >= 0, got {offset}")
            require(offset is None or port is not None,
                    f"Ports.{field}_offset is {offset} but there is no {field} port")


@dataclasses.dataclass(frozen=True)
class Health:
    """How a node shows that it is ready for traffic.

    Attributes:
      service: GRPC nodes: the gRPC health service whose SERVING means ready ("" = the server).
      path: HTTP nodes: the path that answers 200 once ready (workers always answer on their
        metrics endpoint, /metrics).
      start_period_s: how long the node may take to become healthy before failed checks count
        (compose's start_period).
    """

    service: str = ""
    path: str = "/metrics"
    start_period_s: int = 30

    def __post_init__(self) -> None:
        require(self.path.startswith("/"), f"Health.path must start with '/', got {self.path!r}")
        require(self.start_period_s >= 0, f"Health.start_period_s must be >= 0, got {self.start_period_s}")


@dataclasses.dataclass(frozen=True)
class Mount:
    """A container's mount: a program volume or a file of the repository.

    Attributes:
      source: a volume's root (`Dir` with no subpath) or a path relative to the repository
        ("./models/models.config").
      target: where it appears in the container; "" = the volume's mount point.
      read_only: mounted read-only.
    """

    source: Dir | str
    target: str = ""
    read_only: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.source, Dir):
            require(not self.source.subpath,
                    f"Mount.source must be a volume's root, got its folder {self.source.subpath!r}")
        require(isinstance(self.source, Dir) or bool(self.target),
                f"Mount.target must be given for the file {self.source!r}")


@dataclasses.dataclass(frozen=True)
class Container:
    """A node that runs another image than MuFleet's in containers (compose only), e.g. the
    network as the real TensorFlow Serving. Locally the node's `module` runs instead.

    Attributes:
      image: the image (text and `Setting`s, e.g. a version tag).
      command: its command line.
      entrypoint: replaces the image's entry point (empty = the image's).
      port: its main port in the container (gRPC or HTTP, as the node's kind).
      metrics_port: its metrics port (None: on `port`, or none).
      metrics_path: the path of its Prometheus metrics, part of its metrics address when not
        /metrics ("network:8501/monitoring/prometheus/metrics").
      volumes: its mounts.
      healthcheck: the health-check command, run in the container.
      gpu_image: the image on a GPU (the GPU override); empty = the same image.
      doc: what a reader of the rendered file should know (rendered as a comment).
    """

    image: "Arg"
    command: tuple["Arg", ...]
    port: int
    healthcheck: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    metrics_port: int | None = None
    metrics_path: str = "/metrics"
    volumes: tuple[Mount, ...] = ()
    gpu_image: "Arg" = ""
    doc: str = ""

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, f"Container.port must be in [1, 65535], got {self.port}")
        require(bool(self.healthcheck), "Container.healthcheck must be a command, got none")
        require(self.metrics_path.startswith("/"),
                f"Container.metrics_path must start with '/', got {self.metrics_path!r}")


@dataclasses.dataclass(frozen=True)
class NodeHandle:
    """What `Program.add_node` returns: the way other nodes refer to this one.

    Attributes:
      name: the node's name.
      kind: the node's kind (GRPC, HTTP, WORKER).
    """

    name: str
    kind: str

    @property
    def grpc_address(self) -> Address:
        """Its gRPC address (GRPC nodes)."""
        require(self.kind == GRPC, f"{self.name} serves no gRPC (its kind is {self.kind!r})")
        return Address(self.name, "grpc")

    @property
    def http_address(self) -> Address:
        """Its HTTP address (HTTP nodes)."""
        require(self.kind == HTTP, f"{self.name} serves no HTTP (its kind is {self.kind!r})")
        return Address(self.name, "http")

    @property
    def metrics_address(self) -> Address:
        """Where its Prometheus metrics are (every kind has them)."""
        return Address(self.name, "metrics")

    @property
    def instance_name(self) -> InstanceName:
        return InstanceName(self.name)


@dataclasses.dataclass(frozen=True)
class Node:
    """One service of the fleet.

    Attributes:
      name: unique in the program; a DNS label ("replay"). Locally the instances of a scalable
        node are `<name>-<i>`, otherwise the one instance is `<name>`.
      module: the Python module run as `python -m <module> <args>`; None for a node that exists
        only as a container (`container` then says what runs).
      args: its command line, with handles for whatever depends on where it runs; launchers
        append the flags of its ports (`--port`, `--metrics-port`) and of its bind address.
      kind: GRPC, HTTP or WORKER: what it serves.
      ports: its ports (see `Ports`).
      health: how it shows readiness (see `Health`).
      after: nodes it starts after without addressing them (e.g. the network after the
        trainer, which exports the first model version); it does not wait for their health.
      waits_for: HEALTHY: it starts once the nodes it addresses are healthy; STARTED: once they
        have started (a dashboard that shows what is not up yet).
      replicas: how many instances run.
      scalable: any number of instances may run (compose `--scale`): no one waits for it, and
        others refer to it only through `Each`, which names every instance.
      profile: an optional node, off: compose starts it only under `docker compose --profile
        <profile> up`, the local launcher not at all, and an `Each` over it names no instance
        (None: the node runs).
      gpu: it computes on a GPU when one is given (the GPU override gives it one).
      publish: the setting of the host port under which its main port is published to people
        outside the fleet (compose publishes on the renderer's host); None = not published.
      container_args: arguments only in a container (e.g. a folder that must be on a volume
        there, where the default is fine locally).
      container: what runs in containers instead of MuFleet's image (see `Container`).
      doc: what the node is for, and anything a deployment must know (rendered as a comment).
    """

    name: str
    module: str | None
    args: tuple[Arg, ...] = ()
    kind: str = GRPC
    ports: Ports = Ports()
    health: Health = Health()
    after: tuple[NodeHandle, ...] = ()
    waits_for: str = HEALTHY
    replicas: int = 1
    scalable: bool = False
    profile: str | None = None
    gpu: bool = False
    publish: Setting | None = None
    container_args: tuple[Arg, ...] = ()
    container: Container | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        require(bool(_NAME.match(self.name)),
                f"Node.name must be a lower-case DNS label (letters, digits, '-'), got {self.name!r}")
        require(self.kind in KINDS, f"Node.kind of {self.name} must be one of {KINDS}, got {self.kind!r}")
        require(self.waits_for in CONDITIONS,
                f"Node.waits_for of {self.name} must be one of {CONDITIONS}, got {self.waits_for!r}")
        require(self.replicas >= 1, f"Node.replicas of {self.name} must be >= 1, got {self.replicas}")
        require(self.replicas == 1 or self.scalable,
                f"Node.replicas of {self.name} is {self.replicas}, but only a scalable node has replicas")
        require(self.profile is None or bool(_NAME.match(self.profile)),
                f"Node.profile of {self.name} must be a lower-case DNS label, got {self.profile!r}")
        require(self.module is not None or self.container is not None,
                f"Node {self.name} needs a module or a container, got neither")
        if self.module is not None:
            wanted = {GRPC: (True, True), HTTP: (True, False), WORKER: (False, True)}[self.kind]
            given = (self.ports.main is not None, self.ports.metrics is not None)
            require(given == wanted,
                    f"Node.ports of the {self.kind} node {self.name} must have "
                    f"{' and '.join(p for p, w in zip(('a main port', 'a metrics port'), wanted) if w)} "
                    f"and no other, got {self.ports}")

    def handles(self) -> Iterator[Handle]:
        """Every handle in its arguments (its container's included), in order."""
        yield from _handles((*self.args, *self.container_args))
        if self.container:
            yield from _handles((self.container.image, *self.container.command, self.container.gpu_image))
            for mount in self.container.volumes:
                if isinstance(mount.source, Dir):
                    yield mount.source
        if self.publish:
            yield self.publish

    def peers(self) -> list[str]:
        """The nodes it addresses, in the order it first names them."""
        return list(dict.fromkeys(h.node for h in self.handles() if isinstance(h, Address)))


def _handles(args: Sequence[Arg]) -> Iterator[Handle]:
    for arg in args:
        if isinstance(arg, Join):
            yield from _handles(arg.parts)
        elif isinstance(arg, Each):
            yield from _handles(arg.args)
        elif not isinstance(arg, str):
            yield arg


@dataclasses.dataclass(frozen=True)
class Volume:
    """Durable storage of the program: a folder of the run directory locally, a named volume in
    containers.

    Attributes:
      name: its name (the folder's and the named volume's).
      mount: where containers that use it mount it.
    """

    name: str
    mount: str

    def __post_init__(self) -> None:
        require(bool(_NAME.match(self.name)), f"Volume.name must be a lower-case DNS label, got {self.name!r}")
        require(self.mount.startswith("/"), f"Volume.mount must be an absolute path, got {self.mount!r}")


class Program:
    """The fleet: nodes, volumes and settings, added in start order. Launchers read it and
    never change it."""

    def __init__(self, name: str) -> None:
        require(bool(_NAME.match(name)), f"Program name must be a lower-case DNS label, got {name!r}")
        self.name = name
        self._nodes: dict[str, Node] = {}
        self._volumes: dict[str, Volume] = {}
        self._settings: dict[str, Setting] = {}

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, in the order added (a start order)."""
        return tuple(self._nodes.values())

    @property
    def volumes(self) -> tuple[Volume, ...]:
        return tuple(self._volumes.values())

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(self._settings.values())

    def node(self, name: str) -> Node:
        require(name in self._nodes, f"the program has no node {name!r}; it has {list(self._nodes)}")
        return self._nodes[name]

    def volume(self, name: str, mount: str) -> Dir:
        """Declares a volume; returns the handle of its root (`/ "sub"` for a folder in it)."""
        require(name not in self._volumes, f"the program already has a volume {name!r}")
        self._volumes[name] = Volume(name, mount)
        return Dir(name)

    def setting(self, variable: str, value: str) -> Setting:
        """Declares a deployment setting and returns its handle."""
        setting = Setting(variable, value)
        require(self._settings.get(variable, setting) == setting,
                f"the setting {variable} is already {self._settings.get(variable)}, not {value!r}")
        self._settings[variable] = setting
        return setting

    def add_node(self, node: Node) -> NodeHandle:
        """Adds `node` after every node it refers to (which must be in the program already)."""
        require(node.name not in self._nodes, f"the program already has a node {node.name!r}")
        for peer in (*node.peers(), *(h.name for h in node.after)):
            require(peer in self._nodes, f"node {node.name} refers to {peer!r}, which is not among the "
                                         f"nodes added before it ({list(self._nodes)})")
        for handle in node.handles():
            if isinstance(handle, Dir):
                require(handle.volume in self._volumes,
                        f"node {node.name} uses the volume {handle.volume!r}, which the program does not declare")
            if isinstance(handle, Setting):
                self.setting(handle.variable, handle.value)
        _check_each(node.name, (*node.args, *node.container_args), self._nodes, inside=None)
        self._nodes[node.name] = node
        return NodeHandle(node.name, node.kind)


def _check_each(owner: str, args: Sequence[Arg], nodes: dict[str, Node], inside: str | None) -> None:
    """A scalable node is referred to only inside an `Each` over it (its instances vary)."""
    for arg in args:
        if isinstance(arg, Each):
            require(arg.node in nodes, f"node {owner} repeats arguments for {arg.node!r}, which is not "
                                       f"among the nodes added before it")
            _check_each(owner, arg.args, nodes, inside=arg.node)
        elif isinstance(arg, Join):
            _check_each(owner, arg.parts, nodes, inside)
        elif isinstance(arg, (Address, InstanceName)):
            node = nodes.get(arg.node)
            require(node is None or not node.scalable or inside == arg.node,
                    f"node {owner} refers to the scalable node {arg.node} outside an Each over it; "
                    f"its instances vary, so name them with Each({arg.node!r}, ...)")


def expand_each(args: Sequence[Arg], instances: Callable[[str], Sequence[str]],
                off_instances: Callable[[str], Sequence[str]] = lambda node: ()) -> list[Arg]:
    """`args` with every `Each` replaced by one copy of its arguments per instance of its node
    (`instances(node)`), in which that node's handles name the instance, then one copy of its
    `if_off` arguments per instance the node has while its profile is off (`off_instances`)."""
    out: list[Arg] = []
    for arg in args:
        if isinstance(arg, Each):
            for instance in instances(arg.node):
                out += _bind(expand_each(arg.args, instances, off_instances), arg.node, instance)
            for instance in off_instances(arg.node):
                out += _bind(expand_each(arg.if_off, instances, off_instances), arg.node, instance)
        elif isinstance(arg, Join):
            out.append(Join(tuple(expand_each(arg.parts, instances, off_instances))))
        else:
            out.append(arg)
    return out


def _bind(args: Sequence[Arg], node: str, instance: str) -> list[Arg]:
    def bind(arg: Arg) -> Arg:
        if isinstance(arg, (Address, InstanceName)) and arg.node == node:
            return dataclasses.replace(arg, instance=instance)
        if isinstance(arg, Join):
            return Join(tuple(bind(p) for p in arg.parts))
        return arg

    return [bind(a) for a in args]


def resolve(arg: Arg, lookup: Callable[[Handle], str | None],
            text: Callable[[str], str] = lambda s: s) -> Arg:
    """`arg` with every handle that `lookup` resolves replaced by its text (literal text goes
    through `text`, e.g. to escape it). A string when everything resolved; handles `lookup`
    leaves (None) stay, to be resolved later (the local launcher learns addresses only once
    the named node has started)."""
    if isinstance(arg, str):
        return text(arg)
    if isinstance(arg, Each):
        raise ValueError(f"expand Each({arg.node!r}, ...) before resolving it")
    if isinstance(arg, Join):
        parts: list[Arg] = []
        for part in (resolve(p, lookup, text) for p in arg.parts):
            if isinstance(part, str) and parts and isinstance(parts[-1], str):
                parts[-1] += part
            else:
                parts.append(part)
        return parts[0] if len(parts) == 1 and isinstance(parts[0], str) else Join(tuple(parts))
    resolved = lookup(arg)
    return arg if resolved is None else resolved
