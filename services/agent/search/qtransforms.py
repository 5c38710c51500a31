"""Q transforms: what a selector sees of Q(s, a) (mctx's `qtransforms.py`).

  * `completed_qvalues`: Gumbel MuZero's sigma(completed Q), mctx's
    `qtransform_completed_by_mix_value`, as a pure function of k gathered nodes. The search's
    hot path and the tests call this one implementation.
  * `MinMaxStats`: MuZero's normalization (the paper's pseudocode `MinMaxStats`): ONE min-max
    per tree over every Q value a backup has written this move, stale extremes included. It
    carries state across simulations (fed by `Tree.backup`'s observer), which is why PUCT's
    normalization is not mctx's stateless per-node `qtransform_by_parent_and_siblings`.
"""

from __future__ import annotations

import numpy as np

from services.agent.search.tree import RowOps

_TINY = np.finfo(np.float64).tiny


def completed_qvalues(qvalues: np.ndarray, visit_counts: np.ndarray, raw_value: np.ndarray,
                      prior_probs: np.ndarray, *, value_scale: float, maxvisit_init: float,
                      rescale_values: bool = True, epsilon: float = 1e-8, sum_visits: np.ndarray | None = None,
                      ops: RowOps | None = None) -> np.ndarray:
    """sigma(completed Q) of k nodes: mctx's `qtransform_completed_by_mix_value`.

    Args:
      qvalues: float [k, A], Q(s, a) from the view of the player to move at s; used only
        where visit_counts > 0 (elsewhere any finite value).
      visit_counts: int [k, A], child visit counts N(s, a).
      raw_value: float [k], the network's value of s (same view).
      prior_probs: float [k, A], softmax of the node's (masked) prior logits.
      value_scale, maxvisit_init: sigma(q) = (maxvisit_init + max_a N(s, a)) * value_scale * q.
      rescale_values: rescale each completed row to [0, 1] by its own min and max (mctx's
        default); False keeps Q as it is.
      epsilon: smallest denominator of the min-max rescale.
      sum_visits: [k], sum_a N(s, a) where the caller has it already (the search: the node's
        visit count - 1); None sums visit_counts.
      ops: row reductions for up to k rows (the search passes its tree's; None builds one).
    Returns:
      float64 [k, A], a new array: unvisited actions get the mixed value
      (v + sum N * sum_visited(p q) / sum_visited(p)) / (1 + sum N); then the rows are
      rescaled (with rescale_values) and scaled by sigma's factor.
    """
    visits = np.asarray(visit_counts)
    k, num_actions = visits.shape
    if ops is None:
        ops = RowOps(k, num_actions)
    visited = visits > 0
    # Weights of the visited actions only: an unvisited Q gets weight 0, whatever its value.
    visited_probs = np.maximum(prior_probs, _TINY) * visited
    sum_probs = ops.sum(visited_probs)
    weighted_q = ops.sum(visited_probs * qvalues) / np.maximum(sum_probs, _TINY)
    if sum_visits is None:
        sum_visits = ops.sum(visits)
    mixed = (raw_value + sum_visits * weighted_q) / (sum_visits + 1)
    completed = np.where(visited, qvalues, mixed[:, None])
    scale = (maxvisit_init + ops.max(visits)) * value_scale
    if rescale_values:
        low = ops.min(completed)
        scale /= np.maximum(ops.max(completed) - low, epsilon)
        completed -= low[:, None]
    completed *= scale[:, None]
    return completed


class MinMaxStats:
    """The pseudocode's MinMaxStats for B trees: Qn = (Q - min) / (max - min) once max > min.

    minimum, maximum float64 [B]: the extremes of every Q value `update` has seen since
    `reset` (so extremes of values since overwritten stay, as in the pseudocode).
    low, span float64 [B]: Qn = (Q - low) / span, fixed by `freeze` for one selection pass
    (selectors read them directly: they run once per depth on the hot path).
    """

    def __init__(self, batch_size: int) -> None:
        self.minimum = np.full(batch_size, np.inf)
        self.maximum = np.full(batch_size, -np.inf)
        self.low = np.zeros(batch_size)
        self.span = np.ones(batch_size)

    def reset(self) -> None:
        self.minimum.fill(np.inf)
        self.maximum.fill(-np.inf)

    def update(self, games: np.ndarray | None, q: np.ndarray) -> None:
        """Sees q [k] of the trees `games` (int64 [k]; None: all B in order). A `QObserver`."""
        if games is None:
            np.minimum(self.minimum, q, out=self.minimum)
            np.maximum(self.maximum, q, out=self.maximum)
        else:
            self.minimum.put(games, np.minimum(self.minimum.take(games), q))
            self.maximum.put(games, np.maximum(self.maximum.take(games), q))

    def freeze(self) -> None:
        """Sets low and span from the extremes (which change only during backup)."""
        span = self.maximum - self.minimum
        normalized = span > 0
        # Before max > min the pseudocode returns Q itself: low 0, span 1 reproduce it exactly.
        np.copyto(self.low, np.where(normalized, self.minimum, 0.0))
        np.copyto(self.span, np.where(normalized, span, 1.0))
