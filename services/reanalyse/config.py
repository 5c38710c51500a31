"""The reanalyse worker's configuration."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import games
from games.validation import require

# The replay's SampleGames orders (protos/replay.proto), as the replay client names them.
Order = Literal["oldest_targets_first", "prioritized", "uniform", "newest_first"]
ORDERS: tuple[str, ...] = typing.get_args(Order)


@dataclasses.dataclass(frozen=True)
class ReanalyseConfig:
    """How one reanalyse process works.

    Attributes:
      game: registered game name.
      replay, network: "host:port" of the peers.
      batch_size: P, positions searched at once (one network request per search step for all of
        them; positions of several stored games share a batch).
      simulations: MCTS simulations per position (0 = the game's num_simulations, what the
        agents search with).
      games_per_request: stored games asked for with each SampleGames.
      order: which stored games come first (the replay's SampleGames order):
        "oldest_targets_first" refreshes every game in turn (the default), "prioritized" favours
        the positions the trainer finds hardest, "uniform" and "newest_first" as they say.
        Several reanalysers at once: the same order makes them reanalyse the same games (no harm:
        the replay keeps the newest reanalysis, but the work is doubled); give them "uniform" or
        "prioritized".
      exploration: search with the self-play training search's exploration (Gumbel noise or
        Dirichlet root noise), as the agent does for the targets it records; False searches
        without it.
      rescale_values: min-max rescale each node's completed Q before Gumbel's sigma (None: the
        game's search.rescale_values); the agents' self-play search should agree.
      groups: the P positions are searched as this many pipelined groups (see AgentConfig.groups).
      max_positions_per_s: caps the rate (0 = as fast as the network answers): on a machine the
        fleet shares, this leaves CPU for self-play and training.
      seed: seeds the search's random stream.
      model_name: the served model's name.
      request_timeout_s: deadline of each network and replay call, seconds.
      max_batches: stop after this many searched batches (0 = run until stopped).
      host: interface of the metrics endpoint.
      metrics_port: port of the Prometheus /metrics endpoint; 0 picks a free one.
    """

    game: str
    replay: str
    network: str
    batch_size: int = 256
    simulations: int = 0
    games_per_request: int = 16
    order: Order = "oldest_targets_first"
    exploration: bool = True
    rescale_values: bool | None = None
    groups: int = 1
    max_positions_per_s: float = 0.0
    seed: int = 0
    model_name: str = "muzero"
    request_timeout_s: float = 30.0
    max_batches: int = 0
    host: str = "127.0.0.1"
    metrics_port: int = 9105

    def __post_init__(self) -> None:
        require(self.game in games.names(),
                f"ReanalyseConfig.game must be one of {', '.join(games.names())}, got {self.game!r}")
        for name in ("replay", "network"):
            address = getattr(self, name)
            require(":" in address, f"ReanalyseConfig.{name} must be host:port, got {address!r}")
        require(self.batch_size >= 1, f"ReanalyseConfig.batch_size must be >= 1, got {self.batch_size}")
        require(self.simulations >= 0, f"ReanalyseConfig.simulations must be >= 0, got {self.simulations}")
        require(self.games_per_request >= 1,
                f"ReanalyseConfig.games_per_request must be >= 1, got {self.games_per_request}")
        require(self.order in ORDERS,
                f"ReanalyseConfig.order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        require(1 <= self.groups <= self.batch_size,
                f"ReanalyseConfig.groups must be in [1, batch_size={self.batch_size}], got {self.groups}")
        require(self.max_positions_per_s >= 0,
                f"ReanalyseConfig.max_positions_per_s must be >= 0, got {self.max_positions_per_s}")
        require(self.request_timeout_s > 0,
                f"ReanalyseConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        require(self.max_batches >= 0, f"ReanalyseConfig.max_batches must be >= 0, got {self.max_batches}")
        require(bool(self.host), f"ReanalyseConfig.host must be non-empty, got {self.host!r}")
        require(0 <= self.metrics_port <= 65535,
                f"ReanalyseConfig.metrics_port must be in [0, 65535], got {self.metrics_port}")

    @property
    def search_simulations(self) -> int:
        """The simulations each position gets: `simulations`, or the game's default."""
        return self.simulations or games.make(self.game).settings.search.num_simulations
