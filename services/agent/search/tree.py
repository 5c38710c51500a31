"""The B search trees of a batched search, in preallocated NumPy arrays (mctx's `Tree` layout).

The tree holds the statistics and the mechanics every policy shares: creating a node from one
inference (`expand`) and backing its value up the recorded paths (`backup`). What to select,
how to transform Q and what to play are the policy's (`services.agent.search.policies`).

Flat indices: a node array is also read as [B * N] (`b * N + node`, a "row"), an edge array as
[B * N * A] (`row * A + a`) and as [B * N, A] row blocks, so that many nodes of many games are
gathered and scattered with one `take` / `put` and no fancy indexing.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

QObserver = Callable[[np.ndarray | None, np.ndarray], None]
"""`observe(games, q)`: sees every Q(s, a) a backup writes; games int64 [k] (None: all B), q [k]."""


class RowOps:
    """Reductions over the short action axis of [k, A] blocks, for k <= max_rows.

    NumPy reduces a short axis slowly (a strided inner loop per row); argmax + take gives row
    maxima and a dot product with ones gives row sums several times faster for A <= ~16.
    """

    def __init__(self, max_rows: int, num_actions: int) -> None:
        self._offsets = np.arange(max_rows, dtype=np.int64) * num_actions   # row starts in a flat [k, A]
        self.ones = np.ones(num_actions)

    def max(self, x: np.ndarray) -> np.ndarray:
        """[k] maxima of the rows of a C-contiguous [k, A] block."""
        return x.reshape(-1).take(self._offsets[:len(x)] + x.argmax(axis=1))

    def min(self, x: np.ndarray) -> np.ndarray:
        """[k] minima of the rows of a C-contiguous [k, A] block."""
        return x.reshape(-1).take(self._offsets[:len(x)] + x.argmin(axis=1))

    def sum(self, x: np.ndarray) -> np.ndarray:
        """float64 [k] sums of the rows of a [k, A] block."""
        return x.dot(self.ones)


class Tree:
    """B trees of N = S + 1 nodes and A edges per node; node s + 1 is created by simulation s,
    node 0 is the root. A is the game's number of actions unless the policy asks for more
    edges (`Policy.num_edges`; mctx's A' = A + C for chance outcomes).

    Per node, [B, N]:
      node_visits int32: visit count N(s).
      node_value_sum float64: sum of the returns backed up through the node (player to
        move's view); its value is node_value_sum / node_visits.
      node_raw_value float64: the network's value of the node.
      node_reward float64: reward of the move into the node (parent player's view; root 0).
      node_discount float64: the factor that turns the node's return into its parent's view,
        discount * sign (sign -1 when the players alternate at this edge); mctx keeps it per
        edge as `children_discounts`, here per node since a node has one parent edge.
      node_parent int32: parent node (-1 for the root).
      node_action int32: action from the parent (-1 for the root).
      node_depth int32: depth (root 0).
    Per edge, [B, N, A]:
      children_index int32: the child node of (s, a), -1 while not expanded.
      children_prior float64: prior P(s, a) (softmax of the logits; at the root masked to the
        legal actions and possibly mixed with noise by the policy).
      children_logits float64: the network's policy logits at s (-inf on illegal root actions).
      children_visits int32: N(s, a) (= node_visits of the child).
      children_rewards float64: r(s, a) (= node_reward of the child; 0 while not expanded).
      children_qvalues float64: Q(s, a) = r + node_discount(child) * V(child), 0 while unvisited.
    Other:
      hidden_state float32 [B, N, *hidden_shape]: the model's state of every node.
      legal bool [B, A]: the root's legal actions.
    With a value-prefix model (`enable_value_prefix`, EfficientZero's):
      node_value_prefix float64 [B, N]: the model's value prefix of the node (root 0), the
        sum of the rewards since the path's last reset; node_reward is the per-step reward
        the search derived from it.
      value_prefix_state float32 [B, N, D]: the model's LSTM state of every node.

    `reset` fills the edge statistics (children_index -1, visits, rewards and Q 0); node
    arrays and hidden states are overwritten as nodes are created. Nothing is allocated per
    move except the small per-step temporaries of the vectorized expansion and backup.
    """

    ARRAYS = ("node_visits", "node_value_sum", "node_raw_value", "node_reward", "node_discount", "node_parent",
              "node_action", "node_depth", "children_index", "children_prior", "children_logits",
              "children_visits", "children_rewards", "children_qvalues", "hidden_state", "legal")
    """The public arrays (see the class docstring)."""

    def __init__(self, batch_size: int, num_nodes: int, num_actions: int, hidden_shape: tuple[int, ...],
                 discount_sign: float) -> None:
        """Args:
          batch_size: B; num_nodes: N; num_actions: A; hidden_shape: one hidden state's shape.
          discount_sign: the default node_discount of a new node: discount, negated for
            alternating two-player games.
        """
        self.batch_size = B = batch_size
        self.num_nodes = N = num_nodes
        self.num_actions = A = num_actions
        self.hidden_shape = hidden_shape
        self.discount_sign = float(discount_sign)

        self.node_visits = np.zeros((B, N), np.int32)
        self.node_value_sum = np.zeros((B, N), np.float64)
        self.node_raw_value = np.zeros((B, N), np.float64)
        self.node_reward = np.zeros((B, N), np.float64)
        self.node_discount = np.zeros((B, N), np.float64)
        self.node_parent = np.full((B, N), -1, np.int32)
        self.node_action = np.full((B, N), -1, np.int32)
        self.node_depth = np.zeros((B, N), np.int32)
        self.children_index = np.full((B, N, A), -1, np.int32)
        self.children_prior = np.zeros((B, N, A), np.float64)
        self.children_logits = np.zeros((B, N, A), np.float64)
        self.children_visits = np.zeros((B, N, A), np.int32)
        self.children_rewards = np.zeros((B, N, A), np.float64)
        self.children_qvalues = np.zeros((B, N, A), np.float64)
        self.hidden_state = np.zeros((B, N, *hidden_shape), np.float32)
        self.legal = np.zeros((B, A), bool)

        # Flat views (see the module docstring).
        self.nvis = self.node_visits.reshape(-1)
        self.nsum = self.node_value_sum.reshape(-1)
        self.nraw = self.node_raw_value.reshape(-1)
        self.nrew = self.node_reward.reshape(-1)
        self.ndisc = self.node_discount.reshape(-1)
        self.ndep = self.node_depth.reshape(-1)
        self.cidx = self.children_index.reshape(-1)
        self.cvis = self.children_visits.reshape(-1)
        self.crew = self.children_rewards.reshape(-1)
        self.cq = self.children_qvalues.reshape(-1)
        self.cvis_rows = self.children_visits.reshape(B * N, A)
        self.cq_rows = self.children_qvalues.reshape(B * N, A)
        self.cprior_rows = self.children_prior.reshape(B * N, A)
        self.hidden_rows = self.hidden_state.reshape(B * N, *hidden_shape)
        self.game_rows = np.arange(B, dtype=np.int64) * N     # flat row of each root
        self.all_games = np.arange(B, dtype=np.int64)
        self.root_edges = self.game_rows * A                  # flat edge of each root's action 0
        # Flat edge index of the edge from each node's parent into it (-1 for roots).
        self.parent_edge = np.full(B * N, -1, np.int64)
        self.ops = RowOps(B, A)
        self.node_value_prefix: np.ndarray | None = None
        self.value_prefix_state: np.ndarray | None = None

    def enable_value_prefix(self, state_size: int) -> None:
        """Allocates the value-prefix arrays (class docstring) for a model whose LSTM state is
        float32 [state_size]; a no-op when they exist with that size."""
        if self.value_prefix_state is not None and self.value_prefix_state.shape[2] == state_size:
            return
        B, N = self.batch_size, self.num_nodes
        self.node_value_prefix = np.zeros((B, N), np.float64)
        self.value_prefix_state = np.zeros((B, N, state_size), np.float32)
        self.nprefix = self.node_value_prefix.reshape(-1)
        self.prefix_state_rows = self.value_prefix_state.reshape(B * N, state_size)

    def reset(self, legal: np.ndarray) -> None:
        """Empties the B trees for a new move.

        `legal` bool [B, k], k <= A: the root's legal actions; the root's edges past k (a
        policy's extra edges, e.g. chance outcomes) are illegal there.
        """
        self.children_index.fill(-1)
        self.children_visits.fill(0)
        self.children_rewards.fill(0.0)
        self.children_qvalues.fill(0.0)
        k = legal.shape[1]
        self.legal[:, :k] = legal
        self.legal[:, k:] = False

    def set_root(self, hidden: np.ndarray, value: np.ndarray, logits: np.ndarray, prior: np.ndarray) -> None:
        """Writes node 0 of every tree (its visit count and value sum are the policy's to set).

        hidden float32 [B, *H]; value float64 [B]; logits float64 [B, A] (-inf on illegal
        actions); prior float64 [B, A].
        """
        self.hidden_state[:, 0] = hidden
        self.node_raw_value[:, 0] = value
        self.node_reward[:, 0] = 0.0
        self.node_discount[:, 0] = 0.0
        self.node_parent[:, 0] = -1
        self.node_action[:, 0] = -1
        self.node_depth[:, 0] = 0
        self.children_logits[:, 0] = logits
        self.children_prior[:, 0] = prior

    def expand(self, n: int, leaf_rows: np.ndarray, action: np.ndarray, edges: np.ndarray, hidden: np.ndarray,
               value: np.ndarray, reward: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Creates node n of every tree as the child of (leaf_rows, action).

        Args:
          n: the new node's index (simulation + 1).
          leaf_rows: int64 [B], flat row of each game's parent; action: int64 [B];
            edges: int64 [B], their flat edge index leaf_rows * A + action.
          hidden float32 [B, *H], value, reward float64 [B], logits float64 [B, A]: the
            inference of the new nodes.
        Returns:
          float64 [B, A]: the new nodes' log prior (log-softmax of `logits`).
        """
        self.cidx.put(edges, n)
        self.crew.put(edges, reward)
        self.hidden_state[:, n] = hidden
        self.node_raw_value[:, n] = value
        self.node_reward[:, n] = reward
        self.node_discount[:, n] = self.discount_sign
        self.node_parent[:, n] = leaf_rows - self.game_rows
        self.node_action[:, n] = action
        self.node_depth[:, n] = self.ndep.take(leaf_rows) + 1
        self.parent_edge[self.game_rows + n] = edges
        self.children_logits[:, n] = logits
        log_prior = logits - self.ops.max(logits)[:, None]
        log_prior -= np.log(self.ops.sum(np.exp(log_prior)))[:, None]
        self.children_prior[:, n] = np.exp(log_prior)
        return log_prior

    def backup(self, n: int, edges: np.ndarray, value: np.ndarray, reward: np.ndarray,
               levels: list[tuple[np.ndarray, np.ndarray]], observe: QObserver | None) -> None:
        """Backs the value of the new nodes n (see `expand`'s arguments) up the paths that reached them.

        The new leaf gets one visit with its network value; then every node of `levels`
        (per depth, root first: (games int64 [k], flat rows int64 [k])) gets one more visit and
        the simulation's return, G(parent) = r + node_discount * G(child), from its own
        player's view. `observe` sees every Q(s, a) written, deepest first.
        """
        self.node_visits[:, n] = 1
        self.node_value_sum[:, n] = value
        ret = reward + self.node_discount[:, n] * value
        self.cvis.put(edges, 1)
        self.cq.put(edges, ret)
        if observe is not None:
            observe(None, ret)
        # Then the paths' nodes, deepest level first; `ret` holds each game's return from the
        # view of the player at the level being updated.
        batch = self.batch_size
        for depth in range(len(levels) - 1, -1, -1):
            games, rows = levels[depth]
            whole = len(games) == batch
            game_ret = ret if whole else ret.take(games)
            visits = self.nvis.take(rows) + 1
            self.nvis.put(rows, visits)
            value_sum = self.nsum.take(rows) + game_ret
            self.nsum.put(rows, value_sum)
            if depth == 0:
                break
            parent_edges = self.parent_edge.take(rows)
            self.cvis.put(parent_edges, visits)
            reward_in = self.nrew.take(rows)
            discount = self.ndisc.take(rows)
            q = reward_in + discount * (value_sum / visits)
            self.cq.put(parent_edges, q)
            if observe is not None:
                observe(None if whole else games, q)
            if whole:
                ret = reward_in + discount * game_ret
            else:
                ret.put(games, reward_in + discount * game_ret)
