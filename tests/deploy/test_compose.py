"""docker-compose.yml, its GPU override, the Dockerfile and docker/prometheus.yml, checked without a
Docker engine: Debian's docker-compose validates and renders the files, and every Python
service's command is run with `--help` to prove its module exists and takes its flags."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is missing: pip install -r requirements.txt")

from services.common.processes import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE = REPO_ROOT / "docker-compose.gpu.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
PROMETHEUS = REPO_ROOT / "docker" / "prometheus.yml"
SERVICES = ("environment", "replay", "network", "trainer", "agent", "reanalyse", "evaluator", "monitor",
            "prometheus")
PYTHON_SERVICES = ("environment", "replay", "trainer", "agent", "reanalyse", "evaluator", "monitor")
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose is missing (apt-get install docker-compose)")
    return path


def compose_variables() -> set[str]:
    """Every ${VARIABLE} the compose files read."""
    return {m.group(1) for f in (COMPOSE, GPU_OVERRIDE) for m in _VARIABLE.finditer(f.read_text())}


def rendered(*files: Path, env: dict[str, str] | None = None) -> dict:
    """`docker-compose -f ... config`: the files merged, validated and interpolated, with the
    files' defaults for every variable `env` does not set (whatever the caller's shell has)."""
    args = [docker_compose()]
    for f in files:
        args += ["-f", str(f)]
    unset = compose_variables() - set(env or {})
    result = subprocess.run([*args, "config"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in dict(os.environ, **(env or {})).items() if k not in unset})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def interpolate(value, env: dict[str, str]):
    """${VAR:-default} as compose does it (used where docker-compose is not installed)."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as the engine would see it (rendered by docker-compose when present)."""
    if shutil.which("docker-compose"):
        return rendered(COMPOSE)
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def test_compose_file_is_valid():
    config = rendered(COMPOSE)
    assert set(config["services"]) == set(SERVICES)


def test_gpu_override_is_valid_and_puts_trainer_and_serving_on_the_gpu():
    config = rendered(COMPOSE, GPU_OVERRIDE)
    for name in ("trainer", "network"):
        devices = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
    assert config["services"]["network"]["image"].endswith("-gpu")
    assert config["services"]["trainer"]["build"]["args"]["GPU"] == "1"
    # The rest of the trainer is the base file's.
    assert config["services"]["trainer"]["command"] == rendered(COMPOSE)["services"]["trainer"]["command"]


def test_game_is_one_variable():
    default = rendered(COMPOSE)
    chosen = rendered(COMPOSE, env={"GAME": "tictactoe"})
    for name in PYTHON_SERVICES:
        default_game = default["services"][name]["command"]
        command = chosen["services"][name]["command"]
        assert default_game[default_game.index("--game") + 1] == "cartpole", name
        assert command[command.index("--game") + 1] == "tictactoe", name


def test_every_service_is_checked_and_bound_to_all_interfaces(compose):
    services = compose["services"]
    for name in SERVICES:
        assert "healthcheck" in services[name] and services[name]["healthcheck"]["test"], name
    for name in PYTHON_SERVICES:
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0", name
        assert services[name]["image"] == services["environment"]["image"], "one image for the Python services"
    # Agents scale: nothing that names one container or takes one host port.
    assert "container_name" not in services["agent"] and "ports" not in services["agent"]
    # Start order: the agent waits for healthy peers.
    depends = services["agent"]["depends_on"]
    assert all(depends[peer]["condition"] == "service_healthy" for peer in ("environment", "replay", "network"))
    assert services["trainer"]["depends_on"]["replay"]["condition"] == "service_healthy"
    # Reanalyse is optional: `docker compose --profile reanalyse up` starts it; it scales like agents.
    assert services["reanalyse"]["profiles"] == ["reanalyse"]
    assert "container_name" not in services["reanalyse"] and "ports" not in services["reanalyse"]
    # The evaluator is optional too: `docker compose --profile evaluator up`; its state on a volume.
    assert services["evaluator"]["profiles"] == ["evaluator"]
    assert "evaluator:/data/evaluator:rw" in services["evaluator"]["volumes"]


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of every port a rendered service publishes,
    from compose's short syntax ("127.0.0.1:5000:5000/tcp", "5000:5000", "5000") or long one."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip") or "0.0.0.0", str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"  # no address: every interface
        out.append((host_ip or "0.0.0.0", parts[-2] if len(parts) >= 2 else "", parts[-1]))
    return out


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU_OVERRIDE)], ids=["cpu", "gpu"])
def test_published_ports_bind_loopback_unless_opened(files):
    """The dashboard and Prometheus answer anyone who reaches them: by default only this host
    does. PUBLISH_HOST opens them up on purpose (docs/docker.md)."""
    default = rendered(*files)["services"]
    ports = {name: published(s) for name, s in default.items() if published(s)}
    assert set(ports) == {"monitor", "prometheus"}, ports  # nothing else is published at all
    for name, bound in ports.items():
        assert all(host_ip == "127.0.0.1" for host_ip, _, _ in bound), (name, bound)
    assert ports["monitor"] == [("127.0.0.1", "5000", "5000")]
    assert ports["prometheus"] == [("127.0.0.1", "9090", "9090")]
    opened = rendered(*files, env={"PUBLISH_HOST": "0.0.0.0", "MONITOR_PORT": "8080"})["services"]
    assert published(opened["monitor"]) == [("0.0.0.0", "8080", "5000")]
    assert published(opened["prometheus"]) == [("0.0.0.0", "9090", "9090")]


