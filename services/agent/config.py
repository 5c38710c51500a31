"""The self-play agent's configuration."""

from __future__ import annotations

import dataclasses

import games
from games.validation import require
from services.agent.opponents import OPPONENT_GAMES
from services.agent.search.config import SEARCHER_OVERRIDES, SELF_PLAY_OVERRIDES, searcher_changes


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
        Each group sends its own requests, so G groups cost the network server G times its
        per-request overhead per search step: G > 1 pays only when the server has cores (or
        a GPU) of its own to overlap with, e.g. on another machine. On a machine the fleet
        shares, 1 group costs the least CPU per simulation (benchmarks/selfplay.py, docs/agent.md).
      chunk_length: sampleable moves per record of a long game (games shorter are sent whole).
      seed: seeds the environment session and the search's random stream.
      model_name: the served model's name.
      request_timeout_s: deadline of each network and environment call.
      max_pending_records: self-play pauses while this many records await the replay's ack.
      max_moves: stop after this many moves of the whole batch (0 = run until stopped).
      random_opening_moves: the first this many moves of every game are played uniformly at
        random among the legal ones (the search's policy stays their policy target); None: the
        game's search.random_opening_moves.
      random_branch_probability: in [0, 1], the probability that a self-play move at a ply
        below random_branch_plies is played at random, the game then recorded only from the
        position after it (games/settings.py's SearchSettings says why); None: the game's
        search.random_branch_probability.
      random_branch_plies: >= 1 when games branch; None: the game's search.random_branch_plies.
      rescale_values: min-max rescale each node's completed Q before Gumbel's sigma (None: the
        game's search.rescale_values; docs/learning.md's tic-tac-toe section says why a board
        game may not want it).
      gumbel_scale: >= 0, scale of the root Gumbel noise that picks self-play's moves (None:
        the game's search.gumbel_scale; larger spreads self-play over moves of near-equal value
        that the network's policy ranks low, 0 plays the search's choice).
      stop_grace_s: on stop, how long pending records may take to reach the replay, seconds;
        the process exits within it (non-zero if some stayed unsent).
      host: interface of the metrics endpoint.
      metrics_port: port of the Prometheus /metrics endpoint; 0 picks a free one.
    """

    game: str
    environment: str
    network: str
    replay: str
    games_per_batch: int
    simulations: int
    groups: int = 1
    chunk_length: int = 200
    seed: int = 0
    model_name: str = "muzero"
    request_timeout_s: float = 30.0
    max_pending_records: int = 4096
    max_moves: int = 0
    random_opening_moves: int | None = None
    random_branch_probability: float | None = None
    random_branch_plies: int | None = None
    rescale_values: bool | None = None
    gumbel_scale: float | None = None
    stop_grace_s: float = 10.0
    host: str = "127.0.0.1"
    metrics_port: int = 9103

    def __post_init__(self) -> None:
        require(self.game in games.names(),
                f"AgentConfig.game must be one of {', '.join(games.names())}, got {self.game!r}")
        for name in ("environment", "network", "replay"):
            address = getattr(self, name)
            require(":" in address, f"AgentConfig.{name} must be host:port, got {address!r}")
        require(self.games_per_batch >= 1,
                f"AgentConfig.games_per_batch must be >= 1, got {self.games_per_batch}")
        require(self.simulations >= 1, f"AgentConfig.simulations must be >= 1, got {self.simulations}")
        require(1 <= self.groups <= self.games_per_batch,
                f"AgentConfig.groups must be in [1, games_per_batch={self.games_per_batch}], got {self.groups}")
        require(self.chunk_length >= 1, f"AgentConfig.chunk_length must be >= 1, got {self.chunk_length}")
        self._check_search_overrides()
        require(self.request_timeout_s > 0,
                f"AgentConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        require(self.max_pending_records >= 1,
                f"AgentConfig.max_pending_records must be >= 1, got {self.max_pending_records}")
        require(self.max_moves >= 0, f"AgentConfig.max_moves must be >= 0, got {self.max_moves}")
        require(self.stop_grace_s > 0, f"AgentConfig.stop_grace_s must be > 0, got {self.stop_grace_s}")
        require(bool(self.host), f"AgentConfig.host must be non-empty, got {self.host!r}")
        require(0 <= self.metrics_port <= 65535,
                f"AgentConfig.metrics_port must be in [0, 65535], got {self.metrics_port}")

    def _check_search_overrides(self) -> None:
        """The game's search settings with this config's overrides, validated by SearchSettings
        itself (one place holds the rules, cross-field ones included); its message is re-raised
        naming this config's field, and the game when a field it checks against is the game's."""
        changes = searcher_changes(self, SEARCHER_OVERRIDES + SELF_PLAY_OVERRIDES)
        try:
            dataclasses.replace(games.make(self.game).settings.search, **changes)
        except ValueError as error:
            message = str(error).replace("SearchSettings.", "AgentConfig.")
            kept = [name for name in SEARCHER_OVERRIDES + SELF_PLAY_OVERRIDES
                    if name not in changes and name in message]
            raise ValueError(message + (f" ({self.game}'s {', '.join(kept)})" if kept else "")) from None


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """One evaluation run: greedy play of `num_games` games, then a summary.

    Attributes:
      game: registered game name.
      environment, network: "host:port" of the peers.
      num_games: M, games played (all at once, in one environment session).
      simulations: MCTS simulations per move.
      opponent: two-player games only: a name of `services.agent.opponents.OPPONENTS`
        (None: "random"); each opponent plays the games of `OPPONENT_GAMES` only.
      version: the model version to play (None: the newest available at the start, pinned for
        the whole evaluation).
      seed: seeds the environment session, the search and the opponent.
      model_name: the served model's name.
      request_timeout_s: deadline of each network and environment call.
      rescale_values: min-max rescale each node's completed Q before Gumbel's sigma (None: the
        game's search.rescale_values); set it as the self-play that trained the model had it,
        so the evaluation searches the way the fleet's evaluator rates.
    """

    game: str
    environment: str
    network: str
    num_games: int
    simulations: int
    opponent: str | None = None
    version: int | None = None
    seed: int = 0
    model_name: str = "muzero"
    request_timeout_s: float = 30.0
    rescale_values: bool | None = None

    def __post_init__(self) -> None:
        require(self.game in games.names(),
                f"EvaluationConfig.game must be one of {', '.join(games.names())}, got {self.game!r}")
        for name in ("environment", "network"):
            address = getattr(self, name)
            require(":" in address, f"EvaluationConfig.{name} must be host:port, got {address!r}")
        require(self.num_games >= 1, f"EvaluationConfig.num_games must be >= 1, got {self.num_games}")
        require(self.simulations >= 1,
                f"EvaluationConfig.simulations must be >= 1, got {self.simulations}")
        require(self.version is None or self.version >= 0,
                f"EvaluationConfig.version must be >= 0, got {self.version}")
        require(self.request_timeout_s > 0,
                f"EvaluationConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.opponent is not None:
            require(self.opponent in OPPONENT_GAMES,
                    f"EvaluationConfig.opponent must be one of {', '.join(OPPONENT_GAMES)}, "
                    f"got {self.opponent!r}")
            require(games.make(self.game).spec.num_players == 2,
                    f"EvaluationConfig.opponent {self.opponent!r} needs a two-player game, got "
                    f"EvaluationConfig.game {self.game!r} (one player)")
            supported = OPPONENT_GAMES[self.opponent]
            require(supported is None or self.game in supported,
                    f"EvaluationConfig.opponent {self.opponent!r} plays {', '.join(supported or ())} "
                    f"only, got EvaluationConfig.game {self.game!r}")

    @property
    def opponent_name(self) -> str:
        """The opponent that plays (two-player games): `opponent`, or "random"."""
        return self.opponent or "random"
