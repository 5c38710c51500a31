"""The search's settings: `SearchConfig`, a game's `SearchSettings` and its discount."""

from __future__ import annotations

import dataclasses
from typing import Any


from games.settings import MuZeroSettings, SearchSettings
from games.validation import require
from services.agent.search.policies import POLICIES


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig(SearchSettings):
    """What the search needs: a game's `SearchSettings` (declared and validated there, fields
    documented there) plus the discount (see `from_settings`), and a policy that
    `services.agent.search.policies.POLICIES` holds.

    Attributes:
      discount: per-move discount in (0, 1] applied at every edge of the tree.
      value_prefix_horizon: 0 when the network's `reward` is the reward of one move; H >= 1
        for a value-prefix model (EfficientZero's, `training.value_prefix`): its `reward` is
        the sum of the rewards since the path's last reset, every H steps from the root, and
        the search turns those prefixes into per-edge rewards by differences and resets the
        model's LSTM state at the same depths (`BatchedSearch`).
    """

    discount: float = 0.997
    value_prefix_horizon: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        names = " or ".join(repr(name) for name in POLICIES)
        require(self.search in POLICIES, f"SearchConfig.search must be {names}, got {self.search!r}")
        require(0.0 < self.discount <= 1.0, f"SearchConfig.discount must be in (0, 1], got {self.discount}")
        require(isinstance(self.value_prefix_horizon, int) and self.value_prefix_horizon >= 0,
                f"SearchConfig.value_prefix_horizon must be an int >= 0 (0: per-step rewards), "
                f"got {self.value_prefix_horizon!r}")

    @classmethod
    def from_settings(cls, settings: MuZeroSettings, **changes: Any) -> "SearchConfig":
        """The search section, the discount and (with value prefix) the value-prefix horizon of
        `settings`, with `changes` applied (and validated)."""
        fields = {f.name: getattr(settings.search, f.name) for f in dataclasses.fields(SearchSettings)}
        fields["discount"] = settings.discount
        fields["value_prefix_horizon"] = (settings.training.value_prefix_horizon
                                          if settings.training.value_prefix else 0)
        fields.update(changes)
        return cls(**fields)

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with `changes` applied and validated."""
        return dataclasses.replace(self, **changes)
