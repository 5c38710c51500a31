"""The evaluator's configuration, and its ladder of opponents."""

from __future__ import annotations

import dataclasses

import games
from games.validation import require
from services.agent.opponents import OPPONENT_GAMES, OPPONENTS

# Opponents left out of the default ladder because a match against them takes long: rollout
# UCT at 1,000 simulations searches about 26 Connect Four moves a second for 50 games at once on
# a quiet 2-core machine (services/agent/rollout_mcts.py), so a match of 20 games takes a minute
# or more (Othello several times longer), more than a round against everything else. Name it in --ladder to play it.
SLOW_OPPONENTS = ("mcts1000",)


def fitting_opponents(game: str) -> tuple[str, ...]:
    """The opponents of OPPONENTS that can play `game` (OPPONENT_GAMES; none for one-player games)."""
    if games.make(game).spec.num_players != 2:
        return ()
    return tuple(name for name in OPPONENTS if OPPONENT_GAMES[name] is None or game in OPPONENT_GAMES[name])


def default_ladder(game: str) -> tuple[str, ...]:
    """Every opponent that fits `game` but the slow ones (SLOW_OPPONENTS)."""
    return tuple(name for name in fitting_opponents(game) if name not in SLOW_OPPONENTS)


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """How one evaluator process rates the newest model version.

    Attributes:
      game: registered game name.
      network, environment: "host:port" of the peers.
      state_dir: where the evaluator keeps its results (results.jsonl, append-only), its summary
        (summary.json) and its anchors' copies (anchors/<version>/); a restarted evaluator
        reads them back and goes on.
      ladder: comma-separated opponents of services.agent.opponents.OPPONENTS that every rated
        version plays ("" = every opponent that fits the game but mcts1000, whose matches take
        minutes); two-player games only.
      games_per_match: games per match, half with the model moving first and half second (even
        in two-player games); in one-player games the games whose mean return is recorded.
      simulations: MCTS simulations per move of the model (0 = the game's num_simulations).
      rescale_values: min-max rescale each node's completed Q before Gumbel's sigma, in the
        searches of the rated version and of the anchors (None: the game's
        search.rescale_values); rate with the search the agents train with.
      models: the trainer's model base path (<run>/models/muzero); when given, every
        anchor_every versions the rated version is copied into state_dir/anchors and later
        versions also play it ("" = no earlier versions as anchors; ignored in one-player
        games, which have no ladder).
      anchor_every: versions apart (in version numbers: the trainer's versions are its
        training steps) that two kept anchors are at least.
      anchor_opening_moves: in a match against an earlier version (an anchor), the first moves
        of every game (both sides') are uniformly random: both players search greedily and
        deterministically, so without them a match is one game per side played again and again.
        Matches against the fixed opponents start from the rules' position.
      rate_every: versions apart (in version numbers) between rated versions: a version is
        rated when it is at least this much newer than the last one rated (0 or 1: every new
        version). A long match (mcts1000) then takes a share of the machine, not all of it.
      max_anchors: earlier versions kept as anchors at most; the oldest is dropped when a newer
        one is kept (its past matches stay in the ratings).
      seed: seeds the matches' random streams (with the version and the opponent).
      model_name: the served model's name.
      request_timeout_s: deadline of each network and environment call, seconds.
      poll_s: seconds between looks for a version newer than the one just rated.
      max_rounds: stop after this many rounds (0 = run until stopped).
      host: interface of the metrics endpoint.
      metrics_port: port of the Prometheus /metrics endpoint; 0 picks a free one.
    """

    game: str
    network: str
    environment: str
    state_dir: str
    ladder: str = ""
    games_per_match: int = 20
    simulations: int = 0
    rescale_values: bool | None = None
    models: str = ""
    anchor_every: int = 1000
    max_anchors: int = 3
    rate_every: int = 0
    anchor_opening_moves: int = 2
    seed: int = 0
    model_name: str = "muzero"
    request_timeout_s: float = 30.0
    poll_s: float = 5.0
    max_rounds: int = 0
    host: str = "127.0.0.1"
    metrics_port: int = 9106

    def __post_init__(self) -> None:
        require(self.game in games.names(),
                f"EvaluatorConfig.game must be one of {', '.join(games.names())}, got {self.game!r}")
        for name in ("network", "environment"):
            address = getattr(self, name)
            require(":" in address, f"EvaluatorConfig.{name} must be host:port, got {address!r}")
        require(bool(self.state_dir), "EvaluatorConfig.state_dir must be a directory, got ''")
        two_player = games.make(self.game).spec.num_players == 2
        names = [n.strip() for n in self.ladder.split(",") if n.strip()]
        if not two_player:
            require(not names, f"EvaluatorConfig.ladder must be empty for the one-player game {self.game} "
                               f"(its matches are mean returns), got {self.ladder!r}")
        fitting = fitting_opponents(self.game)
        for name in names:
            require(name in OPPONENTS, f"EvaluatorConfig.ladder: no opponent {name!r}; the opponents are "
                                       f"{', '.join(OPPONENTS)}")
            require(name in fitting, f"EvaluatorConfig.ladder: opponent {name!r} cannot play {self.game}; "
                                     f"those that can: {', '.join(fitting)}")
        require(len(set(names)) == len(names), f"EvaluatorConfig.ladder names an opponent twice: {self.ladder!r}")
        require(self.games_per_match >= 1,
                f"EvaluatorConfig.games_per_match must be >= 1, got {self.games_per_match}")
        if two_player:
            require(self.games_per_match % 2 == 0,
                    f"EvaluatorConfig.games_per_match must be even in a two-player game (half as each "
                    f"side), got {self.games_per_match}")
        require(self.simulations >= 0, f"EvaluatorConfig.simulations must be >= 0, got {self.simulations}")
        require(self.anchor_every >= 1, f"EvaluatorConfig.anchor_every must be >= 1, got {self.anchor_every}")
        require(self.anchor_opening_moves >= 0,
                f"EvaluatorConfig.anchor_opening_moves must be >= 0, got {self.anchor_opening_moves}")
        require(self.rate_every >= 0, f"EvaluatorConfig.rate_every must be >= 0, got {self.rate_every}")
        require(self.max_anchors >= 1, f"EvaluatorConfig.max_anchors must be >= 1, got {self.max_anchors}")
        require(self.request_timeout_s > 0,
                f"EvaluatorConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        require(self.poll_s > 0, f"EvaluatorConfig.poll_s must be > 0, got {self.poll_s}")
        require(self.max_rounds >= 0, f"EvaluatorConfig.max_rounds must be >= 0, got {self.max_rounds}")
        require(bool(self.host), f"EvaluatorConfig.host must be non-empty, got {self.host!r}")
        require(0 <= self.metrics_port <= 65535,
                f"EvaluatorConfig.metrics_port must be in [0, 65535], got {self.metrics_port}")

    @property
    def two_player(self) -> bool:
        return games.make(self.game).spec.num_players == 2

    @property
    def keeps_anchors(self) -> bool:
        """Whether earlier versions are kept as anchors: `models` given, in a two-player game."""
        return bool(self.models) and self.two_player

    @property
    def opponents(self) -> tuple[str, ...]:
        """The ladder's opponents: the given ones, or `default_ladder(game)`."""
        names = tuple(n.strip() for n in self.ladder.split(",") if n.strip())
        return names or default_ladder(self.game)

    @property
    def search_simulations(self) -> int:
        """The simulations of each of the model's moves: `simulations`, or the game's default."""
        return self.simulations or games.make(self.game).settings.search.num_simulations
