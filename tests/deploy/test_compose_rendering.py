"""docker-compose.yml and docker-compose.gpu.yml are renderings of the fleet's program
(services/launcher/topology.py): the committed files must be exactly what the compose renderer
writes, and what it writes follows the program (services, dependencies, volumes, replicas)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is missing: pip install -r requirements.txt")

from services.common.processes import REPO_ROOT
from services.launcher.compose import ComposeRenderer, main, rendered_files, stale_files
from services.launcher.program import GRPC, STARTED, WORKER, Each, Node, Ports, Program, join
from services.launcher.topology import FleetConfig, build_program

REGENERATE = "make compose (python -m services.launcher.compose --write)"


def test_committed_compose_files_are_the_programs_rendering():
    stale = stale_files(rendered_files())
    assert not stale, (
        f"{', '.join(p.name for p in stale)} differ from the rendering of the fleet's program "
        f"(services/launcher/topology.py). Edit the program, not the file, then regenerate: "
        f"`{REGENERATE}`.\n" + "\n".join(stale.values()))


def test_check_and_stdout_of_the_command_line(capsys):
    files = rendered_files()
    assert main(["--check"]) == 0
    capsys.readouterr()
    assert main([]) == 0
    assert capsys.readouterr().out == files[REPO_ROOT / "docker-compose.yml"]
    assert main(["--gpu"]) == 0
    assert capsys.readouterr().out == files[REPO_ROOT / "docker-compose.gpu.yml"]


def test_a_changed_file_is_reported_with_its_difference(tmp_path):
    path = tmp_path / "docker-compose.yml"
    text = rendered_files()[REPO_ROOT / "docker-compose.yml"]
    path.write_text(text.replace("retries: 5", "retries: 7"))
    stale = stale_files({path: text})
    assert list(stale) == [path]
    assert "-  retries: 7" in stale[path] and "+  retries: 5" in stale[path]
    path.write_text(text)
    assert stale_files({path: text}) == {}


def test_every_node_is_a_service_with_the_programs_dependencies():
    program = build_program(FleetConfig(game="cartpole", run_dir=Path("unused")))
    compose = yaml.safe_load(ComposeRenderer(program).compose())
    services = compose["services"]
    assert list(services) == [node.name for node in program.nodes]
    assert list(compose["volumes"]) == [volume.name for volume in program.volumes]
    for node in program.nodes:
        if node.module and not node.container:
            assert services[node.name]["command"][0] == node.module, node.name
    # The dashboard waits for what it addresses to start; nobody waits for the scalable agents.
    assert {peer: c["condition"] for peer, c in services["monitor"]["depends_on"].items()} == {
        name: "service_started" for name in ("environment", "replay", "trainer", "network")}
    assert not any("agent" in s.get("depends_on", {}) for s in services.values())
    # The monitor scrapes the agents through their service name, which resolves to every replica.
    assert "agent=agent:9103" in services["monitor"]["command"]


def test_the_gpu_override_covers_the_gpu_nodes():
    program = build_program(FleetConfig(game="cartpole", run_dir=Path("unused")))
    override = yaml.safe_load(ComposeRenderer(program).gpu_override())
    assert set(override["services"]) == {node.name for node in program.nodes if node.gpu} == {"trainer", "network"}


def small_program(replicas: int = 1) -> Program:
    """A program written the way docs/docker.md says to add a node."""
    program = Program("demo")
    data = program.volume("data", mount="/data")
    game = program.setting("GAME", "tictactoe")
    store = program.add_node(Node("store", "services.replay", args=("--game", game, "--data-dir", data / "games"),
                                  ports=Ports(50001, 9101, 1, 11)))
    player = program.add_node(Node("player", "services.agent", kind=WORKER, ports=Ports(metrics=9103, metrics_offset=13),
                                   args=("--replay", store.grpc_address), replicas=replicas, scalable=True))
    program.add_node(Node("watcher", "monitor", kind=WORKER, ports=Ports(metrics=9200, metrics_offset=30),
                          waits_for=STARTED, after=(store,),
                          args=tuple(Each(n.name, ("--metrics", join(n.instance_name, "=", n.metrics_address)))
                                     for n in (store, player))))
    return program


def test_a_new_program_renders_its_handles_as_compose_addresses():
    services = yaml.safe_load(ComposeRenderer(small_program(replicas=3)).compose())["services"]
    store, player, watcher = services["store"], services["player"], services["watcher"]
    assert store["command"] == ["services.replay", "--game", "${GAME:-tictactoe}", "--data-dir", "/data/games",
                                "--host", "0.0.0.0", "--port", "50001", "--metrics-port", "9101"]
    assert store["volumes"] == ["data:/data"]
    assert player["command"][1:3] == ["--replay", "store:50001"]
    assert player["depends_on"] == {"store": {"condition": "service_healthy"}}
    assert player["deploy"] == {"replicas": 3}
    assert watcher["command"][1:5] == ["--metrics", "store=store:9101", "--metrics", "player=player:9103"]
    assert watcher["depends_on"] == {"store": {"condition": "service_started"}}


def test_literal_dollars_are_escaped_and_settings_are_variables():
    program = Program("demo")
    program.add_node(Node("store", "services.replay", kind=GRPC, ports=Ports(50001, 9101),
                          args=("--note", "costs $5", "--game", program.setting("GAME", "cartpole"))))
    command = yaml.safe_load(ComposeRenderer(program).compose())["services"]["store"]["command"]
    assert command[1:5] == ["--note", "costs $$5", "--game", "${GAME:-cartpole}"]


def test_rendering_runs_without_the_local_launcher():
    """The renderer needs neither gRPC nor TensorFlow: regenerating the files is cheap."""
    code = ("import sys; import services.launcher.compose as c; c.rendered_files(); "
            "bad = [m for m in ('grpc', 'tensorflow', 'services.launcher.local') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
