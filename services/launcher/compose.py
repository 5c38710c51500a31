"""The compose renderer: `docker-compose.yml` and `docker-compose.gpu.yml`, generated from the
fleet's program (services/launcher/topology.py).

    python -m services.launcher.compose            # docker-compose.yml on stdout
    python -m services.launcher.compose --gpu      # docker-compose.gpu.yml on stdout
    python -m services.launcher.compose --write    # both files, at the repository root
    python -m services.launcher.compose --check    # exit 1 when a committed file differs

How a node becomes a service: a node with a module runs MuFleet's image (`ComposeConfig`: one
image for every Python service, merged from the `x-mufleet` anchor) with the command
`<module> <args> <container_args> --host 0.0.0.0 <its ports>`; a node with a `Container` runs
that image and command. Handles resolve to what the compose network offers: an address is
`<service>:<port>` (plus the metrics path where it is not /metrics), a `Dir` is its volume's
mount point (the service mounts the volume), a `Setting` is `${VARIABLE:-value}`. A node waits
(`depends_on`) for the nodes it addresses, healthy or started as its `waits_for` says, and
for its `after` nodes to start; no one waits for a scalable node, whose replica count is chosen
at `up` time (`--scale agent=0` included). The GPU override gives every `gpu` node a GPU:
Python nodes the image built with GPU=1, containers their `gpu_image`.

The YAML is written as text (not dumped by a YAML library) so that the files keep their
anchors, their flow-style commands and their comments: node docs become per-service comments.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Iterable, Union

from games.validation import require
from services.launcher.program import GRPC, HTTP, STARTED, WORKER, Address, Arg, Dir, Handle, InstanceName, \
    Mount, Node, Program, Setting, expand_each, resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDTH = 100  # columns of the rendered files, where lines can be wrapped


@dataclasses.dataclass(frozen=True)
class ComposeConfig:
    """What exists only in compose: how the renderer turns a program into files.

    Attributes:
      header: the comment at the top of docker-compose.yml, one line per line ("" = "#").
      gpu_header: the comment at the top of docker-compose.gpu.yml.
      image: the image of every Python node.
      build_context: the build context of that image.
      dockerfile: its Dockerfile, relative to the context.
      environment: variables of every Python node's container.
      restart: the restart policy of every service.
      stop_grace_period_s: how long a Python service gets to stop after SIGTERM.
      bind_host: the `--host` of Python services: every interface of the compose network,
        which publishes none of their ports to the host.
      publish_host: the host address published ports bind (a setting: open on purpose).
      health_interval_s: seconds between health checks.
      health_timeout_s: seconds one health check may take.
      health_retries: failed checks in a row that make a service unhealthy.
      python: the Python that runs a Python node's health check in its container.
      gpu_image: the image of Python nodes on a GPU.
      gpu_build_args: the build arguments of that image.
      gpu_environment: variables added to GPU nodes' Python containers.
      prometheus_header: the comment at the top of docker/prometheus.yml.
      scrape_interval_s: how often Prometheus scrapes every node, seconds.
      scrape_timeout_s: how long one scrape may take, seconds (below the interval).
      dns_refresh_s: how often the addresses of a scalable node's replicas are looked up again.
      prometheus_node: the program's node that is Prometheus (its job scrapes localhost).
    """

    header: tuple[str, ...]
    gpu_header: tuple[str, ...]
    image: str = "mufleet:latest"
    build_context: str = "."
    dockerfile: str = "docker/Dockerfile"
    environment: tuple[tuple[str, str], ...] = (("TF_CPP_MIN_LOG_LEVEL", "2"),)
    restart: str = "unless-stopped"
    stop_grace_period_s: int = 30
    bind_host: str = "0.0.0.0"
    publish_host: Setting = Setting("PUBLISH_HOST", "127.0.0.1")
    health_interval_s: int = 10
    health_timeout_s: int = 5
    health_retries: int = 5
    python: str = "python"
    gpu_image: str = "mufleet:gpu"
    gpu_build_args: tuple[tuple[str, str], ...] = (("GPU", "1"),)
    gpu_environment: tuple[tuple[str, str], ...] = (("TF_FORCE_GPU_ALLOW_GROWTH", "true"),)
    prometheus_header: tuple[str, ...] = ()
    scrape_interval_s: int = 5
    scrape_timeout_s: int = 4
    dns_refresh_s: int = 10
    prometheus_node: str = "prometheus"

    def __post_init__(self) -> None:
        require(0 < self.scrape_timeout_s <= self.scrape_interval_s,
                f"ComposeConfig.scrape_timeout_s must be in (0, scrape_interval_s="
                f"{self.scrape_interval_s}], got {self.scrape_timeout_s}")
        for field in ("stop_grace_period_s", "health_interval_s", "health_timeout_s", "health_retries"):
            require(getattr(self, field) >= 1, f"ComposeConfig.{field} must be >= 1, got {getattr(self, field)}")


_GENERATED = (
    "GENERATED from the fleet's program (services/launcher/topology.py) by",
    "`python -m services.launcher.compose --write`: edit the program, not this file",
    "(tests/deploy/test_compose_rendering.py fails when the two differ).",
    "",
)
MUFLEET = ComposeConfig(
    header=(*_GENERATED,
            "MuFleet in containers: one service per MuFleet service, TensorFlow Serving as the network,",
            "Prometheus scraping everything. See docs/docker.md.",
            "",
            "  docker-compose up --build                       # cartpole, one agent",
            "  GAME=tictactoe docker-compose up --scale agent=4",
            "  docker-compose -f docker-compose.yml -f docker-compose.gpu.yml up   # trainer and serving on a GPU",
            "",
            "Dashboard: http://localhost:5000   Prometheus: http://localhost:9090",
            "Both are published on 127.0.0.1 only: neither asks who is calling. PUBLISH_HOST=0.0.0.0 (or one",
            "address of this host) opens them to the network on purpose; see docs/docker.md.",
            "Inside the compose network every service is reached by its name; the game is ${GAME:-cartpole}."),
    gpu_header=(*_GENERATED,
                "GPU variant: the trainer trains on an NVIDIA GPU and TensorFlow Serving runs its GPU build.",
                "Needs the NVIDIA driver and the NVIDIA Container Toolkit on the host. See docs/docker.md.",
                "",
                "  docker-compose -f docker-compose.yml -f docker-compose.gpu.yml up --build",
                "",
                "The trainer gets the image built with TensorFlow's CUDA libraries (build arg GPU=1); the other",
                "Python services keep the CPU image."),
    prometheus_header=(*_GENERATED,
                       "Prometheus scrape configuration of the compose fleet (docker-compose.yml mounts it):",
                       "one job per node of the program, at the node's metrics endpoint in its container",
                       "(TensorFlow Serving serves its metrics on the REST port at models/monitoring.config's",
                       "path). A scalable node (agents: `--scale agent=N`) is found by DNS: Docker's DNS",
                       "answers its name with one address per replica."),
)


# -- a small YAML writer: block mappings, flow lists of scalars, block lists, comments ---------

@dataclasses.dataclass(frozen=True)
class _Comment:
    text: str


@dataclasses.dataclass(frozen=True)
class _Merge:
    anchor: str


@dataclasses.dataclass(frozen=True)
class _Anchored:
    anchor: str
    value: "_Map"


@dataclasses.dataclass(frozen=True)
class _Flow:
    items: tuple[Union[str, int], ...]


_BLANK = _Comment("\0")  # an empty line
_Entry = Union[tuple[str, object], _Comment, _Merge]
_Map = list  # of _Entry

_PLAIN = re.compile(r"^(?:[A-Za-z_./][\w./:-]*|\d+s)$")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", ".inf", ".nan"}


def _scalar(value: object, flow: bool = False) -> str:
    """`value` as a YAML scalar: plain where YAML reads it back as the same string, else quoted
    (a JSON string is a valid YAML double-quoted one). In flow lists strings are always quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not flow and _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not text.endswith(":"):
        return text
    return json.dumps(text)


