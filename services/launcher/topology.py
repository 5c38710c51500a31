"""MuFleet's fleet, defined once: `build_program(config)` is the program (every node, its flags,
ports, health, dependencies, replicas and volumes) that every launcher renders: the local
launcher (`make run`, `LocalFleet`), the compose renderer (`docker-compose.yml` is generated
from it: `python -m services.launcher.compose --write`).

How to add a node: declare any volume it writes (`program.volume`), then
`program.add_node(Node(name, module, args=..., kind=..., ports=_ports(role), health=...))`
after the nodes it refers to, naming their addresses through their handles
(`replay.grpc_address`, never "127.0.0.1:50001" or "replay:50001"); give it its README ports in
DEFAULT_PORTS and PORT_OFFSETS, then regenerate the compose file. See docs/docker.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from games.validation import require
from services.launcher.program import GRPC, HTTP, STARTED, WORKER, Container, Each, Health, Mount, Node, \
    Ports, Program, Setting, join

if TYPE_CHECKING:
    from services.launcher.local import ServiceSpec
    from services.launcher.presets import Preset

# Fixed ports of the local fleet, (gRPC or HTTP, metrics) by role: the ports of the README's
# table of services (gRPC 5000x, metrics 910x, dashboard 5000).
DEFAULT_PORTS = {
    "environment": (50000, 9100),
    "replay": (50001, 9101),
    "network": (50002, 9102),
    "agent": (None, 9103),
    "trainer": (None, 9104),
    "reanalyse": (None, 9105),
    "evaluator": (None, 9106),
    "monitor": (5000, None),
}
# With a port base P (`make run PORT_BASE=P`) the same ports are P + these offsets: gRPC at
# P..P+2, metrics at P+10..P+16, the dashboard at P+20 (one block of PORT_SPAN ports).
PORT_OFFSETS = {
    "environment": (0, 10),
    "replay": (1, 11),
    "network": (2, 12),
    "agent": (None, 13),
    "trainer": (None, 14),
    "reanalyse": (None, 15),
    "evaluator": (None, 16),
    "monitor": (20, None),
}
PORT_SPAN = 21
MIN_PORT_BASE = 1024  # below are the privileged ports


@dataclasses.dataclass(frozen=True)
class FleetConfig:
    """What the local fleet trains and how big it is.

    Attributes:
      game: registered game name (games.names()).
      run_dir: directory holding everything of one run (models, replay data, checkpoints, logs);
        launching again on the same directory resumes the run.
      num_agents: self-play agent processes.
      num_reanalysers: reanalyse worker processes (0 = none, or the preset's: compose then
        starts the reanalyse service only under `--profile reanalyse`).
      preset: a name of `services.launcher.presets.PRESETS` ("" = the game's defaults): its
        settings go to the replay and the trainer as flags; its reanalysers and games per
        agent apply where num_reanalysers and games_per_batch are 0.
      preset_changes: (name, value) changes to the preset (`Preset.with_changes`): settings
        fields, "reanalysers", "games_per_batch"; ablations turn one option off this way.
      games_per_batch: B, games each agent plays at once (0 = the game's default).
      simulations: MCTS simulations per move (0 = the game's default).
      train_steps: trainer steps before the trainer stops (0 = until stopped).
      fixed_ports: True uses DEFAULT_PORTS (dashboard at http://127.0.0.1:5000), or the ports of
        `port_base`; False lets every service pick a free port (tests, several fleets on one
        machine).
      port_base: 0 for DEFAULT_PORTS; else the first of PORT_SPAN ports that the fixed ports are
        taken from (PORT_OFFSETS), in [MIN_PORT_BASE, 65536 - PORT_SPAN]; only with fixed_ports.
      monitor: start the monitoring dashboard.
      evaluator: run the evaluator (docs/evaluator.md): the newest version against the game's
        ladder after every new version, Elo ratings in <run_dir>/evaluator (off: compose starts
        it only under `--profile evaluator`).
      extra_args: per service name, flags appended to its command line.
    """

    game: str
    run_dir: Path
    num_agents: int = 1
    num_reanalysers: int = 0
    preset: str = ""
    preset_changes: tuple[tuple[str, Any], ...] = ()
    games_per_batch: int = 0
    simulations: int = 0
    train_steps: int = 0
    fixed_ports: bool = True
    port_base: int = 0
    monitor: bool = True
    evaluator: bool = False
    extra_args: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        import games

        require(self.game in games.names(),
                f"FleetConfig.game must be one of {games.names()}, got {self.game!r}")
        require(self.num_agents >= 1, f"FleetConfig.num_agents must be >= 1, got {self.num_agents}")
        require(self.num_reanalysers >= 0,
                f"FleetConfig.num_reanalysers must be >= 0, got {self.num_reanalysers}")
        from services.launcher.presets import PRESETS

        require(self.preset in PRESETS,
                f"FleetConfig.preset must be one of {', '.join(repr(n) for n in PRESETS)}, got {self.preset!r}")
        self.chosen_preset.service_flags(self.game)  # every change is checked where settings are
        require(self.games_per_batch >= 0,
                f"FleetConfig.games_per_batch must be >= 0, got {self.games_per_batch}")
        require(self.simulations >= 0, f"FleetConfig.simulations must be >= 0, got {self.simulations}")
        require(self.train_steps >= 0, f"FleetConfig.train_steps must be >= 0, got {self.train_steps}")
        require(self.port_base == 0 or MIN_PORT_BASE <= self.port_base <= 65536 - PORT_SPAN,
                f"FleetConfig.port_base must be 0 (the default ports) or in [{MIN_PORT_BASE}, "
                f"{65536 - PORT_SPAN}], got {self.port_base}")
        require(self.port_base == 0 or self.fixed_ports,
                f"FleetConfig.port_base must be 0 when fixed_ports is False (free ports), got {self.port_base}")

    @property
    def chosen_preset(self) -> "Preset":
        """The preset with `preset_changes` applied."""
        from services.launcher.presets import PRESETS

        return PRESETS[self.preset].with_changes(dict(self.preset_changes))

    @property
    def reanalysers(self) -> int:
        """Reanalyse workers that run: num_reanalysers, or the preset's."""
        return self.num_reanalysers or self.chosen_preset.reanalysers

    @property
    def agent_games_per_batch(self) -> int:
        """B of each agent: games_per_batch, or the preset's (0 = the game's default)."""
        return self.games_per_batch or self.chosen_preset.games_per_batch

    def ports(self, role: str) -> tuple[int | None, int | None]:
        """The fixed (gRPC or HTTP, metrics) ports of the first service of `role`; None where it
        has none, or picks a free one."""
        if not self.fixed_ports:
            return None, None
        if not self.port_base:
            return DEFAULT_PORTS[role]
        return tuple(None if offset is None else self.port_base + offset  # type: ignore[return-value]
                     for offset in PORT_OFFSETS[role])

    def planned_ports(self) -> list[tuple[str, int]]:
        """(what, port) for every fixed port the fleet binds, in start order: what the launcher
        checks before it starts anything."""
        from services.launcher.local import planned_ports

        return planned_ports(build_topology(self))


def _ports(role: str) -> Ports:
    """The ports of `role`: the README's (DEFAULT_PORTS) and their offsets from a port base."""
    (main, metrics), (main_offset, metrics_offset) = DEFAULT_PORTS[role], PORT_OFFSETS[role]
    return Ports(main, metrics, main_offset, metrics_offset)


def build_program(config: FleetConfig) -> Program:
    """The fleet `config` describes, as a program. It reads what the fleet is (game, agents,
    batch, simulations, steps, monitor); where it runs (`run_dir`, ports, `extra_args`) is the
    launchers' business."""
    program = Program("mufleet")
    # Volumes in the order compose lists them; locally each is a folder of the run directory.
    models = program.volume("models", mount="/models")
    replay_data = program.volume("replay", mount="/data/replay")
    checkpoints = program.volume("checkpoints", mount="/data/checkpoints")
    tensorboard = program.volume("tensorboard", mount="/data/tensorboard")
    prometheus_data = program.volume("prometheus", mount="/prometheus")
    evaluator_data = program.volume("evaluator", mount="/data/evaluator")
    game = program.setting("GAME", config.game)
    model_dir = models / "muzero"  # models/models.config's base_path in containers
    sims = ("--simulations", str(config.simulations)) if config.simulations else ()
    batch = ("--games-per-batch", str(config.agent_games_per_batch)) if config.agent_games_per_batch else ()
    chosen = config.chosen_preset
    preset_flags = chosen.service_flags(config.game)

    environment = program.add_node(Node(
        "environment", "services.environment", args=("--game", game), kind=GRPC, ports=_ports("environment"),
        doc="Hosts vectorized games; one session is B games stepped together."))
    replay = program.add_node(Node(
        "replay", "services.replay", args=("--game", game, "--data-dir", replay_data,
                                           *preset_flags.get("replay", ())), kind=GRPC,
        ports=_ports("replay"), health=Health(start_period_s=60),
        doc="Stores finished games durably (written before the ack) and computes training targets."))
    trainer = program.add_node(Node(
        "trainer", "services.trainer", kind=WORKER, ports=_ports("trainer"), health=Health(start_period_s=120),
        args=("--game", game, "--replay", replay.grpc_address, "--models", model_dir,
              "--checkpoint-dir", checkpoints, "--resume",
              *(("--steps", str(config.train_steps)) if config.train_steps else ()),
              *preset_flags.get("trainer", ())),
        # In a container the default (<checkpoint-dir>/../tensorboard) would not be on a volume.
        container_args=("--tensorboard-dir", tensorboard), gpu=True,
        doc="Exports version 0 before training, then a version every export interval, to "
            "/models/muzero: the `models` volume that TensorFlow Serving reads (models/models.config's "
            "base_path)."))
    network = program.add_node(Node(
        "network", "services.network", kind=GRPC, ports=_ports("network"),
        # TensorFlow on one thread: its pools spin while they wait, and on a machine the whole
        # fleet shares that CPU is the agent's and the trainer's. Batching merges the requests of
        # several agents; one agent's requests never meet (each waits for the last), so there it
        # would only add its timeout to every search step (benchmarks/selfplay.py measured the
        # agent at half speed with it).
        args=("--model_name", "muzero", "--model_base_path", model_dir,
              *(("--enable_batching",) if config.num_agents > 1 else ()),
              "--file_system_poll_wait_seconds", "1", "--tensorflow_intra_op_parallelism", "1",
              "--tensorflow_inter_op_parallelism", "1"),
        health=Health(service="tensorflow.serving.PredictionService", start_period_s=180),
        # The trainer exports version 0 before it trains, so the network has a model to load.
        after=(trainer,), gpu=True,
        container=Container(
            image=join("tensorflow/serving:", Setting("TF_SERVING_TAG", "latest")),
            gpu_image=join("tensorflow/serving:", Setting("TF_SERVING_TAG", "latest"), "-gpu"),
            entrypoint=("tensorflow_model_server",),
            command=("--port=8500", "--rest_api_port=8501", "--model_config_file=/config/models.config",
                     "--enable_batching", "--batching_parameters_file=/config/batching.config",
                     "--monitoring_config_file=/config/monitoring.config", "--file_system_poll_wait_seconds=1"),
            port=8500, metrics_port=8501, metrics_path="/monitoring/prometheus/metrics",
            volumes=(Mount(models, read_only=True),
                     *(Mount(f"./models/{name}", f"/config/{name}", read_only=True)
                       for name in ("models.config", "batching.config", "monitoring.config"))),
            healthcheck=("CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8501 && printf 'GET "
                         "/v1/models/muzero HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q AVAILABLE <&3"),
            doc="The real TensorFlow Serving: gRPC 8500 (PredictionService, ModelService), REST 8501 "
                "with Prometheus metrics at /monitoring/prometheus/metrics (models/monitoring.config). "
                "It has no gRPC health service and its image no curl: the health check asks its REST "
                "API, healthy once a version of the model is AVAILABLE."),
        doc="Serves the trainer's SavedModels through TensorFlow Serving's API (our own server "
            "locally), batching requests and loading new versions as they appear."))
    agent = program.add_node(Node(
        "agent", "services.agent", kind=WORKER, ports=_ports("agent"), health=Health(start_period_s=60),
        args=("--game", game, "--environment", environment.grpc_address, "--network", network.grpc_address,
              "--replay", replay.grpc_address, *batch, *sims, *chosen.agent_args,
              *preset_flags.get("agent", ())),
        replicas=config.num_agents, scalable=True,
        doc="Batched MCTS self-play. Scale with `--scale agent=N`: no container name, no host port; "
            "every replica registers under the name `agent`, which Prometheus and the monitor "
            "resolve to all replicas. No --seed: each replica draws a fresh one, so replicas play "
            "different games."))
    reanalyse = program.add_node(Node(
        "reanalyse", "services.reanalyse", kind=WORKER, ports=_ports("reanalyse"), health=Health(start_period_s=60),
        args=("--game", game, "--replay", replay.grpc_address, "--network", network.grpc_address, *sims,
              *chosen.reanalyse_args, *preset_flags.get("reanalyse", ())),
        replicas=max(config.reanalysers, 1), scalable=True,
        profile=None if config.reanalysers else "reanalyse",
        doc="Searches stored positions again with the newest model and sends the new targets to the "
            "replay (MuZero Reanalyse). Optional: `--profile reanalyse` starts it, `--scale "
            "reanalyse=N` runs N (each with a fresh seed and the replay's oldest targets first)."))
    evaluator = program.add_node(Node(
        "evaluator", "services.evaluator", kind=WORKER, ports=_ports("evaluator"), health=Health(start_period_s=60),
        args=("--game", game, "--network", network.grpc_address, "--environment", environment.grpc_address,
              "--state-dir", evaluator_data, "--models", model_dir, *sims,
              *preset_flags.get("evaluator", ())),
        profile=None if config.evaluator else "evaluator",
        doc="Plays the newest model version against the game's ladder of opponents (and earlier "
            "versions it keeps as anchors) after every new version; Elo ratings over every match in "
            "/data/evaluator (results.jsonl, summary.json). Optional: `--profile evaluator` starts it. "
            "docs/evaluator.md."))
    if config.monitor:
        # An optional node that is off (its profile) runs nowhere locally; compose and
        # Kubernetes may start it later, so the monitor watches it as optional ("off", no alarm,
        # until it runs: the evaluator's metrics fill the Strength panel then).
        scraped = (environment, replay, trainer, network, agent, reanalyse, evaluator)
        program.add_node(Node(
            "monitor", "monitor", kind=HTTP, ports=_ports("monitor"),
            args=("--game", game, "--environment", environment.grpc_address, "--replay", replay.grpc_address,
                  "--network", network.grpc_address,
                  *(Each(node.name, ("--metrics", join(node.instance_name, "=", node.metrics_address)),
                         if_off=("--optional-metrics", join(node.instance_name, "=", node.metrics_address)))
                    for node in scraped)),
            health=Health(path="/healthz"), waits_for=STARTED, publish=Setting("MONITOR_PORT", "5000"),
            doc="The dashboard. It starts once the others have started, not once they are healthy: "
                "it shows what is not up yet."))
    program.add_node(Node(
        "prometheus", None, kind=HTTP, publish=Setting("PROMETHEUS_PORT", "9090"),
        container=Container(
            image=join("prom/prometheus:", Setting("PROMETHEUS_TAG", "v2.53.0")),
            command=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                     "--storage.tsdb.retention.time=15d"),
            port=9090,
            volumes=(Mount("./docker/prometheus.yml", "/etc/prometheus/prometheus.yml", read_only=True),
                     Mount(prometheus_data)),
            healthcheck=("CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"),
            doc="No --web.enable-lifecycle: it would let any client stop (POST /-/quit) or reload it."),
        doc="Scrapes every service (docker/prometheus.yml); containers only: the local fleet has the "
            "dashboard."))
    return program


def build_topology(config: FleetConfig) -> list[ServiceSpec]:
    """The local fleet of `config`: the program's processes on this machine, in start order."""
    # Imported here, not above: the program (and the compose renderer) need no gRPC runtime.
    from services.launcher.local import PortPlan, plan

    return plan(build_program(config), Path(config.run_dir), PortPlan(config.fixed_ports, config.port_base),
                config.extra_args)
