"""The self-play agent's configuration."""

from __future__ import annotations

import dataclasses

from games.base import require


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """How one agent process plays.

    Attributes:
      game: registered game name.
      environment, network, replay: "host:port" of the peers.
      games_per_batch: B, games played at once in one environment session.
      simulations: MCTS simulations per move.
      groups: the B games are split into this many groups whose searches are pipelined: the
        tree work of one group overlaps the network request of another (1 = no pipelining).
      chunk_length: sampleable moves per record of a long game (games shorter are sent whole).
      seed: seeds the environment session and the search's random stream.
      model_name: the served model's name.
      request_timeout_s: deadline of each network and environment call.
      max_pending_records: self-play pauses while this many records await the replay's ack.
      max_moves: stop after this many moves of the whole batch (0 = run until stopped).
    """

    game: str
    environment: str
    network: str
    replay: str
    games_per_batch: int
    simulations: int
    groups: int = 2
    chunk_length: int = 200
    seed: int = 0
    model_name: str = "muzero"
    request_timeout_s: float = 30.0
    max_pending_records: int = 4096
    max_moves: int = 0

    def __post_init__(self) -> None:
        for name in ("environment", "network", "replay"):
            address = getattr(self, name)
            require(":" in address, f"AgentConfig.{name} must be host:port, got {address!r}")
        require(self.games_per_batch >= 1,
                f"AgentConfig.games_per_batch must be >= 1, got {self.games_per_batch}")
        require(self.simulations >= 1, f"AgentConfig.simulations must be >= 1, got {self.simulations}")
        require(1 <= self.groups <= self.games_per_batch,
                f"AgentConfig.groups must be in [1, games_per_batch={self.games_per_batch}], got {self.groups}")
        require(self.chunk_length >= 1, f"AgentConfig.chunk_length must be >= 1, got {self.chunk_length}")
        require(self.request_timeout_s > 0,
                f"AgentConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        require(self.max_pending_records >= 1,
                f"AgentConfig.max_pending_records must be >= 1, got {self.max_pending_records}")
        require(self.max_moves >= 0, f"AgentConfig.max_moves must be >= 0, got {self.max_moves}")
