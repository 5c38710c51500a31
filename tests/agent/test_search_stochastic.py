"""Golden and API tests of the "stochastic" policy (Stochastic MuZero chance nodes, Antonoglou
et al. 2022): the batched search against a one-game-at-a-time MCTS written from the paper's
pseudocode (its `run_mcts`, `select_child`, `expand_node`, `backpropagate` with chance nodes).

The reference keeps the pseudocode's structure (Node with a children dict and an is_chance
flag; a decision node's child is an afterstate from `afterstate_dynamics`, an afterstate's child
a state from `dynamics`) and states the points it leaves open the way MuFleet defines them:
  * Chance nodes choose argmax P(c) / (N(c) + 1) (mctx's deterministic rule) where the
    pseudocode samples c from the prior: a sampled outcome would not give one comparable tree.
  * The edge into an afterstate has reward 0 and factor 1 (no time passes, same player);
    the edge out of it the reward r and discount * sign (MuZero's test_search_puct.py
    convention: Q = r + discount * V(child) for one player, r - discount * V(child) for two).
  * PUCT at decision nodes as `test_search_puct.py`'s reference: root starting with 0 visits,
    one MinMaxStats per tree fed every Q of the backup (both kinds of edge), lowest index on ties.

The fake model (`FakeStochasticModel`) answers both kinds in one batched call: a hidden state
is [node id, game, is_afterstate]; the edge index says which dynamics (edge < A: afterstate of
(state, action), edge >= A: state of (afterstate, code)), and the fake asserts the search
never sends an afterstate an action or a state a code. Its logits fill all A + C entries and its
afterstates have a nonzero reward, so the search's masking and its reward 0 are tested too.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from services.agent.inference import ModelOutput
from services.agent.search import BatchedSearch, SearchConfig, StochasticGumbelPolicy, StochasticPolicy

from tests.agent.search_fakes import TABLE_SIZE, PredictsFromMethods, child_id
from tests.agent.test_search_puct import MinMaxStats  # the pseudocode's, one copy


# ----------------------------------------------------------------------------- the fake model


class FakeStochasticModel(PredictsFromMethods):
    """B fake stochastic models in one: per game, tables of value, reward and A + C logits
    looked up by node id (child id = `child_id(id, edge)`, edge in [0, A + C)). State and
    afterstate nodes share the tables; which half of a row applies is the search's to mask."""

    def __init__(self, batch_size: int, num_actions: int, num_codes: int, seed: int,
                 logit_scale: float = 1.5) -> None:
        rng = np.random.default_rng(seed)
        self.batch_size, self.num_actions, self.num_codes = batch_size, num_actions, num_codes
        E = num_actions + num_codes
        self.values = rng.uniform(-1.0, 1.0, (batch_size, TABLE_SIZE))
        self.rewards = rng.uniform(-1.0, 1.0, (batch_size, TABLE_SIZE))
        self.logits = rng.normal(0.0, logit_scale, (batch_size, TABLE_SIZE, E))
        self.root_ids = rng.integers(0, TABLE_SIZE, batch_size)
        self.recurrent_calls = 0
        self.kinds_seen: set[str] = set()

    def _output(self, ids: np.ndarray, afterstate: np.ndarray) -> ModelOutput:
        games = np.arange(self.batch_size)
        hidden = np.stack([ids, games, afterstate], axis=1).astype(np.float32)
        return ModelOutput(hidden_state=hidden, value=self.values[games, ids].astype(np.float32),
                           reward=self.rewards[games, ids].astype(np.float32),
                           policy_logits=self.logits[games, ids].astype(np.float32))

    def initial_inference(self, observation: np.ndarray) -> ModelOutput:
        output = self._output(np.asarray(observation, np.int64), np.zeros(self.batch_size))
        return dataclasses.replace(output, reward=np.zeros(self.batch_size, np.float32))

    def recurrent_inference(self, hidden_state: np.ndarray, action: np.ndarray) -> ModelOutput:
        assert hidden_state.dtype == np.float32 and hidden_state.shape == (self.batch_size, 3)
        assert action.dtype == np.int32 and action.shape == (self.batch_size,)
        assert np.array_equal(hidden_state[:, 1], np.arange(self.batch_size))
        assert ((action >= 0) & (action < self.num_actions + self.num_codes)).all()
        from_afterstate = hidden_state[:, 2] == 1
        # An action (edge < A) only from a state, a chance code (edge >= A) only from an afterstate.
        np.testing.assert_array_equal(action >= self.num_actions, from_afterstate)
        self.kinds_seen.update({"afterstate_dynamics"} if (~from_afterstate).any() else set())
        self.kinds_seen.update({"dynamics"} if from_afterstate.any() else set())
        self.recurrent_calls += 1
        ids = child_id(hidden_state[:, 0].astype(np.int64), action.astype(np.int64))
        return self._output(ids, (~from_afterstate).astype(np.float64))

    def game(self, b: int) -> "OneGame":
        return OneGame(self, b)