def test_published_port_parsing():
    assert published({"ports": ["127.0.0.1:5000:5000/tcp", "9090:9090", "7000",
                                {"host_ip": "127.0.0.1", "published": 1, "target": 2}]}) == [
        ("127.0.0.1", "5000", "5000"), ("0.0.0.0", "9090", "9090"), ("0.0.0.0", "", "7000"),
        ("127.0.0.1", "1", "2")]


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU_OVERRIDE)], ids=["cpu", "gpu"])
def test_prometheus_has_no_lifecycle_or_admin_api(files):
    """--web.enable-lifecycle lets any client POST /-/quit or /-/reload; the admin API deletes
    series. Neither is needed to run the fleet."""
    services = rendered(*files)["services"]
    for name, service in services.items():
        words = [str(w) for key in ("command", "entrypoint") for w in (service.get(key) or [])]
        assert not any("enable-lifecycle" in w or "enable-admin-api" in w for w in words), (name, words)


def test_agents_draw_their_own_seed(compose):
    """Every replica of `--scale agent=N` runs the same command: a --seed there would make them
    all play the same games; without one each agent draws a fresh seed."""
    command = [str(a) for a in compose["services"]["agent"]["command"]]
    assert not any(a == "--seed" or a.startswith("--seed=") for a in command), command


def test_trainer_and_tf_serving_share_the_models_volume(compose):
    services = compose["services"]
    config_text = (REPO_ROOT / "models" / "models.config").read_text()
    base_path = re.search(r'base_path:\s*"([^"]+)"', config_text).group(1)
    trainer = services["trainer"]["command"]
    assert trainer[trainer.index("--models") + 1] == base_path == "/models/muzero"

    def mounts(service: str) -> dict[str, str]:
        out = {}
        for volume in services[service]["volumes"]:
            if isinstance(volume, dict):
                out[volume["target"]] = volume["source"]
            else:
                source, target = volume.split(":")[:2]
                out[target] = source
        return out

    trainer_mounts, network_mounts = mounts("trainer"), mounts("network")
    shared = [t for t in trainer_mounts if base_path.startswith(t + "/") and network_mounts.get(t) == trainer_mounts[t]]
    assert shared, (trainer_mounts, network_mounts)
    assert trainer_mounts[shared[0]] in compose["volumes"]  # a named volume, not a host folder
    command = " ".join(services["network"]["command"])
    for config_file in ("models.config", "batching.config", "monitoring.config"):
        target = next(t for t, s in network_mounts.items() if s.endswith(f"models/{config_file}"))
        assert target in command, config_file
    for volume in ("models", "replay", "checkpoints"):
        assert volume in compose["volumes"]


def python_command(compose: dict, name: str) -> tuple[str, list[str]]:
    command = compose["services"][name]["command"]
    return command[0], [str(a) for a in command[1:]]


@pytest.mark.parametrize("name", PYTHON_SERVICES)
def test_python_command_exists_and_takes_its_flags(compose, name):
    """`python -m <module> <compose args> --help`: the module exists, argparse accepts every value
    before --help (choices, types), and every flag of the command is one of the module's flags."""
    module, args = python_command(compose, name)
    result = subprocess.run([sys.executable, "-m", module, *args, "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr
    help_flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", result.stdout))
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags <= help_flags, f"{name}: flags not in `python -m {module} --help`: {flags - help_flags}"


def test_healthcheck_commands_exist(compose):
    for name in PYTHON_SERVICES:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name
        result = subprocess.run([sys.executable, "-m", "services.common.healthcheck", *test[4:], "--help"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def _local_modules(module: str) -> set[str]:
    """Every repository module `module` imports, transitively (any import statement, at any
    depth of the code), by walking the source."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if path is None or name in seen:
            continue
        seen.add(name)
        if path.name == "__init__.py" or (path.parent / "__init__.py").exists():
            todo.append(name.rsplit(".", 1)[0]) if "." in name else None
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
        if (path.parent / "__main__.py").exists() and path.name == "__init__.py":
            todo.append(f"{name}.__main__")
    return seen


def _module_path(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    if base.is_dir():  # a namespace package
        return base / "__init__.py" if (base / "__init__.py").exists() else None
    return None


def test_dockerfile_copies_every_package_the_commands_import(compose):
    text = DOCKERFILE.read_text()
    copied = {m.group(1).split("/")[0] for m in re.finditer(r"^COPY\s+(\S+)", text, re.M)}
    needed: set[str] = set()
    for name in PYTHON_SERVICES:
        module, _ = python_command(compose, name)
        needed |= {m.split(".")[0] for m in _local_modules(module)}
        needed |= {m.split(".")[0] for m in _local_modules("services.common.healthcheck")}
    assert {"services", "games", "monitor", "protos"} <= needed
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    assert "requirements.txt" in copied and "grpc_tools.protoc" in text
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)


def test_prometheus_scrapes_every_service(compose):
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets: dict[str, tuple[str, str]] = {}  # host -> (port, metrics path)
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = (port, path)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                targets[host] = (str(dns["port"]), path)
    services = compose["services"]
    for name in PYTHON_SERVICES:
        command = services[name]["command"]
        port = command[command.index("--metrics-port") + 1] if "--metrics-port" in command \
            else command[command.index("--port") + 1]
        assert targets.get(name) == (port, "/metrics"), (name, targets.get(name))
    # TensorFlow Serving: its REST port, at models/monitoring.config's path.
    monitoring = (REPO_ROOT / "models" / "monitoring.config").read_text()
    path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    assert targets.get("network") == ("8501", path)
    assert "--rest_api_port=8501" in services["network"]["command"]
    # Agents are found through DNS, so every replica of `--scale agent=N` is scraped.
    agent_job = next(j for j in config["scrape_configs"] if j["job_name"] == "agent")
    assert agent_job["dns_sd_configs"][0]["type"] == "A"
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
