"""The monitor's configuration: what it watches and how often."""

from __future__ import annotations

import dataclasses
import math

from games.validation import require

# The roles the dashboard knows. A metrics target named "agent-3" has role "agent".
ROLES = ("environment", "replay", "network", "trainer", "agent", "reanalyse", "monitor")
# Services that serve gRPC (and so the standard health check), by the monitor's flag.
GRPC_ROLES = ("environment", "replay", "network")


def role_of(name: str) -> str:
    """The role of a service name: "agent-3" -> "agent", "replay" -> "replay"."""
    base, _, suffix = name.rpartition("-")
    return base if base and suffix.isdigit() else name


@dataclasses.dataclass(frozen=True)
class MetricsTarget:
    """One Prometheus endpoint to scrape.

    Attributes:
      name: the service's name in the fleet ("agent-0"); `role_of(name)` is its role.
      address: "host:port" of its HTTP metrics endpoint. A host name that resolves to several
        addresses (docker compose's DNS for a scaled service) is scraped at every address, each
        as a numbered replica (`scraper.ReplicaNames`).
      path: the HTTP path of the metrics ("/metrics"; TensorFlow Serving:
        "/monitoring/prometheus/metrics").
      optional: a service that may not run (compose's optional profiles, a Kubernetes
        Deployment at 0 replicas): while unreachable its card says "off", not "down", and no
        alert is raised.
    """

    name: str
    address: str
    path: str = "/metrics"
    optional: bool = False

    @property
    def role(self) -> str:
        return role_of(self.name)

    @classmethod
    def parse(cls, text: str, optional: bool = False) -> "MetricsTarget":
        """NAME=HOST:PORT[/path] -> MetricsTarget; ValueError naming what is wrong."""
        flag = "--optional-metrics" if optional else "--metrics"
        name, sep, rest = text.partition("=")
        require(bool(sep) and bool(name) and bool(rest),
                f"{flag} must be NAME=HOST:PORT[/path], got {text!r}")
        address, slash, path = rest.partition("/")
        require(_is_address(address), f"{flag} {name}: expected HOST:PORT, got {address!r}")
        return cls(name=name, address=address, path="/" + path if slash else "/metrics", optional=optional)


def _is_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """What the dashboard watches.

    Attributes:
      game: the fleet's game (games.names()); the play page plays it if it is a two-player
        board game (tictactoe, connect4, othello) or 2048.
      environment, replay, network: "host:port" of the gRPC services ("" = not watched).
      metrics: the Prometheus endpoints scraped every `scrape_interval_s`.
      scrape_interval_s: seconds between the monitor's scrapes (> 0); rates are counter deltas
        between two scrapes.
      scrape_timeout_s: deadline of one scrape, health check or GetStats call (> 0).
      history: scrapes kept in memory for the charts (>= 2); the oldest are dropped.
      model_name: the model served by the network.
      play_simulations: simulations per model move on the play page (0 = the game's default).
      play_timeout_s: deadline of each network request of the play page (> 0).
      play_rate_per_s: `POST /api/play` requests allowed per second, all clients together, in
        the long run (>= 0; 0 = no limit). Each one may run a whole search on the network, so a
        flood of them would take the network from the agents; past the limit the answer is 429
        with Retry-After.
      play_burst: requests allowed at once above that rate (>= 1): a token bucket of this size.
    """

    game: str
    environment: str = ""
    replay: str = ""
    network: str = ""
    metrics: tuple[MetricsTarget, ...] = ()
    scrape_interval_s: float = 2.0
    scrape_timeout_s: float = 1.5
    history: int = 1800
    model_name: str = "muzero"
    play_simulations: int = 0
    play_timeout_s: float = 10.0
    play_rate_per_s: float = 5.0
    play_burst: int = 30

    def __post_init__(self) -> None:
        import games

        require(self.game in games.names(),
                f"MonitorConfig.game must be one of {games.names()}, got {self.game!r}")
        for name in GRPC_ROLES:
            address = getattr(self, name)
            require(address == "" or _is_address(address),
                    f"MonitorConfig.{name} must be HOST:PORT, got {address!r}")
        names = [t.name for t in self.metrics]
        require(len(set(names)) == len(names), f"MonitorConfig.metrics names must be unique, got {names}")
        require(self.scrape_interval_s > 0,
                f"MonitorConfig.scrape_interval_s must be > 0, got {self.scrape_interval_s}")
        require(self.scrape_timeout_s > 0,
                f"MonitorConfig.scrape_timeout_s must be > 0, got {self.scrape_timeout_s}")
        require(self.history >= 2, f"MonitorConfig.history must be >= 2, got {self.history}")
        require(self.play_simulations >= 0,
                f"MonitorConfig.play_simulations must be >= 0, got {self.play_simulations}")
        require(self.play_timeout_s > 0, f"MonitorConfig.play_timeout_s must be > 0, got {self.play_timeout_s}")
        require(math.isfinite(self.play_rate_per_s) and self.play_rate_per_s >= 0,
                f"MonitorConfig.play_rate_per_s must be >= 0 (0 = no limit), got {self.play_rate_per_s}")
        require(self.play_burst >= 1, f"MonitorConfig.play_burst must be >= 1, got {self.play_burst}")

    def grpc_address(self, role: str) -> str:
        return getattr(self, role) if role in GRPC_ROLES else ""