@dataclasses.dataclass
class OneOutput:
    hidden_state: int
    value: float
    reward: float
    logits: list[float]          # all A + C, float32-rounded like the batched fake's


@dataclasses.dataclass
class OneGame:
    """Game b of a FakeStochasticModel, one node at a time (the pseudocode's network)."""

    model: FakeStochasticModel
    b: int

    def _output(self, node_id: int) -> OneOutput:
        m = self.model
        return OneOutput(node_id, float(np.float32(m.values[self.b, node_id])),
                         float(np.float32(m.rewards[self.b, node_id])),
                         [float(x) for x in m.logits[self.b, node_id].astype(np.float32)])

    def initial_inference(self) -> OneOutput:
        return self._output(int(self.model.root_ids[self.b]))

    def afterstate_dynamics(self, state_id: int, action: int) -> OneOutput:
        assert 0 <= action < self.model.num_actions
        return self._output(int(child_id(state_id, action)))

    def dynamics(self, afterstate_id: int, code: int) -> OneOutput:
        assert 0 <= code < self.model.num_codes
        return self._output(int(child_id(afterstate_id, self.model.num_actions + code)))


# ----------------------------------------------------------------------------- reference


class Node:
    def __init__(self, prior: float) -> None:
        self.visit_count = 0
        self.to_play = -1
        self.prior = prior
        self.value_sum = 0.0
        self.children: dict[int, Node] = {}     # key: action (decision) or A + code (chance)
        self.state = None
        self.reward = 0.0
        self.is_chance = False

    def expanded(self) -> bool:
        return len(self.children) > 0

    def value(self) -> float:
        return self.value_sum / self.visit_count if self.visit_count else 0.0


def expand_node(node: Node, state: int, reward: float, logits: list[float], keys: list[int], to_play: int,
                is_chance: bool) -> None:
    node.to_play, node.state, node.reward, node.is_chance = to_play, state, reward, is_chance
    top = max(logits[k] for k in keys)
    policy = {k: math.exp(logits[k] - top) for k in keys}
    total = sum(policy.values())
    for key, p in policy.items():
        node.children[key] = Node(p / total)


def edge_factor(config: SearchConfig, parent: Node, child: Node) -> float:
    """The factor of V(child) in Q(parent, edge): 1 into an afterstate, else discount * sign."""
    if child.is_chance:
        return 1.0
    return config.discount * (1.0 if child.to_play == parent.to_play else -1.0)


def child_q(config: SearchConfig, parent: Node, child: Node) -> float:
    return child.reward + edge_factor(config, parent, child) * child.value()


