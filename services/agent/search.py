"""Batched MCTS for MuFleet's self-play agent: B search trees in preallocated NumPy arrays.

One `BatchedSearch` holds the trees of B games (one tree per game, rebuilt every move) and is
driven one simulation step at a time, so that the caller issues ONE network request for all B
games per step (and may pipeline several groups of games):

    search = BatchedSearch(batch_size=B, num_actions=A, hidden_shape=(64,), config=settings)
    search.start_move(model.initial_inference(observations), legal_actions, rng)
    for _ in range(search.num_simulations):
        hidden_state, action = search.select()        # the B leaves to expand
        search.expand_and_backup(model.recurrent_inference(hidden_state, action))
    result = search.finish_move()                     # action, visit counts, policy target, value

`BatchedSearch.run(model, observations, legal_actions, rng)` does exactly that.

Two root policies (`SearchConfig.search`):
  * "puct": MuZero's PUCT as in the paper's pseudocode (Schrittwieser et al. 2020, Appendix B),
    with Dirichlet noise at the root in training. The root starts with 0 visits, as there, so
    the first simulation of a move takes the lowest legal action (all scores are 0).
  * "gumbel": Gumbel MuZero (Danihelka et al. 2022) as mctx's `gumbel_muzero_policy`:
    Gumbel-top-k and Sequential Halving at the root, the deterministic improved-policy rule
    below it, completed Q-values by mixed value (`services.agent.gumbel`). The root starts with
    one visit carrying the network's value, as in mctx.

Conventions (both policies):
  * Values in the tree (`node_value_sum`, `node_raw_value`, a leaf's `value`) are from the view
    of the player to move at that node. Rewards (`node_reward`, `children_rewards`) are from
    the view of the player who made the move into the node, i.e. the parent's player to move
    (the games' convention: +1 when the mover wins). Hence, with sign = -1 for two-player games
    (players alternate every move) and +1 otherwise,
        Q(s, a) = r(s, a) + discount * sign * V(child),   V(child) = value_sum / visits,
    from the view of the player to move at s, and a simulation's return is backed up as
        G(parent) = r + discount * sign * G(child),       G(leaf) = the network's value.
  * `discount` is applied at every edge (1.0 for board games; 0.997 for cartpole...). The model
    has no terminal flag; a terminal state is just a state whose values the network learned.
  * Illegal actions are masked at the root only: prior renormalized over the legal actions
    (noise too), never selected, zero in the policy target. Deeper nodes are not masked; the
    model does not know the rules there.
  * Ties in every argmax go to the lowest action index.

PUCT, at a node s with N(s) = its visit count:
    score(a) = Qn(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * c(s),
    c(s) = pb_c_init + log((N(s) + pb_c_base + 1) / pb_c_base),
where Qn is Q min-max normalized by the extremes of all Q(s', a') of this game's tree seen so
far (updated during backup; no normalization until max > min) and 0 for unvisited children.

Vectorization: selection walks all B trees down together, one NumPy step per depth (the
games still descending at that depth gathered by flat index), and records the nodes of every
depth; backup walks those records back up, one step per depth. No Python loop runs over games
or nodes, and the loops over depth run at most `num_simulations` times. The hot path avoids
NumPy's slow reductions over the short action axis (argmax + take for row maxima, dot
products for row sums) and fancy indexing (`take` / `put` on flat views).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol

import numpy as np

from games.base import MuZeroSettings
from games.validation import require
from services.agent import gumbel as gumbel_lib

_NEG_INF = -np.inf
_TINY = np.finfo(np.float64).tiny
_EPSILON = 1e-8          # smallest denominator of the completed-Q min-max rescale (mctx)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """What the search needs from a game's `MuZeroSettings` (see `from_settings`).

    Attributes:
      num_simulations: S >= 1 simulations per move; a tree holds N = S + 1 nodes.
      search: "puct" (MuZero) or "gumbel" (Gumbel MuZero).
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
        require(self.search in ("puct", "gumbel"),
                f"SearchConfig.search must be 'puct' or 'gumbel', got {self.search!r}")
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


@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """One network inference for B states (initial or recurrent).

    The search reads only these four attributes, so any object that has them will do
    (e.g. `services.network.client.Inference`, which adds the model version).

    Attributes:
      hidden_state: float32 [B, *hidden_shape].
      value: float [B], from the view of the player to move in the (new) state.
      reward: float [B], reward of the move into the state, from the view of the player who
        made it (ignored for initial inference).
      policy_logits: float [B, A].
    """

    hidden_state: np.ndarray
    value: np.ndarray
    reward: np.ndarray
    policy_logits: np.ndarray


