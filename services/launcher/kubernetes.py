"""The Kubernetes renderer: a kustomize base and overlays under `kubernetes/`, generated from the
fleet's program (services/launcher/topology.py), as compose.py renders docker-compose.yml.

    python -m services.launcher.kubernetes            # list the files it renders
    python -m services.launcher.kubernetes --write    # write them under kubernetes/
    python -m services.launcher.kubernetes --check    # exit 1 with a diff when a committed file differs

How a node becomes objects (kubernetes/base/<node>.yaml):

* a workload: a StatefulSet for a node with a module that owns a volume (one no other node uses:
  the replay's SQLite store, the trainer's checkpoints), with a PersistentVolumeClaim template
  per owned volume; a Deployment for every other node (scalable ones included: agents,
  reanalysers, and any node added later, e.g. the evaluator). A volume that several nodes use
  (`models`: the trainer writes it, the network reads it) is one ReadWriteMany claim
  (kubernetes/base/storage.yaml). Python nodes run MuFleet's image with the args compose gives
  them (`<module> <args> <container_args> --host 0.0.0.0 <ports>`); a node with a `Container`
  runs that image and command, as in compose.
* a headless Service (clusterIP: None) with its ports: DNS answers the node's name with one
  address per ready pod, and MuFleet's clients, given `dns:///<name>:<port>` (an `Address`
  handle of a gRPC endpoint), balance round-robin over them (services/common/channels.py).
* probes: gRPC nodes Kubernetes' native gRPC probe (grpc.health.v1, with the node's health
  service for readiness), HTTP and worker nodes an HTTP GET of their health path, a container
  its compose health-check command (exec) for readiness and a TCP check of its port for
  liveness; a startup probe gives every node its `Health.start_period_s`.
* a PodDisruptionBudget, a NetworkPolicy (ingress to each port only from the nodes that address
  that endpoint in the program, plus Prometheus to every metrics port), resources
  (`KubernetesConfig.resources`), and a restricted security context (non-root, read-only root
  filesystem with an emptyDir at /tmp, no privilege escalation, every capability dropped).
* `Setting`s are the ConfigMap `mufleet-settings`, read into every container's environment,
  and become `$(VARIABLE)` in args (Kubernetes expands them); in images they take their value
  (change images with kustomize's `images:`).

Overlays are the differences between renderings, as JSON patches (so they follow the program
too): `overlays/cpu` is the base; `overlays/gpu` the rendering with every `gpu` node on a GPU;
`overlays/mufleet-<node>` the rendering where a node that has both a module and a container runs
its module (MuFleet's own network server instead of TensorFlow Serving).

Objects are written with PyYAML, each after a comment saying what it is and where its numbers
come from; kubectl kustomize drops the comments, the committed files keep them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from games.validation import require
from services.launcher.compose import MUFLEET as COMPOSE, stale_files
from services.launcher.program import GRPC, HTTP, WORKER, Address, Arg, Dir, Handle, InstanceName, Mount, \
    Node, Program, Setting, expand_each, resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "kubernetes"
PART_OF = "mufleet"


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, and where the numbers come from."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    source: str


@dataclasses.dataclass(frozen=True)
class Autoscale:
    """A HorizontalPodAutoscaler on a per-pod metric served by prometheus-adapter."""

    metric: str
    query: str  # the adapter's metricsQuery (<<.Series>>, <<.LabelMatchers>>, <<.GroupBy>>)
    series: str  # the series the adapter discovers it from
    target: str  # the average value per pod the autoscaler keeps
    min_replicas: int
    max_replicas: int
    why: str


@dataclasses.dataclass(frozen=True)
class KubernetesConfig:
    """What exists only in Kubernetes: how the renderer turns a program into manifests.

    Attributes:
      namespace: the namespace of every object (kustomize's `namespace:`).
      image / gpu_image: MuFleet's image on CPU and on a GPU (compose's images).
      run_as_user: the uid of MuFleet's image (docker/Dockerfile's `mufleet`) and of any image
        not in `image_users`.
      image_users: (image prefix, uid) of other images' unprivileged users.
      gpu_resource / gpu_node_selector / gpu_tolerations: how a `gpu` node asks for a GPU.
      resources: per node name; `default_resources` for any other node.
      storage: per volume name, the size of its claim; `default_storage` otherwise.
      shared_access_mode: the access mode of a volume several nodes use (ReadWriteMany).
      autoscale: per scalable node, its HorizontalPodAutoscaler.
      adapter_namespace: where prometheus-adapter runs (allowed to query Prometheus).
    """

    namespace: str = "mufleet"
    image: str = COMPOSE.image
    gpu_image: str = COMPOSE.gpu_image
    bind_host: str = COMPOSE.bind_host
    environment: tuple[tuple[str, str], ...] = COMPOSE.environment
    gpu_environment: tuple[tuple[str, str], ...] = COMPOSE.gpu_environment
    run_as_user: int = 10001
    image_users: tuple[tuple[str, int], ...] = (("prom/prometheus", 65534),)
    stop_grace_period_s: int = COMPOSE.stop_grace_period_s
    probe_period_s: int = COMPOSE.health_interval_s
    probe_timeout_s: int = COMPOSE.health_timeout_s
    probe_failures: int = COMPOSE.health_retries
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    gpu_tolerations: tuple[tuple[str, str], ...] = (("nvidia.com/gpu", "NoSchedule"),)
    resources: tuple[tuple[str, Resources], ...] = ()
    default_resources: Resources = Resources("250m", "512Mi", "1", "1Gi", "estimate: no benchmark measured it")
    storage: tuple[tuple[str, str], ...] = ()
    default_storage: str = "1Gi"
    shared_access_mode: str = "ReadWriteMany"
    autoscale: tuple[tuple[str, Autoscale], ...] = ()
    prometheus_node: str = COMPOSE.prometheus_node
    scrape_interval_s: int = COMPOSE.scrape_interval_s
    scrape_timeout_s: int = COMPOSE.scrape_timeout_s
    adapter_namespace: str = "monitoring"

    def resources_of(self, name: str) -> Resources:
        return dict(self.resources).get(name, self.default_resources)

    def uid_of(self, image: str) -> int:
        return next((uid for prefix, uid in self.image_users if image.startswith(prefix)), self.run_as_user)


BUSY = Autoscale(
    metric="mufleet_agent_busy_ratio",
    series="mufleet_agent_move_seconds_sum",
    query="sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
    target="800m", min_replicas=1, max_replicas=8,
    why="The share of wall-clock time each agent pod spends making moves (search + step): "
        "rate(mufleet_agent_move_seconds_sum[2m]), seconds of moves per second. An agent that the "
        "replay's insert rate limiter holds back (self-play ahead of training, "
        "mufleet_agent_replay_waits_total) or that waits for a first model version is not moving, so "
        "its ratio falls and the autoscaler removes agents; agents busy above 0.8 mean self-play is "
        "what the fleet waits for, and it adds them. CPU utilisation would not see the rate limiter.")

MUFLEET = KubernetesConfig(
    resources=(
        ("environment", Resources("500m", "256Mi", "2", "1Gi",
                                  "docs/environment.md (Limits): the default --max-total-games hold 68 MB "
                                  "of game state; CPU an estimate")),
        ("replay", Resources("500m", "1Gi", "2", "4Gi",
                             "docs/replay.md: the id tombstones take at most ~110 MB; the buffer's memory "
                             "follows --capacity (estimate for the defaults)")),
        ("network", Resources("1", "1Gi", "4", "2Gi",
                              "docs/network.md (Memory as versions come and go): RSS flat at 780-825 MiB "
                              "over 1,000 versions; docs/agent.md: 3.17 ms of network CPU per simulation "
                              "step of 256 games, one agent at full speed keeps about one core busy")),
        ("agent", Resources("1", "512Mi", "2", "2Gi",
                            "docs/agent.md: 2.25 ms of agent CPU per simulation step of 256 games, about "
                            "one core per agent; memory an estimate")),
        ("trainer", Resources("2", "2Gi", "4", "6Gi", "estimate: TensorFlow training on CPU")),
        ("reanalyse", Resources("1", "512Mi", "2", "2Gi", "estimate: the agent's search (docs/agent.md)")),
        ("monitor", Resources("100m", "256Mi", "1", "512Mi", "estimate: Flask and a bounded history")),
        ("prometheus", Resources("200m", "512Mi", "1", "2Gi", "estimate: a few thousand series")),
    ),
    storage=(("models", "10Gi"), ("replay", "20Gi"), ("checkpoints", "10Gi"), ("tensorboard", "2Gi"),
             ("prometheus", "10Gi")),
    autoscale=(("agent", BUSY),),
)


def _labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def _meta(name: str, **extra: Any) -> dict:
    return {"name": name, "labels": _labels(name), **extra}


# The security scan's findings that the manifests keep on purpose (checkov, run by
# tests/deploy/test_kubernetes_security_scan.py over every overlay): check id -> why. Each
# workload carries them as checkov's skip annotations, so the scan passes and says why.
CHECKOV_WAIVERS = {
    "CKV_K8S_14": "MuFleet's image is built from this checkout (docker/Dockerfile) and named by the "
                  "cluster's overlay (kustomize images: newName, newTag; docs/kubernetes.md); TF "
                  "Serving's tag is TF_SERVING_TAG's, latest by default as in compose",
    "CKV_K8S_43": "image digests exist only once the user has built and pushed the image: pin them "
                  "in the cluster's overlay (kustomize images: digest)",
    "CKV_K8S_15": "IfNotPresent: with tags pinned by the overlay, Always only adds registry round "
                  "trips, and kind/minikube clusters run images loaded into the node (kind load), "
                  "which Always would not find",
}
# Prometheus alone needs its service account token: it discovers pods through the API
# (kubernetes_sd_configs, a ServiceAccount that may only get, list and watch pods).
PROMETHEUS_WAIVERS = {
    "CKV_K8S_38": "Prometheus lists the namespace's pods through the Kubernetes API "
                  "(kubernetes_sd_configs) with a ServiceAccount limited to get/list/watch pods",
}


def _checkov_skips(waivers: dict[str, str]) -> dict[str, str]:
    """checkov's skip annotations (`checkov.io/skip<n>: <check>=<why>`)."""
    return {f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in enumerate(waivers.items(), 1)}


