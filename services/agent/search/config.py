"""The search's settings: `SearchConfig`, the search fields of a game's `MuZeroSettings`."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from games.base import MuZeroSettings
from games.validation import require
from services.agent.search.policies import POLICIES


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What the search needs from a game's `MuZeroSettings` (see `from_settings`).

    Attributes:
      num_simulations: S >= 1 simulations per move; a tree holds N = S + 1 nodes.
      search: the policy, a key of `services.agent.search.policies.POLICIES`: "puct" (MuZero)
        or "gumbel" (Gumbel MuZero).
      discount: per-move discount in (0, 1] applied at every edge of the tree.
      pb_c_base, pb_c_init: PUCT exploration constants (> 0 and >= 0).
      root_dirichlet_alpha: Dirichlet concentration (> 0) of the root noise ("puct", training).
      root_exploration_fraction: weight in [0, 1] of that noise in the root prior.
      max_considered_actions: m >= 1, Gumbel-top-k size at the root ("gumbel"); a game with
        fewer legal actions considers them all.
      gumbel_scale: >= 0, scale of the root Gumbel noise in training (evaluation uses 0).
      value_scale, maxvisit_init: >= 0; sigma(q) = (maxvisit_init + max N) * value_scale * q.
      rescale_values: min-max rescale each node's completed Q to [0, 1] before sigma (mctx's
        default); False uses Q as it is (values in a known range, e.g. [-1, 1]).
      temperature: >= 0, default temperature of the "puct" action choice in training
        (N^(1/T); 0 is greedy). Evaluation defaults to 0.
    """

    num_simulations: int = 16
    search: Literal["puct", "gumbel"] = "gumbel"
    discount: float = 0.997
    pb_c_base: float = 19652.0
    pb_c_init: float = 1.25
    root_dirichlet_alpha: float = 0.25
    root_exploration_fraction: float = 0.25
    max_considered_actions: int = 16
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    rescale_values: bool = True
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require(isinstance(self.num_simulations, (int, np.integer)) and self.num_simulations >= 1,
                f"SearchConfig.num_simulations must be an int >= 1, got {self.num_simulations!r}")
        names = " or ".join(repr(name) for name in POLICIES)
        require(self.search in POLICIES, f"SearchConfig.search must be {names}, got {self.search!r}")
        require(0.0 < self.discount <= 1.0, f"SearchConfig.discount must be in (0, 1], got {self.discount}")
        require(self.pb_c_base > 0, f"SearchConfig.pb_c_base must be > 0, got {self.pb_c_base}")
        require(self.pb_c_init >= 0, f"SearchConfig.pb_c_init must be >= 0, got {self.pb_c_init}")
        require(self.root_dirichlet_alpha > 0,
                f"SearchConfig.root_dirichlet_alpha must be > 0, got {self.root_dirichlet_alpha}")
        require(0.0 <= self.root_exploration_fraction <= 1.0,
                f"SearchConfig.root_exploration_fraction must be in [0, 1], got {self.root_exploration_fraction}")
        require(isinstance(self.max_considered_actions, (int, np.integer)) and self.max_considered_actions >= 1,
                f"SearchConfig.max_considered_actions must be an int >= 1, got {self.max_considered_actions!r}")
        require(self.gumbel_scale >= 0, f"SearchConfig.gumbel_scale must be >= 0, got {self.gumbel_scale}")
        require(self.value_scale >= 0, f"SearchConfig.value_scale must be >= 0, got {self.value_scale}")
        require(self.maxvisit_init >= 0, f"SearchConfig.maxvisit_init must be >= 0, got {self.maxvisit_init}")
        require(self.temperature >= 0, f"SearchConfig.temperature must be >= 0, got {self.temperature}")

    @classmethod
    def from_settings(cls, settings: MuZeroSettings, **changes: Any) -> "SearchConfig":
        """The search fields of `settings`, with `changes` applied (and validated)."""
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)}
        fields.update(changes)
        return cls(**fields)

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with `changes` applied and validated."""
        return dataclasses.replace(self, **changes)
