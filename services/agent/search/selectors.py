"""Action selectors: which edge a simulation takes at a node (mctx's `action_selection.py`).

Each selector scores the children of k gathered nodes at once (`scores`, float64 [k, A], -inf
where not selectable) and picks the argmax (`__call__`, int64 [k]); ties go to the lowest
action index, as in mctx's `jnp.argmax`. Nodes are named by game (int64 [k]) and flat row
(int64 [k], `Tree`'s `b * N + node`).

  * `PuctSelector`: MuZero's PUCT at the root (with the root's mask) and below it.
  * `SequentialHalvingRoot`: Gumbel MuZero's root, Gumbel-top-k then Sequential Halving.
  * `GumbelInterior`: Gumbel MuZero's deterministic rule below the root.
  * `StochasticSelector`: Stochastic MuZero below the root: PUCT (or Gumbel's rule) at
    decision nodes, the chance rule argmax P(c) / (N(c) + 1) at chance nodes (afterstates).
"""

from __future__ import annotations

import numpy as np

from services.agent import gumbel as gumbel_lib
from services.agent.search.qtransforms import MinMaxStats, completed_qvalues
from services.agent.search.tree import Tree

_NEG_INF = -np.inf


class PuctSelector:
    """The pseudocode's ucb_score at node s with N(s) visits, in its order of operations:

        score(a) = (log((N + base + 1) / base) + init) * (sqrt(N) / (N(a) + 1)) * P(a) + Qn(a),

    Qn from the tree-wide `MinMaxStats` (0 for unvisited children).
    """

    def __init__(self, tree: Tree, pb_c_base: float, pb_c_init: float, normalizer: MinMaxStats) -> None:
        self.tree = tree
        self.normalizer = normalizer
        # pb_c and sqrt for every possible visit count of a node (at most N).
        counts = np.arange(tree.num_nodes + 1, dtype=np.float64)
        self._pb_c_table = np.log((counts + pb_c_base + 1) / pb_c_base) + pb_c_init
        self._sqrt_table = np.sqrt(counts)

    def scores(self, games: np.ndarray, rows: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """float64 [k, A]; `mask` float [k, A] (0 selectable, -inf not) is added (the root's)."""
        tree = self.tree
        visits = tree.cvis_rows.take(rows, axis=0)
        parent_visits = tree.nvis.take(rows)
        score = self._sqrt_table.take(parent_visits)[:, None] / (visits + 1)
        score *= self._pb_c_table.take(parent_visits)[:, None]
        score *= tree.cprior_rows.take(rows, axis=0)
        # + Qn, inline (this runs once per depth): (Q - low) / span, 0 for unvisited children.
        value_score = tree.cq_rows.take(rows, axis=0)
        value_score -= self.normalizer.low.take(games)[:, None]
        value_score /= self.normalizer.span.take(games)[:, None]
        value_score *= visits > 0
        score += value_score
        if mask is not None:
            score += mask
        return score

    def __call__(self, games: np.ndarray, rows: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return self.scores(games, rows, mask).argmax(axis=1)


class CompletedQ:
    """`completed_qvalues` bound to a tree's arrays and the config's sigma."""

    def __init__(self, tree: Tree, value_scale: float, maxvisit_init: float, rescale_values: bool) -> None:
        self.tree = tree
        self.value_scale, self.maxvisit_init, self.rescale_values = value_scale, maxvisit_init, rescale_values

    def __call__(self, rows: np.ndarray, visits: np.ndarray, qvalues: np.ndarray, prior: np.ndarray,
                 node_visits: np.ndarray) -> np.ndarray:
        """float64 [k, A]: sigma(completed Q) at the nodes `rows`, whose gathered children and
        visit counts (int [k]: 1 + sum of the children's, the node's own first visit) are given."""
        return completed_qvalues(qvalues, visits, self.tree.nraw.take(rows), prior, value_scale=self.value_scale,
                                 maxvisit_init=self.maxvisit_init, rescale_values=self.rescale_values,
                                 sum_visits=node_visits - 1, ops=self.tree.ops)


class SequentialHalvingRoot:
    """mctx's `gumbel_muzero_root_action_selection` for the B roots at once.

    `start` draws nothing: it takes the Gumbel noise and sets up the considered set, the top k
    of g + logits over the legal actions, k = min(m, number of legal actions), ties to the
    lowest index. Simulation s then takes, among the considered actions whose visit count is
    the schedule's entry for (k, s), the best max(LOW_LOGIT, g + logits + sigma(q)).

    root_gumbel float64 [B, A]: the noise (already scaled; 0 in evaluation).
    considered bool [B, A]: the considered actions.
    """

    def __init__(self, tree: Tree, max_considered_actions: int, num_simulations: int, qtransform: CompletedQ) -> None:
        B, A = tree.batch_size, tree.num_actions
        self.tree = tree
        self.qtransform = qtransform
        self.root_gumbel = np.zeros((B, A), np.float64)
        self.considered = np.zeros((B, A), bool)
        self.mask = np.zeros((B, A), np.float64)            # 0 where considered, -inf not
        self._gumbel_logits = np.zeros((B, A), np.float64)  # g + logits - max(logits)
        self._num_considered = np.zeros(B, np.int64)
        self._considered_visits = gumbel_lib.get_table_of_considered_visits(max_considered_actions, num_simulations)
        self._max_considered = max_considered_actions

    def start(self, gumbel: np.ndarray | None) -> None:
        """Sets up the B roots of `tree` (set by `Tree.set_root`); gumbel float64 [B, A] or None (0)."""
        tree, A = self.tree, self.tree.num_actions
        if gumbel is None:
            self.root_gumbel.fill(0.0)
        else:
            np.copyto(self.root_gumbel, gumbel)
        logits = tree.children_logits[:, 0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        np.add(self.root_gumbel, shifted, out=self._gumbel_logits)
        self._num_considered = np.minimum(self._max_considered, tree.legal.sum(axis=1))
        order = np.argsort(-self._gumbel_logits, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(A)[None, :].repeat(tree.batch_size, axis=0), axis=1)
        np.logical_and(tree.legal, ranks < self._num_considered[:, None], out=self.considered)
        self.mask[:] = np.where(self.considered, 0.0, _NEG_INF)

    def scores(self, simulation: int) -> np.ndarray:
        """float64 [B, A] at the roots for simulation `simulation` (0-based)."""
        tree = self.tree
        rows = tree.game_rows
        visits = tree.cvis_rows.take(rows, axis=0)
        sigma_q = self.qtransform(rows, visits, tree.cq_rows.take(rows, axis=0), tree.cprior_rows.take(rows, axis=0),
                                  tree.nvis.take(rows))
        considered_visit = self._considered_visits[self._num_considered, simulation]
        score = np.maximum(self._gumbel_logits + sigma_q, gumbel_lib.LOW_LOGIT)
        score[visits != considered_visit[:, None]] = _NEG_INF
        score += self.mask
        return score

    def __call__(self, simulation: int) -> np.ndarray:
        return self.scores(simulation).argmax(axis=1)


class GumbelInterior:
    """mctx's `gumbel_muzero_interior_action_selection`: argmax pi'(a) - N(a) / (1 + sum N),
    pi' = softmax(logits + sigma(q)), computed as softmax(log prior + sigma(q)).

    `remember(n, log_prior)` keeps each new node's log prior (from `Tree.expand`).
    """

    def __init__(self, tree: Tree, qtransform: CompletedQ, sigma_bound: float | None) -> None:
        """`sigma_bound`: an upper bound of sigma(q) (rescaled values), or None (unbounded)."""
        self.tree = tree
        self.qtransform = qtransform
        self._log_prior_rows = np.zeros((tree.batch_size * tree.num_nodes, tree.num_actions), np.float64)
        # log p + sigma(q) <= sigma's bound, so the softmax needs no max-shift while that bound
        # is small (exp cannot overflow); without a bound, always shift.
        self._shift_softmax = sigma_bound is None or sigma_bound > 500.0

    def remember(self, n: int, log_prior: np.ndarray) -> None:
        self._log_prior_rows[self.tree.game_rows + n] = log_prior

    def scores(self, games: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float64 [k, A] at the interior nodes `rows`."""
        tree = self.tree
        visits = tree.cvis_rows.take(rows, axis=0)
        node_visits = tree.nvis.take(rows)
        logits = self.qtransform(rows, visits, tree.cq_rows.take(rows, axis=0), tree.cprior_rows.take(rows, axis=0),
                                 node_visits)
        logits += self._log_prior_rows.take(rows, axis=0)
        if self._shift_softmax:
            logits -= tree.ops.max(logits)[:, None]
        probs = np.exp(logits, out=logits)
        probs /= tree.ops.sum(probs)[:, None]
        # 1 + sum N(a) is the node's visit count (its own first visit, then its children's).
        probs -= visits / node_visits[:, None]
        return probs

    def __call__(self, games: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.scores(games, rows).argmax(axis=1)


class StochasticSelector:
    """Stochastic MuZero (Antonoglou et al. 2022) below the root, as mctx's
    `_make_stochastic_action_selection_fn`, over a tree of E = A + C edges per node:

      * decision node: `PuctSelector`'s score (or `GumbelInterior`'s) on the action edges
        0..A-1 (-inf on the rest);
      * chance node (afterstate): P(c) / (N(c) + 1) on the outcome edges A..A+C-1 (-inf on the
        rest), mctx's deterministic stand-in for sampling c from the prior: the visits follow
        the prior (the next visit goes where N(c) lags P(c) most) without a random draw.

    Both scores are computed for all k rows and one `np.where` on the rows' kind picks per
    row, so no loop runs over nodes. Ties go to the lowest edge index (mctx's chance rule has
    no tie noise either).
    """

    def __init__(self, tree: Tree, num_actions: int, decision: "PuctSelector | GumbelInterior",
                 is_chance: np.ndarray) -> None:
        """Args:
          tree: the tree (E = tree.num_actions edges per node); num_actions: A < E.
          decision: the decision nodes' selector: `PuctSelector` (its min-max is the policy's)
            or `GumbelInterior` (Gumbel MuZero's rule at decision nodes).
          is_chance: bool [B, N], the policy's node kinds, read through its flat view.
        """
        self.tree = tree
        self.decision = decision
        self._is_chance = is_chance.reshape(-1)
        outcome = np.arange(tree.num_actions) >= num_actions
        self.decision_mask = np.where(outcome, _NEG_INF, 0.0)     # float64 [E]: actions only
        self.chance_mask = np.where(outcome, 0.0, _NEG_INF)       # float64 [E]: outcomes only

    def scores(self, games: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float64 [k, E] at the interior nodes `rows` (-inf on the edges of the other kind)."""
        tree = self.tree
        if isinstance(self.decision, PuctSelector):
            decision = self.decision.scores(games, rows, self.decision_mask)
        else:
            decision = self.decision.scores(games, rows) + self.decision_mask
        chance = tree.cprior_rows.take(rows, axis=0)
        chance /= tree.cvis_rows.take(rows, axis=0) + 1
        chance += self.chance_mask
        return np.where(self._is_chance.take(rows)[:, None], chance, decision)

    def __call__(self, games: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.scores(games, rows).argmax(axis=1)
