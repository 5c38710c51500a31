"""The fleet's program (services/launcher/program.py, topology.py) and its local rendering:
handles stay handles until a launcher resolves them, the local launcher turns the program into
the command lines `make run` has always run, and a badly built program is refused with a
message naming what is wrong. No process is started here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from services.common.logs import get_logger
from services.launcher.local import LocalFleet, PortPlan, plan, planned_ports
from services.launcher.program import GRPC, HTTP, WORKER, Address, Container, Dir, Each, Health, InstanceName, \
    Join, Mount, Node, Ports, Program, Setting, expand_each, join, resolve
from services.launcher.topology import FleetConfig, build_program, build_topology


def fleet_of(specs) -> LocalFleet:
    return LocalFleet(specs, log_dir=Path("unused"), log=get_logger("test", stream=io.StringIO()))


def started(fleet: LocalFleet, names: list[str]) -> None:
    """Records addresses as if `names` had started on ports 6000 + i (gRPC), 7000 + i (metrics)."""
    for i, name in enumerate(names):
        fleet.grpc_addresses[name] = f"127.0.0.1:{6000 + i}"
        fleet.metrics_addresses[name] = f"127.0.0.1:{7000 + i}"


def test_the_program_holds_handles_not_addresses():
    program = build_program(FleetConfig(game="cartpole", run_dir=Path("unused")))
    agent = program.node("agent")
    assert Address("replay", "grpc") in agent.args and Setting("GAME", "cartpole") in agent.args
    assert not any(isinstance(a, str) and ("127.0.0.1" in a or ":500" in a) for a in agent.args)
    assert program.node("trainer").args[program.node("trainer").args.index("--models") + 1] == Dir("models", "muzero")
    assert [n.name for n in program.nodes] == ["environment", "replay", "trainer", "network", "agent", "reanalyse",
                                              "evaluator", "monitor", "prometheus"]


def test_local_rendering_is_the_launchers_command_lines():
    """`make run`'s command lines, with the addresses the services bound filled in."""
    specs = build_topology(FleetConfig(game="cartpole", run_dir=Path("runs/cartpole")))
    assert [s.name for s in specs] == ["environment", "replay", "trainer", "network", "agent-0", "monitor"]
    fleet = fleet_of(specs)
    started(fleet, ["environment", "replay", "network", "trainer", "agent-0"])
    commands = {spec.name: [spec.module, *fleet.command(spec)] for spec in specs}
    assert commands["environment"] == ["services.environment", "--game", "cartpole", "--port", "50000",
                                       "--metrics-port", "9100"]
    assert commands["replay"] == ["services.replay", "--game", "cartpole", "--data-dir", "runs/cartpole/replay",
                                  "--port", "50001", "--metrics-port", "9101"]
    assert commands["trainer"] == ["services.trainer", "--game", "cartpole", "--replay", "127.0.0.1:6001",
                                   "--models", "runs/cartpole/models/muzero", "--checkpoint-dir",
                                   "runs/cartpole/checkpoints", "--resume", "--metrics-port", "9104"]
    assert commands["network"] == ["services.network", "--model_name", "muzero", "--model_base_path",
                                   "runs/cartpole/models/muzero",
                                   "--file_system_poll_wait_seconds", "1", "--tensorflow_intra_op_parallelism", "1",
                                   "--tensorflow_inter_op_parallelism", "1", "--port", "50002",
                                   "--metrics-port", "9102"]
    assert commands["agent-0"] == ["services.agent", "--game", "cartpole", "--environment", "127.0.0.1:6000",
                                   "--network", "127.0.0.1:6002", "--replay", "127.0.0.1:6001",
                                   "--metrics-port", "9103"]
    assert commands["monitor"] == ["monitor", "--game", "cartpole", "--environment", "127.0.0.1:6000",
                                   "--replay", "127.0.0.1:6001", "--network", "127.0.0.1:6002",
                                   "--metrics", "environment=127.0.0.1:7000", "--metrics", "replay=127.0.0.1:7001",
                                   "--metrics", "trainer=127.0.0.1:7003", "--metrics", "network=127.0.0.1:7002",
                                   "--metrics", "agent-0=127.0.0.1:7004", "--port", "5000"]
    assert {s.name: s.health_service for s in specs}["network"] == "tensorflow.serving.PredictionService"
    # Prometheus exists only as a container: the local fleet has no process for it.
    assert "prometheus" not in {s.node for s in specs}