def _flow(prefix: str, items: Iterable[object]) -> list[str]:
    """`prefix[a, b, ...]`, wrapped at WIDTH with continuation lines under the first item; a
    flag and its value stay on one line ("--port", "50000")."""
    words = [_scalar(i, flow=True) for i in items]
    if not words:
        return [prefix + "[]"]
    chunks: list[str] = []
    for n, word in enumerate(words):
        word += "]" if n == len(words) - 1 else ","
        if chunks and chunks[-1].startswith('"--') and "=" not in chunks[-1] and " " not in chunks[-1] \
                and not word.startswith('"--'):
            chunks[-1] += " " + word  # the value of the flag before it
        else:
            chunks.append(word)
    head = prefix + "["
    lines, line = [], head
    for chunk in chunks:
        if line == head:
            line += chunk
        elif len(line) + 1 + len(chunk) > WIDTH:
            lines.append(line)
            line = " " * len(head) + chunk
        else:
            line += " " + chunk
    return lines + [line]


def _emit(entries: _Map, indent: int = 0) -> list[str]:
    """The lines of a block mapping. A mapping is a list of entries ((key, value), a comment, a
    merge `<<: *anchor`); a value is a mapping, a tuple (a block list, whose items may be
    mappings), a `_Flow` (an inline list), an `_Anchored` mapping, or a scalar (None: empty)."""
    pad = " " * indent
    out: list[str] = []
    for entry in entries:
        if entry is _BLANK:
            out.append("")
        elif isinstance(entry, _Comment):
            for paragraph in entry.text.split("\n"):
                out += [f"{pad}# {line}" for line in textwrap.wrap(paragraph, WIDTH - indent - 2)] or [f"{pad}#"]
        elif isinstance(entry, _Merge):
            out.append(f"{pad}<<: *{entry.anchor}")
        else:
            key, value = entry
            if isinstance(value, _Anchored):
                out.append(f"{pad}{key}: &{value.anchor}")
                out += _emit(value.value, indent + 2)
            elif isinstance(value, _Flow):
                out += _flow(f"{pad}{key}: ", value.items)
            elif isinstance(value, list) and not value:
                out.append(f"{pad}{key}: {{}}")
            elif isinstance(value, list) and value and all(isinstance(e, (tuple, _Comment, _Merge))
                                                           for e in value):
                out.append(f"{pad}{key}:")
                out += _emit(value, indent + 2)
            elif isinstance(value, tuple):  # a block list
                out.append(f"{pad}{key}:")
                for item in value:
                    if isinstance(item, list):  # a mapping as a list item: "- first: ..." then the rest
                        body = _emit(item, indent + 4)
                        out.append(f"{pad}  - {body[0].lstrip()}")
                        out += body[1:]
                    else:
                        out.append(f"{pad}  - {_scalar(item)}")
            else:
                out.append(f"{pad}{key}:" + (f" {_scalar(value)}" if value is not None else ""))
    return out