def ucb_score(config, parent: Node, child: Node, min_max_stats: MinMaxStats) -> float:
    pb_c = math.log((parent.visit_count + config.pb_c_base + 1) / config.pb_c_base) + config.pb_c_init
    pb_c *= math.sqrt(parent.visit_count) / (child.visit_count + 1)
    value_score = min_max_stats.normalize(child_q(config, parent, child)) if child.visit_count > 0 else 0
    return pb_c * child.prior + value_score


def select_child(config, node: Node, min_max_stats: MinMaxStats) -> tuple[int, Node]:
    best = None
    for key in sorted(node.children):                # strict '>': the lowest index on ties
        child = node.children[key]
        if node.is_chance:
            score = child.prior / (child.visit_count + 1)
        else:
            score = ucb_score(config, node, child, min_max_stats)
        if best is None or score > best[0]:
            best = (score, key, child)
    return best[1], best[2]


def backpropagate(config, search_path: list[Node], value: float, to_play: int,
                  min_max_stats: MinMaxStats) -> None:
    for i in reversed(range(len(search_path))):
        node = search_path[i]
        node.value_sum += value if node.to_play == to_play else -value
        node.visit_count += 1
        if i == 0:
            break
        parent = search_path[i - 1]
        min_max_stats.update(child_q(config, parent, node))
        # The reward is from the parent player's view; `value` is the leaf player's.
        reward = node.reward if parent.to_play == to_play else -node.reward
        factor = 1.0 if node.is_chance else config.discount
        value = reward + factor * value


def reference_search(config: SearchConfig, model: OneGame, legal: np.ndarray, two_player: bool) -> Node:
    """The paper's run_mcts with chance nodes for one game; returns the root."""
    A, C = model.model.num_actions, model.model.num_codes
    root = Node(0)
    out = model.initial_inference()
    expand_node(root, out.hidden_state, 0.0, out.logits, [a for a in range(A) if legal[a]], 0, False)
    min_max_stats = MinMaxStats()
    for _ in range(config.num_simulations):
        node, search_path, key = root, [root], -1
        while node.expanded():
            key, node = select_child(config, node, min_max_stats)
            search_path.append(node)
        parent = search_path[-2]
        if parent.is_chance:
            # Afterstate -> state: the chance outcome happened; the next player moves.
            out = model.dynamics(parent.state, key - A)
            to_play = 1 - parent.to_play if two_player else 0
            expand_node(node, out.hidden_state, out.reward, out.logits, list(range(A)), to_play, False)
        else:
            # State -> afterstate: the same player, no reward yet; children are chance codes.
            out = model.afterstate_dynamics(parent.state, key)
            to_play = parent.to_play
            expand_node(node, out.hidden_state, 0.0, out.logits, list(range(A, A + C)), to_play, True)
        backpropagate(config, search_path, out.value, to_play, min_max_stats)
    return root


# ----------------------------------------------------------------------------- helpers


def random_legal(rng: np.random.Generator, batch: int, actions: int, p_legal: float) -> np.ndarray:
    legal = rng.random((batch, actions)) < p_legal
    legal[np.arange(batch), rng.integers(0, actions, batch)] = True
    return legal


def run(config: SearchConfig, model: FakeStochasticModel, legal: np.ndarray, two_player: bool, training=False):
    search = BatchedSearch(model.batch_size, model.num_actions, (3,), config, two_player=two_player)
    result = search.run(model, model.root_ids, legal, np.random.default_rng(0), training=training)
    return search, result