class KubernetesRenderer:
    """Renders one program with one `KubernetesConfig`; `gpu` gives every gpu node a GPU,
    `as_module` runs those nodes' modules instead of their containers."""

    def __init__(self, program: Program, config: KubernetesConfig = MUFLEET, gpu: bool = False,
                 as_module: Iterable[str] = ()) -> None:
        self.program, self.config, self.gpu = program, config, gpu
        self.as_module = set(as_module)
        self.nodes = {node.name: node for node in program.nodes}
        self.volumes = {volume.name: volume for volume in program.volumes}
        require(config.prometheus_node in self.nodes,
                f"the program has no node {config.prometheus_node!r} to scrape the others")

    # -- what a node is here --------------------------------------------------------------
    def container_of(self, node: Node):
        return None if node.name in self.as_module else node.container

    def ports(self, node: Node) -> tuple[int, int | None, str]:
        """(main, metrics, metrics path); main is 0 for a worker."""
        container = self.container_of(node)
        if container:
            return container.port, container.metrics_port, container.metrics_path
        return node.ports.main or 0, node.ports.metrics, "/metrics"

    def named_ports(self, node: Node) -> dict[str, int]:
        main, metrics, _ = self.ports(node)
        kind = GRPC if node.kind == GRPC else HTTP
        out = {kind: main} if main else {}
        if metrics and metrics != main:
            out["metrics"] = metrics
        return out

    def metrics_port_name(self, node: Node) -> str:
        main, metrics, _ = self.ports(node)
        return "metrics" if metrics and metrics != main else HTTP

    def mounts(self, node: Node) -> list[tuple[str, str, bool]]:
        """(volume, mount path, read-only) of the program volumes it uses."""
        container = self.container_of(node)
        if container:
            return [(m.source.volume, m.target or self.volumes[m.source.volume].mount, m.read_only)
                    for m in container.volumes if isinstance(m.source, Dir)]
        used = dict.fromkeys(h.volume for h in node.handles() if isinstance(h, Dir))
        return [(name, self.volumes[name].mount, False) for name in used]

    def files(self, node: Node) -> list[Mount]:
        container = self.container_of(node)
        return [m for m in container.volumes if isinstance(m.source, str)] if container else []

    def users_of(self, volume: str) -> list[str]:
        return [n.name for n in self.program.nodes if any(v == volume for v, _, _ in self.mounts(n))]

    def owned(self, node: Node) -> list[str]:
        """Volumes only this node uses (its StatefulSet's claims)."""
        return [v for v, _, _ in self.mounts(node) if self.users_of(v) == [node.name]]

    def stateful(self, node: Node) -> bool:
        return node.module is not None and not node.scalable and bool(self.owned(node)) \
            and not self.container_of(node)

    def image(self, node: Node) -> str:
        container = self.container_of(node)
        if container:
            image = container.gpu_image if self.gpu and node.gpu and container.gpu_image else container.image
            return self._text(image, in_image=True)
        return self.config.gpu_image if self.gpu and node.gpu else self.config.image

    # -- handles -------------------------------------------------------------------------
    def _lookup(self, handle: Handle, in_image: bool = False) -> str:
        if isinstance(handle, Setting):
            return handle.value if in_image else f"$({handle.variable})"
        if isinstance(handle, Dir):
            mount = self.volumes[handle.volume].mount
            return f"{mount}/{handle.subpath}" if handle.subpath else mount
        if isinstance(handle, InstanceName):
            return handle.node
        assert isinstance(handle, Address)
        node = self.nodes[handle.node]
        main, metrics, path = self.ports(node)
        if handle.endpoint == "metrics":
            return f"{node.name}:{metrics or main}" + ("" if path == "/metrics" else path)
        if handle.endpoint == "grpc":
            return f"dns:///{node.name}:{main}"  # every pod behind the headless Service, round-robin
        return f"{node.name}:{main}"

    def _text(self, arg: Arg, in_image: bool = False) -> str:
        resolved = resolve(arg, lambda h: self._lookup(h, in_image), lambda s: s if in_image else s.replace("$", "$$"))
        assert isinstance(resolved, str)
        return resolved

    def _args(self, args: Iterable[Arg]) -> list[str]:
        # An optional node (0 replicas) is named only by an Each's `if_off`: it may be scaled up.
        return [self._text(a) for a in expand_each(
            list(args), lambda name: [] if self.nodes[name].profile else [name],
            lambda name: [name] if self.nodes[name].profile else [])]

    def addressed(self) -> dict[tuple[str, str], list[str]]:
        """{(node, endpoint): the nodes that address it}, Prometheus on every metrics endpoint."""
        out: dict[tuple[str, str], list[str]] = {}
        for node in self.program.nodes:
            for handle in node.handles():
                if isinstance(handle, Address):
                    endpoint = "metrics" if handle.endpoint == "metrics" else "main"
                    out.setdefault((handle.node, endpoint), [])
                    if node.name not in out[(handle.node, endpoint)]:
                        out[(handle.node, endpoint)].append(node.name)
        for node in self.program.nodes:
            if node.name != self.config.prometheus_node:
                users = out.setdefault((node.name, "metrics"), [])
                if self.config.prometheus_node not in users:
                    users.append(self.config.prometheus_node)
        return out

    # -- one container -------------------------------------------------------------------
    def args(self, node: Node) -> tuple[list[str], list[str]]:
        """(command, args): the image's entry point is kept where command is empty."""
        container = self.container_of(node)
        if container:
            return list(container.entrypoint), self._args(container.command)
        main, metrics = node.ports.main, node.ports.metrics
        ports = {GRPC: ["--port", str(main), "--metrics-port", str(metrics)], HTTP: ["--port", str(main)],
                 WORKER: ["--metrics-port", str(metrics)]}[node.kind]
        assert node.module is not None
        return [], [node.module, *self._args((*node.args, *node.container_args)),
                    "--host", self.config.bind_host, *ports]

    def probes(self, node: Node) -> dict:
        c = self.config
        timing = {"periodSeconds": c.probe_period_s, "timeoutSeconds": c.probe_timeout_s,
                  "failureThreshold": c.probe_failures}
        container = self.container_of(node)
        main, metrics, _ = self.ports(node)
        if container:
            test = list(container.healthcheck)
            command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", " ".join(test[1:])]
            ready: dict = {"exec": {"command": command}}
            live: dict = {"tcpSocket": {"port": main}}
        elif node.kind == GRPC:
            ready = {"grpc": {"port": main, **({"service": node.health.service} if node.health.service else {})}}
            live = {"grpc": {"port": main}}
        elif node.kind == WORKER:
            ready = live = {"httpGet": {"path": "/metrics", "port": "metrics"}}
        else:
            ready = live = {"httpGet": {"path": node.health.path, "port": HTTP}}
        start = {**ready, "periodSeconds": c.probe_period_s, "timeoutSeconds": c.probe_timeout_s,
                 "failureThreshold": math.ceil(node.health.start_period_s / c.probe_period_s) + c.probe_failures}
        return {"startupProbe": start, "readinessProbe": {**ready, **timing}, "livenessProbe": {**live, **timing}}

    def resources(self, node: Node) -> dict:
        r = self.config.resources_of(node.name)
        limits: dict = {"cpu": r.cpu_limit, "memory": r.memory_limit}
        requests: dict = {"cpu": r.cpu, "memory": r.memory}
        if self.gpu and node.gpu:
            limits[self.config.gpu_resource] = 1
            requests[self.config.gpu_resource] = 1
        return {"requests": requests, "limits": limits}

    def container(self, node: Node) -> dict:
        command, args = self.args(node)
        image = self.image(node)
        env = [{"name": "HOME", "value": "/tmp"}]  # the root filesystem is read-only
        if not self.container_of(node):
            env += [{"name": k, "value": v} for k, v in self.config.environment]
            if self.gpu and node.gpu:
                env += [{"name": k, "value": v} for k, v in self.config.gpu_environment]
        out: dict = {"name": node.name, "image": image, "imagePullPolicy": "IfNotPresent"}
        if command:
            out["command"] = command
        out["args"] = args
        out["envFrom"] = [{"configMapRef": {"name": "mufleet-settings"}}]
        out["env"] = env
        out["ports"] = [{"name": name, "containerPort": port, "protocol": "TCP"}
                        for name, port in self.named_ports(node).items()]
        out.update(self.probes(node))
        out["resources"] = self.resources(node)
        out["securityContext"] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                  "runAsNonRoot": True, "privileged": False,
                                  "capabilities": {"drop": ["ALL"]}}
        mounts = [{"name": "tmp", "mountPath": "/tmp"}]
        mounts += [{"name": v, "mountPath": path, **({"readOnly": True} if ro else {})}
                   for v, path, ro in self.mounts(node)]
        mounts += [{"name": "files", "mountPath": m.target, "subPath": Path(m.target).name, "readOnly": True}
                   for m in self.files(node)]
        out["volumeMounts"] = mounts
        return out

    def pod(self, node: Node) -> dict:
        uid = self.config.uid_of(self.image(node))
        spec: dict = {"automountServiceAccountToken": node.name == self.config.prometheus_node,
                      "enableServiceLinks": False,
                      "terminationGracePeriodSeconds": self.config.stop_grace_period_s,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                                          "fsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}}}
        if node.name == self.config.prometheus_node:
            spec["serviceAccountName"] = node.name
        if self.gpu and node.gpu:
            spec["nodeSelector"] = dict(self.config.gpu_node_selector)
            spec["tolerations"] = [{"key": k, "operator": "Exists", "effect": e}
                                   for k, e in self.config.gpu_tolerations]
        spec["containers"] = [self.container(node)]
        volumes: list = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
        owned = self.owned(node) if self.stateful(node) else []
        volumes += [{"name": v, "persistentVolumeClaim": {"claimName": v}}
                    for v, _, ro in self.mounts(node) if v not in owned]
        if self.files(node):
            volumes.append({"name": "files", "configMap": {"name": f"{node.name}-files"}})
        spec["volumes"] = volumes
        return {"metadata": {"labels": _labels(node.name)}, "spec": spec}

    # -- the objects of a node ---------------------------------------------------------------
    def replicas(self, node: Node) -> int:
        return 0 if node.profile else node.replicas

    def workload(self, node: Node) -> dict:
        spec: dict = {"replicas": self.replicas(node), "selector": {"matchLabels": _labels(node.name)},
                      "template": self.pod(node)}
        waivers = {**CHECKOV_WAIVERS, **(PROMETHEUS_WAIVERS if node.name == self.config.prometheus_node else {})}
        meta = _meta(node.name, annotations=_checkov_skips(waivers))
        if self.stateful(node):
            spec = {"serviceName": node.name, **spec, "volumeClaimTemplates": [
                {"metadata": {"name": v, "labels": _labels(node.name)},
                 "spec": {"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": self.size(v)}}}} for v in self.owned(node)]}
            return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}
        if self.mounts(node) and not node.scalable:
            spec["strategy"] = {"type": "Recreate"}  # one writer of its claim at a time
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}

    def size(self, volume: str) -> str:
        return dict(self.config.storage).get(volume, self.config.default_storage)

    def service(self, node: Node) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(node.name),
                "spec": {"clusterIP": "None", "selector": _labels(node.name),
                         "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                                   for name, port in self.named_ports(node).items()]}}

    def disruption_budget(self, node: Node) -> dict:
        # One replica: maxUnavailable 1 lets a node drain evict it (it comes back elsewhere; a
        # minAvailable 1 would block every drain); scalable nodes keep half their replicas.
        budget = {"maxUnavailable": "50%"} if node.scalable else {"maxUnavailable": 1}
        return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(node.name),
                "spec": {**budget, "selector": {"matchLabels": _labels(node.name)}}}

    def network_policy(self, node: Node) -> dict:
        addressed = self.addressed()
        rules = []
        for name, port in self.named_ports(node).items():
            clients = list(addressed.get((node.name, "metrics" if name == "metrics" else "main"), []))
            if name != "metrics" and self.metrics_port_name(node) == name:  # metrics on the main port
                clients += [c for c in addressed.get((node.name, "metrics"), []) if c not in clients]
            sources: list = [{"podSelector": {"matchLabels": _labels(c)}} for c in clients]
            if node.name == self.config.prometheus_node:
                sources.append({"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": self.config.adapter_namespace}}})
            if sources:
                rules.append({"ports": [{"protocol": "TCP", "port": port}], "from": sources})
        spec: dict = {"podSelector": {"matchLabels": _labels(node.name)}, "policyTypes": ["Ingress"],
                      "ingress": rules}
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(node.name),
                "spec": spec}

    def file_map(self, node: Node) -> dict:
        data = {}
        for mount in self.files(node):
            if node.name == self.config.prometheus_node and mount.target.endswith("prometheus.yml"):
                data[Path(mount.target).name] = self.prometheus_config()
            else:
                data[Path(mount.target).name] = (REPO_ROOT / mount.source).read_text()  # type: ignore[operator]
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{node.name}-files"), "data": data}

    def autoscaler(self, node: Node, scale: Autoscale) -> dict:
        return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(node.name),
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": node.name},
                         "minReplicas": scale.min_replicas, "maxReplicas": scale.max_replicas,
                         "metrics": [{"type": "Pods", "pods": {
                             "metric": {"name": scale.metric},
                             "target": {"type": "AverageValue", "averageValue": scale.target}}}],
                         "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}

    def prometheus_rbac(self, node: Node) -> list[tuple[str, dict]]:
        name = node.name
        return [
            ("Prometheus finds the fleet's pods through the API (kubernetes_sd, role pod, its own "
             "namespace only): it may list and watch pods there, nothing else.",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name)}),
            ("", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name),
                  "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
            ("", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(name),
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                  "subjects": [{"kind": "ServiceAccount", "name": name}]}),
        ]

    def objects_of(self, node: Node) -> list[tuple[str, dict]]:
        """(comment, object) for everything of `node`."""
        r = self.config.resources_of(node.name)
        container = self.container_of(node)
        docs = " ".join(t for t in (node.doc, container.doc if container else "") if t)
        why = (f"{node.name}: {docs}\nResources: requests {r.cpu} CPU / {r.memory}, limits {r.cpu_limit} CPU / "
               f"{r.memory_limit} ({r.source}).")
        if node.profile:
            why += (f"\nOptional (compose profile {node.profile!r}): 0 replicas; "
                    f"`kubectl scale deployment/{node.name} --replicas=N` starts it.")
        out: list[tuple[str, dict]] = []
        if node.name == self.config.prometheus_node:
            out += self.prometheus_rbac(node)
        if self.files(node):
            out.append((f"Files {node.name} mounts (compose mounts them from the repository).", self.file_map(node)))
        out.append((why, self.workload(node)))
        out.append(("Headless: DNS answers the name with every ready pod's address; MuFleet's clients "
                    "balance round-robin over them (dns:///name:port).", self.service(node)))
        out.append(("", self.disruption_budget(node)))
        out.append(("Ingress only from the nodes that address these ports in the program "
                    "(and Prometheus on the metrics port).", self.network_policy(node)))
        scale = dict(self.config.autoscale).get(node.name)
        if scale and node.scalable:
            out.append((f"Metric {scale.metric} (prometheus-adapter, base/prometheus-adapter.yaml): {scale.why}",
                        self.autoscaler(node, scale)))
        return out

    # -- fleet-wide objects ----------------------------------------------------------------
    def prometheus_config(self) -> str:
        c = self.config
        jobs = []
        for node in self.program.nodes:
            if node.name == c.prometheus_node:
                jobs.append({"job_name": node.name, "static_configs": [
                    {"targets": [f"localhost:{self.ports(node)[0]}"]}]})
                continue
            _, _, path = self.ports(node)
            job: dict = {"job_name": node.name}
            if path != "/metrics":
                job["metrics_path"] = path
            job["kubernetes_sd_configs"] = [{"role": "pod", "namespaces": {"own_namespace": True}}]
            job["relabel_configs"] = [
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                   "__meta_kubernetes_pod_container_port_name"],
                 "regex": f"{node.name};{self.metrics_port_name(node)}", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ]
            jobs.append(job)
        config = {"global": {"scrape_interval": f"{c.scrape_interval_s}s", "scrape_timeout": f"{c.scrape_timeout_s}s",
                             "evaluation_interval": "15s", "external_labels": {"fleet": self.program.name}},
                  "scrape_configs": jobs}
        return ("# Rendered by services/launcher/kubernetes.py: one job per node of the program, its pods found\n"
                "# by kubernetes_sd (role pod) and labelled with namespace and pod for prometheus-adapter.\n"
                + yaml.safe_dump(config, sort_keys=False, width=1000))

    def adapter_rules(self) -> dict:
        rules = []
        for name, scale in self.config.autoscale:
            if name in self.nodes:
                rules.append({"seriesQuery": f'{scale.series}{{namespace!="",pod!=""}}',
                              "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                                          "pod": {"resource": "pod"}}},
                              "name": {"matches": f"^{scale.series}$", "as": scale.metric},
                              "metricsQuery": scale.query})
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("prometheus-adapter-rules"),
                "data": {"config.yaml": yaml.safe_dump({"rules": rules}, sort_keys=False, width=1000)}}

    def files_of_base(self) -> dict[str, list[tuple[str, dict]]]:
        """{file name in base/: (comment, object)}."""
        files: dict[str, list[tuple[str, dict]]] = {}
        files["namespace.yaml"] = [("The fleet's namespace (kustomization.yaml sets it on every object).",
                                    {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(self.config.namespace)})]
        files["settings.yaml"] = [(
            "The deployment's settings (compose's ${VARIABLE:-default}): every container reads them into its "
            "environment and its args name them as $(VARIABLE). Change one with a kustomize patch or "
            "configMapGenerator (behavior: merge).",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("mufleet-settings"),
             "data": {s.variable: s.value for s in self.program.settings}})]
        shared = [v for v in self.volumes if len(self.users_of(v)) > 1
                  or (self.users_of(v) and not self.stateful(self.nodes[self.users_of(v)[0]]))]
        claims = []
        for v in shared:
            users = self.users_of(v)
            many = len(users) > 1
            mode = self.config.shared_access_mode if many else "ReadWriteOnce"
            note = (f"{v}: used by {', '.join(users)}, on different nodes of the cluster: {mode} (needs a "
                    f"storage class that offers it, e.g. NFS, CephFS, EFS, Filestore; docs/kubernetes.md)."
                    if many else f"{v}: used by {users[0]} only (a Deployment, Recreate).")
            claims.append((note, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(v),
                                  "spec": {"accessModes": [mode],
                                           "resources": {"requests": {"storage": self.size(v)}}}}))
        if claims:
            files["storage.yaml"] = claims
        files["default-deny.yaml"] = [("No ingress to any pod of the namespace unless a policy of its node "
                                       "allows it.",
                                       {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                        "metadata": _meta("default-deny-ingress"),
                                        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})]
        if any(name in self.nodes for name, _ in self.config.autoscale):
            files["prometheus-adapter.yaml"] = [(
                "prometheus-adapter's rule for the autoscaled nodes' metrics (helm chart "
                "prometheus-community/prometheus-adapter: these rules as `rules.custom`, or mount this "
                "ConfigMap as its --config). It queries the fleet's Prometheus "
                f"(http://{self.config.prometheus_node}.{self.config.namespace}.svc:"
                f"{self.ports(self.nodes[self.config.prometheus_node])[0]}).", self.adapter_rules())]
        for node in self.program.nodes:
            files[f"{node.name}.yaml"] = self.objects_of(node)
        return files

    def objects(self) -> dict[tuple[str, str], dict]:
        return {(o["kind"], o["metadata"]["name"]): o
                for objects in self.files_of_base().values() for _, o in objects}


