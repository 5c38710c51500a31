"""Search policies: a tree, selectors and a Q transform composed into one algorithm (mctx's
`policies.py`).

`BatchedSearch` (`services.agent.search.batched`) owns the tree and the loop (simulate,
expand, backup); a `Policy` decides everything else through nine hooks:

    num_edges(num_actions, cfg)  edges per node of the tree (classmethod; default the A actions)
    start_move(rng, training)    root statistics and root noise (the root node is written)
    prepare_select()             per-simulation state of the selectors (PUCT: freeze min-max)
    select_root(simulation)      int64 [B]: the edge taken at the B roots
    select_interior(games, rows) int64 [k]: the edge taken at k interior nodes, one depth (a
                                 selector object set in __init__: it runs once per depth)
    adjust_expansion(edge, reward, logits)  the model's reward [B] and logits [B, E] of the
                                 new nodes as the tree should store them (default unchanged)
    on_expand(n, log_prior)      what the policy keeps of the new nodes n
    observe_q                    None or a `QObserver` fed every Q the backup writes
    finish_move(rng, training, temperature) -> Choice: action, policy target, greedy action

`POLICIES` maps `SearchConfig.search` to the class; `SearchConfig` accepts exactly its keys. A
new policy is a new class here (or in a module of its own) and one entry in `POLICIES`;
nothing branches on the policy's name.

Chance nodes: `StochasticPolicy` ("stochastic", Stochastic MuZero, Antonoglou et al. 2022, as
mctx's `stochastic_muzero_policy`) is built from the hooks alone:
  * Edges: `num_edges` returns E = A + C (C = `num_chance_codes`), mctx's trick: edges 0..A-1
    of a decision node are actions, edges A..A+C-1 of a chance node (an afterstate) are chance
    outcomes; the other part of each row has prior 0 and is never selected. The root is a
    decision node and its outcome edges are illegal (`Tree.reset`); `BatchedSearch` reports
    the first A.
  * Node kinds: the policy keeps is_chance bool [B, N], written in `on_expand`: the edge into
    a node says its kind (an action edge leads to an afterstate, an outcome edge to a state),
    so a child of a decision node is a chance node and vice versa. `select_interior` is a
    `StochasticSelector`: PUCT's score (with this policy's min-max) on the action half, the
    chance rule P(c) / (N(c) + 1) on the outcome half, one `np.where` over the k rows on
    is_chance; `select_root` is PUCT's at the decision root.
  * The new nodes' outputs: `adjust_expansion` (called by `BatchedSearch.expand_and_backup`
    before `Tree.expand` and `Tree.backup`, so the tree and the backed-up returns see the same
    numbers) sets the reward into an afterstate to 0 (no time passes) and keeps the half of
    the model's logits that applies to each new node's kind (the first A as action logits
    under a state, the last C as chance-code logits under an afterstate), so a model may
    put anything in the other half. `on_expand` sets `tree.node_discount` per node: 1 on a
    decision -> chance edge (same player, no time) and discount * sign on a chance ->
    decision edge; `Tree.backup` reads that factor per node, so Q(s, a) = V(afterstate) and
    Q(as, c) = r + discount * sign * V(state) with no other change. (Improving on the first
    plan, where `on_expand` alone handled the afterstate edge: `on_expand` runs after
    `Tree.expand` has stored the model's reward, and the same array then goes to
    `Tree.backup`, so the reward and the logits are fixed earlier, by this hook: the only
    change to `BatchedSearch`. The new node's kind is read from its edge index, edge < A,
    rather than gathered from the parent's is_chance: the same fact, no gather.)
  * Inference: `select()` still returns ONE (hidden_state, edge) pair per game, and the
    one recurrent request for all B games carries both kinds: edge < A asks for the
    afterstate dynamics of (state, action = edge), edge >= A for the dynamics of (afterstate,
    code = edge - A). The model answers each row with what its edge asks for (value: the
    afterstate's Q value or the state's value); how it does so is its business
    (`services.agent.inference`), not the tree's.
  * Min-max: one `MinMaxStats` per tree over every Q the backup writes, both kinds of edge
    (the pseudocode's MinMaxStats sees every node on the path); only decision nodes use it.
  * Result: `finish_move` reads the root's action half, like PUCT (visit distribution).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from games.validation import require
from services.agent import gumbel as gumbel_lib
from services.agent.search.qtransforms import MinMaxStats
from services.agent.search.selectors import (CompletedQ, GumbelInterior, PuctSelector, SequentialHalvingRoot,
                                             StochasticSelector)
from services.agent.search.tree import QObserver, Tree

if TYPE_CHECKING:
    from services.agent.search.config import SearchConfig

_NEG_INF = -np.inf


@dataclasses.dataclass(frozen=True)
class Choice:
    """A policy's answer for one move of B games, over the game's A actions.

    action int32 [B]: what to play; policy float64 [B, A]: the policy target (0 on illegal
    actions); greedy_action int32 [B]: what a greedy player would play.
    """

    action: np.ndarray
    policy: np.ndarray
    greedy_action: np.ndarray


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


class Policy(abc.ABC):
    """One search algorithm over a `Tree`, driven by `BatchedSearch` (see the module docstring).

    STATE names the policy's public arrays, readable as attributes of the `BatchedSearch` too.
    """

    STATE: ClassVar[tuple[str, ...]] = ()
    observe_q: QObserver | None = None
    select_interior: Callable[[np.ndarray, np.ndarray], np.ndarray]
    """(games int64 [k], rows int64 [k]) -> int64 [k]: the action taken at the interior nodes
    `rows` (flat) of `games`. A selector set by the subclass's __init__, called directly
    (no method in between) because it runs at every depth of every simulation."""

    def __init__(self, tree: Tree, config: "SearchConfig") -> None:
        self.tree = tree
        self.config = config

    @classmethod
    def num_edges(cls, num_actions: int, config: "SearchConfig") -> int:
        """Edges per node of the tree this policy searches (asked before the tree is built):
        the game's A actions, or more (A + C for chance outcomes). With more, every inference's
        policy_logits cover all edges and the root's edges past A are illegal."""
        return num_actions

    @abc.abstractmethod
    def start_move(self, rng: np.random.Generator, training: bool) -> None:
        """Sets the roots' visit count and value sum, and any root noise.

        Called after `Tree.reset` and `Tree.set_root` (prior = softmax of the masked logits).
        """

    def prepare_select(self) -> None:
        """Called once per simulation before `select_root`."""

    @abc.abstractmethod
    def select_root(self, simulation: int) -> np.ndarray:
        """int64 [B]: the action taken at every root in simulation `simulation` (0-based)."""

    def adjust_expansion(self, edge: np.ndarray, reward: np.ndarray,
                         logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The new nodes' (reward float64 [B], logits float64 [B, E]) as the tree should store
        and back them up, from the model's answer for the selected `edge` int64 [B] (E edges
        per node, `num_edges`). Called before `Tree.expand` (after value-prefix rewards are
        derived); the default keeps the model's numbers."""
        return reward, logits

    def on_expand(self, n: int, log_prior: np.ndarray) -> None:
        """Sees node n of every tree just created (log_prior float64 [B, E])."""

    @abc.abstractmethod
    def finish_move(self, rng: np.random.Generator, training: bool, temperature: float | None) -> Choice:
        """The move's choice once all simulations are backed up (see `BatchedSearch.finish_move`)."""


