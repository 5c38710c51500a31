"""`BatchedSearch`: the loop of a batched MCTS over B trees (mctx's `search.py`), one simulation
step at a time, with the algorithm supplied by a `Policy`.

Vectorization: selection walks all B trees down together, one NumPy step per depth (the games
still descending at that depth gathered by flat index), and records the nodes of every depth;
backup walks those records back up, one step per depth. No Python loop runs over games or
nodes, and the loops over depth run at most `num_simulations` times. The hot path avoids
NumPy's slow reductions over the short action axis (`RowOps`) and fancy indexing (`take` /
`put` on flat views).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from games.base import MuZeroSettings
from games.validation import require
from services.agent import gumbel as gumbel_lib
from services.agent.inference import (INITIAL_INFERENCE, NUM_CHANCE_CODES, RECURRENT_INFERENCE,
                                      VALUE_PREFIX_HORIZON, VALUE_PREFIX_STATE, Model, ModelOutput)
from services.agent.search.config import SearchConfig
from services.agent.search.policies import POLICIES, STOCHASTIC_OF, Policy
from services.agent.search.tree import Tree

_NEG_INF = -np.inf


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What one move's search of B games gives.

    Attributes:
      action: int32 [B], the action to play (see `BatchedSearch.finish_move`).
      visit_counts: int32 [B, A], root child visit counts (sum S; 0 on illegal actions).
      policy: float32 [B, A], the policy target: visit distribution ("puct", "stochastic") or Gumbel's
        improved policy softmax(logits + sigma(completed Q)) over the legal actions ("gumbel").
      value: float32 [B], the search value of the root, from the view of its player to move:
        the mean of the S backed-up returns ("puct"), or of those and the network's value
        ("gumbel", as mctx).
      raw_value: float32 [B], the network's value of the root.
      qvalues: float32 [B, A], root Q(s, a) (root player's view); 0 where unvisited.
      max_depth: int32 [B], depth of the deepest node of each tree (root = 0; with
        "stochastic" afterstates count as levels).
      greedy_action: int32 [B], what a greedy player plays: the most visited action ("puct")
        or the argmax of the improved policy ("gumbel").
    """

    action: np.ndarray
    visit_counts: np.ndarray
    policy: np.ndarray
    value: np.ndarray
    raw_value: np.ndarray
    qvalues: np.ndarray
    max_depth: np.ndarray
    greedy_action: np.ndarray


