"""The fleet's topology: which services run, with which flags, in which order.

Arguments may name another service's gRPC address as `{name}` (e.g. "--replay", "{replay}") and
its metrics address as `{name.metrics}`; the launcher fills them in with the addresses the named
service actually bound, so the same topology works with fixed ports and with free ports (port 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from games.base import require

# Fixed ports of the local fleet, (gRPC or HTTP, metrics) by role: the ports of the README's
# table of services (gRPC 5000x, metrics 910x, dashboard 5000).
DEFAULT_PORTS = {
    "environment": (50000, 9100),
    "replay": (50001, 9101),
    "network": (50002, 9102),
    "agent": (None, 9103),
    "trainer": (None, 9104),
    "monitor": (5000, None),
}
# With a port base P (`make run PORT_BASE=P`) the same ports are P + these offsets: gRPC at
# P..P+2, metrics at P+10..P+14, the dashboard at P+20 (one block of PORT_SPAN ports).
PORT_OFFSETS = {
    "environment": (0, 10),
    "replay": (1, 11),
    "network": (2, 12),
    "agent": (None, 13),
    "trainer": (None, 14),
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
      games_per_batch: B, games each agent plays at once (0 = the game's default).
      simulations: MCTS simulations per move (0 = the game's default).
      train_steps: trainer steps before the trainer stops (0 = until stopped).
      fixed_ports: True uses DEFAULT_PORTS (dashboard at http://127.0.0.1:5000), or the ports of
        `port_base`; False lets every service pick a free port (tests, several fleets on one
        machine).
      port_base: 0 for DEFAULT_PORTS; else the first of PORT_SPAN ports that the fixed ports are
        taken from (PORT_OFFSETS), in [MIN_PORT_BASE, 65536 - PORT_SPAN]; only with fixed_ports.
      monitor: start the monitoring dashboard.
      extra_args: per service name, flags appended to its command line.
    """

    game: str
    run_dir: Path
    num_agents: int = 1
    games_per_batch: int = 0
    simulations: int = 0
    train_steps: int = 0
    fixed_ports: bool = True
    port_base: int = 0
    monitor: bool = True
    extra_args: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        import games

        require(self.game in games.names(),
                f"FleetConfig.game must be one of {games.names()}, got {self.game!r}")
        require(self.num_agents >= 1, f"FleetConfig.num_agents must be >= 1, got {self.num_agents}")
        require(self.games_per_batch >= 0,
                f"FleetConfig.games_per_batch must be >= 0, got {self.games_per_batch}")
        require(self.simulations >= 0, f"FleetConfig.simulations must be >= 0, got {self.simulations}")
        require(self.train_steps >= 0, f"FleetConfig.train_steps must be >= 0, got {self.train_steps}")
        require(self.port_base == 0 or MIN_PORT_BASE <= self.port_base <= 65536 - PORT_SPAN,
                f"FleetConfig.port_base must be 0 (the default ports) or in [{MIN_PORT_BASE}, "
                f"{65536 - PORT_SPAN}], got {self.port_base}")
        require(self.port_base == 0 or self.fixed_ports,
                f"FleetConfig.port_base must be 0 when fixed_ports is False (free ports), got {self.port_base}")

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
        roles = ["environment", "replay", "trainer", "network", "agent"] + (["monitor"] if self.monitor else [])
        planned = []
        for role in roles:
            main, metrics = self.ports(role)
            name = "agent-0" if role == "agent" else role
            if main is not None:
                planned.append((f"{name} {'HTTP' if role == 'monitor' else 'gRPC'}", main))
            if metrics is not None:
                planned.append((f"{name} metrics", metrics))
        return planned


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """One process of the fleet.

    Attributes:
      name: unique name in the fleet ("agent-0"); `{name}` in other specs' args is its address.
      module: Python module run as `python -m module`.
      args: command-line arguments, possibly with `{other}` placeholders.
      kind: "grpc" (serves gRPC: the launcher waits for its health check), "http" (serves
        HTTP on --port, e.g. the monitor) or "worker" (no server; only its metrics endpoint).
      health_service: the gRPC service whose health means "ready for traffic" ("" = the server).
    """

    name: str
    module: str
    args: tuple[str, ...]
    kind: str = "grpc"
    health_service: str = ""


def _ports(config: FleetConfig, role: str, index: int = 0) -> tuple[str, str]:
    if index > 0:  # agents after the first: fixed ports are for one of each role
        return "0", "0"
    main, metrics = config.ports(role)
    return str(main or 0), str(metrics or 0)


def build_topology(config: FleetConfig) -> list[ServiceSpec]:
    """The services of `config`'s fleet in start order: each starts after those it names."""
    run = Path(config.run_dir)
    extra = dict(config.extra_args)
    models = str(run / "models" / "muzero")

    def spec(name: str, module: str, role: str, args: list[str], index: int = 0, kind: str = "grpc",
             health_service: str = "") -> ServiceSpec:
        port, metrics_port = _ports(config, role, index)
        ports = {"grpc": ["--port", port, "--metrics-port", metrics_port],
                 "http": ["--port", port],  # the monitor serves its own /metrics on that port
                 "worker": ["--metrics-port", metrics_port]}[kind]
        return ServiceSpec(name, module, tuple(args + ports + list(extra.get(name, ()))), kind,
                           health_service)

    sims = ["--simulations", str(config.simulations)] if config.simulations else []
    batch = ["--games-per-batch", str(config.games_per_batch)] if config.games_per_batch else []
    specs = [
        spec("environment", "services.environment", "environment", ["--game", config.game]),
        spec("replay", "services.replay", "replay",
             ["--game", config.game, "--data-dir", str(run / "replay")]),
        # The trainer exports version 0 before it trains, so the network has a model to load.
        spec("trainer", "services.trainer", "trainer",
             ["--game", config.game, "--replay", "{replay}", "--models", models,
              "--checkpoint-dir", str(run / "checkpoints"), "--resume"]
             + (["--steps", str(config.train_steps)] if config.train_steps else []), kind="worker"),
        spec("network", "services.network", "network",
             ["--model_name", "muzero", "--model_base_path", models, "--enable_batching",
              "--file_system_poll_wait_seconds", "1"],
             health_service="tensorflow.serving.PredictionService"),
    ]
    for i in range(config.num_agents):
        specs.append(spec(f"agent-{i}", "services.agent", "agent",
                          ["--game", config.game, "--environment", "{environment}",
                           "--network", "{network}", "--replay", "{replay}", *batch, *sims],
                          index=i, kind="worker"))
    if config.monitor:
        names = [s.name for s in specs]
        specs.append(spec("monitor", "monitor", "monitor",
                          ["--game", config.game, "--environment", "{environment}",
                           "--replay", "{replay}", "--network", "{network}"]
                          + [arg for name in names
                             for arg in ("--metrics", f"{name}={{{name}.metrics}}")],
                          kind="http"))
    return specs