class PuctPolicy(Policy):
    """MuZero (Schrittwieser et al. 2020) as in the paper's pseudocode (Appendix B).

    PUCT at every node with one min-max normalization of Q per tree (`MinMaxStats`), Dirichlet
    noise on the root prior in training, the root starting with 0 visits (so the first
    simulation of a move takes the lowest legal action: all scores are 0). The action is
    sampled from N(a)^(1/T) (`select_actions`); the policy target is the visit distribution.

    State: q_min, q_max float64 [B], the extremes of each tree's Q values.
    """

    STATE = ("q_min", "q_max")

    def __init__(self, tree: Tree, config: "SearchConfig") -> None:
        super().__init__(tree, config)
        self.min_max = MinMaxStats(tree.batch_size)
        self.observe_q = self.min_max.update
        self.selector = PuctSelector(tree, config.pb_c_base, config.pb_c_init, self.min_max)
        self.select_interior = self.selector
        self._root_mask = np.zeros((tree.batch_size, tree.num_actions), np.float64)

    @property
    def q_min(self) -> np.ndarray:
        return self.min_max.minimum

    @property
    def q_max(self) -> np.ndarray:
        return self.min_max.maximum

    def start_move(self, rng: np.random.Generator, training: bool) -> None:
        tree, config = self.tree, self.config
        legal = tree.legal
        if training and config.root_exploration_fraction > 0:
            noise = rng.standard_gamma(config.root_dirichlet_alpha, size=legal.shape)
            noise = np.where(legal, noise, 0.0)
            total = noise.sum(axis=1, keepdims=True)
            # A tiny alpha can underflow every draw of a game to 0: fall back to uniform there.
            noise = np.where(total > 0, noise / np.where(total > 0, total, 1.0), legal / legal.sum(1, keepdims=True))
            fraction = config.root_exploration_fraction
            prior = tree.children_prior[:, 0]
            tree.children_prior[:, 0] = np.where(legal, prior * (1 - fraction) + noise * fraction, 0.0)
        # Pseudocode: the root's visit count starts at 0.
        tree.node_visits[:, 0] = 0
        tree.node_value_sum[:, 0] = 0.0
        self.min_max.reset()
        self._root_mask[:] = np.where(legal, 0.0, _NEG_INF)

    def prepare_select(self) -> None:
        self.min_max.freeze()

    def select_root(self, simulation: int) -> np.ndarray:
        return self.selector(self.tree.all_games, self.tree.game_rows, self._root_mask)

    def finish_move(self, rng: np.random.Generator, training: bool, temperature: float | None) -> Choice:
        visits = self.tree.children_visits[:, 0]
        if temperature is None:
            temperature = self.config.temperature if training else 0.0
        return Choice(action=select_actions(visits, temperature, rng),
                      policy=visits / visits.sum(axis=1, keepdims=True),
                      greedy_action=np.argmax(visits, axis=1).astype(np.int32))


