"""Presets: named sets of settings that make the fleet work in a regime, on top of a game's
defaults (`make run PRESET=sample-efficient`, `python -m services.launcher --preset ...`,
`python -m benchmarks.learn --preset ...`).

A preset changes fields of the game's `MuZeroSettings` by name (validated by the settings
sections themselves) and the fleet's shape (reanalysers, games per agent). The program passes
each changed field to the service that owns it, as that service's flag: replay settings to the
replay (`--samples-per-insert`, ...), training settings that the trainer takes as flags to the
trainer (`--consistency-weight`, ...), the network's size (`--hidden-size`, `--res-blocks`) and
Stochastic MuZero's chance codes (`--chance-codes`) to the trainer, and value prefix
(`--value-prefix`, `--value-prefix-horizon`) to both, since the replay's targets and the
trainer's network must agree (searchers take the horizon, the hidden state's shape and the
chance codes from the model itself), and the search fields the searchers take as flags
(`--rescale-values`) to every agent, reanalyser and the evaluator, so that the targets and the
ratings come from one search. A field no service takes as a flag
is refused when the preset is built, so a preset can never promise what the fleet does not do.

The presets (docs/learning.md has what they reached):

  * "" (none): the game's defaults, the cheap-environment regime: agents play as fast as they
    can, the trainer samples what is there.
  * "sample-efficient": EfficientZero's regime, the most learning per environment step: the
    replay holds self-play back to a high ratio of training samples per inserted position
    (`block_inserts`, the rate limiter on both sides), few games per agent so that data is
    fresh, a reanalyser refreshing stored targets with the newest model, reanalysed targets
    used, the n of value targets shortened for old data (off-policy correction), and the
    temporal consistency loss with heads sized for small networks.
  * "stochastic": Stochastic MuZero (network.chance_codes = 32): afterstates, a chance encoder
    and chance nodes in every search, for games where chance follows a move (2048's tiles).
    Only the trainer is told; every searcher takes it from the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import games
from games.settings import SECTION_OF_FIELD, MuZeroSettings
from games.validation import require
from services.agent.search.config import SEARCHER_OVERRIDES, SELF_PLAY_OVERRIDES
from services.trainer.config import NETWORK_OVERRIDES, SETTINGS_OVERRIDES

# The trainer takes training fields (SETTINGS_OVERRIDES) and network fields (NETWORK_OVERRIDES,
# the model's size and kind, which every searcher reads from the model) as flags; its config
# imports no TensorFlow.
# Training fields the replay takes as flags too: each goes to both.
_REPLAY_AND_TRAINER = ("value_prefix", "value_prefix_horizon")
# Replay fields the replay takes as flags: every ReplaySettings field (ReplayConfig extends it).
# Training fields that both read are refused: the two would have to change together.
_SHARED = ("num_unroll_steps",)
# The searchers take search fields (SEARCHER_OVERRIDES) as flags: each goes to all three, so that
# self-play, reanalysis and ratings search alike.
_SEARCHERS = ("agent", "reanalyse", "evaluator")
# Self-play's exploration (SELF_PLAY_OVERRIDES) goes to the agents alone.
_SELF_PLAY = ("agent",)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named regime.

    Attributes:
      name: what `--preset` takes.
      doc: what it is for.
      settings: MuZeroSettings field names -> values, for every game.
      per_game: game name -> more field changes for that game (applied after `settings`).
      reanalysers: reanalyse workers the fleet runs (unless the launcher is given a number).
      games_per_batch: B of each agent (0 = the game's), unless the launcher is given one.
      agent_args, reanalyse_args: more flags of every agent and every reanalyser.
    """

    name: str
    doc: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    per_game: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    reanalysers: int = 0
    games_per_batch: int = 0
    agent_args: tuple[str, ...] = ()
    reanalyse_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for fields in (self.settings, *self.per_game.values()):
            for name in fields:
                require(name in SECTION_OF_FIELD, f"Preset {self.name!r}: no settings field {name!r}")
                section = SECTION_OF_FIELD[name]
                require(section == "replay" or (section == "training" and name in SETTINGS_OVERRIDES
                                                and name not in _SHARED)
                        or (section == "network" and name in NETWORK_OVERRIDES)
                        or (section == "search" and name in SEARCHER_OVERRIDES + SELF_PLAY_OVERRIDES),
                        f"Preset {self.name!r}: {section}.{name} is not a flag of the replay, the "
                        f"trainer or the searchers, so the fleet could not apply it")
        for game in self.per_game:
            require(game in games.names(), f"Preset {self.name!r}: per_game names no game {game!r}")
        require(self.reanalysers >= 0, f"Preset {self.name!r}: reanalysers must be >= 0")
        require(self.games_per_batch >= 0, f"Preset {self.name!r}: games_per_batch must be >= 0")

    def with_changes(self, changes: Mapping[str, Any]) -> "Preset":
        """This preset with more field changes (settings fields, or "reanalysers" and
        "games_per_batch"): ablations and one-off runs ("sample-efficient without reanalyse")."""
        changes = dict(changes)
        fleet = {name: int(changes.pop(name)) for name in ("reanalysers", "games_per_batch") if name in changes}
        return dataclasses.replace(self, settings={**self.settings, **changes},
                                   per_game={g: {k: v for k, v in c.items() if k not in changes}
                                             for g, c in self.per_game.items()}, **fleet)

    def changes(self, game: str) -> dict[str, Any]:
        """The field changes for `game`."""
        return {**self.settings, **self.per_game.get(game, {})}

    def game_settings(self, game: str) -> MuZeroSettings:
        """`game`'s settings with the preset applied (validated by their sections)."""
        return games.make(game).settings.replace(**self.changes(game))

    def service_flags(self, game: str) -> dict[str, tuple[str, ...]]:
        """node name ("replay", "trainer", "agent", "reanalyse", "evaluator") -> the flags that
        apply the preset there."""
        self.game_settings(game)  # every value is checked where the settings check it
        flags: dict[str, list[str]] = {}
        for name, value in self.changes(game).items():
            section = SECTION_OF_FIELD[name]
            nodes = (("replay", "trainer") if name in _REPLAY_AND_TRAINER
                     else ("replay",) if section == "replay"
                     else _SELF_PLAY if name in SELF_PLAY_OVERRIDES
                     else _SEARCHERS if section == "search"
                     else ("trainer",))
            flag = "--" + name.replace("_", "-")
            for node in nodes:
                if isinstance(value, bool):
                    flags.setdefault(node, []).append(flag if value else "--no-" + name.replace("_", "-"))
                else:
                    flags.setdefault(node, []).extend((flag, str(value)))
        return {node: tuple(args) for node, args in flags.items()}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("", "the game's defaults: the cheap-environment regime"),
    Preset(
        "sample-efficient",
        "EfficientZero's regime: the most learning per environment step (docs/learning.md)",
        settings=dict(samples_per_insert=64.0, block_inserts=True, reanalysed_target_fraction=1.0,
                      td_age_versions_per_step=200, consistency_weight=2.0, projection_hidden_size=64,
                      projection_size=64, prediction_hidden_size=32),
        per_game={"tictactoe": dict(samples_per_insert=32.0)},
        reanalysers=1, games_per_batch=16,
        # Self-play pauses as soon as a few records wait for the replay, which holds them back.
        agent_args=("--max-pending-records", "4")),
    Preset(
        "stochastic",
        "Stochastic MuZero: chance between a move and the next state as 32 learned codes (2048)",
        settings=dict(chance_codes=32)),
)}


def preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the known ones otherwise."""
    require(name in PRESETS, f"no preset {name!r}: choose one of {', '.join(repr(n) for n in PRESETS)}")
    return PRESETS[name]