class Model(Protocol):
    """Anything `BatchedSearch.run` can search with (an in-process network, a gRPC client...)."""

    def initial_inference(self, observation: np.ndarray) -> ModelOutput: ...

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray) -> ModelOutput: ...


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What one move's search of B games gives.

    Attributes:
      action: int32 [B], the action to play (see `BatchedSearch.finish_move`).
      visit_counts: int32 [B, A], root child visit counts (sum S; 0 on illegal actions).
      policy: float32 [B, A], the policy target: visit distribution ("puct") or Gumbel's
        improved policy softmax(logits + sigma(completed Q)) over the legal actions ("gumbel").
      value: float32 [B], the search value of the root, from the view of its player to move:
        the mean of the S backed-up returns ("puct"), or of those and the network's value
        ("gumbel", as mctx).
      raw_value: float32 [B], the network's value of the root.
      qvalues: float32 [B, A], root Q(s, a) (root player's view); 0 where unvisited.
      max_depth: int32 [B], depth of the deepest node of each tree (root = 0).
    """

    action: np.ndarray
    visit_counts: np.ndarray
    policy: np.ndarray
    value: np.ndarray
    raw_value: np.ndarray
    qvalues: np.ndarray
    max_depth: np.ndarray


def select_actions(visit_counts: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One action per row of `visit_counts` ([B, A]); int32 [B].

    temperature == 0: the most visited action (lowest index among ties). Otherwise a sample
    with probability proportional to N(a)^(1 / temperature); unvisited actions are never chosen.
    Every row needs a positive count unless temperature == 0.
    """
    counts = np.asarray(visit_counts)
    require(counts.ndim == 2, f"visit_counts must be [B, A], got shape {counts.shape}")
    require(temperature >= 0, f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return np.argmax(counts, axis=1).astype(np.int32)
    counts = counts.astype(np.float64)
    positive = counts > 0
    require(bool(positive.any(axis=1).all()), "visit_counts: every row needs a positive count")
    with np.errstate(divide="ignore"):
        logits = np.log(counts) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    cdf = np.cumsum(weights, axis=1)
    u = rng.random((len(counts), 1)) * cdf[:, -1:]
    chosen = (cdf <= u).sum(axis=1)
    # Rounding could push `chosen` past the last action with a positive weight.
    last_positive = counts.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    return np.minimum(chosen, last_positive).astype(np.int32)


class BatchedSearch:
    """B MCTS trees in preallocated arrays (mctx's layout), searched in lockstep.

    Node s + 1 of every tree is created by simulation s; node 0 is the root. With
    N = S + 1 nodes and A actions, the arrays (all public, for inspection and tests) are:

    Per node, [B, N]:
      node_visits int32: visit count N(s).
      node_value_sum float64: sum of the returns backed up through the node (player to
        move's view); its value is node_value_sum / node_visits.
      node_raw_value float64: the network's value of the node.
      node_reward float64: reward of the move into the node (parent player's view; root 0).
      node_parent int32: parent node (-1 for the root).
      node_action int32: action from the parent (-1 for the root).
      node_depth int32: depth (root 0).
    Per edge, [B, N, A]:
      children_index int32: the child node of (s, a), -1 while not expanded.
      children_prior float64: prior P(s, a) (softmax of the logits; at the root masked to
        the legal actions and, for "puct" in training, mixed with Dirichlet noise).
      children_logits float64: the network's policy logits at s (-inf on illegal root actions).
      children_visits int32: N(s, a) (= node_visits of the child).
      children_rewards float64: r(s, a) (= node_reward of the child; 0 while not expanded).
      children_qvalues float64: Q(s, a) = r + discount * sign * V(child), 0 while unvisited.
    Other:
      hidden_state float32 [B, N, *hidden_shape]: the model's state of every node.
      legal bool [B, A]: the root's legal actions.
      root_gumbel float64 [B, A]: the root's Gumbel noise times the scale ("gumbel"; 0 in
        evaluation).
      considered bool [B, A]: the root's considered actions, the top k of g + logits over the
        legal actions, k = min(m, number of legal actions), ties to the lowest index ("gumbel").
      q_min, q_max float64 [B]: extremes of the Q values of each tree ("puct"'s min-max).

    Arrays are reset by `start_move` with fills (children_index to -1, edge statistics to 0);
    node arrays and hidden states are overwritten as nodes are created. Nothing is allocated
    per move except the small per-step temporaries of the vectorized selection and backup.
    """

    def __init__(self, batch_size: int, num_actions: int, hidden_shape: tuple[int, ...] | int,
                 config: SearchConfig | MuZeroSettings, two_player: bool = False) -> None:
        """Args:
          batch_size: B >= 1 games searched together.
          num_actions: A >= 2 (the game's action space).
          hidden_shape: shape of one hidden state (without the batch dimension).
          config: a `SearchConfig`, or a game's `MuZeroSettings` (its search fields are used).
          two_player: True for alternating two-player zero-sum games (values flip sign each ply).
        """
        if isinstance(config, MuZeroSettings):
            config = SearchConfig.from_settings(config)
        require(isinstance(config, SearchConfig), f"config must be a SearchConfig or MuZeroSettings, got {config!r}")
        require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        require(num_actions >= 2, f"num_actions must be >= 2, got {num_actions}")
        hidden_shape = (hidden_shape,) if isinstance(hidden_shape, (int, np.integer)) else tuple(hidden_shape)
        require(all(d >= 1 for d in hidden_shape), f"hidden_shape must be positive, got {hidden_shape}")
        self.config = config
        self.batch_size = B = int(batch_size)
        self.num_actions = A = int(num_actions)
        self.hidden_shape = hidden_shape
        self.two_player = bool(two_player)
        self.num_simulations = S = config.num_simulations
        self.num_nodes = N = S + 1
        self._gumbel = config.search == "gumbel"
        # discount * sign: multiplies a child's value (its player's view) into its parent's view.
        self._discount_sign = -config.discount if two_player else config.discount

        self.node_visits = np.zeros((B, N), np.int32)
        self.node_value_sum = np.zeros((B, N), np.float64)
        self.node_raw_value = np.zeros((B, N), np.float64)
        self.node_reward = np.zeros((B, N), np.float64)
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
        self.root_gumbel = np.zeros((B, A), np.float64)
        self.considered = np.zeros((B, A), bool)
        self.q_min = np.full(B, np.inf)
        self.q_max = np.full(B, -np.inf)

        # Flat views: node arrays indexed by b * N + node, edge arrays by (b * N + node) * A + a,
        # and [B * N, A] row views for gathering the children of many nodes at once.
        self._nvis = self.node_visits.reshape(-1)
        self._nsum = self.node_value_sum.reshape(-1)
        self._nraw = self.node_raw_value.reshape(-1)
        self._nrew = self.node_reward.reshape(-1)
        self._ndep = self.node_depth.reshape(-1)
        self._cidx = self.children_index.reshape(-1)
        self._cvis = self.children_visits.reshape(-1)
        self._crew = self.children_rewards.reshape(-1)
        self._cq = self.children_qvalues.reshape(-1)
        self._cvis_rows = self.children_visits.reshape(B * N, A)
        self._cq_rows = self.children_qvalues.reshape(B * N, A)
        self._cprior_rows = self.children_prior.reshape(B * N, A)
        self._hidden_rows = self.hidden_state.reshape(B * N, *hidden_shape)
        self._game_rows = np.arange(B, dtype=np.int64) * N     # flat node index of each root
        self._all_games = np.arange(B, dtype=np.int64)
        self._root_edges = self._game_rows * A                 # flat edge index of each root's action 0
        self._row_offsets = np.arange(B, dtype=np.int64) * A   # row starts in a gathered [k, A] block
        self._ones = np.ones(A)                                # row sums as dot products (fast for small A)
        # Flat edge index of the edge from each node's parent into it (-1 for roots).
        self._parent_edge = np.full(B * N, -1, np.int64)
        # Nodes on the current simulation's paths, by depth: [(games int64 [k], flat rows int64 [k])].
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []
        # Gumbel: log-softmax of each node's logits; logp + sigma(q) <= sigma's bound, so the
        # improved policy's softmax needs no max-shift while that bound is small.
        self._log_prior_rows = np.zeros((B * N, A), np.float64) if self._gumbel else None
        # Without the rescale, Q (and so sigma) has no bound known here: always shift.
        self._shift_softmax = (not config.rescale_values
                               or (config.maxvisit_init + S) * config.value_scale > 500.0)
        # PUCT: the pseudocode's pb_c and sqrt for every possible parent visit count.
        counts = np.arange(N + 1, dtype=np.float64)
        self._pb_c_table = np.log((counts + config.pb_c_base + 1) / config.pb_c_base) + config.pb_c_init
        self._sqrt_table = np.sqrt(counts)
        self._q_low = np.zeros(B)                              # PUCT's min-max, per select(): Qn = (Q - low) / span
        self._q_span = np.ones(B)

        self._root_mask = np.zeros((B, A), np.float64)         # 0 where selectable at the root, -inf not
        self._root_gumbel_logits = np.zeros((B, A), np.float64)  # g + logits - max(logits)
        self._considered_visits = gumbel_lib.get_table_of_considered_visits(
            config.max_considered_actions, S) if self._gumbel else None
        self._num_considered = np.zeros(B, np.int64)
        self._leaf_rows = np.zeros(B, np.int64)      # flat row of each leaf's parent
        self._leaf_action = np.zeros(B, np.int64)
        self._simulation = 0
        self._phase = "idle"          # idle -> select <-> expand -> done -> idle
        self._training = True
        self._rng: np.random.Generator | None = None

    # ------------------------------------------------------------------ public API

    @property
    def simulations_done(self) -> int:
        """Simulations completed in the current move."""
        return self._simulation

    def start_move(self, root: ModelOutput, legal_actions: np.ndarray, rng: np.random.Generator,
                   training: bool = True) -> None:
        """Resets the B trees and sets up their roots.

        Args:
          root: the output of ONE initial_inference for the B root observations.
          legal_actions: bool [B, A]; every game needs at least one legal action.
          rng: drives the root noise and the action choice of `finish_move`.
          training: root noise (Dirichlet for "puct", Gumbel for "gumbel") and exploratory
            action choice; False for evaluation (no noise, greedy actions).
        """
        B, A = self.batch_size, self.num_actions
        hidden, value, _reward, logits = self._check_output(root, "root")
        legal = np.asarray(legal_actions)
        require(legal.shape == (B, A), f"legal_actions must have shape {(B, A)}, got {legal.shape}")
        legal = legal.astype(bool, copy=False)
        require(bool(legal.any(axis=1).all()),
                f"legal_actions: games {np.flatnonzero(~legal.any(axis=1)).tolist()} have no legal action")
        self._rng = rng
        self._training = bool(training)
        config = self.config

        self.children_index.fill(-1)
        self.children_visits.fill(0)
        self.children_rewards.fill(0.0)
        self.children_qvalues.fill(0.0)
        self.q_min.fill(np.inf)
        self.q_max.fill(-np.inf)
        np.copyto(self.legal, legal)

        masked_logits = np.where(legal, logits, _NEG_INF)
        prior = gumbel_lib.softmax(masked_logits)
        if not self._gumbel and training and config.root_exploration_fraction > 0:
            noise = rng.standard_gamma(config.root_dirichlet_alpha, size=(B, A))
            noise = np.where(legal, noise, 0.0)
            total = noise.sum(axis=1, keepdims=True)
            # A tiny alpha can underflow every draw of a game to 0: fall back to uniform there.
            noise = np.where(total > 0, noise / np.where(total > 0, total, 1.0), legal / legal.sum(1, keepdims=True))
            fraction = config.root_exploration_fraction
            prior = np.where(legal, prior * (1 - fraction) + noise * fraction, 0.0)
        self.hidden_state[:, 0] = hidden
        self.node_raw_value[:, 0] = value
        self.node_reward[:, 0] = 0.0
        self.node_parent[:, 0] = -1
        self.node_action[:, 0] = -1
        self.node_depth[:, 0] = 0
        self.children_logits[:, 0] = masked_logits
        self.children_prior[:, 0] = prior
        if self._gumbel:
            # mctx: the root starts with one visit carrying the network's value.
            self.node_visits[:, 0] = 1
            self.node_value_sum[:, 0] = value
            scale = config.gumbel_scale if training else 0.0
            if scale > 0:
                self.root_gumbel[:] = scale * rng.gumbel(size=(B, A))
            else:
                self.root_gumbel.fill(0.0)
            shifted = masked_logits - masked_logits.max(axis=1, keepdims=True)
            np.add(self.root_gumbel, shifted, out=self._root_gumbel_logits)
            self._num_considered = np.minimum(config.max_considered_actions, legal.sum(axis=1))
            # Top k of g + logits over the legal actions, ties to the lowest index.
            order = np.argsort(-self._root_gumbel_logits, axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(A)[None, :].repeat(B, axis=0), axis=1)
            np.logical_and(legal, ranks < self._num_considered[:, None], out=self.considered)
            self._root_mask[:] = np.where(self.considered, 0.0, _NEG_INF)
        else:
            # Pseudocode: the root's visit count starts at 0.
            self.node_visits[:, 0] = 0
            self.node_value_sum[:, 0] = 0.0
            self.root_gumbel.fill(0.0)
            self.considered[:] = legal
            self._root_mask[:] = np.where(legal, 0.0, _NEG_INF)
        self._simulation = 0
        self._phase = "select"

    def select(self) -> tuple[np.ndarray, np.ndarray]:
        """Walks down the B trees to the edge each expands in this simulation.

        Returns:
          (hidden_state float32 [B, *hidden_shape], action int32 [B]): the parent's hidden state
          and the action of each game's new leaf, the input of ONE recurrent_inference.
        """
        require(self._phase == "select", f"select() must follow start_move() or expand_and_backup(), "
                f"not come in phase {self._phase!r}")
        if not self._gumbel:
            # The pseudocode's MinMaxStats.normalize: (Q - min) / (max - min) once max > min,
            # else Q itself (low 0, span 1 reproduce it exactly).
            span = self.q_max - self.q_min
            normalized = span > 0
            np.copyto(self._q_low, np.where(normalized, self.q_min, 0.0))
            np.copyto(self._q_span, np.where(normalized, span, 1.0))
        A = self.num_actions
        games, rows = self._all_games, self._game_rows
        action = self._select_actions(games, rows, root=True)
        self._levels = [(games, rows)]
        leaf_rows = rows.copy()
        child = self._cidx.take(self._root_edges + action)
        while True:
            deeper = np.flatnonzero(child >= 0)
            if deeper.size == 0:
                break
            if deeper.size < len(games):
                games, child = games.take(deeper), child.take(deeper)
            rows = self._game_rows.take(games) + child
            self._levels.append((games, rows))
            chosen = self._select_actions(games, rows, root=False)
            leaf_rows.put(games, rows)
            action.put(games, chosen)
            child = self._cidx.take(rows * A + chosen)
        self._leaf_rows = leaf_rows
        self._leaf_action = action
        self._phase = "expand"
        return self._hidden_rows.take(leaf_rows, axis=0), action.astype(np.int32)

    def expand_and_backup(self, output: ModelOutput) -> None:
        """Creates node s + 1 of every tree from ONE recurrent_inference and backs its value up.

        `output` answers the (hidden_state, action) pairs of the preceding `select()`.
        """
        require(self._phase == "expand", f"expand_and_backup() must follow select(), not come in phase {self._phase!r}")
        hidden, value, reward, logits = self._check_output(output, "output")
        A = self.num_actions
        n = self._simulation + 1
        leaf_rows, action = self._leaf_rows, self._leaf_action
        edges = leaf_rows * A + action

        self._cidx.put(edges, n)
        self._crew.put(edges, reward)
        self.hidden_state[:, n] = hidden
        self.node_raw_value[:, n] = value
        self.node_reward[:, n] = reward
        self.node_parent[:, n] = leaf_rows - self._game_rows
        self.node_action[:, n] = action
        self.node_depth[:, n] = self._ndep.take(leaf_rows) + 1
        self._parent_edge[self._game_rows + n] = edges
        self.children_logits[:, n] = logits
        log_prior = logits - self._row_max(logits)[:, None]
        log_prior -= np.log(np.exp(log_prior).dot(self._ones))[:, None]
        self.children_prior[:, n] = np.exp(log_prior)
        if self._gumbel:
            self._log_prior_rows[self._game_rows + n] = log_prior

        # Backup. The new leaf: one visit with its network value.
        gs = self._discount_sign
        puct = not self._gumbel
        self.node_visits[:, n] = 1
        self.node_value_sum[:, n] = value
        q = reward + gs * value
        self._cvis.put(edges, 1)
        self._cq.put(edges, q)
        if puct:
            np.minimum(self.q_min, q, out=self.q_min)
            np.maximum(self.q_max, q, out=self.q_max)
        # Then the paths' nodes, deepest level first; `ret` holds each game's return from the
        # view of the player at the level being updated.
        ret = q
        for depth in range(len(self._levels) - 1, -1, -1):
            games, rows = self._levels[depth]
            whole = len(games) == self.batch_size
            game_ret = ret if whole else ret.take(games)
            visits = self._nvis.take(rows) + 1
            self._nvis.put(rows, visits)
            value_sum = self._nsum.take(rows) + game_ret
            self._nsum.put(rows, value_sum)
            if depth == 0:
                break
            parent_edges = self._parent_edge.take(rows)
            self._cvis.put(parent_edges, visits)
            reward_in = self._nrew.take(rows)
            q = reward_in + gs * (value_sum / visits)
            self._cq.put(parent_edges, q)
            if puct:
                self.q_min.put(games, np.minimum(self.q_min.take(games), q))
                self.q_max.put(games, np.maximum(self.q_max.take(games), q))
            if whole:
                ret = reward_in + gs * game_ret
            else:
                ret.put(games, reward_in + gs * game_ret)
        self._simulation = n
        self._phase = "select" if n < self.num_simulations else "done"

    def finish_move(self, temperature: float | None = None) -> SearchResult:
        """The move's result once all S simulations are done (see `SearchResult`).

        Action choice:
          * "puct": `select_actions(visit_counts, T, rng)` with T = `temperature`, or by default
            config.temperature in training and 0 (greedy) in evaluation.
          * "gumbel": Sequential Halving's choice, the argmax of g + logits + sigma(completed Q)
            over the considered actions with the most visits; greedy (g = 0) in evaluation or
            when `temperature` is 0; other temperatures are not used.
        """
        require(self._phase == "done", f"finish_move() needs all {self.num_simulations} simulations, "
                f"{self._simulation} done (phase {self._phase!r})")
        assert self._rng is not None
        self._phase = "idle"
        visits = self.children_visits[:, 0].copy()
        qvalues = self.children_qvalues[:, 0]
        value = self.node_value_sum[:, 0] / self.node_visits[:, 0]
        raw_value = self.node_raw_value[:, 0]
        if self._gumbel:
            rows = self._game_rows
            sigma_q = self._sigma(rows, self._cvis_rows.take(rows, axis=0), self._nvis.take(rows) - 1,
                                  self._cq_rows.take(rows, axis=0), self._cprior_rows.take(rows, axis=0))
            logits = self.children_logits[:, 0]
            policy = gumbel_lib.improved_policy(logits, sigma_q, self.legal)
            greedy = (not self._training) or temperature == 0
            noise = 0.0 if greedy else self.root_gumbel
            score = gumbel_lib.score_considered(visits.max(axis=1), noise, logits, sigma_q, visits)
            action = np.argmax(score + self._root_mask, axis=1).astype(np.int32)
        else:
            policy = visits / visits.sum(axis=1, keepdims=True)
            if temperature is None:
                temperature = self.config.temperature if self._training else 0.0
            action = select_actions(visits, temperature, self._rng)
        return SearchResult(
            action=action,
            visit_counts=visits,
            policy=policy.astype(np.float32),
            value=value.astype(np.float32),
            raw_value=raw_value.astype(np.float32),
            qvalues=qvalues.astype(np.float32),
            max_depth=self.node_depth.max(axis=1).astype(np.int32),
        )

    def run(self, model: Model, observations: np.ndarray, legal_actions: np.ndarray,
            rng: np.random.Generator, training: bool = True, temperature: float | None = None) -> SearchResult:
        """One whole move: initial_inference, S x (select, recurrent_inference, backup), finish."""
        self.start_move(model.initial_inference(observations), legal_actions, rng, training=training)
        for _ in range(self.num_simulations):
            hidden_state, action = self.select()
            self.expand_and_backup(model.recurrent_inference(hidden_state, action))
        return self.finish_move(temperature)

    # ------------------------------------------------------------------ internals

    def _check_output(self, output: ModelOutput, name: str) -> tuple[np.ndarray, ...]:
        B, A = self.batch_size, self.num_actions
        hidden = np.asarray(output.hidden_state)
        value = np.asarray(output.value, dtype=np.float64)
        reward = np.asarray(output.reward, dtype=np.float64)
        logits = np.asarray(output.policy_logits, dtype=np.float64)
        require(hidden.shape == (B, *self.hidden_shape),
                f"{name}.hidden_state must have shape {(B, *self.hidden_shape)}, got {hidden.shape}")
        require(value.size == B, f"{name}.value must have shape ({B},), got {value.shape}")
        require(reward.size == B, f"{name}.reward must have shape ({B},), got {reward.shape}")
        require(logits.shape == (B, A), f"{name}.policy_logits must have shape {(B, A)}, got {logits.shape}")
        return hidden, value.reshape(B), reward.reshape(B), logits

    # Reductions over the short action axis are slow in NumPy (a strided inner loop per row);
    # the hot path uses argmax + take for row maxima and dot products for row sums instead.

    def _row_max(self, x: np.ndarray) -> np.ndarray:
        """[k] maxima of the rows of a C-contiguous [k, A] block."""
        return x.reshape(-1).take(self._row_offsets[:len(x)] + x.argmax(axis=1))

    def _row_min(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(-1).take(self._row_offsets[:len(x)] + x.argmin(axis=1))

    def _select_actions(self, games: np.ndarray, rows: np.ndarray, root: bool) -> np.ndarray:
        """int64 [k]: the action taken at the nodes `rows` (flat indices) of `games`."""
        visits = self._cvis_rows.take(rows, axis=0)
        qvalues = self._cq_rows.take(rows, axis=0)
        prior = self._cprior_rows.take(rows, axis=0)
        if self._gumbel:
            sum_visits = self._nvis.take(rows) - 1           # children visits (the node's own first visit aside)
            sigma_q = self._sigma(rows, visits, sum_visits, qvalues, prior)
            if root:
                # Sequential Halving: among the considered actions with the scheduled visit
                # count, the best g + logits + sigma(q) (mctx's score_considered).
                considered_visit = self._considered_visits[self._num_considered, self._simulation]
                score = np.maximum(self._root_gumbel_logits + sigma_q, gumbel_lib.LOW_LOGIT)
                score[visits != considered_visit[:, None]] = _NEG_INF
                score += self._root_mask
                return score.argmax(axis=1)
            # The deterministic rule below the root: argmax pi'(a) - N(a) / (1 + sum N), with
            # pi' = softmax(logits + sigma(q)) = softmax(log prior + sigma(q)).
            sigma_q += self._log_prior_rows.take(rows, axis=0)
            if self._shift_softmax:
                sigma_q -= self._row_max(sigma_q)[:, None]
            probs = np.exp(sigma_q, out=sigma_q)
            probs /= probs.dot(self._ones)[:, None]
            probs -= visits / (1 + sum_visits)[:, None]
            return probs.argmax(axis=1)
        # PUCT, the pseudocode's ucb_score in its order of operations:
        # (log((N + base + 1) / base) + init) * (sqrt(N) / (N(a) + 1)) * P(a) + Qn(a).
        parent_visits = self._nvis.take(rows)
        score = self._sqrt_table.take(parent_visits)[:, None] / (visits + 1)
        score *= self._pb_c_table.take(parent_visits)[:, None]
        score *= prior
        value_score = qvalues - self._q_low.take(games)[:, None]
        value_score /= self._q_span.take(games)[:, None]
        value_score *= visits > 0                            # 0 for unvisited children
        score += value_score
        if root:
            score += self._root_mask
        return score.argmax(axis=1)

    def _sigma(self, rows: np.ndarray, visits: np.ndarray, sum_visits: np.ndarray, qvalues: np.ndarray,
               prior: np.ndarray) -> np.ndarray:
        """float64 [k, A]: sigma(completed Q) at the nodes `rows`, as gumbel.completed_qvalues."""
        config = self.config
        visited = visits > 0
        probs = np.maximum(prior, _TINY)
        sum_probs = (probs * visited).dot(self._ones)
        weighted_q = (probs * qvalues).dot(self._ones) / np.maximum(sum_probs, _TINY)   # Q is 0 where unvisited
        mixed = (self._nraw.take(rows) + sum_visits * weighted_q) / (sum_visits + 1)
        completed = np.where(visited, qvalues, mixed[:, None])
        scale = (config.maxvisit_init + self._row_max(visits)) * config.value_scale
        if config.rescale_values:
            low = self._row_min(completed)
            scale /= np.maximum(self._row_max(completed) - low, _EPSILON)
            completed -= low[:, None]
        completed *= scale[:, None]
        return completed