class GumbelPolicy(Policy):
    """Gumbel MuZero (Danihelka et al. 2022) as mctx's `gumbel_muzero_policy`.

    Gumbel-top-k and Sequential Halving at the root (`SequentialHalvingRoot`), the
    deterministic improved-policy rule below it (`GumbelInterior`), both on completed Q
    (`CompletedQ`, mixed value). The root starts with one visit carrying the network's value,
    as in mctx. The action is Sequential Halving's choice; the policy target is the improved
    policy softmax(logits + sigma(completed Q)) over the legal actions.

    State: root_gumbel float64 [B, A] (the scaled noise, 0 in evaluation) and considered bool
    [B, A] (the considered actions), see `SequentialHalvingRoot`.
    """

    STATE = ("root_gumbel", "considered")

    def __init__(self, tree: Tree, config: "SearchConfig") -> None:
        super().__init__(tree, config)
        self.qtransform = CompletedQ(tree, config.value_scale, config.maxvisit_init, config.rescale_values)
        self.root = SequentialHalvingRoot(tree, config.max_considered_actions, config.num_simulations, self.qtransform)
        # With the rescale, completed Q lies in [0, 1], so sigma <= (maxvisit_init + S) * value_scale.
        bound = (config.maxvisit_init + config.num_simulations) * config.value_scale if config.rescale_values else None
        self.interior = GumbelInterior(tree, self.qtransform, bound)
        self.select_interior = self.interior

    @property
    def root_gumbel(self) -> np.ndarray:
        return self.root.root_gumbel

    @property
    def considered(self) -> np.ndarray:
        return self.root.considered

    def start_move(self, rng: np.random.Generator, training: bool) -> None:
        tree = self.tree
        # mctx: the root starts with one visit carrying the network's value.
        tree.node_visits[:, 0] = 1
        tree.node_value_sum[:, 0] = tree.node_raw_value[:, 0]
        scale = self.config.gumbel_scale if training else 0.0
        self.root.start(scale * rng.gumbel(size=tree.legal.shape) if scale > 0 else None)

    def select_root(self, simulation: int) -> np.ndarray:
        return self.root(simulation)

    def on_expand(self, n: int, log_prior: np.ndarray) -> None:
        self.interior.remember(n, log_prior)

    def finish_move(self, rng: np.random.Generator, training: bool, temperature: float | None) -> Choice:
        """Sequential Halving's choice: the argmax of g + logits + sigma(completed Q) over the
        considered actions with the most visits; greedy (g = 0) in evaluation or when
        `temperature` is 0; other temperatures are not used."""
        tree = self.tree
        rows = tree.game_rows
        visits = tree.children_visits[:, 0]
        sigma_q = self.qtransform(rows, tree.cvis_rows.take(rows, axis=0), tree.cq_rows.take(rows, axis=0),
                                  tree.cprior_rows.take(rows, axis=0), tree.nvis.take(rows))
        logits = tree.children_logits[:, 0]
        policy = gumbel_lib.improved_policy(logits, sigma_q, tree.legal)
        greedy = (not training) or temperature == 0
        noise = 0.0 if greedy else self.root.root_gumbel
        score = gumbel_lib.score_considered(visits.max(axis=1), noise, logits, sigma_q, visits)
        action = np.argmax(score + self.root.mask, axis=1).astype(np.int32)
        return Choice(action=action, policy=policy, greedy_action=np.argmax(policy, axis=1).astype(np.int32))