def compare_with_reference(search: BatchedSearch, root: Node, b: int, config: SearchConfig) -> int:
    """Every node of game b: kind, visits, value sum, reward, factor and children; returns the count."""
    stack, checked = [(root, None, 0)], 0
    while stack:
        node, parent, index = stack.pop()
        assert search.is_chance[b, index] == node.is_chance
        assert search.node_visits[b, index] == node.visit_count
        assert search.node_value_sum[b, index] == pytest.approx(node.value_sum, abs=1e-9)
        if parent is not None:
            assert search.node_reward[b, index] == pytest.approx(node.reward, abs=1e-9)
            assert search.node_discount[b, index] == edge_factor(config, parent, node)
            assert search.children_qvalues[b, search.node_parent[b, index], search.node_action[b, index]] == \
                pytest.approx(child_q(config, parent, node), abs=1e-9)
        for key, child in node.children.items():
            assert search.children_prior[b, index, key] == pytest.approx(child.prior, rel=1e-9)
            child_index = search.children_index[b, index, key]
            if child.expanded():
                assert child_index > 0
                stack.append((child, node, child_index))
            else:
                assert child_index == -1
        checked += 1
    return checked


CASES = [
    # (two_player, discount, num_actions, num_codes, num_simulations, p_legal, pb_c_base)
    (False, 1.0, 2, 2, 16, 1.0, 19652.0),
    (False, 0.997, 3, 4, 40, 1.0, 19652.0),
    (False, 0.9, 4, 3, 50, 0.6, 10.0),
    (True, 1.0, 3, 2, 32, 1.0, 19652.0),
    (True, 0.95, 5, 6, 64, 0.5, 19652.0),
    (True, 0.9, 2, 1, 24, 1.0, 5.0),
    (False, 0.997, 2, 3, 1, 1.0, 19652.0),
]


@pytest.mark.parametrize("two_player,discount,num_actions,num_codes,num_simulations,p_legal,pb_c_base", CASES)
def test_stochastic_matches_pseudocode_reference(two_player, discount, num_actions, num_codes, num_simulations,
                                                 p_legal, pb_c_base):
    batch = 5
    seed = (int(two_player) * 1000 + num_actions * 100 + num_codes * 10 + num_simulations) % 2**31
    config = SearchConfig(num_simulations=num_simulations, search="stochastic", discount=discount,
                          pb_c_base=pb_c_base, num_chance_codes=num_codes)
    model = FakeStochasticModel(batch, num_actions, num_codes, seed=seed)
    legal = random_legal(np.random.default_rng(seed), batch, num_actions, p_legal)
    search, result = run(config, model, legal, two_player)
    assert model.recurrent_calls == num_simulations              # ONE request per step for all games
    for b in range(batch):
        root = reference_search(config, model.game(b), legal[b], two_player)
        visits = [root.children[a].visit_count if a in root.children else 0 for a in range(num_actions)]
        np.testing.assert_array_equal(result.visit_counts[b], visits, err_msg=f"game {b}")
        assert result.value[b] == pytest.approx(root.value(), abs=1e-6)
        assert compare_with_reference(search, root, b, config) == num_simulations + 1
    assert not result.visit_counts[~legal].any()
    np.testing.assert_allclose(result.policy, result.visit_counts / num_simulations, rtol=1e-6)


def test_deep_tree_uses_both_kinds_of_inference():
    """A narrow deep tree: both kinds of request, chance nodes with several visited codes."""
    config = SearchConfig(num_simulations=80, search="stochastic", discount=0.95, pb_c_init=0.5, num_chance_codes=3)
    model = FakeStochasticModel(3, 2, 3, seed=11, logit_scale=2.0)
    legal = np.ones((3, 2), bool)
    search, _ = run(config, model, legal, two_player=True)
    assert model.kinds_seen == {"afterstate_dynamics", "dynamics"}
    for b in range(3):
        root = reference_search(config, model.game(b), legal[b], two_player=True)
        assert compare_with_reference(search, root, b, config) == 81
    assert search.node_depth.max() >= 6
    chance_rows = search.is_chance & (search.node_visits > 0)
    assert ((search.children_visits > 0).sum(axis=2)[chance_rows] >= 2).any()


# ----------------------------------------------------------------------------- API


