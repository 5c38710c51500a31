"""The search's settings: `SearchConfig`, a game's `SearchSettings` and its discount."""

from __future__ import annotations

import dataclasses
from typing import Any


from games.settings import MuZeroSettings, SearchSettings
from games.validation import require
from services.agent.search.policies import POLICIES

# Search settings that each searcher (the agent's self-play, the reanalyser, the evaluator) takes
# as a flag: its config has a field of the same name, None meaning the game's. Training targets
# come from the first two and ratings from the third, so a change goes to all three (presets).
SEARCHER_OVERRIDES = ("rescale_values",)
# Search settings of self-play's exploration, which only the agent takes as a flag (same
# convention): they choose which games are played, so reanalysis and ratings must not take them.
SELF_PLAY_OVERRIDES = ("random_opening_moves", "random_branch_probability", "random_branch_plies", "gumbel_scale")


def searcher_changes(config: Any, names: tuple[str, ...] = SEARCHER_OVERRIDES) -> dict[str, Any]:
    """The `names` fields (default SEARCHER_OVERRIDES) that a searcher's `config` sets (not
    None): the changes to apply to the game's settings (`MuZeroSettings.replace`) before its
    search is built. The agent passes SEARCHER_OVERRIDES + SELF_PLAY_OVERRIDES."""
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig(SearchSettings):
    """What the search needs: a game's `SearchSettings` (declared and validated there, fields
    documented there) plus the discount (see `from_settings`), and a policy that
    `services.agent.search.policies.POLICIES` holds.

    Attributes:
      discount: per-move discount in (0, 1] applied at every edge of the tree.
      num_chance_codes: C >= 1, the chance codes of an afterstate ("stochastic" only): the
        tree then has A + C edges per node and the model's policy_logits cover them (the
        search masks the half a node's kind does not use). A model with chance codes says its
        C (`num_chance_codes` of its initial_inference), and `BatchedSearch` takes that.
    """

    discount: float = 0.997
    num_chance_codes: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.num_chance_codes, int) and not isinstance(self.num_chance_codes, bool)
                and self.num_chance_codes >= 1,
                f"SearchConfig.num_chance_codes must be an int >= 1, got {self.num_chance_codes!r}")
        names = " or ".join(repr(name) for name in POLICIES)
        require(self.search in POLICIES, f"SearchConfig.search must be {names}, got {self.search!r}")
        require(0.0 < self.discount <= 1.0, f"SearchConfig.discount must be in (0, 1], got {self.discount}")

    @classmethod
    def from_settings(cls, settings: MuZeroSettings, **changes: Any) -> "SearchConfig":
        """The search section and the discount of `settings`, with `changes` applied (and
        validated)."""
        fields = {f.name: getattr(settings.search, f.name) for f in dataclasses.fields(SearchSettings)}
        fields["discount"] = settings.discount
        if settings.stochastic:
            fields["num_chance_codes"] = settings.network.chance_codes
        fields.update(changes)
        return cls(**fields)

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with `changes` applied and validated."""
        return dataclasses.replace(self, **changes)