def _header(lines: tuple[str, ...]) -> list[str]:
    return [f"# {line}" if line else "#" for line in lines]


# -- the renderer -------------------------------------------------------------------------------

class ComposeRenderer:
    """Renders one program with one `ComposeConfig`."""

    def __init__(self, program: Program, config: ComposeConfig = MUFLEET) -> None:
        self.program = program
        self.config = config
        self.nodes = {node.name: node for node in program.nodes}
        self.volumes = {volume.name: volume for volume in program.volumes}

    # handles -> what the compose network offers
    def _lookup(self, handle: Handle) -> str:
        if isinstance(handle, Setting):
            return f"${{{handle.variable}:-{_escape(handle.value)}}}"
        if isinstance(handle, Dir):
            mount = self.volumes[handle.volume].mount
            return f"{mount}/{handle.subpath}" if handle.subpath else mount
        if isinstance(handle, InstanceName):
            return handle.node  # one service name answers for every replica
        assert isinstance(handle, Address)
        node = self.nodes[handle.node]
        main, metrics, path = self._ports(node)
        if handle.endpoint == "metrics":
            return f"{node.name}:{metrics or main}" + ("" if path == "/metrics" else path)
        return f"{node.name}:{main}"

    def _ports(self, node: Node) -> tuple[int, int | None, str]:
        """(main, metrics, metrics path) of `node` in its container."""
        if node.container:
            return node.container.port, node.container.metrics_port, node.container.metrics_path
        return node.ports.main or 0, node.ports.metrics, "/metrics"

    def _text(self, arg: Arg) -> str:
        resolved = resolve(arg, self._lookup, _escape)
        assert isinstance(resolved, str)
        return resolved

    def _args(self, args: Iterable[Arg]) -> list[str]:
        # A node whose profile is off may not run: nothing waits for it, and only an Each's
        # `if_off` names it (the monitor's optional targets; Prometheus scrapes it too, and
        # finds nothing while it is off).
        return [self._text(a) for a in expand_each(
            list(args), lambda name: [] if self.nodes[name].profile else [name],
            lambda name: [name] if self.nodes[name].profile else [])]

    # one service
    def _command(self, node: Node) -> list[str]:
        main, metrics = node.ports.main, node.ports.metrics
        ports = {GRPC: ["--port", str(main), "--metrics-port", str(metrics)], HTTP: ["--port", str(main)],
                 WORKER: ["--metrics-port", str(metrics)]}[node.kind]
        assert node.module is not None
        args = self._args((*node.args, *node.container_args))
        return [node.module, *args, "--host", self.config.bind_host, *ports]

    def _healthcheck(self, node: Node) -> _Map:
        if node.container:
            test = list(node.container.healthcheck)
        else:
            check = [self.config.python, "-m", "services.common.healthcheck"]
            if node.kind == GRPC:
                check += [f"127.0.0.1:{node.ports.main}"] + (["--service", node.health.service]
                                                             if node.health.service else [])
            elif node.kind == WORKER:
                check += ["--http", f"http://127.0.0.1:{node.ports.metrics}/metrics"]
            else:
                check += ["--http", f"http://127.0.0.1:{node.ports.main}{node.health.path}"]
            test = ["CMD", *check]
        return [_Merge("health"), ("test", _Flow(tuple(test))), ("start_period", f"{node.health.start_period_s}s")]

    def _volumes(self, node: Node) -> list[str]:
        if node.container:
            return [self._mount(m) for m in node.container.volumes]
        used = dict.fromkeys(h.volume for h in node.handles() if isinstance(h, Dir))
        return [f"{name}:{self.volumes[name].mount}" for name in used]

    def _mount(self, mount: Mount) -> str:
        if isinstance(mount.source, Dir):
            source, target = mount.source.volume, mount.target or self.volumes[mount.source.volume].mount
        else:
            source, target = mount.source, mount.target
        return f"{source}:{target}" + (":ro" if mount.read_only else "")

    def _depends_on(self, node: Node) -> _Map:
        conditions: dict[str, str] = {}
        for peer in node.peers():
            conditions[peer] = node.waits_for
        for handle in node.after:
            conditions.setdefault(handle.name, STARTED)
        order = list(self.nodes)
        # Neither a scalable node (its instances vary) nor one whose profile is off (it may not
        # run: compose refuses a dependency on a service of a profile not started) is waited for.
        return [(name, [("condition", f"service_{conditions[name]}")])
                for name in sorted(conditions, key=order.index)
                if not self.nodes[name].scalable and not self.nodes[name].profile]

    def service(self, node: Node) -> _Map:
        """The compose service of `node`."""
        docs = (node.doc, node.container.doc if node.container else "")
        entries: _Map = [_Comment(text) for text in docs if text]
        if node.container:
            entries += [("image", self._text(node.container.image)), ("restart", self.config.restart)]
            if node.container.entrypoint:
                entries.append(("entrypoint", _Flow(node.container.entrypoint)))
            entries.append(("command", _Flow(tuple(self._args(node.container.command)))))
        else:
            entries += [_Merge("mufleet"), ("command", _Flow(tuple(self._command(node))))]
        volumes = self._volumes(node)
        if volumes:
            entries.append(("volumes", tuple(volumes)))
        if node.publish:
            main, _, _ = self._ports(node)
            host, port = self._lookup(self.config.publish_host), self._lookup(node.publish)
            entries.append(("ports", (f"{host}:{port}:{main}",)))
        depends = self._depends_on(node)
        if depends:
            entries.append(("depends_on", depends))
        if node.profile:
            entries.append(("profiles", _Flow((node.profile,))))
        if node.replicas > 1:
            entries.append(("deploy", [("replicas", node.replicas)]))
        entries.append(("healthcheck", self._healthcheck(node)))
        return entries

    # the files
    def compose(self) -> str:
        """docker-compose.yml."""
        c = self.config
        base: _Map = [("build", [("context", c.build_context), ("dockerfile", c.dockerfile)]),
                      ("image", c.image), ("restart", c.restart),
                      ("stop_grace_period", f"{c.stop_grace_period_s}s"), ("environment", list(c.environment))]
        health: _Map = [("interval", f"{c.health_interval_s}s"), ("timeout", f"{c.health_timeout_s}s"),
                        ("retries", c.health_retries)]
        services: _Map = []
        for node in self.program.nodes:
            services += ([_BLANK] if services else []) + [(node.name, self.service(node))]
        document: _Map = [("x-mufleet", _Anchored("mufleet", base)), _BLANK,
                          ("x-health", _Anchored("health", health)), _BLANK,
                          ("services", services), _BLANK,
                          ("volumes", [(v.name, None) for v in self.program.volumes])]
        return "\n".join([*_header(c.header), "", *_emit(document)]) + "\n"

    def gpu_override(self) -> str:
        """docker-compose.gpu.yml: every `gpu` node with a GPU."""
        c = self.config
        gpu = ("deploy", [("resources", [("reservations", [("devices", (
            [("driver", "nvidia"), ("count", 1), ("capabilities", _Flow(("gpu",)))],))])])])
        services: _Map = []
        for node in self.program.nodes:
            if not node.gpu:
                continue
            if node.container:
                entries: _Map = [("image", self._text(node.container.gpu_image or node.container.image)), gpu]
            else:
                entries = [("build", [("context", c.build_context), ("dockerfile", c.dockerfile),
                                      ("args", list(c.gpu_build_args))]),
                           ("image", c.gpu_image), ("environment", list(c.gpu_environment)), gpu]
            services += ([_BLANK] if services else []) + [(node.name, entries)]
        require(bool(services), "no node of the program has gpu=True: there is no GPU override to render")
        return "\n".join([*_header(c.gpu_header), "", *_emit([("services", services)])]) + "\n"


    def prometheus(self) -> str:
        """docker/prometheus.yml: one scrape job per node, Prometheus itself last."""
        c = self.config
        jobs: _Map = []
        scraper = None
        for node in self.program.nodes:
            if node.name == c.prometheus_node:
                scraper = node  # it scrapes itself, on localhost
                continue
            main, metrics, path = self._ports(node)
            port = metrics or main
            job: _Map = [("job_name", node.name)]
            if path != "/metrics":
                job.append(("metrics_path", path))
            if node.scalable:
                job.append(("dns_sd_configs", ([("names", _Flow((node.name,))), ("type", "A"),
                                                 ("port", port), ("refresh_interval", f"{c.dns_refresh_s}s")],)))
            else:
                job.append(("static_configs", ([("targets", _Flow((f"{node.name}:{port}",)))],)))
            jobs.append(job)
        if scraper is not None:
            jobs.append([("job_name", scraper.name),
                         ("static_configs", ([("targets", _Flow((f"localhost:{self._ports(scraper)[0]}",)))],))])
        document: _Map = [("global", [("scrape_interval", f"{c.scrape_interval_s}s"),
                                      ("scrape_timeout", f"{c.scrape_timeout_s}s"),
                                      ("evaluation_interval", "15s"),
                                      ("external_labels", [("fleet", self.program.name)])]),
                          _BLANK, ("scrape_configs", tuple(jobs))]
        return "\n".join([*_header(c.prometheus_header), "", *_emit(document)]) + "\n"