@pytest.mark.parametrize("policy", ["stochastic", "stochastic_gumbel"])
def test_edges_kinds_rewards_and_factors(policy):
    B, A, C, S = 4, 3, 5, 40
    config = SearchConfig(num_simulations=S, search=policy, discount=0.9, num_chance_codes=C,
                          max_considered_actions=A)
    model = FakeStochasticModel(B, A, C, seed=2)
    legal = random_legal(np.random.default_rng(2), B, A, 0.7)
    search, result = run(config, model, legal, two_player=True, training=True)
    assert isinstance(search.policy, {"stochastic": StochasticPolicy, "stochastic_gumbel": StochasticGumbelPolicy}[policy])
    assert search.num_edges == A + C and search.children_prior.shape == (B, S + 1, A + C)
    assert result.visit_counts.shape == result.policy.shape == result.qvalues.shape == (B, A)
    # The root: a decision node whose outcome edges are illegal, prior 0 (Dirichlet noise too).
    assert not search.is_chance[:, 0].any() and not search.legal[:, A:].any()
    assert not search.children_prior[:, 0, A:].any() and not search.children_visits[:, 0, A:].any()
    assert (result.action < A).all() and result.visit_counts.sum(axis=1).tolist() == [S] * B
    nodes = np.arange(1, S + 1)
    chance = search.is_chance[:, nodes]
    parent_chance = np.take_along_axis(search.is_chance, search.node_parent[:, nodes], axis=1)
    np.testing.assert_array_equal(chance, ~parent_chance)           # kinds alternate
    np.testing.assert_array_equal(chance, search.node_action[:, nodes] < A)
    # Decision -> chance: reward 0 (the fake said otherwise) and factor 1; chance -> decision:
    # the model's reward and -discount (two players).
    games = np.arange(B)[:, None]
    ids = search.hidden_state[:, nodes, 0].astype(np.int64)
    model_reward = model.rewards[games, ids].astype(np.float32)
    assert chance.any() and (~chance).any() and model_reward[chance].all()
    assert not search.node_reward[:, nodes][chance].any()
    np.testing.assert_array_equal(search.node_discount[:, nodes][chance], 1.0)
    np.testing.assert_array_equal(search.node_reward[:, nodes][~chance], model_reward[~chance])
    np.testing.assert_array_equal(search.node_discount[:, nodes][~chance], -0.9)
    # Each node's prior covers only its kind's half of the model's logits.
    prior = search.children_prior[:, nodes]
    assert not prior[chance][:, :A].any() and not prior[~chance][:, A:].any()
    np.testing.assert_allclose(prior.sum(axis=2), 1.0, rtol=1e-12)
    # Q(root, a) = V(afterstate) exactly: reward 0, factor 1.
    for b in range(B):
        for a in np.flatnonzero(result.visit_counts[b]):
            child = search.children_index[b, 0, a]
            assert search.children_qvalues[b, 0, a] == search.node_value_sum[b, child] / search.node_visits[b, child]