def test_reanalysers_run_only_when_asked_and_are_scraped_then():
    off = build_program(FleetConfig(game="cartpole", run_dir=Path("unused")))
    assert off.node("reanalyse").profile == "reanalyse"  # compose: `--profile reanalyse`
    assert "reanalyse-0" not in {s.name for s in build_topology(FleetConfig(game="cartpole", run_dir=Path("r")))}

    specs = build_topology(FleetConfig(game="cartpole", run_dir=Path("runs/cartpole"), num_reanalysers=2,
                                       simulations=12))
    names = [s.name for s in specs]
    assert names == ["environment", "replay", "trainer", "network", "agent-0", "reanalyse-0", "reanalyse-1",
                     "monitor"]
    fleet = fleet_of(specs)
    started(fleet, ["environment", "replay", "network", "trainer", "agent-0", "reanalyse-0", "reanalyse-1"])
    commands = {spec.name: [spec.module, *fleet.command(spec)] for spec in specs}
    assert commands["reanalyse-0"] == ["services.reanalyse", "--game", "cartpole", "--replay", "127.0.0.1:6001",
                                       "--network", "127.0.0.1:6002", "--simulations", "12",
                                       "--metrics-port", "9105"]
    assert commands["reanalyse-1"][-2:] == ["--metrics-port", "0"]  # later replicas: free ports
    monitor = commands["monitor"]
    assert "reanalyse-0=127.0.0.1:7005" in monitor and "reanalyse-1=127.0.0.1:7006" in monitor


def test_the_evaluator_runs_only_when_asked_with_its_state_in_the_run_directory():
    off = build_program(FleetConfig(game="tictactoe", run_dir=Path("unused")))
    assert off.node("evaluator").profile == "evaluator"  # compose: `--profile evaluator`
    assert "evaluator" not in {s.name for s in build_topology(FleetConfig(game="tictactoe", run_dir=Path("r")))}

    specs = build_topology(FleetConfig(game="tictactoe", run_dir=Path("runs/tictactoe"), evaluator=True,
                                       simulations=12))
    names = [s.name for s in specs]
    assert names == ["environment", "replay", "trainer", "network", "agent-0", "evaluator", "monitor"]
    fleet = fleet_of(specs)
    started(fleet, ["environment", "replay", "network", "trainer", "agent-0", "evaluator"])
    commands = {spec.name: [spec.module, *fleet.command(spec)] for spec in specs}
    assert commands["evaluator"] == ["services.evaluator", "--game", "tictactoe", "--network", "127.0.0.1:6002",
                                     "--environment", "127.0.0.1:6000",
                                     "--state-dir", str(Path("runs/tictactoe") / "evaluator"),
                                     "--models", str(Path("runs/tictactoe") / "models" / "muzero"),
                                     "--simulations", "12", "--metrics-port", "9106"]
    based = build_topology(FleetConfig(game="tictactoe", run_dir=Path("r"), evaluator=True, port_base=20000))
    assert [port for _what, port in next(s for s in based if s.name == "evaluator").fixed_ports] == [20016]
    # its flags are the evaluator's own: the command line parses into a config
    from services.evaluator.__main__ import evaluator_config

    config = evaluator_config(commands["evaluator"][1:])
    assert config.keeps_anchors and config.opponents == ("random", "minimax", "mcts100")


def test_replicas_are_numbered_and_each_is_scraped():
    config = FleetConfig(game="tictactoe", run_dir=Path("r"), num_agents=3, simulations=5, games_per_batch=7,
                         train_steps=9, fixed_ports=False,
                         extra_args=(("agent-2", ("--seed", "7")), ("trainer", ("--seed", "1"))))
    specs = {s.name: s for s in build_topology(config)}
    assert [n for n in specs if n.startswith("agent")] == ["agent-0", "agent-1", "agent-2"]
    assert specs["agent-2"].args[-2:] == ("--seed", "7") and specs["trainer"].args[-2:] == ("--seed", "1")
    trainer = specs["trainer"].args
    assert trainer[trainer.index("--steps") + 1] == "9"
    assert "--simulations" in specs["agent-1"].args and "--games-per-batch" in specs["agent-1"].args
    # Several agents' requests can meet: the network merges them (one agent's never do).
    assert "--enable_batching" in specs["network"].args
    fleet = fleet_of(list(specs.values()))
    started(fleet, ["environment", "replay", "network", "trainer", "agent-0", "agent-1", "agent-2"])
    monitor = fleet.command(specs["monitor"])
    assert [monitor[i + 1].split("=")[0] for i, a in enumerate(monitor) if a == "--metrics"] == [
        "environment", "replay", "trainer", "network", "agent-0", "agent-1", "agent-2"]
    assert planned_ports(list(specs.values())) == []  # free ports: nothing to check


def test_an_address_of_a_service_not_started_is_refused():
    specs = build_topology(FleetConfig(game="cartpole", run_dir=Path("r"), fixed_ports=False))
    fleet = fleet_of(specs)
    trainer = next(s for s in specs if s.name == "trainer")
    with pytest.raises(ValueError, match="the grpc address of replay, which has no such address"):
        fleet.command(trainer)