class _ChanceNodes:
    """Stochastic MuZero's chance nodes, for a policy class that lists this first among its
    bases (the module docstring): E = A + C edges, the node kinds `is_chance` bool [B, N], the
    reward 0 and factor 1 into an afterstate and each node's half of the logits. The decision
    rule is the other base's (PUCT or Gumbel); `_chance_selector(decision)` is the interior
    selector over it."""

    tree: Tree
    config: "SearchConfig"

    def _init_chance(self, decision: "PuctSelector | GumbelInterior") -> None:
        tree, config = self.tree, self.config
        self.num_game_actions = A = tree.num_actions - config.num_chance_codes
        require(A >= 1, f"the tree's {tree.num_actions} edges leave no actions beside "
                f"{config.num_chance_codes} chance codes")
        self.is_chance = np.zeros((tree.batch_size, tree.num_nodes), bool)
        self.select_interior = StochasticSelector(tree, A, decision, self.is_chance)
        # Row 0: keep the action half (a state's logits); row 1: the outcome half (an afterstate's).
        outcome = np.arange(tree.num_actions) >= A
        self._keep = np.stack([~outcome, outcome])                         # bool [2, E]

    @classmethod
    def num_edges(cls, num_actions: int, config: "SearchConfig") -> int:
        return num_actions + config.num_chance_codes

    def start_move(self, rng: np.random.Generator, training: bool) -> None:
        super().start_move(rng, training)  # type: ignore[misc]
        self.is_chance[:, 0] = False

    def adjust_expansion(self, edge: np.ndarray, reward: np.ndarray,
                         logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # An action edge (edge < A) leads to an afterstate: no reward, chance-code logits.
        to_chance = edge < self.num_game_actions                            # bool [B]
        reward = np.where(to_chance, 0.0, reward)
        # np.where, not an added -inf mask: the unused half may hold anything (inf, nan).
        logits = np.where(self._keep.take(to_chance.astype(np.intp), axis=0), logits, _NEG_INF)
        return reward, logits

    def on_expand(self, n: int, log_prior: np.ndarray) -> None:
        super().on_expand(n, log_prior)  # type: ignore[misc]
        tree = self.tree
        to_chance = tree.node_action[:, n] < self.num_game_actions
        self.is_chance[:, n] = to_chance
        # Tree.expand wrote discount * sign; an afterstate is the same player, no time later.
        tree.node_discount[:, n] = np.where(to_chance, 1.0, tree.discount_sign)


class StochasticPolicy(_ChanceNodes, PuctPolicy):
    """Stochastic MuZero (Antonoglou et al. 2022) as mctx's `stochastic_muzero_policy`, with
    PUCT at decision nodes exactly as `PuctPolicy` (the pseudocode's: the root starts with 0
    visits, one min-max per tree, Dirichlet noise on the legal root actions in training).

    The tree has E = A + C edges per node (C = config.num_chance_codes): decision nodes use
    edges 0..A-1 (actions), chance nodes (afterstates) edges A..A+C-1 (outcomes, code = edge -
    A); the module docstring has the design. Below the root, `StochasticSelector` chooses.
    Edges: decision -> chance reward 0 and factor 1 (same player, no time passes); chance ->
    decision the model's reward and discount * sign. The action is sampled from the root's
    action visits N(a)^(1/T) and the policy target is their distribution, as PUCT's. The
    Dirichlet draws cover all E root edges (`PuctPolicy.start_move` draws `legal.shape`);
    the outcome half is illegal at the root, so its draws are dropped.

    State: q_min, q_max float64 [B] (PUCT's) and is_chance bool [B, N], the kind of every node
    created this move (the root False).
    """

    STATE = ("q_min", "q_max", "is_chance")

    def __init__(self, tree: Tree, config: "SearchConfig") -> None:
        super().__init__(tree, config)
        self._init_chance(self.selector)
        self.interior = self.select_interior

    def finish_move(self, rng: np.random.Generator, training: bool, temperature: float | None) -> Choice:
        visits = self.tree.children_visits[:, 0, :self.num_game_actions]
        if temperature is None:
            temperature = self.config.temperature if training else 0.0
        return Choice(action=select_actions(visits, temperature, rng),
                      policy=visits / visits.sum(axis=1, keepdims=True),
                      greedy_action=np.argmax(visits, axis=1).astype(np.int32))


class StochasticGumbelPolicy(_ChanceNodes, GumbelPolicy):
    """Stochastic MuZero's chance nodes under Gumbel MuZero's decision nodes: the tree, edges,
    node kinds, rewards and factors of `StochasticPolicy`, with Gumbel's root (Gumbel-top-k and
    Sequential Halving over the actions, the root starting with one visit of the network's
    value), Gumbel's deterministic rule at decision nodes below it and the chance rule
    P(c) / (N(c) + 1) at chance nodes (`StochasticSelector` over `GumbelInterior`). The action
    is Sequential Halving's choice and the policy target the improved policy over the A
    actions, as `GumbelPolicy`'s. Not in mctx or the paper (which use PUCT); it is what a
    search configured "gumbel" runs for a model with chance codes (`BatchedSearch`), because
    PUCT's visit counts make a poor policy target with the few simulations Gumbel is for.

    State: GumbelPolicy's root_gumbel and considered [B, E], and is_chance bool [B, N].
    """

    STATE = ("root_gumbel", "considered", "is_chance")

    def __init__(self, tree: Tree, config: "SearchConfig") -> None:
        super().__init__(tree, config)
        self._init_chance(self.interior)

    def finish_move(self, rng: np.random.Generator, training: bool, temperature: float | None) -> Choice:
        choice = super().finish_move(rng, training, temperature)
        A = self.num_game_actions
        return Choice(action=choice.action, policy=choice.policy[:, :A], greedy_action=choice.greedy_action)


POLICIES: dict[str, type[Policy]] = {"puct": PuctPolicy, "gumbel": GumbelPolicy, "stochastic": StochasticPolicy,
                                     "stochastic_gumbel": StochasticGumbelPolicy}
"""`SearchConfig.search` -> the policy class."""

STOCHASTIC_OF: dict[str, str] = {"puct": "stochastic", "stochastic": "stochastic", "gumbel": "stochastic_gumbel",
                                 "stochastic_gumbel": "stochastic_gumbel"}
"""The policy a search configured with each policy runs for a model with chance codes: the same
rule at decision nodes, Stochastic MuZero's chance nodes between them."""