def _escape(text: str) -> str:
    """Literal text in compose: `$` would start a variable."""
    return text.replace("$", "$$")


def rendered_files(program: Program | None = None, config: ComposeConfig = MUFLEET) -> dict[Path, str]:
    """{path at the repository root: its rendering} for both compose files of `program` (by
    default the fleet with the launcher's defaults: cartpole, one agent, the dashboard)."""
    if program is None:
        from services.launcher.topology import FleetConfig, build_program

        program = build_program(FleetConfig(game="cartpole", run_dir=Path("runs") / "cartpole"))
    renderer = ComposeRenderer(program, config)
    return {REPO_ROOT / "docker-compose.yml": renderer.compose(),
            REPO_ROOT / "docker-compose.gpu.yml": renderer.gpu_override(),
            REPO_ROOT / "docker" / "prometheus.yml": renderer.prometheus()}


def stale_files(files: dict[Path, str]) -> dict[Path, str]:
    """{path: unified diff} of every file whose committed text differs from its rendering."""
    stale = {}
    for path, text in files.items():
        committed = path.read_text() if path.exists() else ""
        if committed != text:
            stale[path] = "".join(difflib.unified_diff(committed.splitlines(True), text.splitlines(True),
                                                       f"{path.name} (committed)", f"{path.name} (rendered)"))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.launcher.compose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--gpu", action="store_true", help="print the GPU override instead of docker-compose.yml")
    what.add_argument("--prometheus", action="store_true",
                      help="print docker/prometheus.yml instead of docker-compose.yml")
    what.add_argument("--write", action="store_true",
                      help="write docker-compose.yml, docker-compose.gpu.yml and docker/prometheus.yml")
    what.add_argument("--check", action="store_true",
                      help="exit 1, showing the difference, when a committed file is not the rendering")
    args = parser.parse_args(argv)
    files = rendered_files()
    base, gpu, prometheus = files
    if args.write:
        for path, text in files.items():
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    elif args.check:
        stale = stale_files(files)
        for path, diff in stale.items():
            print(diff, end="")
        if stale:
            print(f"{', '.join(p.name for p in stale)} differ from the program's rendering: "
                  f"python -m services.launcher.compose --write", file=sys.stderr)
        return 1 if stale else 0
    else:
        sys.stdout.write(files[gpu if args.gpu else prometheus if args.prometheus else base])
    return 0


if __name__ == "__main__":
    sys.exit(main())