# -- files ------------------------------------------------------------------------------------

_GENERATED = ("GENERATED from the fleet's program (services/launcher/topology.py) by\n"
              "`python -m services.launcher.kubernetes --write`: edit the program, not this file\n"
              "(tests/deploy/test_kubernetes_rendering.py fails when the two differ).\n")


def _comment(text: str) -> str:
    import textwrap
    lines = []
    for paragraph in text.split("\n"):
        lines += [f"# {line}" for line in textwrap.wrap(paragraph, 98)] or ["#"]
    return "\n".join(lines) + "\n" if text else ""


def _dump(entries: list[tuple[str, dict]], header: str = _GENERATED) -> str:
    docs = [_comment(c) + yaml.safe_dump(o, sort_keys=False, width=1000) for c, o in entries]
    return "".join(f"# {line}\n" if line else "#\n" for line in header.rstrip("\n").split("\n")) + \
        "---\n" + "---\n".join(docs)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def json_patch(old: Any, new: Any, path: str = "") -> list[dict]:
    """RFC 6902 operations that turn `old` into `new`: mappings key by key, lists of named items
    (containers, ports) item by item when their names match, anything else replaced whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
            else:
                ops += json_patch(old[key], value, f"{path}/{_escape(key)}")
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and \
            all(isinstance(a, dict) and isinstance(b, dict) and "name" in a and a.get("name") == b.get("name")
                for a, b in zip(old, new)):
        return [op for i, (a, b) in enumerate(zip(old, new)) for op in json_patch(a, b, f"{path}/{i}")]
    return [] if old == new else [{"op": "replace", "path": path or "/", "value": new}]


def overlay(base: KubernetesRenderer, variant: KubernetesRenderer, header: str) -> dict[str, str]:
    """{file name: text} of an overlay that turns `base`'s rendering into `variant`'s."""
    old, new = base.objects(), variant.objects()
    files: dict[str, str] = {}
    patches = []
    for key, obj in new.items():
        if key in old:
            ops = json_patch(old[key], obj)
            if ops:
                name = f"{key[0].lower()}-{key[1]}.patch.yaml"
                files[name] = "".join(f"# {l}\n" for l in _GENERATED.rstrip().split("\n")) + \
                    yaml.safe_dump(ops, sort_keys=False, width=1000)
                patches.append({"path": name, "target": {"kind": key[0], "name": key[1]}})
    added = [("", o) for k, o in new.items() if k not in old]
    removed = [k for k in old if k not in new]
    resources = ["../../base"]
    if added:
        files["added.yaml"] = _dump(added)
        resources.append("added.yaml")
    for kind, name in removed:
        patches.append({"patch": yaml.safe_dump({"apiVersion": old[(kind, name)]["apiVersion"], "kind": kind,
                                                 "metadata": {"name": name}, "$patch": "delete"}),
                        "target": {"kind": kind, "name": name}})
    kustomization: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                           "resources": resources}
    if patches:
        kustomization["patches"] = patches
    files["kustomization.yaml"] = "".join(f"# {l}\n" if l else "#\n"
                                          for l in (_GENERATED + "\n" + header).rstrip().split("\n")) + \
        yaml.safe_dump(kustomization, sort_keys=False, width=1000)
    return dict(sorted(files.items()))


def rendered_files(program: Program | None = None, config: KubernetesConfig = MUFLEET) -> dict[Path, str]:
    """{path: text} of every file under kubernetes/ for `program` (by default the fleet with the
    launcher's defaults, as compose renders it)."""
    if program is None:
        from services.launcher.topology import FleetConfig, build_program

        program = build_program(FleetConfig(game="cartpole", run_dir=Path("runs") / "cartpole"))
    base = KubernetesRenderer(program, config)
    files: dict[Path, str] = {}
    base_files = base.files_of_base()
    for name, entries in base_files.items():
        files[OUT / "base" / name] = _dump(entries)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "namespace": config.namespace, "resources": list(base_files)}
    files[OUT / "base" / "kustomization.yaml"] = "".join(f"# {l}\n" if l else "#\n" for l in (
        _GENERATED + "\nThe fleet on Kubernetes, TensorFlow Serving as the network (as in docker-compose.yml);"
                     "\nsee docs/kubernetes.md. Deploy an overlay: kubectl apply -k kubernetes/overlays/cpu"
    ).split("\n")) + yaml.safe_dump(kustomization, sort_keys=False, width=1000)
    variants = {"cpu": (base, "The base as it is: every node on CPU."),
                "gpu": (KubernetesRenderer(program, config, gpu=True),
                        "Every gpu node of the program (trainer, network) on a GPU node: the GPU image "
                        "(as docker-compose.gpu.yml), a limit of one nvidia.com/gpu, a node selector and a "
                        "toleration for GPU nodes.")}
    for node in program.nodes:
        if node.module and node.container:
            variants[f"mufleet-{node.name}"] = (KubernetesRenderer(program, config, as_module=[node.name]),
                                                f"{node.name} runs MuFleet's own server (`python -m {node.module}`, "
                                                f"MuFleet's image, gRPC health checking) instead of "
                                                f"{base._text(node.container.image, in_image=True)}; every client "
                                                f"address, port, probe and policy follows.")
    for name, (variant, header) in variants.items():
        for file, text in overlay(base, variant, header).items():
            files[OUT / "overlays" / name / file] = text
    return files


def stale(files: dict[Path, str]) -> dict[Path, str]:
    """Like compose's `stale_files`, plus committed files under kubernetes/ that are no longer rendered."""
    out = stale_files(files)
    if OUT.exists() and all(p.is_relative_to(OUT) for p in files):
        for path in OUT.rglob("*.yaml"):
            if path not in files:
                out[path] = f"{path.relative_to(REPO_ROOT)} is committed but no longer rendered\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.launcher.kubernetes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="write every file under kubernetes/")
    what.add_argument("--check", action="store_true",
                      help="exit 1, showing the difference, when a committed file is not the rendering")
    args = parser.parse_args(argv)
    files = rendered_files()
    if args.write:
        for path in stale(files):
            if path not in files:
                path.unlink()
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    elif args.check:
        differ = stale(files)
        for diff in differ.values():
            print(diff, end="")
        if differ:
            print(f"{len(differ)} file(s) under kubernetes/ differ from the program's rendering: "
                  f"python -m services.launcher.kubernetes --write", file=sys.stderr)
        return 1 if differ else 0
    else:
        for path in files:
            print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