def test_gumbel_decision_nodes_over_chance_nodes():
    """"stochastic_gumbel": Gumbel's root (Sequential Halving over the m considered actions,
    one visit of the network's value to start) and improved-policy target over the A actions,
    Gumbel's interior rule at decision nodes, the chance rule at chance nodes."""
    B, A, C, S = 3, 4, 3, 32
    config = SearchConfig(num_simulations=S, search="stochastic_gumbel", discount=0.95, num_chance_codes=C,
                          max_considered_actions=2)
    model = FakeStochasticModel(B, A, C, seed=8, logit_scale=2.0)
    legal = np.ones((B, A), bool)
    search, result = run(config, model, legal, two_player=False, training=True)
    assert model.kinds_seen == {"afterstate_dynamics", "dynamics"}
    assert search.node_visits[:, 0].tolist() == [S + 1] * B            # Gumbel's root visit + S
    assert (search.considered[:, :A].sum(axis=1) == 2).all() and not search.considered[:, A:].any()
    visited = search.children_visits[:, 0, :A] > 0
    np.testing.assert_array_equal(visited, search.considered[:, :A])  # only considered actions searched
    np.testing.assert_allclose(result.policy.sum(axis=1), 1.0, rtol=1e-6)
    assert result.policy.shape == (B, A) and search.considered[np.arange(B), result.action].all()
    # The target is Gumbel's improved policy of the root's A actions: softmax(logits + sigma(completed Q)).
    tree, policy = search.tree, search.policy
    rows = tree.game_rows
    sigma_q = policy.qtransform(rows, tree.cvis_rows.take(rows, axis=0), tree.cq_rows.take(rows, axis=0),
                                tree.cprior_rows.take(rows, axis=0), tree.nvis.take(rows))
    logits = tree.children_logits[:, 0]
    want = np.exp(logits[:, :A] + sigma_q[:, :A] - (logits[:, :A] + sigma_q[:, :A]).max(axis=1, keepdims=True))
    np.testing.assert_allclose(result.policy, want / want.sum(axis=1, keepdims=True), rtol=1e-6)  # float32 result
    # Below the root: each interior node chose by its kind's rule.
    chance_rows = search.is_chance & (search.node_visits > 1)
    assert chance_rows.any()
    assert not search.children_visits[chance_rows][:, :A].any()   # chance nodes take codes only
    decision_rows = ~search.is_chance & (search.node_visits > 1)
    decision_rows[:, 0] = False
    assert decision_rows.any() and not search.children_visits[decision_rows][:, A:].any()


def test_a_clearly_better_move_under_chance_wins_the_gumbel_target():
    """One action leads to an afterstate whose every code pays well: the improved policy puts
    most of its mass there and greedy play takes it."""
    B, A, C, S = 2, 3, 2, 24
    model = FakeStochasticModel(B, A, C, seed=3, logit_scale=0.1)
    model.values[:] = 0.0
    model.rewards[:] = 0.0
    roots = model.root_ids
    for b in range(B):
        after = child_id(np.int64(roots[b]), np.int64(1))              # action 1's afterstate
        for code in range(C):
            model.rewards[b, child_id(after, np.int64(A + code))] = 1.0  # every outcome pays 1
    config = SearchConfig(num_simulations=S, search="stochastic_gumbel", discount=1.0, num_chance_codes=C,
                          max_considered_actions=A, rescale_values=False)
    _search, result = run(config, model, np.ones((B, A), bool), two_player=False, training=False)
    assert result.greedy_action.tolist() == [1, 1] and result.action.tolist() == [1, 1]
    assert (result.policy[:, 1] > 0.5).all()


def test_chance_rule_step_by_step():
    """One legal root action: every simulation after the first passes the afterstate (node 1),
    which must take argmax P(c) / (N(c) + 1) of its codes (lowest index on ties)."""
    A, C, S = 2, 4, 30
    config = SearchConfig(num_simulations=S, search="stochastic", discount=1.0, num_chance_codes=C)
    model = FakeStochasticModel(1, A, C, seed=5, logit_scale=1.0)
    search = BatchedSearch(1, A, (3,), config)
    search.start_move(model.initial_inference(model.root_ids), np.array([[False, True]]), np.random.default_rng(0),
                      training=False)
    for simulation in range(S):
        before = search.children_visits[0, 1, A:].copy() if simulation else None
        if simulation:
            prior = search.children_prior[0, 1, A:]
            expected = int(np.argmax(prior / (before + 1)))
        hidden, action = search.select()
        search.expand_and_backup(model.recurrent_inference(hidden, action))
        if simulation == 0:
            assert action.tolist() == [1] and search.is_chance[0, 1]
        else:
            increased = np.flatnonzero(search.children_visits[0, 1, A:] != before)
            assert increased.tolist() == [expected], f"simulation {simulation}"
    visits = search.children_visits[0, 1, A:]
    assert visits.sum() == S - 1
    # The rule follows the prior: the likeliest code is the most visited.
    assert np.argmax(visits) == np.argmax(search.children_prior[0, 1, A:])
    assert search.finish_move().visit_counts.tolist() == [[0, S]]


