"""The Kubernetes manifests (kubernetes/, rendered from the program): every overlay builds with
`kubectl kustomize`, every object validates against the Kubernetes API schema
(kubernetes-validate, strict), every pod has the security properties the fleet promises, and
every node of the program appears with the ports, args and health checks compose gives it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is missing: pip install -r requirements.txt")

from services.common.processes import REPO_ROOT
from services.launcher.compose import ComposeRenderer
from services.launcher.kubernetes import KubernetesRenderer
from services.launcher.program import GRPC, WORKER
from services.launcher.topology import FleetConfig, build_program

OVERLAYS = sorted(p.name for p in (REPO_ROOT / "kubernetes" / "overlays").iterdir())
WORKLOADS = ("Deployment", "StatefulSet")


def kubectl() -> str:
    # As tests/deploy/test_compose.py treats docker-compose: skipped, saying what to install.
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is missing (it renders kustomize overlays: https://kubernetes.io/docs/tasks/tools/)")
    return path


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request) -> tuple[str, list[dict]]:
    result = subprocess.run([kubectl(), "kustomize", str(REPO_ROOT / "kubernetes" / "overlays" / request.param)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize overlays/{request.param}: {result.stderr}"
    return request.param, [d for d in yaml.safe_load_all(result.stdout) if d]


def program():
    return build_program(FleetConfig(game="cartpole", run_dir=Path("unused")))


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_the_overlays_are_cpu_gpu_and_mufleet_network():
    assert OVERLAYS == ["cpu", "gpu", "mufleet-network"]


def test_every_object_validates_against_the_kubernetes_schema(built):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is missing: make test-deps")
    from kubernetes_validate.utils import latest_version

    overlay, objects = built
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, latest_version(), strict=True)
        except Exception as error:  # noqa: BLE001 - collected, reported together
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error}")
    assert not errors, f"overlays/{overlay}:\n" + "\n".join(errors)


def test_every_pod_is_restricted(built):
    overlay, objects = built
    policies = by_kind(objects, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        name, pod = obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
            for key in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][key]), (name, key)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, (name, probe)
        labels = obj["spec"]["selector"]["matchLabels"]
        assert policies[name]["spec"]["podSelector"]["matchLabels"] == labels, name
        assert by_kind(objects, "PodDisruptionBudget")[name]["spec"]["selector"]["matchLabels"] == labels, name
        # Only Prometheus talks to the API (kubernetes_sd); no other pod gets a token.
        assert pod["automountServiceAccountToken"] is (name == "prometheus"), name


def test_every_grpc_server_has_a_headless_service_and_native_grpc_probes(built):
    overlay, objects = built
    services = by_kind(objects, "Service")
    workloads = {**by_kind(objects, "Deployment"), **by_kind(objects, "StatefulSet")}
    for node in program().nodes:
        assert services[node.name]["spec"]["clusterIP"] == "None", node.name
        container = workloads[node.name]["spec"]["template"]["spec"]["containers"][0]
        runs_module = container["image"].startswith("mufleet:")
        if node.kind == GRPC and runs_module:
            assert container["readinessProbe"]["grpc"]["port"] == node.ports.main, node.name
            assert container["livenessProbe"]["grpc"] == {"port": node.ports.main}, node.name
    agent = workloads["agent"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert agent[agent.index("--replay") + 1] == "dns:///replay:50001"


def test_gpu_nodes_get_a_gpu_only_in_the_gpu_overlay(built):
    overlay, objects = built
    workloads = {**by_kind(objects, "Deployment"), **by_kind(objects, "StatefulSet")}
    for node in program().nodes:
        pod = workloads[node.name]["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        on_gpu = overlay == "gpu" and node.gpu
        assert (limits.get("nvidia.com/gpu") == 1) is on_gpu, node.name
        assert ("nodeSelector" in pod) is on_gpu, node.name
    if overlay == "gpu":
        assert workloads["trainer"]["spec"]["template"]["spec"]["containers"][0]["image"] == "mufleet:gpu"
        assert workloads["network"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-gpu")


def test_storage_and_autoscaling(built):
    overlay, objects = built
    # Nodes with a module that own a volume (and any such node the program adds, e.g. an evaluator).
    assert {"replay", "trainer"} <= set(by_kind(objects, "StatefulSet"))
    assert not {"network", "agent", "monitor", "prometheus"} & set(by_kind(objects, "StatefulSet"))
    claims = by_kind(objects, "PersistentVolumeClaim")
    assert claims["models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["agent"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "agent"
    assert hpa["metrics"][0]["type"] == "Pods"
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "mufleet_agent_busy_ratio"
    rules = yaml.safe_load(by_kind(objects, "ConfigMap")["prometheus-adapter-rules"]["data"]["config.yaml"])
    assert [r["name"]["as"] for r in rules["rules"]] == ["mufleet_agent_busy_ratio"]


def _compose_form(arg: str) -> str:
    """A Kubernetes arg written as compose writes it: `dns:///x:p` -> `x:p`, `$(V)` -> `${V:-...}`."""
    return re.sub(r"\$\((\w+)\)", lambda m: "${" + m.group(1) + "}", arg.replace("dns:///", ""))


def test_every_node_has_composes_ports_args_and_health_checks():
    prog = program()
    compose = yaml.safe_load(ComposeRenderer(prog).compose())["services"]
    k8s = KubernetesRenderer(prog)
    objects = k8s.objects()
    for node in prog.nodes:
        kind = "StatefulSet" if k8s.stateful(node) else "Deployment"
        container = objects[(kind, node.name)]["spec"]["template"]["spec"]["containers"][0]
        service = compose[node.name]
        composed = service["command"]
        want = [re.sub(r"\$\{(\w+):-[^}]*\}", r"${\1}", a) for a in composed]
        assert [_compose_form(a) for a in container["args"]] == want, node.name
        if node.container:
            assert container.get("command", []) == list(node.container.entrypoint), node.name
        ports = {p["containerPort"] for p in container["ports"]}
        main, metrics, _ = k8s.ports(node)
        assert ports == {p for p in (main, metrics) if p}, node.name
        assert {p["port"] for p in objects[("Service", node.name)]["spec"]["ports"]} == ports, node.name
        test = service["healthcheck"]["test"]
        ready = container["readinessProbe"]
        if node.container:
            assert ready["exec"]["command"] == test[1:], node.name
        elif node.kind == GRPC:
            assert f"127.0.0.1:{ready['grpc']['port']}" in test, node.name
            service_name = test[test.index("--service") + 1] if "--service" in test else ""
            assert ready["grpc"].get("service", "") == service_name, node.name
        else:
            port = {p["name"]: p["containerPort"] for p in container["ports"]}[ready["httpGet"]["port"]]
            assert test[-1] == f"http://127.0.0.1:{port}{ready['httpGet']['path']}", node.name
        start = container["startupProbe"]
        assert start["periodSeconds"] * (start["failureThreshold"] - container["readinessProbe"]["failureThreshold"]) \
            >= node.health.start_period_s, node.name


def test_network_policies_follow_who_addresses_whom():
    prog = program()
    objects = KubernetesRenderer(prog).objects()

    def allowed(node: str, port: int) -> set[str]:
        out = set()
        for rule in objects[("NetworkPolicy", node)]["spec"]["ingress"]:
            if any(p["port"] == port for p in rule["ports"]):
                out |= {s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in rule["from"]
                        if "podSelector" in s}
        return out

    def clients(node: str, endpoint: str) -> set[str]:
        """The nodes whose arguments name `node`'s `endpoint`: what the policy must allow."""
        return {n.name for n in prog.nodes
                if any(getattr(h, "node", None) == node and getattr(h, "endpoint", None) == endpoint
                       for h in n.handles())}

    assert allowed("replay", 50001) == clients("replay", "grpc") >= {"trainer", "agent", "reanalyse", "monitor"}
    assert allowed("environment", 50000) == clients("environment", "grpc") >= {"agent", "monitor"}
    assert allowed("network", 8500) == clients("network", "grpc") >= {"agent", "reanalyse", "monitor"}
    assert allowed("network", 8501) == {"monitor", "prometheus"}
    assert allowed("agent", 9103) == {"monitor", "prometheus"}
    assert allowed("monitor", 5000) == {"prometheus"}


def test_a_new_node_needs_no_renderer_change():
    from services.launcher.program import Address, Health, Node, Ports

    prog = program()
    replay = prog.node("replay")
    prog.add_node(Node("probe", "services.evaluator", kind=WORKER, ports=Ports(None, 9199),
                       health=Health(start_period_s=60), scalable=True,
                       args=("--replay", Address(replay.name, "grpc"))))
    objects = KubernetesRenderer(prog).objects()
    deployment = objects[("Deployment", "probe")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][:3] == \
        ["services.evaluator", "--replay", "dns:///replay:50001"]
    assert ("NetworkPolicy", "probe") in objects and ("Service", "probe") in objects
    assert "job_name: probe" in objects[("ConfigMap", "prometheus-files")]["data"]["prometheus.yml"]