def test_port_plan():
    assert PortPlan().port(50001, 1) == 50001
    assert PortPlan(base=51000).port(50001, 1) == 51001
    assert PortPlan(fixed=False).port(50001, 1) == 0
    assert PortPlan().port(None, None) == 0
    with pytest.raises(ValueError, match="PortPlan.base must be 0 with free ports, got 51000"):
        PortPlan(fixed=False, base=51000)


def test_handles_resolve_only_when_a_launcher_asks():
    program = Program("demo")
    data = program.volume("data", mount="/data")
    store = program.add_node(Node("store", "services.replay", ports=Ports(50001, 9101)))
    arg = join("store=", store.metrics_address, "/", data / "x")
    assert isinstance(arg, Join)
    partial = resolve(arg, lambda h: "/run/data/x" if isinstance(h, Dir) else None)
    assert partial == Join(("store=", Address("store", "metrics"), "//run/data/x"))
    assert resolve(partial, lambda h: "h:1") == "store=h:1//run/data/x"
    expanded = expand_each([Each("store", ("--m", join(store.instance_name, "=", store.metrics_address)))],
                           lambda name: ["store-a", "store-b"])
    assert resolve(expanded[3], lambda h: getattr(h, "instance", "?")) == "store-b=store-b"
    # A node whose profile is off: its if_off arguments, once per instance it would have.
    optional = Each("store", ("--m", store.instance_name), if_off=("--optional", store.instance_name))
    off = expand_each([optional], lambda name: [], lambda name: ["store"])
    assert [resolve(a, lambda h: getattr(h, "instance", "?")) for a in off] == ["--optional", "store"]
    assert expand_each([optional], lambda name: ["store"]) == ["--m", InstanceName("store", "store")]
    with pytest.raises(ValueError, match="expand Each"):
        resolve(Each("store", ()), lambda h: None)


def grpc_node(name: str, **kwargs) -> Node:
    return Node(name, "services.replay", ports=Ports(50001, 9101), **kwargs)


@pytest.mark.parametrize("build, message", [
    (lambda p: p.add_node(grpc_node("a", args=("--x", Address("b", "grpc")))),
     "node a refers to 'b', which is not among the nodes added before it"),
    (lambda p: [p.add_node(grpc_node("a")), p.add_node(grpc_node("a"))], "the program already has a node 'a'"),
    (lambda p: p.add_node(grpc_node("a", args=("--d", Dir("nowhere")))), "the volume 'nowhere', which the program"),
    (lambda p: p.add_node(grpc_node("Agent")), "Node.name must be a lower-case DNS label"),
    (lambda p: p.add_node(grpc_node("a", replicas=2)), "Node.replicas of a is 2, but only a scalable node"),
    (lambda p: p.add_node(Node("a", "m", kind=WORKER, ports=Ports(50001, 9101))),
     "Node.ports of the worker node a must have a metrics port and no other"),
    (lambda p: p.add_node(Node("a", None)), "Node a needs a module or a container, got neither"),
    (lambda p: p.add_node(grpc_node("a", waits_for="ready")), "Node.waits_for of a must be one of"),
    (lambda p: p.add_node(grpc_node("a")).http_address, "a serves no HTTP"),
    (lambda p: [p.add_node(grpc_node("a", scalable=True)), p.add_node(grpc_node("b", args=(Address("a", "grpc"),)))],
     "refers to the scalable node a outside an Each over it"),
    (lambda p: [p.setting("GAME", "cartpole"), p.setting("GAME", "tictactoe")], "the setting GAME is already"),
    (lambda p: Setting("game", "x"), "Setting.variable must be an upper-case variable name, got 'game'"),
    (lambda p: Ports(main=0), "Ports.main must be in [1, 65535], got 0"),
    (lambda p: Ports(metrics_offset=3), "Ports.metrics_offset is 3 but there is no metrics port"),
    (lambda p: Health(path="healthz"), "Health.path must start with '/', got 'healthz'"),
    (lambda p: Mount(Dir("data", "sub")), "Mount.source must be a volume's root, got its folder 'sub'"),
    (lambda p: Mount("./file"), "Mount.target must be given for the file './file'"),
    (lambda p: Container(image="x", command=(), port=1, healthcheck=()), "Container.healthcheck must be a command"),
    (lambda p: p.volume("data", mount="data"), "Volume.mount must be an absolute path, got 'data'"),
])
def test_a_bad_program_is_refused_naming_what_is_wrong(build, message):
    with pytest.raises(ValueError) as error:
        build(Program("demo"))
    assert message in str(error.value)


def test_a_container_node_has_no_local_process():
    program = Program("demo")
    program.add_node(Node("dash", None, kind=HTTP, container=Container(
        image="img", command=("--x",), port=9090, healthcheck=("CMD", "true"))))
    program.add_node(grpc_node("store"))
    assert [s.name for s in plan(program, Path("run"))] == ["store"]
    assert plan(program, Path("run"))[0].kind == GRPC
