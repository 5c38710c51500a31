"""Batched MCTS for MuFleet: B search trees in preallocated NumPy arrays, composed from parts as
in google-deepmind/mctx.

One `BatchedSearch` holds the trees of B games (one tree per game, rebuilt every move) and is
driven one simulation step at a time, so that the caller issues ONE network request for all B
games per step (and may pipeline several groups of games, `services.agent.pipeline`):

    search = BatchedSearch(batch_size=B, num_actions=A, hidden_shape=(64,), config=settings)
    search.start_move(root_inference, legal_actions, rng)
    for _ in range(search.num_simulations):
        hidden_state, action = search.select()        # the B leaves to expand
        search.expand_and_backup(recurrent_inference(hidden_state, action))
    result = search.finish_move()                     # action, visit counts, policy target, value

`BatchedSearch.run(model, observations, legal_actions, rng)` does exactly that through a
`Model` (`services.agent.inference`).

The parts (module -> role; mctx's counterpart in brackets):
  * `tree`: the arrays, [B, N] per node and [B, N, A] per edge, node creation and backup
    [tree.py, search.expand / backward].
  * `selectors`: PUCT (root and interior), Gumbel root with Sequential Halving, Gumbel
    interior [action_selection.py]; `services.agent.gumbel` holds Gumbel's pure functions
    (halving schedule, improved policy, root score) [seq_halving.py].
  * `qtransforms`: completed Q by mixed value, and MuZero's tree-wide min-max [qtransforms.py].
  * `policies`: PUCT, Gumbel MuZero and Stochastic MuZero (chance nodes) composed from those,
    chosen by `SearchConfig.search` (see its docstring) [policies.py].
  * `batched`: `BatchedSearch`, the simulation loop and step API, and `SearchResult`
    [search.py].
  * `config`: `SearchConfig`.

Conventions (every policy):
  * Values in the tree (`node_value_sum`, `node_raw_value`, a leaf's `value`) are from the view
    of the player to move at that node. Rewards (`node_reward`, `children_rewards`) are from
    the view of the player who made the move into the node, i.e. the parent's player to move
    (the games' convention: +1 when the mover wins). Hence, with sign = -1 for two-player games
    (players alternate every move) and +1 otherwise,
        Q(s, a) = r(s, a) + discount * sign * V(child),   V(child) = value_sum / visits,
    from the view of the player to move at s, and a simulation's return is backed up as
        G(parent) = r + discount * sign * G(child),       G(leaf) = the network's value.
    (mctx writes the same with a per-edge discount; two-player games use discount -1 there.)
  * `discount` is applied at every edge (1.0 for board games; 0.997 for cartpole...). The model
    has no terminal flag; a terminal state is just a state whose values the network learned.
  * Illegal actions are masked at the root only: prior renormalized over the legal actions
    (noise too), never selected, zero in the policy target. Deeper nodes are not masked; the
    model does not know the rules there.
  * Ties in every argmax go to the lowest action index.

The policies (`SearchConfig.search`):
  * "puct": MuZero's PUCT as in the paper's pseudocode (Schrittwieser et al. 2020, Appendix B),
    with Dirichlet noise at the root in training. The root starts with 0 visits, as there, so
    the first simulation of a move takes the lowest legal action (all scores are 0). At a node
    s with N(s) visits:
        score(a) = Qn(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * c(s),
        c(s) = pb_c_init + log((N(s) + pb_c_base + 1) / pb_c_base),
    where Qn is Q min-max normalized by the extremes of all Q(s', a') of this game's tree seen
    so far (updated during backup; no normalization until max > min), 0 for unvisited children.
  * "gumbel": Gumbel MuZero (Danihelka et al. 2022) as mctx's `gumbel_muzero_policy`:
    Gumbel-top-k and Sequential Halving at the root, the deterministic improved-policy rule
    below it, completed Q-values by mixed value. The root starts with one visit carrying the
    network's value, as in mctx.
  * "stochastic": Stochastic MuZero (Antonoglou et al. 2022) as mctx's
    `stochastic_muzero_policy`: decision nodes (states) and chance nodes (afterstates) in one
    tree of A + C edges per node; PUCT as "puct" at decision nodes, argmax P(c) / (N(c) + 1)
    over the C chance codes at chance nodes; the edge into an afterstate has reward 0 and
    factor 1, the edge out of it the model's reward and discount * sign. The one recurrent
    request per step carries both kinds (edge < A: afterstate dynamics; >= A: dynamics).

  * "stochastic_gumbel": the same chance nodes under Gumbel MuZero's decision nodes (Gumbel
    root and interior rule, improved-policy target); not in mctx or the paper. A search
    configured "gumbel" runs it for a model that says its chance codes ("puct" runs
    "stochastic"): `BatchedSearch`, `STOCHASTIC_OF`.

`tests/agent/test_search_mctx.py` checks "gumbel" and "puct" against mctx itself,
`tests/agent/test_search_mctx_stochastic.py` "stochastic".
"""

from services.agent.inference import Model, ModelOutput
from services.agent.search.batched import BatchedSearch, SearchResult
from services.agent.search.config import SearchConfig
from services.agent.search.policies import (POLICIES, STOCHASTIC_OF, Choice, GumbelPolicy, Policy, PuctPolicy,
                                           StochasticGumbelPolicy, StochasticPolicy, select_actions)
from services.agent.search.tree import Tree

__all__ = ["BatchedSearch", "Choice", "GumbelPolicy", "Model", "ModelOutput", "POLICIES", "Policy", "PuctPolicy",
           "STOCHASTIC_OF", "SearchConfig", "SearchResult", "StochasticGumbelPolicy", "StochasticPolicy", "Tree",
           "select_actions"]