def test_two_player_sign_by_hand():
    """Two players, two simulations: Q(root, a) = V(afterstate); the afterstate's Q of its code
    is r - discount * V(state), the state being the opponent's."""
    A, C = 2, 2
    config = SearchConfig(num_simulations=2, search="stochastic", discount=0.8, num_chance_codes=C)
    model = FakeStochasticModel(1, A, C, seed=9)
    search = BatchedSearch(1, A, (3,), config, two_player=True)
    search.start_move(model.initial_inference(model.root_ids), np.array([[True, False]]), np.random.default_rng(0),
                      training=False)
    for _ in range(2):
        hidden, action = search.select()
        search.expand_and_backup(model.recurrent_inference(hidden, action))
    assert search.is_chance[0].tolist() == [False, True, False]
    code = int(search.node_action[0, 2])
    assert search.node_parent[0, 2] == 1 and code == A + int(np.argmax(search.children_prior[0, 1, A:]))
    after_id, state_id = int(child_id(int(model.root_ids[0]), 0)), int(child_id(int(child_id(int(model.root_ids[0]),
                                                                                                 0)), code))
    v1 = float(np.float32(model.values[0, after_id]))
    r2, v2 = float(np.float32(model.rewards[0, state_id])), float(np.float32(model.values[0, state_id]))
    q_code = r2 - 0.8 * v2
    assert search.children_qvalues[0, 1, code] == pytest.approx(q_code, abs=1e-12)
    assert search.node_value_sum[0, 1] == pytest.approx(v1 + q_code, abs=1e-12)
    assert search.children_qvalues[0, 0, 0] == pytest.approx((v1 + q_code) / 2, abs=1e-12)
    result = search.finish_move()
    assert result.value[0] == pytest.approx((v1 + q_code) / 2, abs=1e-6)      # root: 0 visits of its own