class BatchedSearch:
    """B MCTS trees in preallocated arrays (mctx's layout), searched in lockstep.

    The tree is `self.tree` (`services.agent.search.tree.Tree`); its arrays are attributes
    of the search too (`node_visits`, `children_qvalues`, `hidden_state`, ...: `Tree.ARRAYS`,
    the same objects, for inspection and tests), and so is the policy's state
    (`Policy.STATE`: "gumbel"'s `root_gumbel` and `considered`, "puct"'s `q_min`, `q_max`,
    "stochastic"'s those and `is_chance`).
    The policy is `self.policy`, chosen by `config.search` from `POLICIES`; the tree has
    `num_edges` edges per node, the game's `num_actions` unless the policy asks for more
    (`Policy.num_edges`), and results cover the first `num_actions`.

    Value prefix (a value-prefix model, EfficientZero's: its root output carries
    `value_prefix_state` and its horizon H, `value_prefix_horizon`; its `reward` is the sum of
    the rewards since the path's last reset, every H steps from the root): a node at depth
    d + 1 gets the per-step reward
        r = prefix(child) - prefix(parent)    or r = prefix(child) when d % H == 0,
    since the model's sum restarts there (EfficientZero's backup). With "stochastic", depth
    counts afterstates too, and the reward into an afterstate is 0 whatever the prefixes (the
    policy's `adjust_expansion` runs after this), so a value-prefix model should give an
    afterstate its parent's prefix. `select_inputs` hands the model the parent's LSTM state,
    zeros when d % H == 0. Everything else (Q, backup, the
    policies) sees per-step rewards, so a search with value prefix backs up exactly what the
    same search with the equivalent per-step rewards does.

    The model picks the policy where it says so: a Stochastic MuZero model's root output
    carries `num_chance_codes` (C), and `start_move` then searches with chance nodes and that C
    (`STOCHASTIC_OF`: "stochastic" for a config of "puct", "stochastic_gumbel" for "gumbel";
    the tree and the policy are rebuilt when they change, e.g. at the first move); a root
    without it gets the config's own policy back. So the agent, the
    reanalyser, the evaluator and the play page need no flag for a stochastic model.
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
        self.num_actions = int(num_actions)
        self.hidden_shape = hidden_shape
        self.two_player = bool(two_player)
        self.num_simulations = S = config.num_simulations
        self.num_nodes = S + 1
        self.given_config = config          # what the caller asked for; `config` is what runs
        self._configure(config)

        # Nodes on the current simulation's paths, by depth: [(games int64 [k], flat rows int64 [k])].
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []
        self._leaf_rows = np.zeros(B, np.int64)      # flat row of each leaf's parent
        self._leaf_action = np.zeros(B, np.int64)
        self._simulation = 0
        self._phase = "idle"          # idle -> select <-> expand -> done -> idle
        self._training = True
        self._rng: np.random.Generator | None = None
        self.value_prefix_horizon = 0        # the model's H during a move with a value-prefix model

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally: the policy's state arrays.
        policy = self.__dict__.get("policy")
        if policy is not None and name in policy.STATE:
            return getattr(policy, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ public API

    @property
    def simulations_done(self) -> int:
        """Simulations completed in the current move."""
        return self._simulation

    def _configure(self, config: SearchConfig) -> None:
        """Builds the tree and the policy of `config` (its policy, edges and discount)."""
        self.config = config
        policy_class = POLICIES[config.search]
        # Edges per node: the game's actions, or more for a policy that asks (chance outcomes).
        self.num_edges = policy_class.num_edges(self.num_actions, config)
        # discount * sign: multiplies a child's value (its player's view) into its parent's view.
        self.tree = Tree(self.batch_size, self.num_nodes, self.num_edges, self.hidden_shape,
                         -config.discount if self.two_player else config.discount)
        for name in Tree.ARRAYS:
            setattr(self, name, getattr(self.tree, name))
        self.policy: Policy = policy_class(self.tree, config)

    def _follow_model(self, root: ModelOutput) -> None:
        """"stochastic" with the model's C when its root says `num_chance_codes`, else the
        given config (the class docstring)."""
        codes = getattr(root, NUM_CHANCE_CODES, None)
        if codes is None:
            wanted = self.given_config
        else:
            codes = np.asarray(codes).reshape(-1)
            if codes.size != self.batch_size or codes.min() < 1 or codes.min() != codes.max():
                raise ValueError(f"root.{NUM_CHANCE_CODES} must be one C >= 1 for all {self.batch_size} "
                                 f"games, got {codes.tolist()[:8]}")
            wanted = self.given_config.replace(search=STOCHASTIC_OF[self.given_config.search],
                                               num_chance_codes=int(codes[0]))
        if wanted != self.config:
            self._configure(wanted)

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
        self._follow_model(root)
        hidden, value, _reward, logits = self._check_output(root, "root")
        prefix_state = self._prefix_state(root, "root")
        self.value_prefix_horizon = self._root_horizon(root) if prefix_state is not None else 0
        legal = np.asarray(legal_actions)
        require(legal.shape == (B, A), f"legal_actions must have shape {(B, A)}, got {legal.shape}")
        legal = legal.astype(bool, copy=False)
        require(bool(legal.any(axis=1).all()),
                f"legal_actions: games {np.flatnonzero(~legal.any(axis=1)).tolist()} have no legal action")
        self._rng = rng
        self._training = bool(training)
        self.tree.reset(legal)
        masked_logits = np.where(self.tree.legal, logits, _NEG_INF)
        self.tree.set_root(hidden, value, masked_logits, gumbel_lib.softmax(masked_logits))
        if prefix_state is not None:
            self.tree.enable_value_prefix(prefix_state.shape[1])
            self.tree.node_value_prefix[:, 0] = 0.0
            self.tree.value_prefix_state[:, 0] = prefix_state
        self.policy.start_move(rng, self._training)
        self._simulation = 0
        self._phase = "select"

    def select(self) -> tuple[np.ndarray, np.ndarray]:
        """Walks down the B trees to the edge each expands in this simulation.

        Returns:
          (hidden_state float32 [B, *hidden_shape], action int32 [B]): the parent's hidden state
          and the action of each game's new leaf, the input of ONE recurrent_inference. The
          "action" is an edge index in [0, num_edges): with "stochastic", < A is an action from
          a state (afterstate dynamics), >= A the chance code action - A from an afterstate
          (dynamics); the one request carries both kinds.
        """
        if self._phase != "select":          # not require(): its message would be formatted every step
            raise ValueError(f"select() must follow start_move() or expand_and_backup(), "
                             f"not come in phase {self._phase!r}")
        tree, policy, A = self.tree, self.policy, self.num_edges
        select_interior = policy.select_interior
        policy.prepare_select()
        games, rows = tree.all_games, tree.game_rows
        action = policy.select_root(self._simulation)
        self._levels = [(games, rows)]
        leaf_rows = rows.copy()
        child = tree.cidx.take(tree.root_edges + action)
        while True:
            deeper = np.flatnonzero(child >= 0)
            if deeper.size == 0:
                break
            if deeper.size < len(games):
                games, child = games.take(deeper), child.take(deeper)
            rows = tree.game_rows.take(games) + child
            self._levels.append((games, rows))
            chosen = select_interior(games, rows)
            leaf_rows.put(games, rows)
            action.put(games, chosen)
            child = tree.cidx.take(rows * A + chosen)
        self._leaf_rows = leaf_rows
        self._leaf_action = action
        self._phase = "expand"
        return tree.hidden_rows.take(leaf_rows, axis=0), action.astype(np.int32)

    def select_inputs(self) -> dict[str, np.ndarray]:
        """`select()` as the inputs of ONE recurrent_inference: {"hidden_state", "action"} and,
        with a value-prefix model, "value_prefix_state" float32 [B, D], the parents' LSTM
        states (zeros where a parent's depth is a multiple of the horizon: a reset)."""
        hidden, action = self.select()
        inputs = {"hidden_state": hidden, "action": action}
        if self.value_prefix_horizon:           # set by start_move with the tree's prefix arrays
            tree = self.tree
            state = tree.prefix_state_rows.take(self._leaf_rows, axis=0)
            state[tree.ndep.take(self._leaf_rows) % self.value_prefix_horizon == 0] = 0.0
            inputs[VALUE_PREFIX_STATE] = state
        return inputs

    def expand_and_backup(self, output: ModelOutput) -> None:
        """Creates node s + 1 of every tree from ONE recurrent_inference and backs its value up.

        `output` answers the (hidden_state, action) pairs of the preceding `select()`. With
        value prefix, the per-step rewards are derived first; then the policy's
        `adjust_expansion` may change the rewards and logits ("stochastic": reward 0 into an
        afterstate, each node's half of the logits), and the tree stores and backs up those.
        """
        if self._phase != "expand":
            raise ValueError(f"expand_and_backup() must follow select(), not come in phase {self._phase!r}")
        hidden, value, reward, logits = self._check_output(output, "output")
        n = self._simulation + 1
        leaf_rows, action = self._leaf_rows, self._leaf_action
        edges = leaf_rows * self.num_edges + action
        if self.value_prefix_horizon:
            state = self._prefix_state(output, "output")
            if state is None:
                raise ValueError(f"output: {VALUE_PREFIX_STATE} is missing, but the root's model is a "
                                 f"value-prefix model")
            reward = self._rewards_from_prefixes(n, leaf_rows, reward, state)
        # The policy's say on the new nodes' numbers before the tree stores or backs them up
        # ("stochastic": reward 0 into an afterstate, the logits half of each node's kind).
        reward, logits = self.policy.adjust_expansion(action, reward, logits)
        log_prior = self.tree.expand(n, leaf_rows, action, edges, hidden, value, reward, logits)
        self.policy.on_expand(n, log_prior)
        self.tree.backup(n, edges, value, reward, self._levels, self.policy.observe_q)
        self._simulation = n
        self._phase = "select" if n < self.num_simulations else "done"

    def finish_move(self, temperature: float | None = None) -> SearchResult:
        """The move's result once all S simulations are done (see `SearchResult`).

        Action choice (the policy's `finish_move`):
          * "puct", "stochastic": `select_actions(visit_counts, T, rng)` with T = `temperature`, or by default
            config.temperature in training and 0 (greedy) in evaluation.
          * "gumbel": Sequential Halving's choice, the argmax of g + logits + sigma(completed Q)
            over the considered actions with the most visits; greedy (g = 0) in evaluation or
            when `temperature` is 0; other temperatures are not used.
        """
        require(self._phase == "done", f"finish_move() needs all {self.num_simulations} simulations, "
                f"{self._simulation} done (phase {self._phase!r})")
        assert self._rng is not None
        self._phase = "idle"
        tree = self.tree
        choice = self.policy.finish_move(self._rng, self._training, temperature)
        A = self.num_actions                       # the game's actions: the root's first A edges
        return SearchResult(
            action=choice.action,
            visit_counts=tree.children_visits[:, 0, :A].copy(),
            policy=choice.policy.astype(np.float32),
            value=(tree.node_value_sum[:, 0] / tree.node_visits[:, 0]).astype(np.float32),
            raw_value=tree.node_raw_value[:, 0].astype(np.float32),
            qvalues=tree.children_qvalues[:, 0, :A].astype(np.float32),
            max_depth=tree.node_depth.max(axis=1).astype(np.int32),
            greedy_action=choice.greedy_action,
        )

    def run(self, model: Model, observations: np.ndarray, legal_actions: np.ndarray,
            rng: np.random.Generator, training: bool = True, temperature: float | None = None) -> SearchResult:
        """One whole move through `model`: initial_inference, S x (select, recurrent_inference,
        backup), finish. Every recurrent_inference pins the version that answered the root."""
        root = model.predict_future(INITIAL_INFERENCE, {"observation": observations}).result()
        self.start_move(root, legal_actions, rng, training=training)
        for _ in range(self.num_simulations):
            pending = model.predict_future(RECURRENT_INFERENCE, self.select_inputs(), root.version)
            self.expand_and_backup(pending.result())
        return self.finish_move(temperature)

    # ------------------------------------------------------------------ internals

    def _rewards_from_prefixes(self, n: int, parent_rows: np.ndarray, prefix: np.ndarray,
                               state: np.ndarray) -> np.ndarray:
        """Stores node n's value prefix [B] and LSTM state [B, D]; returns float64 [B], the
        per-step rewards of the edges into the new nodes (the class docstring)."""
        tree = self.tree
        tree.node_value_prefix[:, n] = prefix
        tree.value_prefix_state[:, n] = state
        restarted = tree.ndep.take(parent_rows) % self.value_prefix_horizon == 0
        return prefix - np.where(restarted, 0.0, tree.nprefix.take(parent_rows))

    def _root_horizon(self, root: ModelOutput) -> int:
        """The value-prefix model's H, from its root output (ValueError if missing or bad)."""
        horizon = getattr(root, VALUE_PREFIX_HORIZON, None)
        if horizon is None:
            raise ValueError(f"root: a value-prefix model ({VALUE_PREFIX_STATE}) must give its "
                             f"{VALUE_PREFIX_HORIZON} too")
        horizon = np.asarray(horizon).reshape(-1)
        if horizon.size != self.batch_size or horizon.min() < 1 or horizon.min() != horizon.max():
            raise ValueError(f"root.{VALUE_PREFIX_HORIZON} must be one H >= 1 for all {self.batch_size} "
                             f"games, got {horizon.tolist()[:8]}")
        return int(horizon[0])

    def _prefix_state(self, output: ModelOutput, name: str) -> np.ndarray | None:
        """float32 [B, D], the output's value-prefix state, or None if it has none (ValueError
        for a bad shape)."""
        state = getattr(output, VALUE_PREFIX_STATE, None)
        if state is None:
            return None
        state = np.asarray(state, np.float32)
        if state.ndim != 2 or state.shape[0] != self.batch_size:
            raise ValueError(f"{name}.{VALUE_PREFIX_STATE} must have shape ({self.batch_size}, D), "
                             f"got {state.shape}")
        return state

    def _check_output(self, output: ModelOutput, name: str) -> tuple[np.ndarray, ...]:
        B, A = self.batch_size, self.num_edges
        hidden = np.asarray(output.hidden_state)
        value = np.asarray(output.value, dtype=np.float64)
        reward = np.asarray(output.reward, dtype=np.float64)
        logits = np.asarray(output.policy_logits, dtype=np.float64)
        if not (hidden.shape == (B, *self.hidden_shape) and value.size == B and reward.size == B
                and logits.shape == (B, A)):
            # One by one for a message naming the field; formatted only on failure (this runs every step).
            require(hidden.shape == (B, *self.hidden_shape),
                    f"{name}.hidden_state must have shape {(B, *self.hidden_shape)}, got {hidden.shape}")
            require(value.size == B, f"{name}.value must have shape ({B},), got {value.shape}")
            require(reward.size == B, f"{name}.reward must have shape ({B},), got {reward.shape}")
            hint = (" (search 'stochastic' needs a Stochastic MuZero model, whose logits cover the "
                    "actions and the chance codes)" if A > self.num_actions and logits.shape[-1:] == (self.num_actions,)
                    else "")
            require(logits.shape == (B, A), f"{name}.policy_logits must have shape {(B, A)}, got {logits.shape}{hint}")
        return hidden, value.reshape(B), reward.reshape(B), logits