def test_bad_config_and_outputs_are_rejected():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="SearchConfig.num_chance_codes"):
            SearchConfig(search="stochastic", num_chance_codes=bad)
    with pytest.raises(ValueError, match="SearchConfig.search must be .*'stochastic'"):
        SearchConfig(search="chance")
    assert SearchConfig().num_chance_codes == 32
    B, A, C = 2, 3, 4
    search = BatchedSearch(B, A, (3,), SearchConfig(num_simulations=2, search="stochastic", num_chance_codes=C))
    model = FakeStochasticModel(B, A, C, seed=0)
    root = model.initial_inference(model.root_ids)
    short = dataclasses.replace(root, policy_logits=root.policy_logits[:, :A])
    with pytest.raises(ValueError, match=r"root.policy_logits must have shape \(2, 7\)"):
        search.start_move(short, np.ones((B, A), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="legal_actions"):
        search.start_move(root, np.ones((B, A + C), bool), np.random.default_rng(0))
    search.start_move(root, np.ones((B, A), bool), np.random.default_rng(0))
    hidden, action = search.select()
    step = model.recurrent_inference(hidden, action)
    with pytest.raises(ValueError, match=r"output.policy_logits must have shape \(2, 7\)"):
        search.expand_and_backup(dataclasses.replace(step, policy_logits=step.policy_logits[:, :A]))


def test_the_unused_half_of_the_logits_may_hold_anything():
    """inf and nan in the half a node's kind does not use change nothing."""
    B, A, C, S = 3, 3, 3, 30
    config = SearchConfig(num_simulations=S, search="stochastic", num_chance_codes=C)
    model = FakeStochasticModel(B, A, C, seed=4)
    legal = np.ones((B, A), bool)
    clean_search, clean = run(config, model, legal, two_player=False)

    class Garbage(FakeStochasticModel):
        def recurrent_inference(self, hidden_state, action):
            out = super().recurrent_inference(hidden_state, action)
            logits = out.policy_logits.copy()
            to_afterstate = action < A
            logits[to_afterstate, :A] = np.inf
            logits[~to_afterstate, A:] = np.nan
            return dataclasses.replace(out, policy_logits=logits)

    garbage = Garbage(B, A, C, seed=4)
    search, result = run(config, garbage, legal, two_player=False)
    np.testing.assert_array_equal(result.visit_counts, clean.visit_counts)
    np.testing.assert_array_equal(search.children_index, clean_search.children_index)
    np.testing.assert_array_equal(search.children_prior, clean_search.children_prior)


def test_other_policies_are_unchanged_by_the_hook():
    """"puct" keeps the model's rewards and A edges (the default `adjust_expansion`)."""
    config = SearchConfig(num_simulations=8, search="puct")
    search = BatchedSearch(2, 3, (3,), config)
    assert search.num_edges == 3
    reward, logits = np.array([0.5, -1.0]), np.zeros((2, 3))
    assert search.policy.adjust_expansion(np.array([0, 1]), reward, logits) == (reward, logits)


def test_a_model_that_says_its_chance_codes_picks_the_policy():
    """A root output with num_chance_codes turns any configured search into "stochastic" with
    the model's C, exactly as if configured so; a root without gets the given policy back."""
    B, A, C, S = 3, 3, 4, 24
    model = FakeStochasticModel(B, A, C, seed=6)
    legal = np.ones((B, A), bool)
    configured = SearchConfig(num_simulations=S, search="stochastic", num_chance_codes=C)
    _, want = run(configured, model, legal, two_player=False)

    class SaysItsCodes(FakeStochasticModel):
        def initial_inference(self, ids):
            return dataclasses.replace(super().initial_inference(ids), num_chance_codes=np.full(B, C, np.int32))

    speaking = SaysItsCodes(B, A, C, seed=6)
    given = SearchConfig(num_simulations=S, search="puct", num_chance_codes=9)
    search, got = run(given, speaking, legal, two_player=False)
    assert search.config == configured.replace(search="stochastic") and search.given_config == given
    assert search.num_edges == A + C
    np.testing.assert_array_equal(got.visit_counts, want.visit_counts)
    np.testing.assert_array_equal(got.policy, want.policy)
    # The next move's root says nothing: the given policy, with its A edges, again.
    root = model.initial_inference(model.root_ids)
    search.start_move(dataclasses.replace(root, policy_logits=root.policy_logits[:, :A]), legal,
                      np.random.default_rng(0), training=False)
    assert search.config == given and search.num_edges == A and not hasattr(search.policy, "is_chance")
    # Gumbel's decision rule asked for: Gumbel above chance nodes.
    gumbel, _ = run(SearchConfig(num_simulations=S, search="gumbel"), speaking, legal, two_player=False)
    assert gumbel.config.search == "stochastic_gumbel" and gumbel.config.num_chance_codes == C
    for bad in ([C, C, C + 1], [0, 0, 0], [C, C]):
        with pytest.raises(ValueError, match="root.num_chance_codes must be one C >= 1"):
            search.start_move(dataclasses.replace(root, num_chance_codes=np.array(bad, np.int32)), legal,
                              np.random.default_rng(0))


def test_a_plain_model_under_a_stochastic_search_is_named_as_such():
    B, A, C = 2, 3, 4
    search = BatchedSearch(B, A, (3,), SearchConfig(num_simulations=2, search="stochastic", num_chance_codes=C))
    model = FakeStochasticModel(B, A, C, seed=0)
    root = model.initial_inference(model.root_ids)
    with pytest.raises(ValueError, match="needs a Stochastic MuZero model"):
        search.start_move(dataclasses.replace(root, policy_logits=root.policy_logits[:, :A]), np.ones((B, A), bool),
                          np.random.default_rng(0))
